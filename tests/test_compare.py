"""`python -m lucir.compare REF OTHER`: two finished reports cell by cell (lucir/compare.py), on
copies of the committed quick report (two seeds per headline cell) and paper_cifar's (one run)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lucir import compare

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "reports" / "quick"


def _copy(tmp_path, name="other", source=QUICK) -> Path:
    dest = tmp_path / name
    shutil.copytree(source, dest)
    return dest


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lucir.compare", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_a_report_beside_itself_is_reproduced():
    c = compare.compare(QUICK, QUICK)
    assert c.reproduced and c.differing == 0 and not c.missing
    assert len(c.headline) == 9 and len(c.claims) == 21  # every cell of the committed quick report
    assert (c.headline["other - reference"] == 0).all()
    # the allowed spread is the project's seed-noise rule on the two reports' stds: 2 sqrt(1.77^2 + 1.77^2)
    cell = c.headline[(c.headline.phases == 1) & (c.headline.curve == "LUCIR-CNN")].iloc[0]
    assert cell.allowed == pytest.approx(2 * np.hypot(1.77, 1.77)) and cell["spread from"] == "2 seeds"
    assert c.machines["reference"] == {"device": "no GPU; CPU AMD EPYC (2 cores)", "torch": "2.14.1",
                                       "commit": "b19e2932a1a2", "date": "2026-11-29T17:43:07+00:00"}
    proc = _cli(QUICK, QUICK)
    assert proc.returncode == 0 and proc.stdout.startswith("**Reproduced**: every cell agrees"), proc.stdout
    assert "CPU AMD EPYC (2 cores), torch 2.14.1" in proc.stdout


def test_a_headline_cell_altered_by_9_points_is_reported_with_its_size(tmp_path):
    other = _copy(tmp_path)
    h = pd.read_csv(other / "headline.csv")
    h.loc[(h.phases == 5) & (h.curve == "LUCIR-CNN"), "ours"] += 9  # 13.11 -> 22.11; allowed 2 sqrt(2) 1.35 = 3.82
    h.to_csv(other / "headline.csv", index=False)
    proc = _cli(QUICK, other)
    assert proc.returncode == 1
    assert proc.stdout.startswith("**Not reproduced**: 1 of 30 cells differ"), proc.stdout
    assert "| cifar100 | 5 | LUCIR-CNN | 13.11 | 22.11 | +9.00 | 3.82 | **no** |" in proc.stdout
    assert "| cifar100 | 5 | LUCIR-NME | 13.62 | 13.62 | +0.00 | 5.83 | yes |" in proc.stdout
    # within the spread: 3 points on a cell whose allowed spread is 3.82 still agrees
    h.loc[(h.phases == 5) & (h.curve == "LUCIR-CNN"), "ours"] -= 6
    h.to_csv(other / "headline.csv", index=False)
    assert compare.compare(QUICK, other).reproduced


def test_a_flipped_claim_disagrees(tmp_path):
    other = _copy(tmp_path)
    claims = pd.read_csv(other / "claims.csv", keep_default_na=False)
    row = claims.check == "5 phases, CNN: adaptive > fixed"
    assert claims.loc[row, "holds"].tolist() == ["no"]
    claims.loc[row, "holds"] = "yes"
    claims.to_csv(other / "claims.csv", index=False)
    c = compare.compare(QUICK, other)
    assert not c.reproduced and c.differing == 1 and c.headline.agrees.all()
    text = compare.verdict_markdown(c)
    assert "| Adaptive weight (Fig. 8) | 5 phases, CNN: adaptive > fixed | no | yes | unknown: 1 run |" in text
    assert "Claims of the paper: 20 of 21 hold (or fail) in both." in text


def test_one_run_cells_take_the_measured_spread_and_say_where_it_comes_from(tmp_path):
    """paper_cifar has one run: its cells are compared within the spread measured between two seeds
    of ours at full CIFAR-100 (reports/authors_code/summary.csv), per classifier."""
    paper = REPO / "reports" / "paper_cifar"
    other = _copy(tmp_path, source=paper)
    h = pd.read_csv(other / "headline.csv")
    h.loc[h.curve == "LUCIR-NME", "ours"] += 4
    h.to_csv(other / "headline.csv", index=False)
    c = compare.compare(paper, other)
    summary = pd.read_csv(REPO / "reports" / "authors_code" / "summary.csv")
    ours = summary[summary.implementation == "ours"]
    cnn, nme = (c.headline.set_index("curve").loc[k] for k in ("LUCIR-CNN", "LUCIR-NME"))
    assert cnn.allowed == pytest.approx(2 * np.hypot(*[ours.avg_incremental_acc_cnn.std()] * 2))
    assert nme.allowed == pytest.approx(2 * np.hypot(*[ours.avg_incremental_acc_nme.std()] * 2))  # 3.12
    assert cnn.agrees and not nme.agrees and nme["spread from"] == "1 run: measured spread"
    assert "reports/authors_code/summary.csv" in compare.verdict_markdown(c)


def test_a_report_without_main_curves_is_compared_on_its_claims(tmp_path):
    """paper_cifar_fig9's report (Fig. 9 and Fig. 3, no headline.csv) beside itself is reproduced on
    its 6 claims and says that it has no headline cells; one claim flipped is not reproduced; beside a
    report with main curves, their headline cells are named as in one report only."""
    fig9 = REPO / "reports" / "paper_cifar_fig9"
    assert not (fig9 / "headline.csv").exists()
    c = compare.compare(fig9, _copy(tmp_path, "same", fig9))
    assert c.reproduced and c.headline.empty and len(c.claims) == 6 and not c.missing
    assert "none in either report (a profile without main curves)" in compare.verdict_markdown(c)
    flipped = _copy(tmp_path, "flipped", fig9)
    claims = pd.read_csv(flipped / "claims.csv", keep_default_na=False)
    claims.loc[0, "holds"] = "no"
    claims.to_csv(flipped / "claims.csv", index=False)
    proc = _cli(fig9, flipped)
    assert proc.returncode == 1 and "1 of 6 cells differ" in proc.stdout, proc.stdout
    c = compare.compare(fig9, QUICK)
    assert c.headline.empty and any(m.startswith("headline cifar100, 5 phases, LUCIR-CNN: only in the other")
                                    for m in c.missing)
    assert "Headline accuracies (average incremental, %): 0 of 0" in compare.verdict_markdown(c)


def test_a_folder_that_is_not_a_report_is_one_line(tmp_path):
    for folder, message in ((REPO / "reports" / "authors_code", "is not a study report: no headline.csv"),
                            (tmp_path / "nowhere", "is not a folder")):
        proc = _cli(QUICK, folder)
        assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr
        assert message in proc.stderr
    broken = _copy(tmp_path, "broken")
    (broken / "headline.csv").write_text("a,b\n1,2\n")
    proc = _cli(broken, QUICK)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "lacks the column(s)" in proc.stderr
