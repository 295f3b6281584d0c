"""Two runs at once on a CPU: one thread each, or one run with every core? Prints its figures.

    LUCIR_DATA=/path/to/data python benchmarks/threads.py [--seconds 60] [--rounds 2]

Each layout runs the real LUCIR incremental step (lucir.trainer.train_epochs on real CIFAR-100
batches: augmentation, the frozen old model's forward, the losses of Eq. 9, the SGD step) in worker
processes that start together and each train for the same stretch of wall time:

- `1 x all`: one process with every core as torch threads (what `--jobs 1` does);
- `N x 1`:   N processes at once, one thread each (N = the cores);
- `2 x all`: two processes at once, each with every core (what `--jobs 2` does on a CPU: the slots
  share the cores rather than split them, lucir.local_executor.local_slots).

The figure of a layout is the images/s of all its processes together. The layouts take turns
(`--rounds` times each), so that a change in the machine's load shows up as a spread between
rounds rather than as a difference between layouts. A CPU run's numbers depend on its thread count
(the order of the sums in its convolutions), so the layout chosen for a run is part of its record
(the study's runs.csv names its threads).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def worker(threads: int, start_at: float, seconds: float, data_dir: str) -> None:
    """Train the LUCIR incremental step from `start_at` for `seconds`; print images/s as JSON."""
    import torch
    torch.set_num_threads(threads)
    from throughput import incremental_model  # benchmarks/, this script's folder

    from lucir import make_config
    from lucir.data import load_dataset
    from lucir.trainer import Stage, train_epochs

    torch.manual_seed(0)
    cfg = make_config("lucir", data_dir=data_dir, progress=False, device="cpu")
    data = load_dataset(cfg)
    model, old, params = incremental_model(torch.device("cpu"))  # B50 + 5 phases: 50 old classes, 10 new
    idx = torch.nonzero(data.train_labels < 60).flatten()
    gen = torch.Generator().manual_seed(0)
    chunk = idx[: 4 * cfg.batch_size]  # four batches per call, so the clock is read often
    stage = Stage("bench", epochs=1, lr=0.1, n_old=50, lam=5.0)
    train = lambda: train_epochs(model, old, data, chunk, params, stage, cfg, torch.device("cpu"), gen)  # noqa: E731
    train()  # warm-up
    time.sleep(max(0.0, start_at - time.time()))
    tic, images = time.perf_counter(), 0
    while time.perf_counter() - tic < seconds:
        train()
        images += len(chunk)
    print(json.dumps({"threads": threads, "images_per_s": images / (time.perf_counter() - tic)}))


def layout(processes: int, threads: int, seconds: float, data_dir: str) -> float:
    """images/s of `processes` workers of `threads` threads each, started together."""
    start_at = time.time() + 30  # every worker has loaded the data and warmed up by then
    cmd = [sys.executable, __file__, "--worker", "--seconds", str(seconds), "--data", data_dir,
           "--start-at", str(start_at)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    procs = [subprocess.Popen(cmd + ["--threads", str(threads)], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(processes)]
    rates = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"a worker of the {processes} x {threads} layout failed (exit {p.returncode})")
        rates.append(json.loads(out.strip().splitlines()[-1])["images_per_s"])
    return sum(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="timed wall time of each layout")
    ap.add_argument("--rounds", type=int, default=2, help="turns of every layout")
    ap.add_argument("--data", default=os.environ.get("LUCIR_DATA", "../shared/data"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.threads, args.start_at, args.seconds, args.data)
        return
    from lucir.local_executor import cpu_threads
    cores = cpu_threads()
    layouts = {f"1 x {cores}": (1, cores), f"{cores} x 1": (cores, 1), f"2 x {cores}": (2, cores)}
    rates: dict[str, list[float]] = {name: [] for name in layouts}
    print(f"{cores} cores; real LUCIR incremental step (B50 + 5 shapes, batch 128), {args.seconds:.0f} s a layout, "
          f"{args.rounds} rounds in turns")
    for r in range(args.rounds):
        for name, (procs, threads) in layouts.items():
            rates[name].append(layout(procs, threads, args.seconds, args.data))
            print(f"  round {r + 1}, {name:>7} (processes x threads): {rates[name][-1]:6.0f} images/s in all", flush=True)
    best = max(rates, key=lambda n: sum(rates[n]) / len(rates[n]))
    for name, values in rates.items():
        print(f"{name:>7}: mean {sum(values) / len(values):6.0f} images/s  (rounds: "
              f"{', '.join(f'{v:.0f}' for v in values)})")
    print(f"fastest layout: {best} (processes x threads)")


if __name__ == "__main__":
    main()
