"""Image files on disk: 16-bit and float images, the formats Pillow reads, truncated JPEGs."""

import logging

import numpy as np
import pytest
from PIL import Image, ImageFile

from resend_jax.data.sources import DataError, load_image, open_source


def gradient(height: int = 6, width: int = 8) -> np.ndarray:
    """uint8 (H, W) covering 0..255."""
    return np.linspace(0, 255, height * width).round().astype(np.uint8).reshape(height, width)


def test_16_bit_and_float_images_are_scaled_to_8_bits(tmp_path):
    values = gradient()
    expected = np.repeat(values[..., None], 3, axis=-1)
    Image.fromarray(values.astype(np.uint16) * 257).save(tmp_path / "i16.png")
    Image.fromarray(values.astype(np.int32) * 256 + 200).save(tmp_path / "i32.tif")
    Image.fromarray(values.astype(np.float32) / 255).save(tmp_path / "float.tif")
    modes = {}
    for name in ("i16.png", "i32.tif", "float.tif"):
        with Image.open(tmp_path / name) as pil:
            modes[name] = pil.mode
        image = load_image(tmp_path / name)
        assert image.dtype == np.uint8
        np.testing.assert_array_equal(image, expected, err_msg=name)
    assert modes == {"i16.png": "I;16", "i32.tif": "I", "float.tif": "F"}


def test_out_of_range_32_bit_and_float_images_are_refused_by_name(tmp_path):
    Image.fromarray(np.full((4, 4), 70_000, np.int32)).save(tmp_path / "big.tif")
    Image.fromarray(np.full((4, 4), 3.5, np.float32)).save(tmp_path / "hdr.tif")
    with pytest.raises(DataError, match=r"big\.tif: I image with values in \[70000, 70000\]"):
        load_image(tmp_path / "big.tif")
    with pytest.raises(DataError, match=r"hdr\.tif: float image with values in \[3\.5, 3\.5\]"):
        load_image(tmp_path / "hdr.tif")


def test_folder_reads_what_pillow_decodes_and_logs_the_rest_per_class(tmp_path, caplog):
    image = Image.fromarray(np.stack([gradient()] * 3, axis=-1))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for name in ("1.png", "2.WEBP", "3.tif", "4.gif", "5.tiff", "6.jpg"):
        image.save(tmp_path / "a" / name)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / "labels.csv").write_text("x")
    image.save(tmp_path / "b" / "1.bmp")
    with caplog.at_level(logging.WARNING):
        source = open_source(f"folder:{tmp_path}")
    assert [p.rsplit("/", 1)[1] for p in source.paths] == ["1.png", "2.WEBP", "3.tif", "4.gif", "5.tiff"] + [
        "6.jpg",
        "1.bmp",
    ]
    for i in range(len(source)):
        assert source[i]["image"].shape == (6, 8, 3)
    ignored = [r.getMessage() for r in caplog.records if "not image files" in r.getMessage()]
    assert ignored == [
        f"class folder {tmp_path / 'a'}: ignored 2 entries that are not image files: labels.csv, notes.txt"
    ]


@pytest.fixture
def truncated_jpeg(tmp_path):
    """A folder source root with one whole and one truncated 48 x 64 JPEG; (root, whole, truncated)."""
    rng = np.random.default_rng(0)
    (tmp_path / "cls").mkdir()
    whole, truncated = tmp_path / "cls" / "whole.jpg", tmp_path / "cls" / "truncated.jpg"
    for path in (whole, truncated):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path, quality=95)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    return tmp_path, whole, truncated


def test_truncated_jpeg_raises_by_default_naming_the_file(truncated_jpeg):
    root, _, truncated = truncated_jpeg
    source = open_source(f"folder:{root}")
    assert len(source) == 2 and source.paths[0] == str(truncated)
    with pytest.raises(DataError, match=f"{truncated}: cannot decode image: image file is truncated"):
        source[0]


def test_skip_corrupt_skips_a_truncated_jpeg(truncated_jpeg, caplog):
    root, whole, truncated = truncated_jpeg
    with caplog.at_level(logging.WARNING):
        source = open_source(f"folder:{root}", skip_corrupt=True)
    assert source.paths == [str(whole)] and source.skipped == [str(truncated)]
    assert f"skipped 1 unreadable images (first: {truncated})" in caplog.text


def test_load_truncated_decodes_the_first_half_without_changing_pillows_switch(truncated_jpeg, tmp_path):
    root, whole, truncated = truncated_jpeg
    (tmp_path / "list.txt").write_text(f"{truncated} 0\n{whole} 0\n")
    sources = [
        open_source(f"folder:{root}", load_truncated=True),
        open_source(f"folder:{root}", skip_corrupt=True, load_truncated=True),
        open_source(f"list:{tmp_path / 'list.txt'}:/", load_truncated=True),
    ]
    for source in sources:
        assert source.paths[0] == str(truncated)
        image = source[0]["image"]
        assert image.shape == (48, 64, 3) and image.dtype == np.uint8
        assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    # The decoded rows are the noise that was written; the missing ones are filled flat.
    assert image[:8].std() > 50 and image[-8:].std() < 5
    with pytest.raises(DataError, match="truncated.jpg"):
        load_image(truncated)
