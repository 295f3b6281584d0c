"""The README stays true and short: under 250 lines, it links the deviation list and the config
table (docs/config.md, generated from the fields), its test command is the one CI runs, and its
result tables are those of the committed reports."""
import re
from dataclasses import fields
from pathlib import Path

import lucir

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_is_short_and_links_the_deviations():
    lines = README.count("\n")
    assert lines < 250, f"README has {lines} lines; move detail to docs/"
    bullets = [line for line in (ROOT / "docs" / "deviations.md").read_text().splitlines() if line.startswith("- ")]
    assert len(bullets) >= 15
    assert "(docs/deviations.md)" in README and "(docs/protocol.md)" in README
    for doc in ("study.md", "performance.md", "config.md"):
        assert f"(docs/{doc})" in README and (ROOT / "docs" / doc).exists()
    assert "SPEC.md" not in README


def test_config_table_lists_every_field():
    """docs/config.md holds the table that lucir.config.config_table() writes from the fields."""
    from lucir.config import config_table
    doc = (ROOT / "docs" / "config.md").read_text()
    for f in fields(lucir.Config):
        assert re.search(rf"^\| `{f.name}` \|", doc, re.M), f"docs/config.md lacks {f.name}"
    assert config_table() in doc, "docs/config.md is out of date: paste lucir.config.config_table() into it"
    assert "docs/config.md" in README


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    command = "bash scripts/setup.sh && python3 -m pytest -q"
    assert command in README and command in ci


def test_readme_headline_tables_are_those_of_the_committed_reports():
    """The README's accuracy tables are copied from reports/<profile>/headline.md, which the
    study writes from headline.csv: a report regenerated without updating the README fails here."""
    import pandas as pd
    from lucir.report import headline_markdown
    found = sorted((ROOT / "reports").glob("*/headline.csv"))
    for path in found:
        table = headline_markdown(pd.read_csv(path))
        assert table == (path.parent / "headline.md").read_text().strip()
        assert table in README, f"README lacks the headline table of {path.parent.name}"
        assert f"reports/{path.parent.name}/main_curves.png" in README


def test_readme_shows_the_claims_of_the_full_data_study():
    """Which of the paper's claims hold at full data: the README gives the count from
    reports/full_cpu/claims.csv and every check that fails, as the study wrote it, so a re-rendered
    report without an updated README fails here."""
    import pandas as pd
    from lucir.report import claims_markdown
    claims = pd.read_csv(ROOT / "reports" / "full_cpu" / "claims.csv")
    assert len(claims) and set(claims.holds) <= {"yes", "no"}
    held, failed = (claims.holds == "yes").sum(), claims[claims.holds == "no"]
    assert f"Of the paper's {len(claims)} checks at full data, {held} hold" in README
    assert f"The {len(failed)} that do not" in README
    assert claims_markdown(failed) in README, "README lacks the failing rows of reports/full_cpu/claims.csv"


def test_the_protocol_is_in_the_repository_and_nothing_cites_a_file_outside_it():
    """docs/protocol.md holds the equations, settings and published numbers; no tracked file
    (the committed reports included) cites SPEC.md, a page the reader does not have."""
    import subprocess
    protocol = (ROOT / "docs" / "protocol.md").read_text()
    for needle in ("Eq. 7", "Eq. 8", "Where the paper and the code disagree", "63.42", "64.01 ± 0.91", "62.34",
                   "lamda_base * sqrt(num_old_classes/num_new_classes)"):
        assert needle in protocol, needle
    from lucir import published
    for _, _, _, value, std in published.AVERAGE_INCREMENTAL_ACCURACY:
        assert f"{value:.2f}" in protocol, f"published number {value} without its source in docs/protocol.md"
    for value in published.FINAL_ACCURACY_ONE_PHASE.values():
        assert f"{value:.2f}" in protocol
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    citing = [p for p in tracked if p != "tests/test_readme.py"
              and "SPEC.md" in (ROOT / p).read_text(errors="ignore")]
    assert not citing, f"files citing SPEC.md: {citing}"


def test_readme_results_table_holds_the_paper_scale_reports_and_the_published_numbers():
    """The table that opens the README's results: every number in its 'paper' column is a published
    one (lucir.published), and every number in its 'ours' column is that of the committed report it
    names, a report at the paper's scale (its headline, or Fig. 9's summary, compares with the
    published number rather than saying 'not comparable')."""
    from lucir import published
    section = README[README.index("## Results: what the study measured"):]
    rows = [line for line in section.splitlines() if line.startswith("| LUCIR-") or line.startswith("| iCaRL-")
            or line.startswith("| Fig. 9")]
    assert len(rows) >= 7
    known = {v for *_, v, _ in published.AVERAGE_INCREMENTAL_ACCURACY} | set(published.FINAL_ACCURACY_ONE_PHASE.values())
    checked = 0
    for row in rows:
        cell, paper, ours, diff, _podnet, _cost, report = _cells(row)
        assert {float(v) for v in paper.split(" / ")} <= known, row
        if ours in ("running", "trained", "not run yet"):  # trained: its report waits for another run
            continue
        check_row = check_fig9_row if cell.startswith("Fig. 9") else check_average_row
        check_row(row, ROOT / "reports" / report.strip("`"))
        checked += 1
    assert checked >= 2


def _cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip("|").split("|")]


def check_average_row(row: str, report) -> None:
    """A row of average incremental accuracy: 'ours', 'paper' and the difference are the report's
    headline.csv, at the paper's setting."""
    import pandas as pd
    from lucir import published
    cell, paper, ours, diff, *_ = _cells(row)
    curve, phases = cell.split(",")[0], int(cell.split(",")[1].split()[0])
    head = pd.read_csv(report / "headline.csv")
    mine = head[(head.curve == curve) & (head.phases == phases) & (head["published source"] == published.PAPER)]
    assert len(mine) == 1, row
    assert f"{mine.ours.iloc[0]:.2f}" == ours and float(paper) == mine.published.iloc[0], row
    assert f"{mine['ours - published'].iloc[0]:+.2f}" == diff, row
    assert "not comparable" not in mine.comparison.iloc[0], row


def check_fig9_row(row: str, report) -> None:
    """A row of Fig. 9 ('Fig. 9, 1 phase, final: A / B'): each curve's 'ours', 'paper' and
    difference are those of the report's summaries/confusion_matrices.csv (Fig. 9's closing
    table), which gives a difference only at the paper's setting."""
    import pandas as pd
    cell, paper, ours, diff, *_ = _cells(row)
    curves = [c.strip() for c in cell.split("final:")[1].split("/")]
    summary = pd.read_csv(report / "summaries" / "confusion_matrices.csv").set_index("curve")
    assert "ours - published" in summary.columns, f"{row}: the report's setting is not the paper's"
    for curve, p, o, d in zip(curves, paper.split(" / "), ours.split(" / "), diff.split(" / "), strict=True):
        assert f"{summary.loc[curve, 'ours']:.2f}" == o and float(p) == summary.loc[curve, "paper (Fig. 9)"], row
        assert f"{summary.loc[curve, 'ours - published']:+.2f}" == d, row


def test_a_fig9_row_is_checked_against_its_reports_summary(tmp_path):
    """check_fig9_row, on a report folder made here: the row that states the summary's numbers
    passes; a wrong accuracy, a wrong difference or a report at a reduced setting fails."""
    import pandas as pd
    import pytest
    (tmp_path / "summaries").mkdir()
    summary = pd.DataFrame({"curve": ["LUCIR-NME", "LUCIR-CNN"], "ours": [60.5, 62.0], "paper (Fig. 9)": [60.21, 62.34],
                            "ours - published": [0.29, -0.34]})
    summary.to_csv(tmp_path / "summaries" / "confusion_matrices.csv", index=False)
    good = "| Fig. 9, 1 phase, final: LUCIR-CNN / LUCIR-NME | 62.34 / 60.21 | 62.00 / 60.50 | -0.34 / +0.29 | | 5 h | `x` |"
    check_fig9_row(good, tmp_path)
    for bad in (good.replace("62.00 / 60.50", "62.10 / 60.50"), good.replace("-0.34 / +0.29", "+0.34 / +0.29")):
        with pytest.raises(AssertionError):
            check_fig9_row(bad, tmp_path)
    summary.drop(columns="ours - published").to_csv(tmp_path / "summaries" / "confusion_matrices.csv", index=False)
    with pytest.raises(AssertionError, match="not the paper's"):
        check_fig9_row(good, tmp_path)
