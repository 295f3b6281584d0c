"""What the report says about published numbers and claims, and the files it leaves beside
report.html for a reader of the repository (reports/<profile>/)."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from lucir import experiments as ex
from lucir import claims, report
from lucir.figures import component_ablation, confusion_matrices, main_curves
from lucir.config import ConfigError
from smoke_study import EXPERIMENTS, smoke_study


@pytest.fixture(scope="session")
def study(tmp_path_factory, cache_dir):
    return smoke_study(tmp_path_factory, cache_dir)


# --------------------------------------------------------------------------- differences to the paper
def test_comparison_of_a_reduced_setting_is_not_comparable():
    assert ex.comparison(40.0, 1.0, 63.42, None, reduced=True) == "not comparable: reduced setting"
    assert ex.comparison(40.0, 1.0, float("nan"), None, reduced=False) == "no published number"


def test_comparison_within_and_outside_twice_the_spread_by_hand():
    # spread = sqrt(0.6^2 + 0.8^2) = 1.0: |diff| 1.9 is within 2x, 2.1 is outside
    assert ex.comparison(62.1, 0.6, 64.0, 0.8, reduced=False).startswith("within 2x the spread over seeds (1.00)")
    assert ex.comparison(61.9, 0.6, 64.0, 0.8, reduced=False).startswith("outside 2x the spread over seeds (1.00)")
    # one run and no published std: nothing to judge the difference by
    assert ex.comparison(61.9, float("nan"), 64.0, None, reduced=False).startswith("no spread")


def test_one_seed_noise_rule_decides_both_wordings():
    """A difference to a published number is outside the spread exactly when the same difference
    between two curves of ours is beyond seed noise: one rule (claims.beyond_noise), two wordings."""
    for ours in (61.0, 61.9, 62.0, 62.1, 64.0, 65.9, 66.1):
        outside = ex.comparison(ours, 0.6, 64.0, 0.8, reduced=False).startswith("outside")
        beyond = claims.noise(ours, 0.6, 64.0, 0.8, runs=2).startswith("beyond")
        assert outside == beyond == claims.beyond_noise(ours, 64.0, claims.spread(0.6, 0.8)), ours
    assert claims.spread(0.6, float("nan")) == 0.6, "a missing std counts 0"


def _table(reduced: bool, values: dict, setting: str) -> pd.DataFrame:
    """A main-curves table of two seeds: curve -> per-phase accuracies of seed 0 (seed 1 adds 1)."""
    rows = []
    for curve, accs in values.items():
        for seed in (0, 1):
            for phase, acc in enumerate(accs):
                rows.append(dict(experiment="main_curves", setting=setting, dataset="cifar100",
                                 method=curve.split("-")[0], variant="", classifier=curve.split("-")[1], curve=curve,
                                 phases=5, seed=seed, class_order_seed=1993, memory_per_class=20, reduced=reduced,
                                 phase=phase, classes_seen=50 + 10 * phase, metric="acc", value=acc + seed,
                                 run_dir=f"{setting}/{curve.split('-')[0]}-{seed}"))
    return pd.DataFrame(rows, columns=ex.TABLE_COLUMNS)


def test_main_curves_summary_prints_a_difference_only_for_the_papers_setting():
    accs = {"LUCIR-CNN": [64.0] * 6, "iCaRL-NME": [58.0] * 6}
    t = pd.concat([_table(True, accs, "reduced"), _table(False, accs, "paper")], ignore_index=True)
    s = main_curves.main_curves_summary(t)
    lucir = s[(s.curve == "LUCIR-CNN") & (s.source == "paper (PODNet Table 1)")].set_index("setting")
    assert lucir.loc["reduced", "ours"] == pytest.approx(64.5) and lucir.loc["reduced", "ours_std"] == pytest.approx(
        math.sqrt(0.5))
    assert math.isnan(lucir.loc["reduced", "ours - published"])
    assert lucir.loc["reduced", "comparison"] == "not comparable: reduced setting"
    assert lucir.loc["paper", "ours - published"] == pytest.approx(64.5 - 63.42)
    assert lucir.loc["paper", "comparison"].startswith("within 2x the spread")


def test_readme_headline_shows_the_difference_to_the_paper_only_for_its_setting():
    """headline_markdown (the README's table): a column 'ours - paper' per curve where the setting
    is the paper's, none for a reduced one."""
    accs = {"LUCIR-CNN": [64.0] * 6, "LUCIR-NME": [62.0] * 6}
    paper = report.headline_table(_table(False, accs, "paper")).round(2)
    lines = report.headline_markdown(paper).splitlines()
    assert lines[0] == ("| phases | LUCIR-CNN | LUCIR-NME | paper LUCIR-CNN | paper LUCIR-NME "
                        "| LUCIR-CNN - paper | LUCIR-NME - paper |")
    # ours: mean of the two seeds (64.5, 62.5); paper: 63.42 and 63.12
    assert lines[2] == "| 5 | 64.50 ± 0.71 | 62.50 ± 0.71 | 63.42 | 63.12 | +1.08 | -0.62 |"
    reduced = report.headline_markdown(report.headline_table(_table(True, accs, "reduced")).round(2))
    assert "- paper" not in reduced and "| 5 | 64.50 ± 0.71 | 62.50 ± 0.71 | 63.42 | 63.12 |" in reduced


def test_report_top_puts_a_run_at_the_papers_setting_beside_the_published_numbers():
    """A LUCIR-only study at the paper's setting (the paper_cifar profile) has no iCaRL to compare
    with; the top of its report gives ours beside the paper's number and PODNet's re-run, with the
    differences. A reduced setting gives no such line."""
    accs = {"LUCIR-CNN": [64.0] * 6, "LUCIR-NME": [62.0] * 6}
    one_run = _table(False, accs, "cifar100").query("seed == 0")
    assert report.at_papers_setting(one_run) == [
        "cifar100, 5 phases, LUCIR-CNN: 64.00; paper 63.42 (+0.58); "
        "PODNet's re-run 64.01 ± 0.91 (-0.01, within 2x the spread over seeds (0.91))",
        "cifar100, 5 phases, LUCIR-NME: 62.00; paper 63.12 (-1.12); PODNet's re-run 63.63 (-1.63)"]
    assert report.at_papers_setting(_table(True, accs, "reduced")) == []


FIG9_FINALS = {"iCaRL-CNN": 50.0, "iCaRL-NME": 60.0, "LUCIR-NME": 61.0, "LUCIR-CNN": 63.0}


def _fig9_table(reduced: bool) -> pd.DataFrame:
    """A Fig. 9 table of one run per method, B50 + 1: 70 % after the base phase, FIG9_FINALS after
    phase 1, with the old/new confusion shares there."""
    rows = []
    for curve, final in FIG9_FINALS.items():
        method, clf = curve.split("-")
        row = dict(experiment="confusion_matrices", setting="cifar100", dataset="cifar100", method=method, variant="",
                   classifier=clf, curve=curve, phases=1, seed=0, class_order_seed=1993, memory_per_class=20,
                   reduced=reduced, run_dir=method)
        rows.append(row | dict(phase=0, classes_seen=50, metric="acc", value=70.0))
        for metric, value in (("acc", final), ("old_as_new", 90.0 if curve == "iCaRL-CNN" else 20.0),
                              ("new_as_old", 5.0)):
            rows.append(row | dict(phase=1, classes_seen=100, metric=metric, value=value))
    return pd.DataFrame(rows, columns=ex.TABLE_COLUMNS)


def test_report_top_puts_fig9_at_the_papers_setting_beside_the_published_numbers(tmp_path, monkeypatch):
    """A Fig. 9 study at the paper's setting (the paper_cifar_fig9 profile) has no main curves; the
    top of its report gives the four final accuracies beside the paper's, with the differences. A
    reduced setting gives no such line."""
    assert confusion_matrices.at_papers_setting(_fig9_table(False)) == [
        "cifar100, iCaRL-CNN: 50.00; paper 51.80 (-1.80)", "cifar100, iCaRL-NME: 60.00; paper 59.13 (+0.87)",
        "cifar100, LUCIR-NME: 61.00; paper 60.21 (+0.79)", "cifar100, LUCIR-CNN: 63.00; paper 62.34 (+0.66)"]
    assert confusion_matrices.at_papers_setting(_fig9_table(True)) == []
    boxes = {}
    for reduced in (False, True):
        results = tmp_path / str(reduced)
        ex.write_table(_fig9_table(reduced), results, "confusion_matrices", "cifar100", {"phases": 1})
        shown = []
        monkeypatch.setattr(report, "box", lambda text, *kind: shown.append(text))
        monkeypatch.setattr(report, "md", lambda text: None)
        monkeypatch.setattr(report, "show_table", lambda *a, **k: None)
        report.header(results)
        boxes[reduced] = [b for b in shown if "Fig. 9" in b]
    assert len(boxes[False]) == 1 and "LUCIR-CNN: 63.00; paper 62.34 (+0.66)" in boxes[False][0]
    assert boxes[True] == []


def test_fig9_checks_follow_the_papers_text():
    """Fig. 9's text: iCaRL-CNN tends to put samples into new classes, the imbalance 'is mitigated in
    the last three methods' (iCaRL-NME, LUCIR-NME, LUCIR-CNN), and LUCIR-CNN is the most accurate. One
    check per claim, each of which fails when the numbers say otherwise."""
    t = _fig9_table(False)
    held = {check: holds for check, _, holds in confusion_matrices.checks(t)}
    mitigated = [f"iCaRL-CNN puts more old-class images into new classes than {c}"
                 for c in ("LUCIR-CNN", "iCaRL-NME", "LUCIR-NME")]
    assert set(held) == set(mitigated) | {"LUCIR-CNN has the best accuracy of the four"}
    assert all(held.values())
    worse = t.copy()
    worse.loc[(worse.curve == "iCaRL-NME") & (worse.metric == "old_as_new"), "value"] = 95.0
    worse.loc[(worse.curve == "iCaRL-NME") & (worse.metric == "acc") & (worse.phase == 1), "value"] = 64.0
    held = {check: holds for check, _, holds in confusion_matrices.checks(worse)}
    assert not held[mitigated[1]] and not held["LUCIR-CNN has the best accuracy of the four"]
    assert held[mitigated[0]] and held[mitigated[2]]


def test_claim_checks_say_whether_a_difference_is_beyond_seed_noise():
    # LUCIR-CNN 64.5 +- 0.71 vs iCaRL-CNN 60.5 +- 0.71: 4.0 > 2 * 1.0 -> beyond; vs LUCIR-NME 64.0: within
    t = _table(True, {"LUCIR-CNN": [64.0] * 6, "iCaRL-CNN": [60.0] * 6, "LUCIR-NME": [63.5] * 6}, "s")
    rows = {r[0]: r for r in main_curves.checks(t)}
    beat = rows["s, 5 phases: avg. LUCIR-CNN > iCaRL-CNN"]
    assert beat[1] == "64.50 vs 60.50" and beat[2] is True and beat[3].startswith("beyond seed noise")
    nme = rows["s, 5 phases: avg. LUCIR-CNN above LUCIR-NME or within 1 point"]
    assert nme[2] is True and nme[3].startswith("within seed noise")
    assert claims.noise(64.0, float("nan"), 60.0, float("nan"), runs=1) == "unknown: 1 run"


def test_ablation_rows_can_be_chosen():
    plan = component_ablation.plan(5, [0], [1993], {}, rows=["CN", "CN+LC+IS"])
    assert [r.method for r in plan] == ["CN", "CN+LC+IS"]
    assert [r.method for r in component_ablation.plan(5, [0], [1993], {})] == [m for m, _ in component_ablation.ABLATION_ROWS]
    with pytest.raises(ConfigError, match="unknown ablation row 'LC'"):
        component_ablation.plan(5, [0], [1993], {}, rows=["LC"])


# --------------------------------------------------------------------------- files beside report.html
def test_report_folder_holds_tables_claims_and_main_figure(study):
    assert study["proc"].returncode == 0, study["proc"].stderr[-3000:]
    reports = study["reports"]
    assert (reports / "report.html").exists()
    for name in EXPERIMENTS:
        exported = pd.read_csv(reports / "tables" / f"{name}__synthetic.csv")
        written = pd.read_csv(study["results"] / "tables" / name / "synthetic.csv")
        pd.testing.assert_frame_equal(exported, written)
    headline = pd.read_csv(reports / "headline.csv")
    assert set(headline.curve) == {"LUCIR-CNN", "LUCIR-NME", "iCaRL-CNN", "iCaRL-NME", "Joint-CNN"}
    assert (headline.runs == 2).all() and headline["ours std"].notna().all()  # the smoke main curves have 2 seeds
    claims = pd.read_csv(reports / "claims.csv")
    assert set(claims.holds) <= {"yes", "no"} and len(claims) >= 10
    assert (reports / "main_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = pd.read_csv(reports / "runs.csv")  # what each run cost, from its metrics.json
    folders = sorted(p.name for p in (study["results"] / "runs").iterdir() if (p / "metrics.json").exists())
    assert sorted(runs.run) == folders and (runs["train seconds"] > 0).all() and runs.complete.all()
    html = (reports / "report.html").read_text()
    assert "claims at this study" in html and "seed noise" in html
    for name in EXPERIMENTS:  # each figure's closing table, as its notebook ends
        summary = pd.read_csv(reports / "summaries" / f"{name}.csv")
        assert len(summary) and not summary.columns.str.startswith("Unnamed").any(), name
    fig9 = pd.read_csv(reports / "summaries" / "confusion_matrices.csv")
    assert list(fig9.curve) == ["iCaRL-CNN", "iCaRL-NME", "LUCIR-NME", "LUCIR-CNN"]
    assert list(fig9["paper (Fig. 9)"]) == [51.80, 59.13, 60.21, 62.34]


def test_a_study_without_main_curves_still_exports_its_claims_and_summaries(study, tmp_path):
    """A profile of Fig. 9 and Fig. 3 alone (paper_cifar_fig9) has no headline, but its report
    folder holds the checks of both figures in claims.csv, each figure's closing table and each
    figure as a PNG."""
    results = tmp_path / "results"
    results.mkdir()
    (results / "runs").symlink_to(study["results"] / "runs")  # the confusion matrices' arrays, for its figure
    for name in ("confusion_matrices", "weight_norms"):
        (results / "tables" / name).mkdir(parents=True)
        for f in (study["results"] / "tables" / name).glob("synthetic.*"):
            (results / "tables" / name / f.name).write_bytes(f.read_bytes())
    written = report.export(results, tmp_path / "report")
    names = {p.relative_to(tmp_path / "report").as_posix() for p in written}
    assert {"claims.csv", "summaries/confusion_matrices.csv", "summaries/weight_norms.csv"} <= names
    assert not {"headline.csv", "main_curves.png"} & names
    for name in ("confusion_matrices", "weight_norms"):  # its figures stand in for the main one
        assert f"{name}.png" in names and (tmp_path / "report" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    checks = pd.read_csv(tmp_path / "report" / "claims.csv")
    assert set(checks.figure) == {"Confusion matrices (Fig. 9)", "Weight norms (Fig. 3)"}
    assert set(checks.holds) <= {"yes", "no"} and len(checks) >= 3


def test_protocol_table_lists_every_resolved_value_beside_the_papers(study):
    table = report.protocol_table(study["results"]).set_index("setting")
    # smoke.yaml: 8 synthetic classes, 4 in the base phase; phases 1, 2 (main curves) and 4 (Fig. 8)
    assert table.loc["classes", "this study"] == "8" and table.loc["classes in the base phase", "this study"] == "4"
    assert table.loc["incremental phases", "this study"] == "1; 2; 4"
    assert table.loc["exemplars per class (R_per)", "this study"] == "1; 2"
    assert table.loc["run seeds", "this study"] == "0; 1"
    assert table.loc["run seeds", "same as the paper"] == "some of the paper's"
    assert table.loc["lambda_base", "same as the paper"] == "yes"
    assert table.loc["epochs per incremental phase", ["this study", "paper", "same as the paper"]].tolist() == [
        "2", "160", "no"]
