"""benchmarks/common_start.py (issue 30, item 4) end to end on reduced real data: the common start
and our side from it always; the authors' side when LUCIR_AUTHORS_CODE names their checkout."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("common_start", REPO / "benchmarks" / "common_start.py")
cs = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("common_start", cs)
_spec.loader.exec_module(cs)


def test_our_phase_from_the_common_start_is_the_uninterrupted_runs_phase_and_a_rerun_skips_it(tmp_path):
    from conftest import CIFAR_DIR, need
    from lucir.trainer import run_incremental
    need(CIFAR_DIR)
    work = tmp_path / "work"
    assert cs.main(["--tiny", "--only", "ours", "--seeds", "1", "--work", str(work)]) == 0
    files = sorted(work.glob("phase_2_ours_s*.json"))
    assert [f.name for f in files] == ["phase_2_ours_s0.json"]
    rows = [json.loads(f.read_text()) for f in files]
    assert all(r["classes_seen"] == 20 and r["lambda"] == pytest.approx(5 * math.sqrt(15 / 5)) for r in rows)
    assert all(r["old_weights_fixed"] is True and r["eta"] != r["start_eta"] for r in rows)
    assert not (work / "start" / "checkpoints" / "phase_2.pt").exists()  # the start stopped after phase 1
    # Seed 0 from the saved start is phase 2 of one uninterrupted run with run seed 0, to the last digit.
    full = run_incremental(cs.config(cs.ac.TINY, work, 0, **cs.TINY_EXTRA), tmp_path / "full")["phases"][2]
    for key in ("acc_cnn", "acc_old_cnn", "acc_new_cnn", "acc_nme", "acc_old_nme", "acc_new_nme"):
        assert rows[0][key] == full[key], key
    table = (work / "report" / "common_start.md").read_text()
    assert "not a comparison" in table and "not decided yet" in table  # one side only: no verdict
    assert f"| ours | 0 | {100 * rows[0]['acc_cnn']:.2f} |" in table  # fractions on file, % in the table
    # Called again, it trains nothing and rewrites nothing it has.
    before = [f.stat().st_mtime_ns for f in files]
    assert cs.main(["--tiny", "--only", "ours", "--seeds", "1", "--work", str(work)]) == 0
    assert [f.stat().st_mtime_ns for f in files] == before


def test_verdict_reads_the_difference_against_the_spread():
    rows = [{"side": "ours", "acc_old_cnn": v} for v in (50.0, 51.0, 52.0)] + \
           [{"side": "authors", "acc_old_cnn": v} for v in (50.5, 51.5, 52.5)]
    assert "interleave" in cs.verdict(rows) and "do not differ" in cs.verdict(rows)
    rows = [{"side": "ours", "acc_old_cnn": v} for v in (50.0, 50.1, 50.2)] + \
           [{"side": "authors", "acc_old_cnn": v} for v in (53.0, 53.1, 53.2)]
    assert "every run of theirs is above every run of ours" in cs.verdict(rows)
    assert "the trainers differ" in cs.verdict(rows)


@pytest.mark.skipif(not os.environ.get("LUCIR_AUTHORS_CODE"),
                    reason="set LUCIR_AUTHORS_CODE to a checkout of hshustc/CVPR19_Incremental_Learning")
def test_the_authors_phase_from_the_common_start(tmp_path):
    from conftest import CIFAR_DIR, need
    need(CIFAR_DIR)
    work = tmp_path / "work"
    assert cs.main(["--tiny", "--seeds", "1", "--work", str(work), "--authors", os.environ["LUCIR_AUTHORS_CODE"]]) == 0
    theirs = json.loads((work / "phase_2_authors_s0.json").read_text())
    ours = json.loads((work / "phase_2_ours_s0.json").read_text())
    assert theirs["classes_seen"] == ours["classes_seen"] == 20 and theirs["lambda"] == pytest.approx(ours["lambda"])
    for r in (theirs, ours):  # both trained the phase from the common start, old-class weights fixed
        assert 0 <= r["acc_cnn"] <= 1 and r["old_weights_fixed"] is True and r["eta"] != r["start_eta"]
    assert theirs["start_eta"] == ours["start_eta"] and theirs["eta"] != ours["eta"]  # one start, two programs
    assert "ours - authors'" in (work / "report" / "common_start.md").read_text()
