"""The study profiles in studies/ as files: which there are, one read and checked for its shape,
and the config fields it applies to every run. Below the figures (a figure's notebook reads its
profile's config through its figure) and below lucir.profiles (which builds the study's plan from
a profile)."""
from __future__ import annotations

from pathlib import Path

import yaml

from . import provenance

STUDIES_DIR = provenance.REPO_ROOT / "studies"


class StudyError(Exception):
    """Bad input to the runner; the message is one line for the user."""


def available_profiles() -> list[str]:
    return sorted(p.stem for p in STUDIES_DIR.glob("*.yaml"))


def load_profile(name_or_path: str) -> tuple[str, Path, dict]:
    """(name, path, content) of a profile given by name (studies/<name>.yaml) or by path."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = STUDIES_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise StudyError(f"unknown profile '{name_or_path}'; choose one of: {', '.join(available_profiles())} "
                         f"(in {STUDIES_DIR}) or give the path of a .yaml file")
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise StudyError(f"profile {path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(content, dict):
        raise StudyError(f"profile {path} must be a mapping with 'shared' and 'notebooks'")
    unknown = sorted(set(content) - {"description", "shared", "notebooks", "meant_for", "slurm"})
    if unknown:
        raise StudyError(f"profile {path}: unknown key '{unknown[0]}' (known: description, shared, notebooks, "
                         f"meant_for, slurm)")
    if content.get("meant_for", "gpu") not in ("gpu", "cpu"):
        raise StudyError(f"profile {path}: meant_for must be gpu or cpu, got {content['meant_for']!r}")
    if not isinstance(content.get("shared") or {}, dict):
        raise StudyError(f"profile {path}: 'shared' must be a mapping of config fields")
    if not isinstance(content.get("notebooks"), dict) or not content["notebooks"]:
        raise StudyError(f"profile {path}: 'notebooks' must map notebook names to lists of parameter sets")
    return path.stem, path, content


def shared(profile: str) -> dict:
    """The config fields a profile (a name in studies/ or a .yaml path) applies to every run: what a
    notebook's `config_overrides` go over (its `profile` parameter; the study passes its own)."""
    return dict(load_profile(profile)[2].get("shared") or {})
