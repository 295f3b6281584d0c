"""Reading is read-only: building a table from finished runs, running a notebook again over a
finished study and rendering the report change no file of the study (content hashes)."""
from __future__ import annotations

import json

import pandas as pd
import papermill as pm
import pytest

from lucir import experiments as ex
from conftest import file_hashes
from smoke_study import EXPERIMENTS, REPO, smoke_study


@pytest.fixture(scope="session")
def study(tmp_path_factory, cache_dir):
    s = smoke_study(tmp_path_factory, cache_dir)
    assert s["proc"].returncode == 0, s["proc"].stderr[-3000:]
    return s


def _table(results_dir, value: float) -> pd.DataFrame:
    row = {c: 0 for c in ex.TABLE_COLUMNS} | {"experiment": "main_curves", "setting": "s", "curve": "LUCIR-CNN",
                                             "metric": "acc", "value": value, "run_dir": str(results_dir / "runs" / "r")}
    return pd.DataFrame([row], columns=ex.TABLE_COLUMNS)


def test_a_table_written_again_with_the_same_rows_and_parameters_is_left_as_it_is(tmp_path):
    params = {"phases": [5], "config_overrides": {"dataset": "cifar100", "progress": False}}
    ex.write_table(_table(tmp_path, 60.0), tmp_path, "main_curves", "s", params, started=0.0)
    before = file_hashes(tmp_path)
    # the same rows; parameters differing only in a runtime field (progress, workers)
    again = {"phases": [5], "config_overrides": {"dataset": "cifar100", "progress": True, "workers": 2}}
    ex.write_table(_table(tmp_path, 60.0), tmp_path, "main_curves", "s", again, started=1.0)
    assert file_hashes(tmp_path) == before
    meta = json.loads((tmp_path / "tables" / "main_curves" / "s.json").read_text())
    assert meta["parameters"] == params, "the sidecar keeps the provenance of the run that made the table"
    # other rows, or other parameters that change the result: written again
    ex.write_table(_table(tmp_path, 61.0), tmp_path, "main_curves", "s", params)
    assert file_hashes(tmp_path) != before
    changed = file_hashes(tmp_path)
    ex.write_table(_table(tmp_path, 61.0), tmp_path, "main_curves", "s", params | {"phases": [10]})
    assert file_hashes(tmp_path)["tables/main_curves/s.json"] != changed["tables/main_curves/s.json"]


def test_running_every_notebook_again_over_a_finished_study_writes_nothing_under_results(study, tmp_path):
    """Each notebook twice with the parameters the study ran it with (a runtime field changed, as a
    user's Run All would), then the report notebook: no file under results/ is added or changed.
    Executed copies go to tmp_path, as the study puts them under reports/."""
    results = study["results"]
    before = file_hashes(results)
    for name in EXPERIMENTS:
        params = json.loads((results / "study" / "done" / f"{name}__synthetic.json").read_text())["parameters"]
        params["config_overrides"] = params["config_overrides"] | {"progress": True}
        for attempt in (1, 2):
            pm.execute_notebook(str(REPO / "notebooks" / f"{name}.ipynb"), str(tmp_path / f"{name}_{attempt}.ipynb"),
                                parameters=params, kernel_name="python3", progress_bar=False)
    pm.execute_notebook(str(REPO / "notebooks" / "report.ipynb"), str(tmp_path / "report.ipynb"),
                        parameters={"results_dir": str(results)}, kernel_name="python3", progress_bar=False)
    after = file_hashes(results)
    assert sorted(set(after) - set(before)) == [], "files added under results/"
    assert [f for f in before if after.get(f) != before[f]] == [], "files changed under results/"
