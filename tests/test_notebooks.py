"""The notebooks: committed without outputs, a `parameters` cell of typed commented literals that
papermill reads in full, defaults that make valid plans, and every notebook executed end to end
through papermill with the smoke profile (one shared study, see smoke_study.py)."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import papermill as pm
import pytest

from lucir import experiments, published
from lucir.figures import FIGURES, NAMES
from smoke_study import EXPERIMENTS, REPO, smoke_study

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
PARAM_LINE = re.compile(r"^(\w+): (int|float|str|bool|list|dict) = (.+?)  # \S.*$")


@pytest.fixture(scope="session")
def study(tmp_path_factory, cache_dir):
    s = smoke_study(tmp_path_factory, cache_dir)
    assert s["proc"].returncode == 0, s["proc"].stderr[-3000:]
    return s


def _parameters_cell(nb):
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged 'parameters'"
    return cells[0]


def test_the_notebooks_are_the_experiments_and_the_report():
    assert {p.stem for p in NOTEBOOKS} == set(EXPERIMENTS) | {"report"}
    assert set(EXPERIMENTS) == set(NAMES) == set(FIGURES)


@pytest.fixture(scope="session")
def kernel_metadata() -> dict:
    """The notebook metadata JupyterLab writes when it opens a notebook in the kernel that
    scripts/setup.sh registers (python3): kernelspec from its kernel.json, language_info from the
    kernel's own kernel_info reply."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import start_new_kernel
    spec = KernelSpecManager().get_kernel_spec("python3")
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        language_info = kc.kernel_info(reply=True, timeout=60)["content"]["language_info"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    return {"kernelspec": {"display_name": spec.display_name, "language": spec.language, "name": "python3"},
            "language_info": language_info}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} holds outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_opens_clean_in_jupyterlab(path, kernel_metadata):
    """JupyterLab rewrites a notebook's kernelspec and language_info when the kernel starts, and
    marks it modified (then autosaves it) if they differ: the committed ones are the kernel's."""
    metadata = nbformat.read(path, as_version=4).metadata
    for key, expected in kernel_metadata.items():
        assert metadata.get(key) == expected, (
            f"{path.name}: {key} {metadata.get(key)} differs from that of the python3 kernel registered by "
            f"scripts/setup.sh, {expected}; JupyterLab would mark the notebook modified on opening")
    assert set(metadata) == set(kernel_metadata), f"{path.name}: other metadata {sorted(metadata)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_is_typed_commented_literals_that_papermill_reads(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert "Fig." in nb.cells[0].source.splitlines()[0] or path.stem == "report"
    source = _parameters_cell(nb).source
    assert max(len(l) for l in source.splitlines()) <= 100, f"{path.name}: wrap the parameters cell at 100 columns"
    # as papermill reads it: a line with '=' starts a parameter, the lines after it (no '=', no
    # comment) continue its value, and the help comment ends its last line
    lines = []
    for line in source.splitlines():
        if "=" in line or not lines:
            lines.append(line)
        elif line.strip():
            assert "#" not in lines[-1], f"{path.name}: a comment inside the value of {lines[-1].split(':')[0]}"
            lines[-1] += " " + line.strip()
    names = []
    for line in lines:
        m = PARAM_LINE.match(line)
        assert m, f"{path.name}: not a typed, commented literal: {line!r}"
        value = ast.literal_eval(m.group(3))
        assert type(value).__name__ == m.group(2) or (m.group(2) == "float" and isinstance(value, int)), line
        names.append(m.group(1))
    # papermill drops a line it cannot parse (e.g. a second '=' in the comment): it must see them all
    assert list(pm.inspect_notebook(str(path))) == names


def lucir_imports(path: Path) -> set[str]:
    """The lucir modules a notebook's code cells import."""
    found = set()
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lucir":
                found |= {node.module} if node.module != "lucir" else {f"lucir.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.split(".")[0] == "lucir"}
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_notebook_uses_only_its_figures_module(path):
    """A figure's notebook imports its figure's module and nothing else of the study's layers (its
    config comes through its Figure); the report's notebook, lucir.report."""
    expected = {"lucir.report"} if path.stem == "report" else {f"lucir.figures.{path.stem}"}
    assert lucir_imports(path) == expected

@pytest.mark.parametrize("name", EXPERIMENTS)
def test_default_parameters_are_the_quick_profile(name, tmp_path):
    """Run All in JupyterLab with the defaults runs the quick setting on real CIFAR-100: it finishes
    on a CPU and, after the README's main command, loads that study's runs instead of retraining.
    The config is not copied into the notebook: it comes from studies/quick.yaml (`profile`), as
    the notebook reads it (its figure's config(profile, config_overrides))."""
    from lucir import profiles, studies
    inspected = pm.inspect_notebook(str(REPO / "notebooks" / f"{name}.ipynb"))
    defaults = {k: ast.literal_eval(v["default"]) for k, v in inspected.items()}
    assert defaults["profile"] == "quick" and defaults["config_overrides"] == {}, "no config copied"
    defaults["config_overrides"] = FIGURES[name].config(defaults["profile"], defaults["config_overrides"])
    _, path, quick = studies.load_profile("quick")
    [pair] = profiles.build_pairs(quick, tmp_path, [name], {}, profile=profiles.profile_parameter("quick", path))
    assert defaults == pair.parameters | {"results_dir": "results/quick"}
    plan_args = {k: v for k, v in defaults.items() if k not in profiles.NOT_PLANNED}
    plan = FIGURES[name].plan(**plan_args)
    assert {experiments.run_name(r.config()) for r in plan} == {experiments.run_name(r.config()) for r in pair.plan}
    # and the paper profile (its shared config: none) is the paper's CIFAR-100 setting
    paper = plan_args | {"config_overrides": studies.shared("paper")}
    if name == "exemplar_count":
        paper["memory_per_class"] = [5, 10, 20]
    configs = [r.config() for r in FIGURES[name].plan(**paper)]
    at_paper_budget = [c for c in configs if c.memory_per_class == 20]
    assert at_paper_budget and all(not published.setting_differences(c.to_dict()) for c in at_paper_budget)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_notebook_ran_with_the_smoke_profile(study, name):
    executed = study["reports"] / "executed" / f"{name}__synthetic.ipynb"
    nb = nbformat.read(executed, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 1, "one figure, drawn inline"
    table = experiments.read_tables(study["results"], name, ["synthetic"])
    assert len(table) and set(experiments.TABLE_COLUMNS) <= set(table.columns)
    meta = json.loads((study["results"] / "tables" / name / "synthetic.json").read_text())
    assert meta["parameters"]["config_overrides"]["dataset"] == "synthetic"
    assert meta["git"] and meta["versions"]["torch"]
    on_disk = pd.read_csv(study["results"] / "tables" / name / "synthetic.csv")
    assert all(p.startswith("runs/") for p in on_disk.run_dir), "run_dir is stored relative to results_dir"


def test_tables_agree_with_the_runs_metrics(study):
    """The tidy table's curve is the run's metrics.json, in percent; its mean is the run's average."""
    table = experiments.read_tables(study["results"], "main_curves")
    assert set(table.curve) >= {"LUCIR-CNN", "LUCIR-NME", "iCaRL-CNN", "iCaRL-NME", "Joint-CNN"}
    acc = table[table.metric == "acc"]
    assert acc.value.between(0, 100).all()
    for (run_dir, clf), group in acc.groupby(["run_dir", "classifier"]):
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
        expected = [100 * p[f"acc_{clf.lower()}"] for p in metrics["phases"]]
        assert np.allclose(group.sort_values("phase").value, expected)
        assert np.isclose(group.value.mean(), 100 * metrics[f"avg_incremental_accuracy_{clf.lower()}"])
    summary = experiments.average_accuracy(acc, ["phases", "curve"])
    assert (summary.runs == 2).all(), "two seeds per curve in the smoke profile"


def test_identical_configs_share_one_run(study):
    """LUCIR with the shared settings and 2 phases is a main curve, the CN+LC+IS ablation row,
    an R_per of the exemplar sweep and the adaptive-weight run: one run directory for all four."""
    def lucir_dirs(name, **where):
        t = experiments.read_tables(study["results"], name)
        for k, v in where.items():
            t = t[t[k] == v]
        return set(t.run_dir)
    shared = (lucir_dirs("main_curves", method="LUCIR", phases=2, seed=0)
              & lucir_dirs("component_ablation", method="CN+LC+IS")
              & lucir_dirs("exemplar_count", method="LUCIR", memory_per_class=2)
              & lucir_dirs("adaptive_weight", variant="adaptive lambda", phases=2))
    assert len(shared) == 1
    one_phase = (lucir_dirs("confusion_matrices") & lucir_dirs("weight_norms")
                 & lucir_dirs("main_curves", phases=1, seed=0))
    assert len(one_phase) == 2, "iCaRL and LUCIR after 1 phase serve Fig. 3, Fig. 5 and Fig. 9"


def test_plain_papermill_reuses_complete_runs(study, tmp_path):
    """A notebook run by hand with papermill loads the complete runs instead of retraining them."""
    marker = study["results"] / "study" / "done" / "confusion_matrices__synthetic.json"
    params = json.loads(marker.read_text())["parameters"]
    params["setting"] = "by_hand"
    runs = sorted((study["results"] / "runs").glob("*/metrics.json"))
    before = {p: p.stat().st_mtime_ns for p in runs}
    pm.execute_notebook(str(REPO / "notebooks" / "confusion_matrices.ipynb"), str(tmp_path / "out.ipynb"),
                        parameters=params, kernel_name="python3", progress_bar=False)
    assert {p: p.stat().st_mtime_ns for p in runs} == before
    by_hand = pd.read_csv(study["results"] / "tables" / "confusion_matrices" / "by_hand.csv")
    original = pd.read_csv(study["results"] / "tables" / "confusion_matrices" / "synthetic.csv")
    assert np.allclose(by_hand.value, original.value, equal_nan=True)
    (study["results"] / "tables" / "confusion_matrices" / "by_hand.csv").unlink()
    (study["results"] / "tables" / "confusion_matrices" / "by_hand.json").unlink()
