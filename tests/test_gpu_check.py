"""benchmarks/gpu_check.py --tiny on the CPU: every part of the GPU check runs (the tests marked
cuda, skipped here; each figure; the table; the rates), so the script cannot rot."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from lucir import make_config, scheduler
from smoke_study import REPO


def test_gpu_check_tiny_writes_its_table_and_rates_without_touching_the_committed_ones(tmp_path):
    committed = scheduler.RATES_FILE.read_text()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "benchmarks")]))
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--tiny", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert scheduler.RATES_FILE.read_text() == committed

    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["mode"] == "tiny" and report["tests"]["returncode"] in (0, 5)
    assert "skipped" in report["tests"]["summary"] or "deselected" in report["tests"]["summary"]
    figures = {(f["what"], f["setting"]): f for f in report["figures"]}
    measured = [k for k, f in figures.items() if f["images_per_s"] is not None]
    assert all(figures[k]["images_per_s"] > 0 for k in measured)
    settings = {s for _, s in figures}
    for setting in ("base step, fp32", "base step, bf16 autocast", "base step, fp32, compiled (eager)",
                    "LUCIR incremental step (old model, Eq. 9), fp32", "K = 1", "K = 2", "fp32"):
        assert setting in settings and figures[next(k for k in figures if k[1] == setting)]["images_per_s"], setting
    assert figures[next(k for k in figures if k[1] == "base step, fp16 autocast")]["note"].startswith("amp=fp16")
    assert [k for k in figures if "workers" in k[1] and figures[k]["images_per_s"]] != []

    table = (tmp_path / "gpu_check.md").read_text()
    assert table.startswith("# GPU check: CPU") and "| what | setting | images/s |" in table
    assert len([line for line in table.splitlines() if line.startswith("| ")]) == len(figures) + 1

    rates = json.loads((tmp_path / "rates.json").read_text())
    step = figures[next(k for k in figures if k[1] == "base step, fp32")]["images_per_s"]
    assert rates["cpu"]["resnet32"] == float(f"{step:.3g}") and rates["cpu"]["resnet18"] > 0
    assert set(rates["cpu"]["resnet32_processes_sharing_one_device"]) == {"1", "2"}
    assert "measured on CPU" in rates["cpu"]["source"] and "--tiny" in rates["cpu"]["source"]
    assert rates["cuda"] == json.loads(committed)["cuda"]  # the other kind is kept
    # the projections read such a file
    config = make_config("lucir")
    assert scheduler.projected_seconds(config, "cpu", table=rates) == \
        sum(scheduler.run_cost(config)) / rates["cpu"]["resnet32"]
