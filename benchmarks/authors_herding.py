"""Herding: the authors' exemplar selection beside ours, on the authors' own trained models.

    python benchmarks/authors_herding.py [--work results/authors_code] [--run 1] [--out DIR]

Reads what benchmarks/authors_code.py left in WORK: the authors' patched code (WORK/code), the
CIFAR-100 pickles it wrote (WORK/data) and the phase models that the authors' run K saved
(WORK/authors_runK/checkpoint). For each phase it takes the model of that phase and, for the classes
that phase adds (the 50 base classes, then 5 a phase), the features of their 500 training images in
eval mode without augmentation, as the authors' script herds them; then it picks 20 exemplars per
class with both rules and prints, per phase, in how many classes the two sets differ, how many
exemplars they share on average, and how far the mean of each set lies from the class mean (the
quantity herding makes small).
With --out DIR it also writes them to DIR/herding_runK.csv.

The two rules (features l2-normalised, mu their mean): ours (lucir.memory.herding) adds at step k
the sample not yet chosen whose addition brings the mean of the chosen ones closest to mu. The
authors' loop keeps a vector w (mu at first), takes the sample with the largest <w, f>, marks it
chosen unless it already is, and adds mu - f to w either way, until 20 are chosen (at most 1000
steps). While it never meets a chosen sample again the two pick the same samples in the same
order; when it does, that sample counts again in w and the choices part.
"""
from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from authors_code import CKP_PREFIX, SCRIPT, MATCHED  # noqa: E402
from lucir.data import CIFAR_MEAN, CIFAR_STD, normalize  # noqa: E402
from lucir.memory import herding  # noqa: E402

PER_CLASS = 20  # R_per of the matched setting


def authors_rule(f: np.ndarray, m: int, max_steps: int = 1000) -> tuple[list[int], int]:
    """The authors' herding loop as described in the module docstring; returns the chosen indices
    (in the order chosen) and the number of steps it took."""
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    mu = f.mean(0)
    w = mu.copy()
    chosen: list[int] = []
    steps = 0
    while len(chosen) < min(m, len(f)) and steps < max_steps:
        j = int(np.argmax(f @ w))
        steps += 1
        if j not in chosen:
            chosen.append(j)
        w = w + mu - f[j]
    return chosen, steps


def distance_to_mean(f: np.ndarray, chosen) -> float:
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    return float(np.linalg.norm(f.mean(0) - f[list(chosen)].mean(0)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=REPO / "results" / "authors_code")
    ap.add_argument("--run", type=int, default=1, help="which of the authors' runs (default 1)")
    ap.add_argument("--out", type=Path, help="also write herding_runK.csv here")
    a = ap.parse_args(argv)
    ckp = a.work / f"authors_run{a.run}" / "checkpoint"
    if not ckp.is_dir():
        raise SystemExit(f"error: no '{ckp}': run benchmarks/authors_code.py (its authors' run {a.run}) first")
    sys.path.insert(0, str(a.work / "code" / Path(SCRIPT).parent))  # the pickled models name its modules
    torch.set_num_threads(1)
    with open(ckp / "seed_1993_cifar100_order_run_0.pkl", "rb") as fh:
        order = pickle.load(fh)
    with open(a.work / "data" / "cifar-100-python" / "train", "rb") as fh:
        train = pickle.load(fh, encoding="latin1")
    images = torch.from_numpy(train["data"].reshape(-1, 3, 32, 32))
    labels = np.asarray(train["fine_labels"])
    per = MATCHED.per_phase
    first = MATCHED.base_classes // per - 1  # the authors' iteration of the base phase
    rows = []
    print("phase  classes  sets differ  shared (of 20)  extra steps  |mu - mean| authors'  ours")
    for phase in range(MATCHED.phases + 1):
        it = first + phase
        name = ckp / f"{CKP_PREFIX}_nb_cl_fg_{MATCHED.base_classes}_nb_cl_{per}_nb_protos_{PER_CLASS}_run_0_iteration_{it}_model.pth"
        model = torch.load(name, map_location="cpu", weights_only=False).eval()
        features = torch.nn.Sequential(*list(model.children())[:-1])
        positions = range(0, MATCHED.base_classes) if phase == 0 else range(it * per, (it + 1) * per)
        differ, shared, extra, dist_a, dist_o = 0, [], [], [], []
        for pos in positions:
            x = normalize(images[labels == order[pos]], CIFAR_MEAN, CIFAR_STD).contiguous()  # as their loader
            with torch.no_grad():
                f = features(x).flatten(1).double().numpy()
            theirs, steps = authors_rule(f, PER_CLASS)
            ours = herding(torch.from_numpy(f), PER_CLASS)
            differ += set(theirs) != set(ours)
            shared.append(len(set(theirs) & set(ours)))
            extra.append(steps - len(theirs))
            dist_a.append(distance_to_mean(f, theirs))
            dist_o.append(distance_to_mean(f, ours))
        row = dict(phase=phase, classes=len(positions), sets_differ=differ, shared=np.mean(shared),
                   extra_steps=np.mean(extra), dist_authors=np.mean(dist_a), dist_ours=np.mean(dist_o))
        rows.append(row)
        print(f"{phase:5d}  {row['classes']:7d}  {differ:11d}  {row['shared']:14.2f}  {row['extra_steps']:11.2f}  "
              f"{row['dist_authors']:19.4f}  {row['dist_ours']:.4f}", flush=True)
    total = sum(r["classes"] for r in rows)
    print(f"all: {sum(r['sets_differ'] for r in rows)} of {total} classes differ; "
          f"{sum(r['shared'] * r['classes'] for r in rows) / total:.2f} of 20 exemplars shared on average")
    if a.out:
        import csv
        a.out.mkdir(parents=True, exist_ok=True)
        with open(a.out / f"herding_run{a.run}.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
