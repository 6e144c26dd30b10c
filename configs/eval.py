"""Novelty evaluation of a ReSeND checkpoint: every score on the same features.

Your own images, as source specs (``resend_jax.data.sources``; several support specs are joined
by commas), known classes by name or by index into the support set's classes::

    python -m resend_jax.evaluate --config configs/eval.py --workdir OUT \\
        --config.checkpoint=models/resend_imagenet \\
        --config.data.support=folder:PACS/cartoon,folder:PACS/photo \\
        --config.data.test=folder:PACS/sketch \\
        --config.data.known_classes=dog,elephant,giraffe,guitar,horse,house

A benchmark of the paper, from the reference's own lists (``resend_jax.data.benchmarks``)::

    python -m resend_jax.evaluate --config configs/eval.py --workdir OUT \\
        --config.checkpoint=models/resend_imagenet --config.preset=PACS_DG \\
        --config.data.root=~/data --config.data.lists=ReSeND/data/txt_lists

Per-method options are ``--config.scores.<method>.<option>`` (e.g. ``knn.k``,
``resend.prototypes=coreset``, ``resend.nnk=5``).
"""

from ml_collections import ConfigDict

from resend_jax.evaluate import scores


def get_config(arg: str | None = None) -> ConfigDict:
    if arg not in (None, "", "smoke"):
        raise ValueError(f"configs/eval.py takes the argument 'smoke' or none, got {arg!r}")
    config = ConfigDict()
    config.checkpoint = ""  # a converted checkpoint or a training workdir (its latest step)
    config.methods = ""  # comma-separated, e.g. "resend,knn"; "" = every default method that applies
    config.batch_size = 128  # images per embed step, global (sharded over all devices)
    # JAX CPU devices for the command line (runtime.use_cpu_cores): 0 = one per core, each
    # embedding its share of every batch.
    config.cpu_devices = 0
    config.dtype = ""  # "" = as recorded with the model; "bfloat16" on accelerators
    # A reference benchmark: PACS_DG, PACS_SS_DG, OfficeHome_DG, OfficeHome_SS_DG, DomainNet_IN_OUT,
    # DomainNet_Painting, DomainNet_Sketch, DomainNet_DG, DTD or MultiDatasets_DG.
    config.preset = ""
    config.preset_targets = ""  # comma-separated; "" = every target of the benchmark

    config.data = ConfigDict()
    config.data.support = ""  # source spec(s), comma-separated: the known classes' images
    config.data.test = ""  # source spec: known and unknown images
    config.data.known_classes = ""  # names or indices; "" = every support class (or the benchmark's)
    config.data.image_size = 0  # 0 = the size recorded with the checkpoint
    config.data.lists = ""  # preset: the reference's data/txt_lists folder
    config.data.root = ""  # preset: the reference's data folder (~/data); DomainNet under root/DomainNet
    config.data.skip_missing = False  # preset: go on without listed images that are missing
    # Seeded samples (0 = all): a quicker evaluation of data.support / data.test, not for presets.
    config.data.support_size = 0
    config.data.test_size = 0
    config.data.sample_seed = 0
    config.data.few_shot = 0  # > 0: that many support images per known class (reference --few_shot)
    config.data.few_shot_seed = 42  # the reference's default seed
    config.data.data_dir = ""  # TFDS data directory for tfds: specs
    config.data.num_workers = 0  # grain worker processes for decoding
    config.data.skip_corrupt = False
    # Truncated JPEGs decode partially, as the reference sets PIL's LOAD_TRUNCATED_IMAGES (False:
    # a truncated file is an error naming it, or skipped with skip_corrupt).
    config.data.load_truncated_images = True

    config.scores = ConfigDict(scores.default_options())
    if arg == "smoke":  # small embed batches, for tests
        config.batch_size = 16
    return config
