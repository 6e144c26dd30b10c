"""Novelty evaluation of a ReSeND checkpoint: every score on the same features.

    python -m resend_jax.evaluate --config configs/eval.py --workdir OUT \\
        --config.checkpoint=models/resend_imagenet \\
        --config.data.support=folder:PACS/cartoon,folder:PACS/photo,folder:PACS/sketch \\
        --config.data.test=folder:PACS/art_painting \\
        --config.data.known_classes=dog,elephant,giraffe,guitar,horse,house
    python -m resend_jax.evaluate --config configs/eval.py --workdir OUT \\
        --config.checkpoint=models/resend_imagenet --config.preset=PACS_DG --config.data.root=PACS

Sources are spec strings (``resend_jax.data.sources``); several support specs are joined by
commas. Per-method options are ``--config.scores.<method>.<option>`` (e.g. ``knn.k``).
"""

from ml_collections import ConfigDict

from resend_jax.evaluate import scores


def get_config(arg: str | None = None) -> ConfigDict:
    if arg not in (None, "", "smoke"):
        raise ValueError(f"configs/eval.py takes the argument 'smoke' or none, got {arg!r}")
    config = ConfigDict()
    config.checkpoint = ""  # a converted checkpoint or a training workdir (its latest step)
    config.methods = ""  # comma-separated, e.g. "resend,knn"; "" = every method that applies
    config.batch_size = 128  # images per embed step, global (sharded over all devices)
    # JAX CPU devices for the command line (runtime.use_cpu_cores): 0 = one per core, each
    # embedding its share of every batch.
    config.cpu_devices = 0
    config.dtype = ""  # "" = as recorded with the model; "bfloat16" on accelerators
    config.preset = ""  # PACS_DG, OfficeHome_DG, DomainNet_IN_OUT, DTD or fashion_mnist
    config.preset_targets = ""  # comma-separated; "" = every target of the preset

    config.data = ConfigDict()
    config.data.support = ""  # source spec(s), comma-separated: the known classes' images
    config.data.test = ""  # source spec: known and unknown images
    config.data.known_classes = ""  # names or indices; "" = every support class (or the preset's)
    config.data.image_size = 0  # 0 = the size recorded with the checkpoint
    config.data.root = ""  # dataset root for a preset, laid out <root>/<domain>/<class>/<img>
    config.data.data_dir = ""  # TFDS data directory for tfds: specs
    config.data.num_workers = 0  # grain worker processes for decoding
    config.data.skip_corrupt = False

    config.scores = ConfigDict(scores.default_options())
    if arg == "smoke":  # small embed batches, for tests
        config.batch_size = 16
    return config
