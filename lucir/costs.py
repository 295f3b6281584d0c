"""The cost model: the work of each phase of a run in image-steps (run_cost), the images/s that
projections assume per device kind and model (lucir/rates.json, which benchmarks/gpu_check.py
writes from a GPU's measurements), and what a run costs in time. It sits below the trainer, which
warns with it before a run lands on a CPU; the scheduler and the study plan with it."""
from __future__ import annotations

import json
from pathlib import Path

from .config import Config, phase_sizes
from .data import DATASET_SIZE
from .memory import exemplars_per_class


def run_cost(config: Config) -> list[float]:
    """Rough work of each phase of a run, in image-epochs (image-steps), for the progress bar's ETA and
    the dry run's projections (docs/performance.md)."""
    n_cls, per_class, test_per_class = DATASET_SIZE.get(config.dataset, (100, 500, 100))
    n_cls = config.num_classes or n_cls
    per, test = config.train_per_class or per_class, config.test_per_class or test_per_class
    costs, seen = [], 0
    for t, size in enumerate(phase_sizes(n_cls, config.base_classes, config.phases)):
        old, seen = seen, seen + size
        mem = exemplars_per_class(max(seen, 1), config.memory_per_class, config.memory_total)
        if t == 0:
            work = size * per * (config.base_epochs or config.epochs)
        else:
            images = seen * per if config.joint_training else size * per + mem * old
            work = images * config.epochs * (1.25 if config.distillation else 1.0)
            work += 0.3 * mem * seen * config.cbf_epochs if config.class_balanced_finetune else 0.0
        costs.append(work + 0.25 * (seen * test + size * per + 2 * mem * seen))
    return costs


# The images/s of one run's training step that projections assume, per device kind ("cpu", "cuda")
# and model, with where they come from; benchmarks/gpu_check.py writes the measured cuda figures.
RATES_FILE = Path(__file__).with_name("rates.json")


def rates(path: Path | None = None) -> dict:
    return json.loads(Path(path or RATES_FILE).read_text())


def projected_seconds(config: Config, kind: str, work: float | None = None, table: dict | None = None) -> float:
    """Seconds to train `work` image-epochs (default: the whole run's run_cost) of `config` on one
    device of `kind` at the rate of lucir/rates.json."""
    table = table or rates()
    return (sum(run_cost(config)) if work is None else work) / table[kind][config.resolved_model]


def duration(seconds: float) -> str:
    hours = seconds / 3600
    return f"{seconds / 60:.0f} min" if hours < 1 else f"{hours:.1f} h" if hours < 48 else f"{hours / 24:,.0f} days"


def cpu_instead_of_gpu(runs: list[tuple[Config, float]]) -> str:
    """What training `runs` ((config, image-epochs) pairs) costs on the CPU against one GPU, one phrase."""
    table = rates()
    cpu, gpu = (sum(projected_seconds(c, kind, work, table) for c, work in runs) for kind in ("cpu", "cuda"))
    return (f"{sum(w for _, w in runs) / 1e6:,.1f} million image-steps take about {duration(cpu)} on a CPU "
            f"against {duration(gpu)} on one GPU (rates in lucir/rates.json; GPU: {table['cuda']['source']})")


def assumed_rate(device: str, model: str) -> tuple[float, str]:
    """(images/s, where the figure comes from) for a run of `model` on `device` (cpu, cuda, cuda:N),
    from lucir/rates.json."""
    entry = rates()["cuda" if device.startswith("cuda") else "cpu"]
    return float(entry[model]), entry["source"]


def sharing(device: str, model: str, table: dict | None = None) -> dict:
    """How runs of `model` best share one device of `device`'s kind, from the K-process figures
    benchmarks/gpu_check.py measured (images/s of K processes training at once, in all, with and
    without NVIDIA's MPS): {"runs": K, "mps": bool, "speedup": total at that K over one process,
    "rate": one run's rate times the speedup, "source": where the figures come from}. Without
    figures, one run at a time."""
    entry = (table or rates())["cuda" if device.startswith("cuda") else "cpu"]
    single = float(entry[model])
    plain = {int(k): float(v) for k, v in entry.get(f"{model}_processes_sharing_one_device", {}).items() if v}
    mps = {int(k): float(v) for k, v in entry.get(f"{model}_processes_sharing_one_device_mps", {}).items() if v}
    best = {"runs": 1, "mps": False, "speedup": 1.0, "rate": single,
            "source": f"{entry['source']}; one run at a time (no K-process figures)"}
    if 1 not in plain:
        return best
    for use_mps, figures in ((False, plain), (True, mps)):
        for k, total in sorted(figures.items()):
            if total / plain[1] > best["speedup"]:
                best = {"runs": k, "mps": use_mps, "speedup": total / plain[1], "rate": single * total / plain[1]}
    best["source"] = (f"{entry['source']}; {best['runs']} run(s) at once{' under MPS' if best['mps'] else ''}, "
                      f"{best['speedup']:.2f}x one run's images/s in all")
    return best
