"""The batch runner `python -m lucir.study` and the report: one clear line for bad input, skipping
complete pairs, resuming an interrupted sweep, keeping going past a failing notebook, and an HTML
report with every section and figure. The smoke study runs once per session (smoke_study.py)."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import yaml

from lucir import published
from lucir import scheduler
from lucir import study as study_mod
from smoke_study import EXPERIMENTS, REPO, run_study, smoke_study

SMOKE = yaml.safe_load((REPO / "studies" / "smoke.yaml").read_text())
SECTIONS = ["Settings of this study", "Main curves", "Component ablation", "Number of exemplars",
            "Adaptive loss weight", "Confusion matrices", "Norms of old and new class embeddings",
            "Deviations from the paper", "Wall time of every run", "Provenance"]


@pytest.fixture(scope="session")
def study(tmp_path_factory, cache_dir):
    return smoke_study(tmp_path_factory, cache_dir)


def _profile(tmp_path, notebooks: dict, shared: dict | None = None) -> str:
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump({"description": "test", "shared": SMOKE["shared"] if shared is None else shared,
                                    "notebooks": notebooks}))
    return str(path)


def _main(capsys, *argv) -> tuple[int, str, str]:
    rc = study_mod.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


# --------------------------------------------------------------------------- the smoke study
def test_smoke_study_succeeds_and_prints_the_report_path(study):
    proc = study["proc"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = study["reports"] / "report.html"
    assert proc.stdout.strip().splitlines()[-1] == str(html) and html.exists()
    assert "6 notebook runs, 0 complete earlier, 6 to run" in proc.stderr
    for name in EXPERIMENTS:
        assert (study["reports"] / "executed" / f"{name}__synthetic.ipynb").exists()
        assert (study["results"] / "study" / "done" / f"{name}__synthetic.json").exists()
    record = json.loads((study["results"] / "study" / "study.json").read_text())
    assert record["profile"] == "smoke" and {p["status"] for p in record["pairs"]} == {"done"}
    assert record["provenance"]["git"]["commit"] and record["finished"]


def test_report_has_every_section_and_figure(study):
    html = (study["reports"] / "report.html").read_text()
    headings = re.findall(r"<h2[^>]*>(.*?)<", html)
    for section in SECTIONS:
        assert any(h.startswith(section) for h in headings), f"missing section {section}"
    images = re.findall(r"<img[^>]*>", html)
    assert len(images) == len(EXPERIMENTS), "one figure per experiment (one setting each in smoke)"
    assert all('src="data:image/png;base64,' in img for img in images), "figures embedded"
    assert "run_incremental" not in html and "report.section(" not in html, "code is hidden"
    assert not re.search(r'<script[^>]*src="https?://', html), "no external scripts: one self-contained file"
    import nbformat
    executed = nbformat.read(study["reports"] / "executed" / "report.ipynb", as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type in ("error", "stream")], "no errors or warnings in the report"
    assert "This study is reduced from the paper" in html and "<code>num_classes</code> = 8 (paper: all)" in html
    assert "does not come out above iCaRL-CNN" in html or "comes out above iCaRL-CNN" in html
    assert "Eq. 7 direction" in html, "the deviations come from docs/deviations.md"
    assert html.count("51.80") >= 1 and "62.34" in html, "the published Fig. 9 numbers stand beside ours"


def test_rerun_skips_complete_pairs_and_does_not_retrain(study):
    runs = sorted((study["results"] / "runs").glob("*/metrics.json"))
    executed = sorted((study["reports"] / "executed").glob("*__*.ipynb"))
    before = {p: p.stat().st_mtime_ns for p in runs + executed}
    proc = run_study("--profile", "smoke", "--results", str(study["results"]), "--reports", str(study["reports"]),
                     "--cache-dir", study["cache_dir"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "6 complete earlier, 0 to run" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in runs + executed} == before
    record = json.loads((study["results"] / "study" / "study.json").read_text())
    assert {p["status"] for p in record["pairs"]} == {"complete earlier"}
    assert all(p["seconds"] > 0 for p in record["pairs"]), "the report still knows how long each took"


def test_interrupted_sweep_resumes(study, tmp_path):
    """A sweep stopped inside adaptive_weight: its marker and table are missing and one of its runs
    has only its first phases. The rerun runs that notebook alone, resumes the run from its
    checkpoint to the same numbers, and skips everything else."""
    results = tmp_path / "results"
    shutil.copytree(study["results"], results)
    marker = json.loads((results / "study" / "done" / "adaptive_weight__synthetic.json").read_text())
    (results / "study" / "done" / "adaptive_weight__synthetic.json").unlink()
    (results / "tables" / "adaptive_weight" / "synthetic.csv").unlink()
    run = next(p for p in (results / "runs").glob("synthetic-b4-p4-*") if (p / "checkpoints").is_dir())
    finished = json.loads((run / "metrics.json").read_text())
    for t in (3, 4):
        (run / "checkpoints" / f"phase_{t}.pt").unlink()
    truncated = dict(finished, complete=False, phases=finished["phases"][:3])
    (run / "metrics.json").write_text(json.dumps(truncated))
    others = {p: p.stat().st_mtime_ns for p in (results / "runs").glob("*/metrics.json") if p.parent != run}
    proc = run_study("--profile", "smoke", "--results", str(results), "--reports", str(tmp_path / "reports"),
                     "--cache-dir", study["cache_dir"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "5 complete earlier, 1 to run" in proc.stderr
    assert json.loads((results / "study" / "done" / "adaptive_weight__synthetic.json").read_text())[
        "parameters_hash"] == marker["parameters_hash"]
    assert (results / "study" / "done" / "adaptive_weight__synthetic.json").exists()
    assert {p: p.stat().st_mtime_ns for p in others} == others, "no other run was touched"
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed["complete"] and len(resumed["phases"]) == 5
    for a, b in zip(resumed["phases"], finished["phases"]):
        assert np.isclose(a["acc_cnn"], b["acc_cnn"]) and np.isclose(a["acc_nme"], b["acc_nme"])
    assert (tmp_path / "reports" / "report.html").exists()


def test_failing_notebook_is_reported_and_the_others_run(study, tmp_path):
    """Two notebooks need the same two runs (trained once, by two workers with --jobs 2); a third
    parameter set's runs fail at run time on corrupt data. Exit 1, the failed runs listed with the
    notebook that needed them, that notebook marked failed (not executed), the others done, and
    the report marks the failure and the notebooks not run."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "val_jpeg.npz").write_bytes(b"not a zip file")
    profile = _profile(tmp_path, {
        "confusion_matrices": [{"setting": "synthetic", "phases": 1, "seed": 0}],
        "weight_norms": [{"setting": "synthetic", "phases": 1, "seed": 0},
                         {"setting": "broken", "phases": 1, "seed": 0,
                          "config_overrides": {"dataset": "tiny_imagenet", "data_dir": str(broken)}}]})
    results = tmp_path / "results"
    proc = run_study("--profile", profile, "--jobs", "2", "--results", str(results), "--reports",
                     str(tmp_path / "reports"), "--cache-dir", str(tmp_path / "cache"))
    assert proc.returncode == 1
    assert "4 runs to train" in proc.stderr and "2 worker(s)" in proc.stderr
    assert "2 run(s) failed" in proc.stderr and "needed by weight_norms__broken" in proc.stderr
    assert "1 notebook run(s) failed" in proc.stderr
    assert re.search(r"weight_norms__broken: run tiny_imagenet-\S+ failed: DataError: .*corrupt", proc.stderr)
    assert not (tmp_path / "reports" / "executed" / "weight_norms__broken.ipynb").exists(), "not executed"
    assert proc.stdout.strip().splitlines()[-1].endswith("report.html")
    done = {p.stem for p in (results / "study" / "done").glob("*.json")}
    assert done == {"confusion_matrices__synthetic", "weight_norms__synthetic"}
    html = (tmp_path / "reports" / "report.html").read_text()
    assert "Failed" in html and "weight_norms / broken" in html
    assert html.count("Not run") == 4, "main curves, ablation, exemplars, adaptive weight"
    assert len(re.findall(r"<img", html)) == 2


# --------------------------------------------------------------------------- bad input: one line, exit 2
def test_unknown_parameter_is_an_error_that_names_it(tmp_path, capsys):
    profile = _profile(tmp_path, {"main_curves": [{"setting": "x", "phases": [1], "phasez": [2]}]})
    rc, out, err = _main(capsys, "--profile", profile, "--results", str(tmp_path / "r"))
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and "notebook main_curves has no parameter 'phasez'" in err
    assert not (tmp_path / "r").exists(), "nothing ran"


@pytest.mark.parametrize("argv, message", [
    (["--profile", "nosuch"], "unknown profile 'nosuch'; choose one of: full_cpu, paper, paper_cifar, quick, smoke"),
    (["--profile", "smoke", "--only", "main_curve"], "--only: unknown notebook 'main_curve'"),
    (["--profile", "smoke", "--device", "cuda:0"], None),
])
def test_bad_command_line_is_one_clear_line(capsys, tmp_path, argv, message):
    import torch
    if message is None:
        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
        message = "--device: device 'cuda:0' asked for, but CUDA is not available here"
    rc, out, err = _main(capsys, *argv, "--results", str(tmp_path / "r"))
    assert rc == 2 and out == "" and err.count("\n") == 1 and message in err


@pytest.mark.parametrize("notebooks, message", [
    ({"main_curves": [{"setting": "x", "phases": 5}]}, "parameter 'phases' expects list, got 5"),
    ({"main_curves": [{"setting": "x", "phases": [3]}]}, "notebook main_curves, setting x: 3 phases do not divide"),
    ({"main_curves": [{"setting": "x", "config_overrides": {"epoch": 3}}]},
     "unknown config field 'epoch' (did you mean 'epochs'?)"),
    ({"figure_10": [{"setting": "x"}]}, "profile lists unknown notebook 'figure_10'"),
    ({"weight_norms": [{"phases": 1}, {"phases": 1}]}, "two parameter sets named"),
])
def test_bad_profile_is_one_clear_line(capsys, tmp_path, notebooks, message):
    rc, out, err = _main(capsys, "--profile", _profile(tmp_path, notebooks), "--results", str(tmp_path / "r"))
    assert rc == 2 and err.count("\n") == 1 and message in err, err


def test_missing_data_is_caught_before_any_notebook_runs(capsys, tmp_path):
    profile = _profile(tmp_path, {"weight_norms": [{"setting": "x"}]},
                       shared={"dataset": "cifar100", "data_dir": str(tmp_path / "nowhere")})
    rc, out, err = _main(capsys, "--profile", profile, "--results", str(tmp_path / "r"))
    assert rc == 2 and "cifar100 data not found under" in err and "LUCIR_DATA" in err


# --------------------------------------------------------------------------- pieces
def test_marker_hash_ignores_where_and_how_a_pair_runs():
    a = {"setting": "s", "phases": [1], "results_dir": "/a", "config_overrides": {"epochs": 2, "device": "cpu"}}
    b = {"setting": "s", "phases": [1], "results_dir": "/b", "config_overrides": {"epochs": 2, "device": "cuda",
                                                                                  "progress": False}}
    assert study_mod.parameters_hash(a) == study_mod.parameters_hash(b)
    assert study_mod.parameters_hash(a) != study_mod.parameters_hash({**a, "config_overrides": {"epochs": 3}})


def test_every_profile_is_valid_and_quick_fits_the_protocol(tmp_path):
    """Each shipped profile builds its pairs (parameters known, configs valid) without running."""
    for name in ("smoke", "quick", "paper"):
        _, _, content = study_mod.load_profile(name)
        pairs = study_mod.build_pairs(content, tmp_path, None, {})
        assert {p.notebook for p in pairs} == set(EXPERIMENTS)
    _, _, quick = study_mod.load_profile("quick")
    pairs = study_mod.build_pairs(quick, tmp_path, None, {})
    configs = [run.config() for p in pairs for run in p.plan]
    assert {c.dataset for c in configs} == {"cifar100"}
    seeds = {p.notebook: {run.config().seed for run in p.plan} for p in pairs}
    assert seeds.pop("main_curves") == {0, 1} and all(s == {0} for s in seeds.values())  # a spread where it counts
    assert all(c.base_classes * 2 == c.num_classes for c in configs), "half the classes in the base phase"
    # full_cpu: the paper's CIFAR-100 data and protocol; only the schedule (epochs, lr steps) differs
    _, _, full = study_mod.load_profile("full_cpu")
    pairs = study_mod.build_pairs(full, tmp_path, None, {})
    configs = [run.config() for p in pairs for run in p.plan]
    assert {c.phases for c in configs} == {5, 10} and {c.memory_per_class for c in configs} == {20}
    assert all(c.num_classes is None and c.train_per_class is None and c.test_per_class is None for c in configs)
    schedule = {"epochs", "lr_milestones", "base_epochs", "base_lr_milestones", "cbf_epochs", "cbf_lr_milestones"}
    assert all(set(published.setting_differences(c.to_dict())) <= schedule for c in configs)
    _, _, paper = study_mod.load_profile("paper")
    pairs = study_mod.build_pairs(paper, tmp_path, None, {})
    cifar = [run.config() for p in pairs for run in p.plan if run.config().dataset == "cifar100"]
    assert {c.seed for c in cifar} == {0, 1, 2} and all(c.epochs == 160 for c in cifar)
    imagenet = [run.config() for p in pairs for run in p.plan if run.config().dataset.startswith("imagenet")]
    assert imagenet and all(c.lambda_base == 10 and c.epochs == 90 and c.weight_decay == 1e-4 for c in imagenet)


@pytest.mark.parametrize("profile", ["quick", "full_cpu"])
def test_profiles_name_their_runs_as_the_committed_reports_do(profile, tmp_path):
    """Dataset-dependent defaults (ImageNet) leave every CIFAR-100 run's name, so its folder and
    base-phase cache, as it was: the runs of the committed reports are found again."""
    import pandas as pd
    from lucir import experiments
    _, _, content = study_mod.load_profile(profile)
    pairs = study_mod.build_pairs(content, tmp_path, None, {})
    ours = {experiments.run_name(run.config()) for p in pairs for run in p.plan}
    committed = {name.split("/")[-1] for table in (REPO / "reports" / profile / "tables").glob("*.csv")
                 for name in pd.read_csv(table).run_dir}
    assert ours == committed


def test_progress_cost_counts_every_phase():
    from lucir import make_config
    c = make_config("lucir", num_classes=40, base_classes=20, phases=5, train_per_class=100, base_epochs=20, epochs=8)
    cost = scheduler.run_cost(c)
    assert len(cost) == 6 and cost[0] > cost[1] > 0
    joint = scheduler.run_cost(make_config("joint", num_classes=40, base_classes=20, phases=5, train_per_class=100))
    assert joint[-1] > joint[1], "joint training grows with the classes seen"


def test_relative_data_folder_is_made_absolute_for_the_kernels(monkeypatch, tmp_path):
    """Kernels run in notebooks/, so LUCIR_DATA=../data must be resolved where the runner starts."""
    import os
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LUCIR_DATA", "../some/data")
    with pytest.raises(study_mod.StudyError):
        study_mod.run_study("smoke", results=str(tmp_path / "r"), reports=str(tmp_path / "p"), only=["no_such_notebook"])
    assert os.environ["LUCIR_DATA"] == str((tmp_path / "../some/data").resolve())
