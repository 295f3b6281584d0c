"""The batch runner `python -m lucir.study` and the report: one clear line for bad input, skipping
complete pairs, resuming an interrupted sweep, keeping going past a failing notebook, and an HTML
report with every section and figure. The smoke study runs once per session (smoke_study.py)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lucir import notebook_runner, published, scheduler, study_data
from lucir import study as study_mod
from smoke_study import EXPERIMENTS, REPO, fresh_clone, run_study, smoke_study

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
    assert "KeyboardInterrupt" not in proc.stderr, "the kernels' shutdown is not reported as an error"
    for name in EXPERIMENTS:
        assert (study["reports"] / "executed" / f"{name}__synthetic.ipynb").exists()
        assert (study["results"] / "study" / "done" / f"{name}__synthetic.json").exists()
    record = json.loads((study["results"] / "study" / "study.json").read_text())
    assert record["profile"] == "smoke" and {p["status"] for p in record["pairs"]} == {"done"}
    assert record["provenance"]["git"]["commit"] and record["finished"]
    assert record["profile_path"] == "studies/smoke.yaml"  # relative to the repository, not this machine
    assert "studies/smoke.yaml" in (study["reports"] / "report.html").read_text()


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
    complete = len({p.parent for p in runs})
    assert complete >= 6 and f"0 runs to train ({complete} complete earlier;" in proc.stderr  # not "0 complete"
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


# --------------------------------------------------------------------------- adding a figure
def _example(path: str) -> str:
    """The code of docs/study.md's worked example ("Adding a figure") that it gives for `path`."""
    text = (REPO / "docs" / "study.md").read_text()
    return text.split(f"<!-- example: {path} -->\n```python\n", 1)[1].split("\n```", 1)[0] + "\n"


def _percent_notebook(source: str):
    """A notebook from cells in jupytext's percent format (`# %%`, `# %% [markdown]`, `tags=["parameters"]`)."""
    import nbformat
    cells = []
    for chunk in re.split(r"^# %%", source, flags=re.M)[1:]:
        header, _, body = chunk.partition("\n")
        if "[markdown]" in header:
            cells.append(nbformat.v4.new_markdown_cell("\n".join(line[2:] for line in body.strip().splitlines())))
        else:
            cells.append(nbformat.v4.new_code_cell(body.strip()))
            if "parameters" in header:
                cells[-1].metadata["tags"] = ["parameters"]
    like = nbformat.read(REPO / "notebooks" / "weight_norms.ipynb", as_version=4)
    return nbformat.v4.new_notebook(cells=cells, metadata=like.metadata)


def test_a_new_figure_is_one_module_one_notebook_and_one_line(tmp_path, cache_dir):
    """docs/study.md's worked example, added to a copy of the repository (its module, its notebook,
    its name in the registry) runs through the study beside the main curves: the two share their
    runs, its table is written, and the report shows its section, claim and check."""
    import nbformat
    clone = fresh_clone(tmp_path / "clone")
    (clone / "lucir" / "figures" / "old_and_new.py").write_text(_example("lucir/figures/old_and_new.py"))
    nbformat.write(_percent_notebook(_example("notebooks/old_and_new.ipynb")), clone / "notebooks" / "old_and_new.ipynb")
    registry = clone / "lucir" / "figures" / "__init__.py"
    assert registry.read_text().count('"weight_norms")') == 1
    registry.write_text(registry.read_text().replace('"weight_norms")', '"weight_norms", "old_and_new")'))
    profile = _profile(tmp_path, {"main_curves": [{"setting": "synthetic", "phases": [1], "joint_phases": [],
                                                   "seeds": [0]}],
                                  "old_and_new": [{"setting": "synthetic"}]})
    results, reports = tmp_path / "results", tmp_path / "reports"
    proc = run_study("--profile", profile, "--results", str(results), "--reports", str(reports),
                     "--cache-dir", cache_dir, cwd=clone)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 notebook runs" in proc.stderr and "2 runs to train" in proc.stderr, "its runs are the main curves'"
    table = pd.read_csv(results / "tables" / "old_and_new" / "synthetic.csv")
    assert set(table.experiment) == {"old_and_new"} and {"acc_old", "acc_new"} <= set(table.metric)
    executed = nbformat.read(reports / "executed" / "old_and_new__synthetic.ipynb", as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 1, "its plot, drawn inline"
    html = (reports / "report.html").read_text()
    headings = re.findall(r"<h2[^>]*>(.*?)<", html)
    assert "Old and new classes after the last phase (example)" in headings
    assert "rebalancing keeps more of the old ones" in html, "its claim above its section"
    claims = pd.read_csv(reports / "claims.csv")
    assert "LUCIR-CNN keeps more of the old classes than iCaRL-CNN" in set(
        claims[claims.figure == "Old and new classes (example)"].check)


# --------------------------------------------------------------------------- bad input: one line, exit 2
def test_unknown_parameter_is_an_error_that_names_it(tmp_path, capsys):
    profile = _profile(tmp_path, {"main_curves": [{"setting": "x", "phases": [1], "phasez": [2]}]})
    rc, out, err = _main(capsys, "--profile", profile, "--results", str(tmp_path / "r"))
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and "notebook main_curves has no parameter 'phasez'" in err
    assert not (tmp_path / "r").exists(), "nothing ran"


@pytest.mark.parametrize("argv, message", [
    (["--profile", "nosuch"], "unknown profile 'nosuch'; choose one of: full_cpu, paper, paper_cifar, paper_cifar_10phases, paper_cifar_fig9, paper_cifar_gpu, paper_cifar_icarl, paper_cifar_icarl_10phases, quick, smoke"),
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
    assert notebook_runner.parameters_hash(a) == notebook_runner.parameters_hash(b)
    assert notebook_runner.parameters_hash(a) != notebook_runner.parameters_hash({**a, "config_overrides": {"epochs": 3}})
    # the profile's name: its shared config is in config_overrides already
    assert notebook_runner.parameters_hash(a) == notebook_runner.parameters_hash({**a, "profile": "smoke"})


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
    assert {c.phases for c in configs} == {1, 5, 10} and {c.memory_per_class for c in configs} == {5, 20}
    assert {p.notebook for p in pairs} == set(EXPERIMENTS)  # every figure of the study at full data
    assert all(c.num_classes is None and c.train_per_class is None and c.test_per_class is None for c in configs)
    schedule = {"epochs", "lr_milestones", "base_epochs", "base_lr_milestones", "cbf_epochs", "cbf_lr_milestones"}
    assert all(set(published.setting_differences(c.to_dict())) <= schedule for c in configs)
    _, _, paper = study_mod.load_profile("paper")
    pairs = study_mod.build_pairs(paper, tmp_path, None, {})
    cifar = [run.config() for p in pairs for run in p.plan if run.config().dataset == "cifar100"]
    assert {c.seed for c in cifar} == {0, 1, 2} and all(c.epochs == 160 for c in cifar)
    imagenet = [run.config() for p in pairs for run in p.plan if run.config().dataset.startswith("imagenet")]
    assert imagenet and all(c.lambda_base == 10 and c.epochs == 90 and c.weight_decay == 1e-4 for c in imagenet)


@pytest.mark.parametrize("profile", ["quick", "full_cpu", "paper_cifar", "paper_cifar_10phases", "paper_cifar_fig9"])
def test_profiles_name_their_runs_as_the_committed_reports_do(profile, tmp_path):
    """Dataset-dependent defaults (ImageNet) leave every CIFAR-100 run's name, so its folder and
    base-phase cache, as it was: the profile plans exactly the runs of its committed report."""
    import pandas as pd
    from lucir import experiments
    _, _, content = study_mod.load_profile(profile)
    pairs = study_mod.build_pairs(content, tmp_path, None, {})
    ours = {experiments.run_name(run.config()) for p in pairs for run in p.plan}
    committed = {name.split("/")[-1] for table in (REPO / "reports" / profile / "tables").glob("*.csv")
                 for name in pd.read_csv(table).run_dir}
    assert committed and committed == ours, (sorted(committed - ours), sorted(ours - committed))


@pytest.mark.parametrize("profile, phases, run", [("paper_cifar_icarl", 5, "cifar100-b50-p5-s0-85e71f264de8"),
                                                   ("paper_cifar_icarl_10phases", 10, "cifar100-b50-p10-s0-b6fa747fed45")])
def test_paper_cifar_icarl_cells_are_the_papers_sharing_fig9s_icarl_base_phase(tmp_path, profile, phases, run):
    """paper_cifar_icarl (B50 + 5) and paper_cifar_icarl_10phases (B50 + 10) each plan one run,
    iCaRL at every default (the paper's setting, so the run folder docs/resume.md names), whose
    base phase is the cached one of paper_cifar_fig9's iCaRL run."""
    from lucir import experiments
    from lucir.scheduler import base_phase_file
    plans = {}
    for name in (profile, "paper_cifar_fig9"):
        _, _, content = study_mod.load_profile(name)
        configs = [run.config() for p in study_mod.build_pairs(content, tmp_path, None, {}) for run in p.plan]
        plans[name] = list({experiments.run_name(c): c for c in configs}.values())  # a run once, however many notebooks
    (cell,) = plans[profile]
    assert cell.phases == phases and cell.seed == 0 and not cell.cosine_normalization and cell.distillation
    assert not published.setting_differences(cell.to_dict())
    name = experiments.run_name(cell)
    assert name == run and name in (REPO / "docs" / "resume.md").read_text()
    icarl_fig9 = [c for c in plans["paper_cifar_fig9"] if not c.cosine_normalization]
    assert len(icarl_fig9) == 1 and base_phase_file(icarl_fig9[0]).name == base_phase_file(cell).name


PAPER_ONE_RUN = ["--profile", "paper", "--select", "dataset=cifar100", "--select", "method=lucir",
                 "--select", "phases=5", "--select", "seed=0", "--dry-run"]
RUN_ROW = re.compile(r"^\s+\d+\s+(\S+-b\d+-p\d+-s\d+(?:-o\d+)?-[0-9a-f]{12})\s", re.M)


def test_dry_run_of_a_selection_lists_one_run_with_cost_and_time(capsys, tmp_path):
    rc, out, err = _main(capsys, *PAPER_ONE_RUN, "--results", str(tmp_path / "results"))
    assert rc == 0, err
    assert RUN_ROW.findall(out) == ["cifar100-b50-p5-s0-032a76ed96d9"]  # the paper's LUCIR B50 5 phases, seed 0
    row = next(line for line in out.splitlines() if "cifar100-b50-p5-s0-" in line)
    assert "LUCIR" in row and "10.4M" in row and "trains it" in row  # image-steps (run_cost) and its base phase
    assert re.search(r"rate assumed for resnet32 on cpu: 330 image-steps/s \(measured", out)
    assert re.search(r"total: 10\.4M image-steps; 8\.8 h of cpu time", out)
    assert "left out: adaptive_weight__cifar100" in out and "left out: main_curves__imagenet " in out
    assert not (tmp_path / "results" / "runs").exists()  # nothing trained
    rc, out, _ = _main(capsys, *PAPER_ONE_RUN, "--device", "cuda", "--rate", "4000",
                       "--results", str(tmp_path / "results"))
    assert rc == 0 and "rate assumed for resnet32 on cuda: 4,000 image-steps/s (given with --rate)" in out
    # without a selection the plan is the whole profile: 99 runs, 18 base phases
    rc, out, _ = _main(capsys, "--profile", "paper", "--dry-run", "--device", "cuda", "--results", str(tmp_path))
    assert rc == 0 and len(RUN_ROW.findall(out)) == 99 and out.count("trains it") == 18


def test_paper_dry_run_lists_three_class_orders_for_each_cifar100_cell(capsys, tmp_path):
    """The paper's 3 runs are 3 class orders, as the authors' code draws them (--nb_runs): each
    CIFAR-100 cell of the paper profile plans runs of orders 0, 1 and 2, with run seeds 0, 1, 2; the
    dry run names the order of every run. Order 0's runs keep their names (no tag)."""
    rc, out, err = _main(capsys, "--profile", "paper", "--dry-run", "--select", "dataset=cifar100",
                         "--results", str(tmp_path))
    assert rc == 0, err
    header = next(line for line in out.splitlines() if line.strip().startswith("#  run"))
    assert header.split()[:3] == ["#", "run", "order"]
    rows = [line.split() for line in out.splitlines() if RUN_ROW.match(line)]
    cells = {}
    for row in rows:
        name, order = row[1], int(row[2])
        dataset, base, phases, seed = name.split("-")[:4]
        assert seed == f"s{order}" and (f"-o{order}-" in name) == (order > 0)
        cells.setdefault((phases, " ".join(row[3:row.index(next(x for x in row[3:] if x.endswith("M")))])),
                         set()).add(order)
    assert len(cells) >= 20 and all(orders == {0, 1, 2} for orders in cells.values()), cells
    assert "cifar100-b50-p5-s0-032a76ed96d9" in out  # the paper's LUCIR B50 5 phases, order 0: its name as before


def test_selection_narrows_what_the_notebooks_train(tmp_path):
    _, _, paper = study_mod.load_profile("paper")
    select = study_mod.parse_selection(["dataset=cifar100", "method=lucir", "phases=5,10", "seed=0", "seed=1"])
    left_out = []
    pairs = study_mod.build_pairs(paper, tmp_path, None, {}, select, left_out)
    assert [p.key for p in pairs] == ["main_curves__cifar100"]
    params = pairs[0].parameters  # what papermill injects: the notebook plans exactly these runs
    assert params["methods"] == ["lucir"] and params["phases"] == [5, 10] and params["seeds"] == [0, 1]
    assert params["class_orders"] == [0, 1]  # each seed keeps its own class order (the authors' runs)
    assert params["joint_phases"] == []
    assert len(pairs[0].plan) == 4 and {r.preset for r in pairs[0].plan} == {"lucir"}
    assert {key for key, _ in left_out} >= {"exemplar_count__cifar100", "main_curves__imagenet"}
    # a notebook whose every run lies inside the selection is kept whole; methods are switch sets
    pairs = study_mod.build_pairs(paper, tmp_path, None, {}, study_mod.parse_selection(
        ["notebook=adaptive_weight", "method=lucir"]), [])
    assert pairs == []  # the fixed-lambda row is not the lucir preset
    pairs = study_mod.build_pairs(paper, tmp_path, None, {}, study_mod.parse_selection(
        ["method=lucir,icarl", "notebook=confusion_matrices,weight_norms"]), [])
    assert [p.key for p in pairs] == ["confusion_matrices__cifar100", "weight_norms__cifar100"]


@pytest.mark.parametrize("argv, message", [
    (["--select", "colour=red"], "--select expects KEY=VALUE[,VALUE] with KEY one of dataset, notebook"),
    (["--select", "method=lucid"], "--select method: unknown value 'lucid'"),
    (["--select", "phases=five"], "--select phases: unknown value 'five' (expected whole numbers)"),
    (["--select", "dataset=imagenet", "--select", "phases=1"], "the selection leaves nothing to run in profile 'paper'"),
])
def test_bad_selection_is_one_line(capsys, argv, message, tmp_path):
    rc, _, err = _main(capsys, "--profile", "paper", "--dry-run", "--results", str(tmp_path), *argv)
    assert rc == 2 and message in err and err.count("\n") == 1


def readme_main_command() -> str:
    """The README's main command: the line of its first bash block that runs the study."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    return next(line for line in block.splitlines() if "lucir.study" in line)


def test_readme_main_command_starts_on_a_fresh_machine(torchvision_cifar100, tmp_path):
    """LUCIR_DATA unset, torchvision's CIFAR-100 in the default data folder (as the first run's
    download leaves it): the README's main command plans its study with that data (dry run), and
    the first of its runs loads its data from there."""
    import os
    import subprocess
    import sys
    from lucir import experiments
    from lucir.data import load_dataset
    command = readme_main_command()
    assert "LUCIR_DATA" not in command and "shared/data" not in command
    study = command.split("&&")[-1].split()
    assert study[:3] == ["python3", "-m", "lucir.study"]
    _, data_folder = torchvision_cifar100
    xdg = tmp_path / "xdg"
    (xdg / "lucir").mkdir(parents=True)
    (xdg / "lucir" / "data").symlink_to(data_folder, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k != "LUCIR_DATA"} | {"XDG_CACHE_HOME": str(xdg)}
    proc = subprocess.run([sys.executable, *study[1:], "--dry-run", "--results", str(tmp_path / "results")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"data: cifar100: torchvision format in {xdg / 'lucir' / 'data'}" in proc.stdout
    assert len(RUN_ROW.findall(proc.stdout)) == 16
    # the first run's config loads its data from the default folder with nothing else set up
    profile = study[study.index("--profile") + 1]
    _, _, content = study_mod.load_profile(profile)
    first = study_mod.build_pairs(content, tmp_path, None, {})[0].plan[0].config()
    saved = {k: os.environ.pop(k, None) for k in ("LUCIR_DATA", "XDG_CACHE_HOME")}
    os.environ["XDG_CACHE_HOME"] = str(xdg)
    try:
        data = load_dataset(first)
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    assert data.source.startswith("torchvision's cifar-100-python") and len(data.class_names) == first.num_classes
    assert experiments.run_name(first) in proc.stdout


def test_study_data_check_says_what_it_downloads_and_downloads_once(tmp_path, monkeypatch):
    import torchvision.datasets
    from conftest import write_torchvision_cifar100
    from lucir.data import synthetic_data
    monkeypatch.delenv("LUCIR_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    small = synthetic_data(100, 2, 1)
    calls = []

    def fake_cifar100(root, train=True, download=False, **kw):
        calls.append(root)
        write_torchvision_cifar100((*small[:4], [f"c{k}" for k in range(100)]), Path(root))
    monkeypatch.setattr(torchvision.datasets, "CIFAR100", fake_cifar100)
    _, _, quick = study_mod.load_profile("quick")
    pairs = study_mod.build_pairs(quick, tmp_path, None, {})
    data = study_data.data_provenance(pairs)
    default = tmp_path / "xdg" / "lucir" / "data"
    assert [d["download"] for d in data] == [True]
    assert study_data.data_plan_lines(data) == [
        f"cifar100: not in {default}; downloaded there through torchvision into cifar-100-python/ before the runs "
        f"start (161 MiB from www.cs.toronto.edu, about 178 MiB once unpacked (the archive is then removed))"]
    study_data.preflight_data(data)
    assert len(calls) == 1
    data = study_data.data_provenance(pairs)
    assert data[0]["found"] and data[0]["format"] == "torchvision" and len(data[0]["files"]) == 3
    study_data.preflight_data(data)
    assert len(calls) == 1
    # with LUCIR_DATA set, missing data is an error, never a download
    monkeypatch.setenv("LUCIR_DATA", str(tmp_path / "elsewhere"))
    data = study_data.data_provenance(pairs)
    with pytest.raises(study_mod.StudyError, match="data not found under .*elsewhere.*LUCIR_DATA"):
        study_data.preflight_data(data)


def test_progress_cost_counts_every_phase():
    from lucir import make_config
    c = make_config("lucir", num_classes=40, base_classes=20, phases=5, train_per_class=100, base_epochs=20, epochs=8,
                    lr_milestones=(4, 6))
    cost = scheduler.run_cost(c)
    assert len(cost) == 6 and cost[0] > cost[1] > 0
    joint = scheduler.run_cost(make_config("joint", num_classes=40, base_classes=20, phases=5, train_per_class=100))
    assert joint[-1] > joint[1], "joint training grows with the classes seen"


def test_relative_data_folder_is_made_absolute_for_the_kernels(monkeypatch, tmp_path):
    """Kernels run in notebooks/, so LUCIR_DATA=../data must be resolved where the runner starts,
    in the kernels' environment; the runner's own environment is left as it is."""
    import os
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LUCIR_DATA", "../some/data")
    with pytest.raises(study_mod.StudyError):
        study_mod.run_study("smoke", study_mod.StudyOptions(results=str(tmp_path / "r"), reports=str(tmp_path / "p"),
                                                            only=["no_such_notebook"]))
    assert os.environ["LUCIR_DATA"] == "../some/data"
    assert notebook_runner.kernel_env()["LUCIR_DATA"] == str((tmp_path / "../some/data").resolve())


def test_kernels_import_the_runners_package_not_another_copy(monkeypatch, tmp_path):
    """Another copy of lucir on the path (another clone's, say) loses to the runner's own in the
    environment the notebooks' kernels start with (the runner's own environment is left as it is)."""
    import os
    other = tmp_path / "other_clone" / "lucir"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("")
    monkeypatch.setenv("PYTHONPATH", str(other.parent))
    env = notebook_runner.kernel_env()
    assert os.environ["PYTHONPATH"] == str(other.parent)
    where = subprocess.run([sys.executable, "-c", "import lucir; print(lucir.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where) == REPO / "lucir" / "__init__.py"
    assert env["PYTHONPATH"].split(os.pathsep)[1:] == [str(other.parent)]


# --------------------------------------------------------------------------- the run beside the reference
def test_study_leaves_the_clone_clean_and_a_second_clone_reproduces_it(study, tmp_path):
    """The README's main command, as a newcomer runs it: the smoke study ran in a fresh clone with
    the default folders and left every tracked file as it was. Its report, committed as the
    profile's reference (reports/smoke/, what `--reports reports/smoke` renders), is then the
    reference of a second run in another clone at other paths (its own base-phase cache): the tree
    stays clean, the study ends with the verdict that the two agree, in verdict.md and at the top of
    report.html; and a reference cell altered on purpose is reported as differing, by its size."""
    import pandas as pd
    from smoke_study import git
    assert study["proc"].returncode == 0, study["proc"].stderr[-3000:]
    assert study["status"] == "", f"the study changed tracked files:\n{study['status']}"
    assert study["reports"] == study["clone"] / "results" / "smoke" / "report"
    first = study["clone"]
    reference = first / "reports" / "smoke"
    shutil.copytree(study["reports"], reference, ignore=shutil.ignore_patterns("executed", "verdict.md"))
    git("add", "-A", cwd=first)
    git("commit", "-q", "-m", "the smoke study's report as its reference", cwd=first)
    second = tmp_path / "elsewhere" / "clone"
    subprocess.run(["git", "clone", "-q", str(first), str(second)], check=True, capture_output=True)
    proc = run_study("--profile", "smoke", "--cache-dir", str(tmp_path / "cache"), cwd=second)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert git("status", "--porcelain", cwd=second) == ""
    report = second / "results" / "smoke" / "report"
    assert proc.stdout.strip().splitlines()[-1] == str(report / "report.html")
    verdict = (report / "verdict.md").read_text()
    assert verdict.startswith("**Reproduced**: every cell agrees with `reports/smoke`"), verdict
    assert verdict in proc.stdout
    row = r"^\| synthetic \| (\d+) \| (\S+) \| ([\d.]+) \| ([\d.]+) \| ([-+][\d.]+) \| ([\d.]+) \| yes \|$"
    headline = re.findall(row, verdict, re.M)
    assert len(headline) == len(pd.read_csv(reference / "headline.csv").drop_duplicates(["phases", "curve"]))
    html = (report / "report.html").read_text()
    assert html.index('id="verdict"') < html.index("LUCIR reproduction report"), "the verdict comes first"
    # one reference cell altered by more than its allowed spread: reported as differing, with its size
    altered = tmp_path / "altered"
    shutil.copytree(second / "reports" / "smoke", altered)
    h = pd.read_csv(altered / "headline.csv")
    phases, curve, ref, other, diff, allowed = headline[0]
    delta = round(float(allowed) + 9, 2)
    h.loc[(h.phases == int(phases)) & (h.curve == curve), "ours"] += delta
    h.to_csv(altered / "headline.csv", index=False)
    proc = subprocess.run([sys.executable, "-m", "lucir.compare", str(altered), str(report)], cwd=second,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.startswith("**Not reproduced**: 1 of "), proc.stdout
    size = float(other) - (float(ref) + delta)
    line = f"| synthetic | {phases} | {curve} | {float(ref) + delta:.2f} | {other} | {size:+.2f} | {allowed} | **no** |"
    assert line in proc.stdout, proc.stdout
