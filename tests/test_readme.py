"""The README stays true: its deviation list matches docs/deviations.md, its config table and
the CLI's --help name every field, and its test command is the one CI runs."""
import re
from dataclasses import fields
from pathlib import Path

import lucir

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_every_deviation_is_in_the_readme():
    bullets = [line for line in (ROOT / "docs" / "deviations.md").read_text().splitlines() if line.startswith("- ")]
    assert len(bullets) >= 15
    missing = [b[:60] for b in bullets if b not in README]
    assert not missing, f"deviations missing from README: {missing}"


def test_config_table_lists_every_field():
    for f in fields(lucir.Config):
        assert re.search(rf"^\| `{f.name}` \|", README, re.M), f"README config table lacks {f.name}"


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    command = "bash scripts/setup.sh && python3 -m pytest -q"
    assert command in README and command in ci
