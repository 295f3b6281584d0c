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
    names, a report at the paper's scale (its headline compares with the published number rather
    than saying 'not comparable')."""
    import pandas as pd
    from lucir import published
    section = README[README.index("## Results: what the study measured"):]
    rows = [line for line in section.splitlines() if line.startswith("| LUCIR-") or line.startswith("| iCaRL-")
            or line.startswith("| Fig. 9")]
    assert len(rows) >= 7
    known = {v for *_, v, _ in published.AVERAGE_INCREMENTAL_ACCURACY} | set(published.FINAL_ACCURACY_ONE_PHASE.values())
    checked = 0
    for row in rows:
        cell, paper, ours, diff, _podnet, _cost, report = [c.strip() for c in row.strip("|").split("|")]
        assert {float(v) for v in paper.split(" / ")} <= known, row
        if ours in ("running", "not run yet"):
            continue
        curve, phases = cell.split(",")[0], int(cell.split(",")[1].split()[0])
        head = pd.read_csv(ROOT / "reports" / report.strip("`") / "headline.csv")
        mine = head[(head.curve == curve) & (head.phases == phases) & (head["published source"] == published.PAPER)]
        assert len(mine) == 1, row
        assert f"{mine.ours.iloc[0]:.2f}" == ours and float(paper) == mine.published.iloc[0], row
        assert f"{mine['ours - published'].iloc[0]:+.2f}" == diff, row
        assert "not comparable" not in mine.comparison.iloc[0], row
        checked += 1
    assert checked >= 2
