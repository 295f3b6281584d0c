"""Command line: python -m lucir run --preset NAME [--set field=value ...] --out DIR"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from .config import PRESETS, ConfigError, dataset_defaults, field_help, make_config


def _fields_text(preset: str = "lucir", dataset: str | None = None) -> str:
    lines = ["config fields (--set NAME=VALUE; default, meaning):"]
    own = dataset_defaults(preset, dataset) if dataset else {}
    if own:
        shown = [f"{k} = {v!r}" for k, v in own.items()] + ["model = None (resnet18)"]
        lines = [f"with --preset {preset} and dataset={dataset}, these defaults differ from CIFAR-100's:",
                 textwrap.indent(textwrap.fill(", ".join(shown), 76), "  "), ""] + lines
    for name, default, meaning in field_help():
        lines.append(f"  {name} = {default}")
        lines.append(textwrap.indent(textwrap.fill(meaning, 76), "      "))
    lines.append("presets: " + ", ".join(PRESETS))
    return "\n".join(lines)


def build_parser(preset: str = "lucir", dataset: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lucir", description="LUCIR class-incremental learning")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run (or resume) one class-incremental sequence",
                         formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_fields_text(preset, dataset))
    run.add_argument("--preset", default="lucir", help="method preset: " + ", ".join(PRESETS))
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                     help="override a config field (repeatable)")
    run.add_argument("--out", required=True, help="output folder (resumed if it holds a run)")
    return parser


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects FIELD=VALUE, got '{item}'")
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out


def _preset_and_dataset(argv: list[str]) -> tuple[str, str | None]:
    """The --preset and --set dataset=... of a command line, so that --help shows that dataset's defaults."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="lucir")
    pre.add_argument("--set", dest="overrides", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    sets = dict(item.split("=", 1) for item in known.overrides if "=" in item)
    return known.preset, sets.get("dataset", "").strip() or None


def say_where_it_stands(config, out) -> None:
    """One line before a run goes on in a folder that holds some of it: how far it got (phase and
    epoch of its newest checkpoint), or that it is complete and nothing is trained. A new folder
    is left alone; in one the trainer has written, its own first checks come first, reading only
    (the same config, the final checkpoint of a complete run), so that a folder it refuses is
    still one line of error and nothing else."""
    from . import results as res
    from .trainer import base_partial_path, base_phase_file
    if not (Path(out) / "config.json").exists():
        return
    res.check_out_dir(Path(out), config)
    res.check_final_checkpoint(out)
    base = base_phase_file(config)
    state = res.describe_state(out, config, None if base is None else base_partial_path(base))
    if state == "complete":
        print(f"{out}: complete; its results are read, nothing is trained", file=sys.stderr)
    elif state != "not started":
        print(f"{out}: {state}; resuming from its newest checkpoint", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(*_preset_and_dataset(argv)).parse_args(argv)
    import contextlib

    from . import distributed
    from .data import DataError
    from .results import run_lock
    from .results import Locked, WriteError
    from .trainer import TrainingDiverged, run_incremental
    try:
        config = make_config(args.preset, **parse_overrides(args.overrides))
        # the study's run lock, not waited for: a second writer of this --out stops at once
        # (under torchrun rank 0 holds it for every rank)
        lock = run_lock(args.out, wait=False) if distributed.rank_from_env() == 0 else contextlib.nullcontext()
        with lock:
            if distributed.rank_from_env() == 0:
                say_where_it_stands(config, args.out)
            metrics = run_incremental(config, args.out)
    except Locked as e:
        print(f"error: '{args.out}' is being written by another run ({e}); wait for it to end, "
              f"or use another --out", file=sys.stderr)
        return 1
    except (ConfigError, DataError, TrainingDiverged, WriteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    except KeyboardInterrupt:
        print(f"interrupted; finished phases are kept in {args.out}/checkpoints and the same "
              f"command resumes", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()  # under torchrun; nothing to do otherwise
    if distributed.rank_from_env() == 0:
        print(f"average incremental accuracy: CNN {metrics['avg_incremental_accuracy_cnn']:.4f}, "
              f"NME {metrics['avg_incremental_accuracy_nme']:.4f}; results in {args.out}")
    return 0
