"""Benchmarks, each timed against PyTorch: model and train with each framework in a process of its own.

    python scripts/bench.py {model,data,train,eval,all} [--json OUT.json] [--quick] [--dtype bfloat16]
                            [--cpu_devices N] [--torch-compile] [--jpeg]

Model and train run a JAX process, then a PyTorch process, for a few rounds, and report the
median of the paired ratios with its extremes (``benchmarks.common.run_rounds``); eval times
both in one process, alternating. ``--torch-compile`` times PyTorch as its best users write it
(``torch.compile``, channels_last, autocast to ``--dtype``) in model and train. Each subcommand
lives in ``scripts/benchmarks/<name>.py`` as ``run(args) -> list[dict]``; this file parses
arguments, runs them and prints one table. Results go into BENCHMARKS.md by hand, with the
command and the machine.
"""

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

# On a GPU, leave PyTorch room beside JAX's preallocated pool.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.4")

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

SUBCOMMANDS = ("model", "data", "train", "eval")


def print_table(rows: list[dict]) -> None:
    if not rows:
        return
    columns = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[_format(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("subcommand", choices=(*SUBCOMMANDS, "all"))
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and sizes (a smoke run)")
    parser.add_argument(
        "--jpeg", action="store_true", help="data: the host's JPEG work per core, host-only vs split pipeline"
    )
    parser.add_argument(
        "--torch-compile",
        action="store_true",
        help="model, train: PyTorch with torch.compile, channels_last and autocast to --dtype "
        "(default: the eager float32 reference); compilation is reported as compile_s",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="JAX's compute dtype (parameters stay float32); PyTorch's too with --torch-compile",
    )
    parser.add_argument(
        "--cpu_devices",
        type=int,
        default=0,
        help="JAX CPU devices (runtime.use_cpu_cores; 0: one per core); the model benchmark "
        "times JAX on one device and data-parallel over all of them, eval and train use all",
    )
    args = parser.parse_args()
    if args.torch_compile and args.subcommand in ("eval", "all"):
        parser.error("--torch-compile applies to model and train (eval times the reference's eager loop)")
    from resend_jax.runtime import use_cpu_cores

    use_cpu_cores(args.cpu_devices)
    import jax
    from benchmarks.common import ChildFailed, TorchMode, machine

    precision = jax.config.jax_default_matmul_precision or "default"
    torch_mode = TorchMode(args.torch_compile, args.dtype).describe()
    header = f"{machine()}; JAX in {args.dtype} (matmul precision {precision}), {torch_mode}"
    print(header)
    names = SUBCOMMANDS if args.subcommand == "all" else (args.subcommand,)
    rows = []
    for name in names:
        try:
            module_rows = importlib.import_module(f"benchmarks.{name}").run(args)
        except ChildFailed as error:
            sys.exit(f"bench.py {name}: {error}")
        print(f"\n## {name}")
        print_table(module_rows)
        rows += [{"benchmark": name, **row} for row in module_rows]
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": header, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
