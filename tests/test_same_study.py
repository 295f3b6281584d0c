"""scripts/same_study.py, the before-and-after check of a change of code (issue 34): two copies of
one real run's results are the same whatever their clocks say (metrics, a table's run_seconds, a
checkpoint's history), and a byte of a table, a metric or a weight changed in one copy is found
and named."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import same_study  # noqa: E402


def results_folder(root: Path, run: Path) -> Path:
    """A study's results folder holding `run` and one table."""
    shutil.copytree(run, root / "runs" / "cifar100-b4-p2-s0-000000000000")
    (root / "tables" / "main_curves").mkdir(parents=True)
    (root / "tables" / "main_curves" / "synthetic.csv").write_text("phase,acc,run_seconds\n0,0.5,12.5\n1,0.25,12.5\n")
    return root


def test_the_same_results_are_the_same_whatever_their_clocks_and_each_change_is_named(tmp_path, reference_run, capsys):
    _, run, _ = reference_run
    before, after = (results_folder(tmp_path / side, run) for side in ("before", "after"))
    metrics = after / "runs" / "cifar100-b4-p2-s0-000000000000" / "metrics.json"
    m = json.loads(metrics.read_text())
    m["train_seconds"] += 100.0
    m["phases"][0]["seconds"] += 7.0  # another machine's load: not a difference
    metrics.write_text(json.dumps(m))
    table = after / "tables" / "main_curves" / "synthetic.csv"
    table.write_text(table.read_text().replace("12.5", "13.25"))  # the table's wall clock
    checkpoint = same_study.final_checkpoint(metrics.parent)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state["history"][0]["seconds"] += 7.0  # and the checkpoint's
    torch.save(state, checkpoint)
    assert same_study.main([str(before), str(after)]) == 0
    out = capsys.readouterr().out
    assert "the same cells but the wall-clock column(s) run_seconds" in out
    assert "the same: 1 tables and 1 runs compared, 0 differ" in out

    table.write_text(table.read_text().replace("0.25", "0.26"))
    assert same_study.main([str(before), str(after)]) == 1
    assert "DIFFERS  tables/main_curves/synthetic.csv: the bytes differ" in capsys.readouterr().out
    shutil.copy(before / "tables" / "main_curves" / "synthetic.csv", table)

    m["phases"][-1]["acc_cnn"] += 1e-12
    metrics.write_text(json.dumps(m))
    assert same_study.main([str(before), str(after)]) == 1
    assert "metrics differ: phases" in capsys.readouterr().out
    shutil.copy(before / "runs" / "cifar100-b4-p2-s0-000000000000" / "metrics.json", metrics)

    weight = next(k for k, v in state["model"].items() if v.is_floating_point())
    flat = state["model"][weight].contiguous()
    flat.view(-1)[0] = torch.nextafter(flat.view(-1)[0], torch.tensor(1.0))
    state["model"][weight] = flat
    torch.save(state, checkpoint)  # one weight moved by one unit in the last place
    assert same_study.main([str(before), str(after)]) == 1
    assert f"{checkpoint.name} differs" in capsys.readouterr().out


def test_a_folder_that_is_not_a_studys_results_is_one_line(tmp_path, capsys):
    assert same_study.main([str(tmp_path), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a study's results folder" in err


def test_a_tidy_table_holds_no_wall_clock_so_two_machines_write_the_same_bytes(tmp_path, reference_run):
    """The before-and-after check compares tables byte for byte: a run's training seconds (another
    machine's speed) stay in the runs overview and runs.csv, out of the tables."""
    from lucir import experiments as ex
    config, run, metrics = reference_run
    texts = []
    for seconds in (metrics["train_seconds"], metrics["train_seconds"] + 250.0):
        result = {"planned": ex.PlannedRun("LUCIR", "lucir"), "config": config, "run_dir": run,
                  "metrics": metrics | {"train_seconds": seconds}}
        table = ex.tidy_curves([result], "main_curves", "synthetic")
        folder = tmp_path / str(seconds)
        ex.write_table(table, folder, "main_curves", "synthetic", {})
        texts.append(ex.table_path(folder, "main_curves", "synthetic").read_text())
        assert "seconds" not in ",".join(table.columns)
        assert ex.runs_overview([result])["train seconds"].iloc[0] == round(seconds, 2)
    assert texts[0] == texts[1] and len(texts[0].splitlines()) == 1 + 6 * len(metrics["phases"])
