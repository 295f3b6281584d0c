"""The GPU command (benchmarks/gpu_check.py) on the GPU machine's image, simulated on the CPU
(issue 31): a venv with exactly the image's packages (tests/gpu_image.py: torch 2.11, torchvision
0.26, no IPython, Jupyter, papermill, Ray, Submitit or Selenium; the project not installed) runs
`benchmarks/gpu_check.py --tiny` from the work tree without PYTHONPATH, as the GPU machine will
run it without --tiny: the tests marked cuda collected (and skipped: no GPU), every figure, the
paper-shaped timing and its projection, the table, the rates, all flat in --out. Then the figures
are landed into copies of lucir/rates.json and docs/performance.md."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lucir import make_config, scheduler
from smoke_study import REPO

import gpu_image

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402
import paper_timing  # noqa: E402


@pytest.fixture(scope="module")
def image_python() -> Path:
    return gpu_image.image_python()


@pytest.fixture(scope="module")
def tiny_check(image_python, tmp_path_factory):
    """(the completed gpu_check --tiny on the simulated image, its --out folder, the committed rates before)."""
    out = tmp_path_factory.mktemp("gpu_check_out")
    committed = scheduler.RATES_FILE.read_text()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run([str(image_python), "benchmarks/gpu_check.py", "--tiny", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    return done, out, committed


def test_the_simulated_image_has_exactly_its_packages(image_python):
    probe = textwrap.dedent(f"""
        import importlib.util, torch, torchvision
        print(torch.__version__.split("+")[0], torchvision.__version__.split("+")[0])
        print(sorted(m for m in {gpu_image.NOT_ON_IMAGE!r} if importlib.util.find_spec(m)))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(image_python), "-c", probe], cwd="/", env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["2.11.0 0.26.0", "[]"]


def test_gpu_command_runs_on_the_image_and_writes_every_figure_flat_into_out(tiny_check):
    done, out, committed = tiny_check
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert scheduler.RATES_FILE.read_text() == committed  # the committed rates are never touched

    written = sorted(p.name for p in out.iterdir())
    assert all((out / name).is_file() for name in written) and len(written) <= 8  # what comes back from $OUT
    assert written == sorted(gpu_check.OUTPUT_FILES)

    report = json.loads((out / "gpu_check.json").read_text())
    assert report["mode"] == "tiny" and report["tests"]["returncode"] == 0
    # the cuda tests were collected (no collection error: "error" would be in the summary) and skipped here
    n_cuda = sum(f.read_text().count("\ndef test_") for f in gpu_check.cuda_test_files())
    assert gpu_check.cuda_test_files() == [REPO / "tests" / "test_cuda.py"]
    assert report["tests"]["summary"].startswith(f"{n_cuda + 1} skipped")  # +1: one test runs for 2 workers
    log = (out / "tests.log").read_text()
    assert "needs a CUDA GPU" in log and "error" not in log.lower()

    figures = {(f["what"], f["setting"]): f for f in report["figures"]}
    missing = [k for k, f in figures.items() if f["images_per_s"] is None and "fp16" not in k[1]
               and k[0] != gpu_check.SHARED_MPS]
    assert missing == []  # every figure measured, except fp16 and MPS (CUDA only)
    [mps] = [f for k, f in figures.items() if k[0] == gpu_check.SHARED_MPS]
    assert mps["setting"] == "K = 2" and mps["note"] == "not measured: MPS is for CUDA GPUs"
    assert all(f["images_per_s"] > 0 for f in figures.values() if f["images_per_s"] is not None)
    settings = {s for _, s in figures}
    for setting in ("base step, fp32", "base step, bf16 autocast", "base step, fp32, compiled (eager)",
                    "LUCIR incremental step (old model, Eq. 9), fp32", "K = 1", "K = 2", "fp32",
                    "2 epochs a phase, fp32", "100x75 px JPEGs, 0 workers", "100x75 px JPEGs, 1 workers",
                    "base step, fp32, fused SGD (fused_sgd=true)",  # each speed switch on, beside all off
                    "base step, fp32, compiled (eager), compile_mode=reduce-overhead (CUDA graphs)"):
        assert setting in settings, setting
    assert figures[next(k for k in figures if k[1] == "base step, fp16 autocast")]["note"].startswith("amp=fp16")

    table = (out / "gpu_check.md").read_text()
    assert table.startswith("# GPU check: CPU") and "| what | setting | images/s |" in table
    assert len([line for line in table.splitlines() if line.startswith("| ")]) == len(figures) + 1
    assert (out / "gpu_check.log").read_text().startswith("gpu_check (tiny)")

    rates = json.loads((out / "rates.json").read_text())
    step = figures[next(k for k in figures if k[1] == "base step, fp32")]["images_per_s"]
    assert rates["cpu"]["resnet32"] == float(f"{step:.3g}") and rates["cpu"]["resnet18"] > 0
    assert set(rates["cpu"]["resnet32_processes_sharing_one_device"]) == {"1", "2"}
    assert rates["cpu"]["resnet32_processes_sharing_one_device_mps"] == {}  # not measured on a CPU
    assert "measured on CPU" in rates["cpu"]["source"] and "--tiny" in rates["cpu"]["source"]
    assert rates["cuda"] == json.loads(committed)["cuda"]  # the other kind is kept
    config = make_config("lucir")  # the projections read such a file
    assert scheduler.projected_seconds(config, "cpu", table=rates) == \
        sum(scheduler.run_cost(config)) / rates["cpu"]["resnet32"]


def test_the_paper_shaped_timing_ran_the_phases_and_printed_its_projection(tiny_check):
    done, out, _ = tiny_check
    paper = json.loads((out / "gpu_check.json").read_text())["paper"]
    projection = paper["projection"]
    assert [p["phase"] for p in projection["phases"]] == [0, 1, 2]  # base + 2 incremental phases (tiny shapes)
    assert projection["timed_epochs"] == 2 and projection["paper_epochs"] == 160
    assert projection["projected_alone_s"] > projection["timed_seconds"] > 0
    assert set(projection["projected_K_runs_s"]) == {"1", "2"}
    assert len(paper["acc_cnn"]) == 3
    for line in paper["lines"]:
        assert line in done.stdout and f"- {line}" in (out / "gpu_check.md").read_text()
    assert "-> one paper run alone" in done.stdout and "2 runs sharing the device" in done.stdout


def test_the_returned_figures_land_in_the_rates_and_the_performance_page(tiny_check, tmp_path):
    _, out, committed = tiny_check
    rates_file, page = tmp_path / "rates.json", tmp_path / "performance.md"
    rates_file.write_text(committed)
    page.write_text("# Performance\n\nsome text\n")
    assert gpu_check.land(out, rates_file, page) == "cpu"
    landed = json.loads(rates_file.read_text())
    assert landed["cpu"] == json.loads((out / "rates.json").read_text())["cpu"]
    assert landed["cuda"] == json.loads(committed)["cuda"]
    first = page.read_text()
    assert first.startswith("# Performance\n\nsome text\n\n" + gpu_check.BEGIN) and first.endswith(gpu_check.END + "\n")
    assert "| what | setting | images/s |" in first and "## The paper's CIFAR-100 run" in first
    gpu_check.land(out, rates_file, page)  # again: the section is replaced, not added twice
    assert page.read_text() == first
    with pytest.raises(SystemExit, match="--tiny"):  # a CPU's tiny figures never reach the committed rates
        gpu_check.land(out)


def test_the_core_and_the_cuda_tests_import_without_the_notebook_stack():
    """What the image lacks, made unimportable: every lucir module imports, and the cuda tests collect."""
    blocked = ("IPython", "ipykernel", "nbformat", "nbconvert", "papermill", "ray", "submitit", "selenium")
    script = textwrap.dedent(f"""
        import importlib, pkgutil, sys
        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {blocked!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (not on the GPU image)")
        sys.meta_path.insert(0, Blocker())
        import lucir, pytest
        for m in pkgutil.walk_packages(lucir.__path__, "lucir."):
            if not m.name.endswith("__main__"):
                importlib.import_module(m.name)
        sys.exit(pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *sys.argv[1:]]))
    """)
    files = [str(f) for f in gpu_check.cuda_test_files()]
    done = subprocess.run([sys.executable, "-c", script, *files], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    n_cuda = sum(Path(f).read_text().count("\ndef test_") for f in files) + 1  # one test runs for 2 workers
    assert f"{n_cuda} tests collected" in done.stdout


def test_the_projection_scales_the_steady_epochs_and_keeps_the_rest():
    timed, paper = paper_timing.timed_config(4, tiny=True, device="cpu")
    assert (timed.epochs, paper.epochs, timed.lr_milestones) == (4, 160, (2, 3))
    # phase 0: epochs end at 10, 12, 14, 16 s (steady 2 s); phase 1: at 30, 31, 32, 33 (steady 1 s)
    timing = {"stages": {"phase 0 (base, 2 classes)": [10.0, 12.0, 14.0, 16.0],
                         "phase 1 (2+2 classes)": [30.0, 31.0, 32.0, 33.0]},
              "phase_seconds": [11.0, 7.0], "seconds": 20.0}
    p = paper_timing.project(timing, timed, paper, {1: 100.0, 2: 150.0})
    assert [q["rest_measured"] for q in p["phases"]] == [11.0 - 8.0, 7.0 - 4.0]
    assert [q["projected"] for q in p["phases"]] == [3.0 + 320.0, 3.0 + 160.0]
    assert p["outside_phases_measured"] == 2.0 and p["projected_alone_s"] == 323.0 + 163.0 + 2.0
    assert p["projected_K_runs_s"] == {1: 488.0, 2: 488.0 * 2 * 100.0 / 150.0}
    with pytest.raises(ValueError, match="needs 2 or more"):
        paper_timing.project(timing | {"stages": {"phase 0 (base)": [1.0]}}, timed, paper)
