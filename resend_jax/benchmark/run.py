"""``run(config, workdir)``: every system of the config, trained and scored for every seed.

A system is ``training+score``: ``config.training.<training>`` names a training config (any
trainer of ``resend_jax.train``) and ``score`` a method of ``resend_jax.evaluate.scores``. For
each seed, each training runs once into ``workdir/seed_<s>/<training>/train`` with the shared
``seed``, ``total_steps``, ``batch_size`` (images per step), known classes and training data;
a training whose ``init_from`` names another training starts from that training's run of the
same seed (MODE's finetuning of the ``ce`` run). Every system of a training is then scored on
the same test set:

- ReSeND trainings through ``evaluate.run.evaluate`` with ``config.evaluation`` (support = the
  known classes' training images, test = the test split, the other classes unknown), into
  ``.../eval``;
- MODE trainings (``ce``, ``supcon``, ``joint``...) by their own end-of-training evaluation
  (same support and test), into ``.../train``.

``.../scores.json`` records each training's metrics with the configuration that produced them
(and, for a training with ``init_from``, its source's); a rerun reuses it when the configuration
is unchanged. Otherwise the training resumes from its last checkpoint when its checkpoints come
from the same training configuration (an interrupted run, other scores), and starts anew when
they do not, its old run moved to ``.../superseded/<time>``; with ``only_recorded`` it leaves
that training out instead (to tabulate what is done, e.g. systems run for fewer seeds). After
every training the leaderboard over what is done is rewritten (``leaderboard.write``).
"""

import copy
import datetime
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

from resend_jax.benchmark import leaderboard, transfer
from resend_jax.evaluate import run as evaluate_run
from resend_jax.evaluate import scores as scores_lib
from resend_jax.train import TRAINERS, common, train_and_evaluate

# Training config keys that do not change a run's result, left out of the key a record is compared on.
NOT_RESULTS = ("log_every", "checkpoint_every", "keep_checkpoints", "dry_run_step_s", "dry_run_measure_batch")


def split(spec: str) -> list[str]:
    return [item.strip() for item in spec.split(",") if item.strip()]


def blocks_of(config: ConfigDict) -> dict[str, list[str]]:
    """``{title: rows}``: the main block, the ablation block and one transfer block per shot count."""
    blocks = {"systems": split(config.systems)}
    if split(config.ablation):
        blocks["ablation: post-hoc scores on the ReSeND backbone"] = split(config.ablation)
    if split(config.transfer.systems):
        classes = split(config.transfer.classes)
        known = len(classes) - config.transfer.unknown
        for shots in transfer.shots_of(config):
            title = (
                f"transfer to classes {config.transfer.classes} never trained on, {known} known vs "
                f"{config.transfer.unknown} unknown (mean over the splits), "
                f"{shots or 'all'} support images per class"
            )
            blocks[title] = [transfer.row_name(s, shots) for s in split(config.transfer.systems)]
    return blocks


def _scores_by_training(config: ConfigDict, systems: list[str]) -> dict[str, list[str]]:
    registry = scores_lib.registry()
    trainings: dict[str, list[str]] = {}
    for system in systems:
        training, plus, score = system.partition("+")
        if not plus or training not in config.training:
            raise ValueError(
                f"system {system!r}: expected TRAINING+SCORE with TRAINING one of {sorted(config.training)}"
            )
        if score not in registry:
            raise ValueError(f"system {system!r}: no score {score!r}; scores: {sorted(registry)}")
        if config.training[training].trainer not in TRAINERS:
            raise ValueError(f"config.training.{training}.trainer must be one of {sorted(TRAINERS)}")
        trainings.setdefault(training, [])
        if score not in trainings[training]:
            trainings[training].append(score)
    return trainings


def parse_systems(config: ConfigDict) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """``{training: [scores]}`` of config.systems and ablation, and of config.transfer.systems
    (ReSeND trainings only); bad names raise, naming them."""
    trainings = _scores_by_training(config, split(config.systems) + split(config.ablation))
    if not trainings:
        raise ValueError("config.systems is empty")
    order = list(trainings)
    for position, training in enumerate(order):
        source = config.training[training].get("init_from")
        if source in config.training and source not in order[:position]:
            raise ValueError(
                f"config.training.{training}.init_from = {source!r}: a system of {source!r} must come "
                f"before {training!r}'s in config.systems"
            )
    transferred = _scores_by_training(config, split(config.transfer.systems))
    for training in transferred:
        if config.training[training].trainer != "resend":
            raise ValueError(f"config.transfer.systems: {training!r} is not a ReSeND training")
        trainings.setdefault(training, [])
    return trainings, transferred


def seeds_of(config: ConfigDict) -> list[int]:
    try:
        seeds = [int(s) for s in split(str(config.seeds))]
    except ValueError as e:
        raise ValueError(f"config.seeds must be comma-separated integers, got {config.seeds!r}") from e
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"config.seeds must name distinct seeds, got {config.seeds!r}")
    return seeds


def training_config(
    config: ConfigDict, training: str, seed: int, scores: list[str], workdir: Path
) -> ConfigDict:
    """``config.training.<training>`` with the benchmark's shared settings applied; an
    ``init_from`` that names another training becomes that training's run of the same seed."""
    result = copy.deepcopy(config.training[training])
    if result.get("init_from") in config.training:
        result.init_from = str(workdir / f"seed_{seed}" / result.init_from / "train")
    result.seed = seed
    result.total_steps = config.total_steps
    result.batch_size = config.batch_size
    result.data.known_classes = config.known_classes
    result.data.train = config.data.train
    if result.trainer == "mode":
        result.data.test = config.data.test
        result.eval.methods = ",".join(scores)
        result.eval.support_size = config.data.support_size
        result.eval.test_size = config.data.test_size
    return result


def evaluation_config(config: ConfigDict, checkpoint: Path, scores: list[str]) -> ConfigDict:
    """``config.evaluation`` for a ReSeND checkpoint on the benchmark's support and test sets."""
    result = copy.deepcopy(config.evaluation)
    result.checkpoint = str(checkpoint)
    result.methods = ",".join(scores)
    result.data.support = config.data.train
    result.data.test = config.data.test
    result.data.known_classes = config.known_classes
    result.data.support_size = config.data.support_size
    result.data.test_size = 2 * config.data.test_size
    return result


def set_aside(directory: Path, conflicts: list[str]) -> Path:
    """Moves a training's recorded run (``train``, ``eval``, ``transfer`` and their records) to
    ``directory/superseded/<time>``: it was trained with another configuration, and resuming it
    would mix the two."""
    aside = directory / "superseded" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    aside.mkdir(parents=True)
    for name in ("train", "eval", "transfer", "scores.json", "transfer.json"):
        if (directory / name).exists():
            (directory / name).rename(aside / name)
    print(f"  trained with another configuration ({'; '.join(conflicts)}): moved to {aside}", flush=True)
    return aside


def train_and_score(
    config: ConfigDict,
    training: str,
    seed: int,
    scores: list[str],
    workdir: Path,
    source_key: dict | None = None,
) -> tuple[dict, dict]:
    """``{score: metrics}`` of one training and seed (from ``scores.json`` when it is current;
    None when it is not and ``config.only_recorded``), and the configuration that identifies it.

    ``source_key`` is the key of the training this one starts from (``init_from``): a new
    source makes this training's record stale too. A run whose checkpoints were trained with
    another configuration is set aside (``set_aside``) and trained anew; one that only stopped
    early (or is scored with other methods) resumes.
    """
    directory = workdir / f"seed_{seed}" / training
    train_config = training_config(config, training, seed, scores, workdir)
    evaluation = (
        evaluation_config(config, directory / "train", scores) if train_config.trainer == "resend" else None
    )
    training_key = {k: v for k, v in train_config.to_dict().items() if k not in NOT_RESULTS}
    key = {"training": training_key, "evaluation": evaluation and evaluation.to_dict()}
    if source_key is not None:
        key["source"] = source_key
    key = json.loads(json.dumps(key))
    done = directory / "scores.json"
    recorded = json.loads(done.read_text()) if done.exists() else None
    if recorded and recorded["config"] == key:
        return recorded["metrics"], key
    if config.only_recorded:
        return None, key
    conflicts = common.resume_conflicts(train_config, directory / "train")
    if recorded and source_key is not None and recorded["config"].get("source") != source_key:
        conflicts.append(f"the {train_config.init_from} it starts from")
    if conflicts:
        set_aside(directory, conflicts)
    train_and_evaluate(train_config, str(directory / "train"))
    if not scores:
        metrics = {}
    elif evaluation is not None:
        metrics = evaluate_run.evaluate(evaluation, directory / "eval")
    else:
        metrics = json.loads((directory / "train" / "metrics.json").read_text())
    metrics = {score: metrics[score] for score in scores}
    done.write_text(json.dumps({"config": key, "metrics": metrics}, indent=2) + "\n")
    return metrics, key


def transfer_and_score(
    config: ConfigDict, training: str, seed: int, scores: list[str], workdir: Path, key: dict
):
    """``{row: {"auroc", "fpr95"}}`` of the transfer protocol, from ``transfer.json`` when current."""
    directory = workdir / f"seed_{seed}" / training
    key = json.loads(
        json.dumps(
            {**key, "transfer": config.transfer.to_dict(), "scores": scores, "data": config.data.to_dict()}
        )
    )
    done = directory / "transfer.json"
    if done.exists():
        recorded = json.loads(done.read_text())
        if recorded["config"] == key:
            return recorded["metrics"]
    results = transfer.transfer_scores(config, directory / "train", seed, scores, directory / "transfer")
    metrics = {
        transfer.row_name(f"{training}+{score}", shots): values
        for shots, by_score in results.items()
        for score, values in by_score.items()
    }
    done.write_text(json.dumps({"config": key, "metrics": metrics}, indent=2) + "\n")
    return metrics


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
    ).stdout.strip()


def commit() -> str:
    """The source tree's git commit (``+`` when it has uncommitted changes), or ``unknown``."""
    try:
        changed = _git("status", "--porcelain", "--untracked-files=no")
        return _git("rev-parse", "--short", "HEAD") + ("+" if changed else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run(config: ConfigDict, workdir: str | Path) -> leaderboard.Leaderboard:
    """Trains and scores every system for every seed; writes and returns the leaderboard."""
    workdir = Path(workdir)
    (trainings, transferred), seeds, blocks = parse_systems(config), seeds_of(config), blocks_of(config)
    wanted = [s for block in blocks.values() for s in block]
    setup = {
        "date": datetime.date.today().isoformat(),
        "commit": commit(),
        "seeds": ", ".join(map(str, seeds)),
        "known classes": f"{config.known_classes} of {config.data.train}; unknown: the test split's others",
        "budget": f"{config.total_steps} steps of {config.batch_size} images for every training",
        "trainings": {
            name: config.training[name].get("mode", config.training[name].trainer) for name in trainings
        },
    }
    runs: dict[int, dict[str, Any]] = {}
    board: leaderboard.Leaderboard = {}
    total, count, start = len(seeds) * len(trainings), 0, time.perf_counter()
    for seed in seeds:
        runs[seed], keys = {}, {}
        for training, scores in trainings.items():
            count += 1
            print(
                f"[{count}/{total}] seed {seed}, {training}: {workdir / f'seed_{seed}' / training}",
                flush=True,
            )
            source = config.training[training].get("init_from")
            metrics, keys[training] = train_and_score(
                config,
                training,
                seed,
                scores,
                workdir,
                keys.get(source) if source in config.training else None,
            )
            if metrics is None:
                print("  not recorded (config.only_recorded): left out", flush=True)
                continue
            rows = {f"{training}+{score}": values for score, values in metrics.items()}
            if training in transferred:
                rows.update(
                    transfer_and_score(config, training, seed, transferred[training], workdir, keys[training])
                )
            for system, values in rows.items():
                if system in wanted:
                    runs[seed][system] = values
                    print(
                        f"  {system}: AUROC {100 * values['auroc']:.2f}  FPR95 {100 * values['fpr95']:.2f}",
                        flush=True,
                    )
            runs[seed] = {system: runs[seed][system] for system in wanted if system in runs[seed]}
            board = leaderboard.aggregate(runs)
            leaderboard.write(workdir, board, blocks, setup)
    print(f"\n{leaderboard.markdown(board, blocks)}")
    print(f"{workdir / 'leaderboard.md'}; {time.perf_counter() - start:.0f} s")
    return board
