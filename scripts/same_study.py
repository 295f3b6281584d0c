"""Did a change of code leave a study's results as they were? Two results folders of one profile
(say `results/quick` of a clone before the change and of one after it, run on one machine)
compared: every CSV under tables/ byte for byte (where the bytes differ: cell for cell, the text of
each cell, less the wall-clock columns that a table may carry, such as the `run_seconds` of tables
written before it moved to runs.csv), every run's metrics.json less its wall-clock fields
(lucir.results.without_clocks), and every tensor and value of each run's final phase checkpoint
(less the seconds in its history).

    python scripts/same_study.py BEFORE/results/quick AFTER/results/quick

Prints one line per table and per run, then the verdict; exits 0 when everything is the same, 1
when anything differs or is missing on one side, 2 on a folder that is not a study's results.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lucir import results as res  # noqa: E402


def same_tensors(a, b) -> bool:
    """Nested dicts and lists of tensors and plain values, equal to the bit (dtype included; a NaN
    equals a NaN, as the accuracy on old classes of phase 0 is)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        bits = lambda t: t.detach().contiguous().reshape(-1).view(torch.uint8)  # noqa: E731
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(bits(a), bits(b)))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and all(
            same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same_tensors(x, y) for x, y in zip(a, b))
    return a == b


CLOCK_COLUMNS = ("run_seconds", "train seconds", "seconds")  # a table's wall-clock columns


def cells_without_clocks(path: Path) -> tuple[list, list]:
    """(the clock columns found, the table's rows as text without them): cell for cell, as written."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    keep = [k for k, name in enumerate(rows[0] if rows else []) if name not in CLOCK_COLUMNS]
    clocks = [name for name in (rows[0] if rows else []) if name in CLOCK_COLUMNS]
    return clocks, [[row[k] for k in keep if k < len(row)] for row in rows]


def final_checkpoint(folder: Path) -> Path | None:
    phases = sorted(folder.glob("checkpoints/phase_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    return phases[-1] if phases else None


def checkpoint_without_clocks(path: Path) -> dict:
    """A phase checkpoint less the wall-clock seconds of each phase in its history."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state["history"] = [{k: v for k, v in h.items() if k != "seconds"} for h in state.get("history", [])]
    return state


def compare_tables(before: Path, after: Path) -> list[tuple[str, bool, str]]:
    names = sorted({p.relative_to(root).as_posix() for root in (before, after) for p in (root / "tables").rglob("*.csv")})
    rows = []
    for name in names:
        a, b = before / name, after / name
        if not (a.exists() and b.exists()):
            rows.append((name, False, f"only in {'the first' if a.exists() else 'the second'} folder"))
        elif a.read_bytes() == b.read_bytes():
            rows.append((name, True, "the same bytes"))
        else:
            (clocks, ca), (_, cb) = cells_without_clocks(a), cells_without_clocks(b)
            same = bool(clocks) and ca == cb
            rows.append((name, same, f"the same cells but the wall-clock column(s) {', '.join(clocks)}" if same
                         else "the bytes differ"))
    return rows


def compare_runs(before: Path, after: Path) -> list[tuple[str, bool, str]]:
    names = sorted({p.parent.name for root in (before, after) for p in (root / "runs").glob("*/metrics.json")})
    rows = []
    for name in names:
        a, b = before / "runs" / name, after / "runs" / name
        if not ((a / "metrics.json").exists() and (b / "metrics.json").exists()):
            rows.append((f"runs/{name}", False, f"only in {'the first' if (a / 'metrics.json').exists() else 'the second'} folder"))
            continue
        ma, mb = (res.without_clocks(res.load_metrics(f)) for f in (a, b))
        if ma != mb:
            fields = sorted(k for k in ma.keys() | mb.keys() if ma.get(k) != mb.get(k))
            rows.append((f"runs/{name}", False, f"metrics differ: {', '.join(fields)}"))
            continue
        ca, cb = final_checkpoint(a), final_checkpoint(b)
        if ca is None or cb is None or ca.name != cb.name:
            rows.append((f"runs/{name}", False, "the final phase checkpoints differ in name or are missing"))
            continue
        same = same_tensors(*(checkpoint_without_clocks(p) for p in (ca, cb)))
        rows.append((f"runs/{name}", same, f"metrics the same; {ca.name} " +
                     ("the same tensors and values (less its history's seconds)" if same else "differs")))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/same_study.py", description=__doc__.split("\n\n")[0])
    p.add_argument("before", type=Path, help="a study's results folder (tables/ and runs/)")
    p.add_argument("after", type=Path, help="another results folder of the same profile")
    args = p.parse_args(argv)
    for folder in (args.before, args.after):
        if not (folder / "tables").is_dir() or not (folder / "runs").is_dir():
            print(f"error: {folder} is not a study's results folder (no tables/ or runs/ in it)", file=sys.stderr)
            return 2
    rows = compare_tables(args.before, args.after) + compare_runs(args.before, args.after)
    for name, same, what in rows:
        print(f"{'same' if same else 'DIFFERS'}  {name}: {what}")
    tables = sum(1 for n, _, _ in rows if n.startswith("tables/"))
    differing = [n for n, same, _ in rows if not same]
    print(f"{'the same' if not differing else 'NOT the same'}: {tables} tables and {len(rows) - tables} runs compared, "
          f"{len(differing)} differ")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
