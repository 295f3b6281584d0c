"""What a study profile asks for: studies/<name>.yaml read and checked, each notebook's
parameter sets checked against the notebook's own `parameters` cell, cut down by a --select
selection, and turned into (notebook, parameter set) pairs, each with the plan of runs its
notebook will ask for. Nothing here trains or executes anything (lucir.study does)."""
from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import provenance
from .config import ConfigError
from .figures import FIGURES
from .studies import STUDIES_DIR, StudyError

NOTEBOOKS_DIR = provenance.REPO_ROOT / "notebooks"
# notebook parameters that are not their plan's arguments
NOT_PLANNED = ("setting", "results_dir", "profile")
TYPES = {"int": (int,), "float": (float, int), "str": (str,), "bool": (bool,), "list": (list,), "dict": (dict,)}


@dataclass
class Pair:
    """One notebook with one parameter set."""
    notebook: str
    setting: str
    parameters: dict                          # what papermill injects
    plan: list = field(default_factory=list)  # the runs the notebook will ask for

    @property
    def key(self) -> str:
        return f"{self.notebook}__{self.setting}"


def profile_parameter(name: str, path: Path) -> str:
    """How the notebooks' `profile` parameter names a profile of load_profile: its name when it is
    studies/<name>.yaml, else its file's absolute path (kernels start in notebooks/)."""
    path = Path(path).resolve()
    return name if path == (STUDIES_DIR / f"{name}.yaml").resolve() else str(path)


def notebook_parameters(notebook: str) -> dict:
    """{name: (type name, default value)} of the notebook's `parameters` cell (papermill's view;
    read from the cell itself where papermill is not installed: the GPU image, lucir.campaign)."""
    path = NOTEBOOKS_DIR / f"{notebook}.ipynb"
    try:
        import papermill as pm
    except ImportError:
        return parameters_cell(path)
    params = pm.inspect_notebook(str(path))
    return {name: (p["inferred_type_name"], ast.literal_eval(p["default"])) for name, p in params.items()}


def parameters_cell(path: Path) -> dict:
    """{name: (annotation, default value)} of a notebook's cell tagged `parameters`, whose lines
    are typed literals (`phases: list = [1, 5]  # ...`), as papermill reads them."""
    cells = json.loads(Path(path).read_text())["cells"]
    cell = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    tree = ast.parse("".join(cell["source"]))
    return {node.target.id: (ast.unparse(node.annotation), ast.literal_eval(node.value))
            for node in tree.body if isinstance(node, ast.AnnAssign)}


def _check_type(notebook: str, name: str, value, type_name: str) -> None:
    expected = TYPES.get(type_name)
    if expected and (not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected)):
        raise StudyError(f"notebook {notebook}: parameter '{name}' expects {type_name}, got {value!r}")


# --select KEY=VALUE[,VALUE]: what a selection can name. Values of one key are alternatives
# (repeating a key adds values); different keys must all hold.
SELECT_KEYS = ("dataset", "notebook", "setting", "method", "phases", "seed")
METHOD_SWITCHES = ("cosine_normalization", "less_forget", "inter_class_separation", "adaptive_weight",
                   "class_balanced_finetune", "distillation", "joint_training")


def parse_selection(items: list[str] | None) -> dict[str, set[str]]:
    """{key: allowed values} from --select items; one-line errors for a bad key or value."""
    from .config import DATASETS, PRESETS
    out: dict[str, set[str]] = {}
    for item in items or []:
        key, sep, values = item.partition("=")
        key, chosen = key.strip(), {v.strip() for v in values.split(",") if v.strip()}
        if not sep or key not in SELECT_KEYS or not chosen:
            raise StudyError(f"--select expects KEY=VALUE[,VALUE] with KEY one of {', '.join(SELECT_KEYS)}, "
                             f"got '{item}'")
        known = {"dataset": DATASETS, "notebook": tuple(FIGURES), "method": PRESETS}.get(key)
        bad = sorted(v for v in chosen if (known is not None and v not in known)
                     or (key in ("phases", "seed") and not v.isdigit()))
        if bad:
            expected = ", ".join(known) if known is not None else "whole numbers"
            raise StudyError(f"--select {key}: unknown value '{bad[0]}' (expected {expected})")
        out.setdefault(key, set()).update(chosen)
    return out


def narrow_parameters(notebook: str, params: dict, select: dict) -> dict:
    """The parameters restricted to the selection where a parameter can say it: the phase counts
    (and joint curves), the seeds, and what the notebook's figure narrows itself (its `narrow`:
    main_curves' methods, joint only when selected)."""
    p = dict(params)
    if "phases" in select:
        for name in ("phases", "joint_phases"):
            if isinstance(p.get(name), list):
                p[name] = [v for v in p[name] if str(v) in select["phases"]]
    if "seed" in select and isinstance(p.get("seeds"), list):
        orders = p.get("class_orders")
        if isinstance(orders, list) and len(orders) == len(p["seeds"]) > 1:  # one order per seed: keep the pairs
            p["class_orders"] = [o for v, o in zip(p["seeds"], orders) if str(v) in select["seed"]] or orders[:1]
        p["seeds"] = [v for v in p["seeds"] if str(v) in select["seed"]]
    narrow = FIGURES[notebook].narrow
    return narrow(p, select) if narrow else p


def run_selected(planned, config, select: dict) -> bool:
    """Whether a planned run lies inside the selection. A run is of method m when its method
    switches (CN, LC, IS, AW, CBF, distillation, joint) are those of preset m on its dataset."""
    from .config import make_config
    if "dataset" in select and config.dataset not in select["dataset"]:
        return False
    if "phases" in select and str(config.phases) not in select["phases"]:
        return False
    if "seed" in select and str(config.seed) not in select["seed"]:
        return False
    if "method" in select:
        switches = {k: getattr(config, k) for k in METHOD_SWITCHES}
        return any(switches == {k: getattr(make_config(m, dataset=config.dataset), k) for k in METHOD_SWITCHES}
                   for m in select["method"])
    return True


def build_pairs(content: dict, results_dir: Path, only: list[str] | None, runtime: dict,
                select: dict | None = None, left_out: list | None = None, profile: str | None = None) -> list[Pair]:
    """Every (notebook, parameter set) of the profile, checked against the notebook's parameters
    and with its plan of runs validated (a bad config value fails here, before any training).
    Each gets the whole config in `config_overrides` (the profile's shared fields, its own, then
    `runtime`) and, given, `profile` (profile_parameter) for the notebook's parameter of that name.
    With a selection (parse_selection), each parameter set is narrowed to it (narrow_parameters)
    and kept only if every run its notebook would train lies inside it; `left_out` receives
    (pair key, reason) for the others."""
    select = select or {}
    left_out = [] if left_out is None else left_out
    shared = dict(content.get("shared") or {})
    notebooks = content["notebooks"]
    for name in notebooks:
        if name not in FIGURES:
            raise StudyError(f"profile lists unknown notebook '{name}'; "
                             f"notebooks: {', '.join(FIGURES)}")
    for name in only or []:
        if name not in FIGURES:
            raise StudyError(f"--only: unknown notebook '{name}'; notebooks: {', '.join(FIGURES)}")
        if name not in notebooks:
            raise StudyError(f"--only: notebook '{name}' has no parameter sets in this profile")
    pairs = []
    for notebook, entries in notebooks.items():
        if only and notebook not in only:
            continue
        known = notebook_parameters(notebook)
        if not isinstance(entries, list):
            entries = [entries]
        seen = set()
        for entry in entries:
            if not isinstance(entry, dict):
                raise StudyError(f"notebook {notebook}: each parameter set must be a mapping, got {entry!r}")
            entry = dict(entry)
            for name, value in entry.items():
                if name not in known:
                    raise StudyError(f"notebook {notebook} has no parameter '{name}' "
                                     f"(its parameters: {', '.join(known)})")
                _check_type(notebook, name, value, known[name][0])
            setting = str(entry.get("setting") or shared.get("dataset") or known["setting"][1])
            if not re.fullmatch(r"[\w.+-]+", setting):
                raise StudyError(f"notebook {notebook}: setting name '{setting}' may hold only letters, "
                                 f"digits, . + - _")
            if setting in seen:
                raise StudyError(f"notebook {notebook} has two parameter sets named '{setting}'; "
                                 f"name each with 'setting:'")
            seen.add(setting)
            overrides = {**shared, **(entry.get("config_overrides") or {}), **runtime}
            # every parameter is injected, defaults included, so the executed notebook and the
            # done marker record exactly what ran
            params = {name: default for name, (_, default) in known.items()} | entry | {
                "setting": setting, "results_dir": str(results_dir), "config_overrides": overrides} | (
                {"profile": profile} if profile and "profile" in known else {})
            key = f"{notebook}__{setting}"
            if ("notebook" in select and notebook not in select["notebook"]) or (
                    "setting" in select and setting not in select["setting"]):
                left_out.append((key, "not selected"))
                continue
            if select:
                params = narrow_parameters(notebook, params, select)
                emptied = [k for k in ("phases", "seeds", "methods") if params.get(k) == []]
                if emptied:
                    left_out.append((key, f"no {emptied[0]} left in the selection"))
                    continue
            plan_args = {k: v for k, v in params.items() if k not in NOT_PLANNED}
            try:
                plan = FIGURES[notebook].plan(**plan_args)
                configs = [run.config() for run in plan]
            except ConfigError as e:
                raise StudyError(f"notebook {notebook}, setting {setting}: {e}") from None
            if not plan:
                left_out.append((key, "no runs left in the selection"))
                continue
            outside = [run for run, c in zip(plan, configs) if not run_selected(run, c, select)]
            if outside:
                left_out.append((key, f"it would also train runs outside the selection ({outside[0].method}"
                                      f"{' ' + outside[0].variant if outside[0].variant else ''}, "
                                      f"{outside[0].config().dataset}, {_n(outside[0].config().phases, 'phase')})"))
                continue
            pairs.append(Pair(notebook, setting, params, plan))
    return pairs


def _n(k: int, what: str) -> str:
    return f"{k} {what}{'' if k == 1 else 's'}"
