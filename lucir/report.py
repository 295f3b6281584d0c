"""The sections of the report notebook. They read only tidy result files: the study record
(results_dir/study/study.json, written by lucir.study), the experiments' tables
(results_dir/tables/<experiment>/<setting>.csv) and the runs' own files; nothing is re-run.
Each section displays markdown, figures and tables in order; a missing experiment is "not run".
What a figure's section shows below its claim is the figure's own (lucir.figures).
build_report executes the report notebook and turns it into report.html, with the files beside it.
"""
from __future__ import annotations

import html
import json
import re
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import yaml

from . import experiments as ex
from . import plots, published
from . import results as res
from .config import upgrade
from .display import box, md, setup, show_table
from .figures import FIGURES, confusion_matrices
from .figures.main_curves import headline_table, with_std
from .provenance import REPO_ROOT


# --------------------------------------------------------------------------- reading
def load_study(results_dir) -> dict | None:
    path = ex.resolve_results_dir(results_dir) / "study" / "study.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def study_pairs(study: dict | None, experiment: str) -> list[dict]:
    return [p for p in (study or {}).get("pairs", []) if p["notebook"] == experiment]


def tables(results_dir, experiment: str) -> pd.DataFrame:
    """The experiment's tables: those the study completed, or every table when there is no study record."""
    study = load_study(results_dir)
    if study is None:
        return ex.read_tables(results_dir, experiment)
    settings = [p["setting"] for p in study_pairs(study, experiment) if p["status"] in ("done", "complete earlier")]
    return ex.read_tables(results_dir, experiment, settings)


def all_tables(results_dir) -> pd.DataFrame:
    frames = [tables(results_dir, e) for e in FIGURES]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ex.TABLE_COLUMNS)


# --------------------------------------------------------------------------- the top
def _reductions(runs: pd.DataFrame) -> list[str]:
    """'field: ours (paper: value)' for every setting field any run changes from the paper."""
    lines, seen = [], set()
    for _, row in runs.iterrows():
        for name, (ours, paper) in published.setting_differences(row.config).items():
            text = f"`{name}` = {ours} (paper: {paper})"
            key = (row.config.get("dataset"), text)
            if key not in seen:
                seen.add(key)
                lines.append(f"{plots.DATASET_NAMES.get(key[0], key[0])}: {text}")
    return lines


def runs_table(results_dir) -> pd.DataFrame:
    """Every run behind the study's tables: its config, metrics summary and wall time."""
    t = all_tables(results_dir)
    rows = []
    for run_dir, group in t.groupby("run_dir"):
        folder = Path(run_dir)
        try:
            config = json.loads((folder / "config.json").read_text())
            metrics = json.loads((folder / "metrics.json").read_text())
        except (OSError, ValueError):
            continue
        rows.append({"run": folder.name, "dataset": config["dataset"], "phases": config["phases"],
                     "seed": config["seed"], "used as": ", ".join(sorted(set(
                         (group.method + " " + group.variant.fillna("")).str.strip()))),
                     "experiments": ", ".join(sorted(set(group.experiment))),
                     "precision": precision_text(config),
                     "avg CNN": 100 * metrics["avg_incremental_accuracy_cnn"],
                     "avg NME": 100 * metrics["avg_incremental_accuracy_nme"],
                     "train seconds": metrics["train_seconds"],
                     "seconds per phase": " ".join(f"{p['seconds']:.0f}" for p in metrics["phases"]),
                     "complete": res.is_complete(folder), "config": config})  # its final weights too
    return pd.DataFrame(rows)


def precision_text(config: dict) -> str:
    """fp32 (the paper's), or what the run switched on: bf16 or fp16 autocast (amp), torch.compile."""
    amp = upgrade({"amp": config.get("amp", "off")})["amp"]  # true/false in runs written before fp16
    parts = ([f"{amp} autocast"] if amp != "off" else ["fp32"]) + (["compiled"] if config.get("compile") else [])
    return ", ".join(parts)


def verdict(t: pd.DataFrame) -> list[tuple[str, float, float]]:
    """(setting, LUCIR-CNN, iCaRL-CNN) average incremental accuracies of every main-curve setting
    of the main-curves table `t`."""
    if t.empty:
        return []
    avg = ex.average_accuracy(t, ["setting", "phases", "curve"])
    wide = avg.pivot_table(index=["setting", "phases"], columns="curve", values="ours")
    if not {"LUCIR-CNN", "iCaRL-CNN"} <= set(wide.columns):
        return []
    return [(f"{s}, {p} phase{'s' if p != 1 else ''}", r["LUCIR-CNN"], r["iCaRL-CNN"]) for (s, p), r in wide.iterrows()]


def at_papers_setting(t: pd.DataFrame) -> list[str]:
    """One line per main curve run at the paper's own setting (nothing reduced): ours beside the
    paper's number and PODNet's re-run, with the differences, e.g. 'cifar100, 5 phases, LUCIR-CNN:
    62.90; paper 63.42 (-0.52); PODNet's re-run 64.01 ± 0.91 (-1.11, within 2x the spread ...)'."""
    h = headline_table(t)
    h = h[h["ours - published"].notna()]
    lines = []
    for (setting, phases, curve), g in h.groupby(["setting", "phases", "curve"], sort=False):
        first = g.iloc[0]
        parts = [f"{setting}, {phases} phase{'s' if phases != 1 else ''}, {curve}: "
                 f"{with_std(first.ours, first['ours std'] if first.runs > 1 else None)}"
                 + (f" over {first.runs} runs" if first.runs > 1 else "")]
        for source, name in ((published.PAPER, "paper"), (published.PODNET, "PODNet's re-run")):
            r = g[g["published source"] == source]
            if len(r):
                r = r.iloc[0]
                meaning = "" if r.comparison.startswith("no spread") else f", {r.comparison}"
                parts.append(f"{name} {with_std(r.published, r['published std'])} "
                             f"({r['ours - published']:+.2f}{meaning})")
        lines.append("; ".join(parts))
    return lines


def header(results_dir) -> None:
    """Profile, dates, the headline comparison and the reductions from the paper's setting."""
    setup()
    study = load_study(results_dir)
    prov = (study or {}).get("provenance", {})
    git = prov.get("git", {})
    if study:
        chosen = "; ".join(f"{k}={','.join(v)}" for k, v in (study.get("select") or {}).items())
        md(f"**Profile:** `{study['profile']}` ({study['profile_path']}). {study.get('description', '')}"
           f"{f' **Cut down by --select** {chosen}: only those runs.' if chosen else ''}\n\n"
           f"**Last invocation** started {study['started']}, finished {study.get('finished') or 'not finished'}"
           f"{_render_only(study)}; "
           f"**commit** `{(git.get('commit') or 'unknown')[:12]}`"
           f"{' (with uncommitted changes)' if git.get('dirty') else ''}; "
           f"**device** {_device_text(prov.get('device', {}))}.")
    else:
        md("**No study record** (results/study/study.json): the notebooks were run by hand; "
           "every table found is shown.")
    main = tables(results_dir, "main_curves")
    rows, at_paper = (verdict(main), at_papers_setting(main)) if len(main) else ([], [])
    if main.empty:
        box("The main curves were not run, so there is no headline comparison of LUCIR and iCaRL.", "notrun")
    elif not rows and not at_paper:
        box("The main curves ran without iCaRL-CNN, so there is no headline comparison of LUCIR and iCaRL.",
            "notrun")
    if at_paper:
        box("<b>At the paper's own setting</b> (average incremental accuracy, %; the differences are ours minus "
            "the published number): " + html.escape("; ".join(at_paper)) + ".")
    fig9 = tables(results_dir, "confusion_matrices")
    at_paper_fig9 = confusion_matrices.at_papers_setting(fig9) if len(fig9) else []
    if at_paper_fig9:
        box("<b>Fig. 9 at the paper's own setting</b> (final accuracy on all classes after one phase, %; the "
            "differences are ours minus the paper's): " + html.escape("; ".join(at_paper_fig9)) + ".")
    if rows:
        below = [r for r in rows if not r[1] > r[2]]
        text = "; ".join(f"{s}: LUCIR-CNN {a:.2f} vs iCaRL-CNN {b:.2f}" for s, a, b in rows)
        if below:
            box(f'<span class="verdict-no">LUCIR-CNN does not come out above iCaRL-CNN</span> in '
                f"{len(below)} of {len(rows)} main-curve settings (average incremental accuracy, %): "
                f"{html.escape(text)}.",
                "failed")
        else:
            box(f'<span class="verdict-yes">LUCIR-CNN comes out above iCaRL-CNN</span> in every main-curve setting '
                f"(average incremental accuracy, %): {html.escape(text)}.")
    found = claims(results_dir)
    if len(found):
        held = int((found.holds == "yes").sum())
        md(f"**The paper's claims at this study's scale**: {held} of {len(found)} checks hold. Each check is "
           "repeated in its figure's section below. *Seed noise* compares a difference with the spread over "
           "seeds: beyond noise when |a - b| > 2 sqrt(std_a^2 + std_b^2); with one run it is unknown.")
        show_table(found.assign(figure=found.figure.map({f.title: f.label for f in FIGURES.values()})))
    runs = runs_table(results_dir)
    reductions = _reductions(runs)
    if runs.empty:
        md("No runs yet.")
    elif reductions:
        md("**This study is reduced from the paper's setting**, so its numbers are not a test of the "
           "published ones:\n\n"
           + "\n".join(f"- {r}" for r in reductions))
    else:
        md("Every run uses the paper's setting (data, schedule, hyperparameters).")


def _render_only(study: dict) -> str:
    """A note when the last invocation trained and executed nothing (it only rendered the report)."""
    pairs = study.get("pairs") or []
    if pairs and all(p.get("status") == "complete earlier" for p in pairs):
        return (" (it only rendered this report: every notebook run was complete earlier; when each table "
                "was written: Provenance, below)")
    return ""


def _device_text(device: dict) -> str:
    if not device:
        return "unknown"
    return f"{device.get('gpu') or 'no GPU'}; CPU {device.get('cpu')} ({device.get('cpu_cores')} cores)"


# --------------------------------------------------------------------------- settings
# The protocol of a run as the settings table shows it: (label, config field or a function of the config).
PROTOCOL = [
    ("dataset", "dataset"), ("classes", "num_classes"), ("classes in the base phase", "base_classes"),
    ("incremental phases", "phases"), ("train images per class", "train_per_class"),
    ("test images per class", "test_per_class"), ("exemplars per class (R_per)", "memory_per_class"),
    ("fixed total memory (R_total)", "memory_total"), ("base-phase epochs", "base_epochs"),
    ("base-phase lr steps after epochs", "base_lr_milestones"), ("epochs per incremental phase", "epochs"),
    ("incremental lr steps after epochs", "lr_milestones"), ("batch size", "batch_size"), ("lr", "lr"),
    ("lambda_base", "lambda_base"), ("NME second view (nme_flip)", "nme_flip"), ("class order seed", "class_order_seed"),
    ("run seeds", "seed"),
]


def _resolved(config: dict, field: str, sizes: tuple) -> object:
    """A config value with None spelled out as what it means for this dataset."""
    value = config.get(field)
    if value is None and field in ("num_classes", "train_per_class", "test_per_class"):
        return f"all ({sizes[('num_classes', 'train_per_class', 'test_per_class').index(field)]})"
    if value is None and field in ("base_epochs", "base_lr_milestones"):
        return _resolved(config, field[len("base_"):], sizes)
    if value is None:
        return "none"
    return ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else value


def protocol_table(results_dir) -> pd.DataFrame:
    """Every protocol value the runs of this study used (resolved), beside the paper's."""
    from .data import DATASET_SIZE
    runs = runs_table(results_dir)
    if runs.empty:
        return pd.DataFrame(columns=["setting", "this study", "paper"])
    rows = []
    for dataset in sorted({c["dataset"] for c in runs.config}):
        configs = [c for c in runs.config if c["dataset"] == dataset]
        sizes = DATASET_SIZE.get(dataset, ("?", "?", "?"))
        paper = published.paper_config(dataset).to_dict()
        # values the paper runs several of: the phase counts of Fig. 5/6, and 3 runs (our paper profile's seeds)
        several = {"phases": ["1", "2", "5", "10"] if dataset == "cifar100" else ["5", "10"], "seed": ["0", "1", "2"]}
        for label, field in PROTOCOL:
            ours = sorted({str(_resolved(c, field, sizes)) for c in configs}, key=lambda v: (len(v), v))
            ref = several.get(field, [str(_resolved(paper, field, sizes))])
            same = "yes" if ours == ref else ("some of the paper's" if set(ours) < set(ref) else "no")
            rows.append({"dataset": plots.DATASET_NAMES.get(dataset, dataset), "setting": label,
                         "this study": "; ".join(ours), "paper": "; ".join(ref), "same as the paper": same})
    return pd.DataFrame(rows)


def settings_section(results_dir) -> None:
    """The protocol of the runs, the profile's shared overrides and parameter sets beside the paper's."""
    study = load_study(results_dir)
    paper_path = REPO_ROOT / "studies" / "paper.yaml"
    paper = yaml.safe_load(paper_path.read_text()) if paper_path.exists() else {"notebooks": {}}
    protocol = protocol_table(results_dir)
    if len(protocol):
        md("The protocol of every run behind this report (values resolved from each run's config.json; several "
           "values are separated by ';'), beside the paper's (Sec. 4.1):")
        show_table(protocol)
    if study:
        shared = study.get("shared") or {}
        md("Config fields set for every run by the profile (`shared`):")
        paper_values = published.paper_config().to_dict()
        show_table(pd.DataFrame([{"field": k, "this study": str(v), "paper (config default)":
                                  str(published.shown(k, paper_values.get(k)))} for k, v in shared.items()])
                   if shared else pd.DataFrame({"field": ["(none: the config defaults, the paper's setting)"]}))
    md("Parameter sets of each notebook (one line each), beside those of the `paper` profile (studies/paper.yaml):")
    ours_name = study["profile"] if study else "this study"
    rows = []
    for notebook in FIGURES:
        ours = (study or {}).get("notebooks", {}).get(notebook) or []
        ran = {p["setting"] for p in study_pairs(study, notebook)}
        for entry in ours:
            status = "" if entry.get("setting", "") in ran or not ran else " (not selected)"
            rows.append({"notebook": notebook, "profile": ours_name + (status if ran else " (not run)"),
                         "parameter set": _params_text(entry)})
        for entry in paper.get("notebooks", {}).get(notebook, []):
            rows.append({"notebook": notebook, "profile": "paper", "parameter set": _params_text(entry)})
    show_table(pd.DataFrame(rows))


def _params_text(entry: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in entry.items())


# --------------------------------------------------------------------------- experiment sections
def _status(results_dir, experiment: str) -> pd.DataFrame | None:
    """The experiment's table, or None after saying why there is none."""
    study = load_study(results_dir)
    failed = [p for p in study_pairs(study, experiment) if p["status"] == "failed"]
    for p in failed:
        box(f"<b>Failed</b>: {html.escape(experiment)} / {html.escape(p['setting'])}: "
            f"{html.escape(p.get('error', ''))}<br>executed notebook: {html.escape(p.get('executed', ''))}",
            "failed")
    t = tables(results_dir, experiment)
    if t.empty:
        if failed:  # a table an earlier study left in results/tables/ is not this study's result
            box("No table from this study: its notebook run failed (above).", "notrun")
        else:
            box(f"<b>Not run</b> in this study: no table of it completed (results/tables/{experiment}/).", "notrun")
        return None
    reduced = bool(t.reduced.any())
    box(f"<b>The paper:</b> {html.escape(FIGURES[experiment].claim)}"
        + ("<br><i>Our setting is reduced (see the top), so compare trends, not values.</i>" if reduced else ""))
    return t


def claims(results_dir) -> pd.DataFrame:
    """Every check of every claim the study could test: figure, check, ours, holds, seed noise."""
    rows = []
    for experiment, figure in FIGURES.items():
        t = tables(results_dir, experiment)
        if t.empty:
            continue
        for r in figure.checks(t):
            rows.append({"figure": figure.title, "check": r[0], "ours": r[1], "holds": "yes" if r[2] else "no",
                         "seed noise": r[3] if len(r) > 3 else ""})
    return pd.DataFrame(rows, columns=["figure", "check", "ours", "holds", "seed noise"])


def section(results_dir, experiment: str) -> None:
    """One figure's section: its claim in the paper's words (or why it has no table), then its own
    body (lucir.figures)."""
    t = _status(results_dir, experiment)
    if t is not None:
        FIGURES[experiment].section(t)


def figure_sections(results_dir) -> None:
    """The section of every figure of the registry, each under its heading, in the registry's order."""
    for name, figure in FIGURES.items():
        md(f"## {figure.heading}")
        section(results_dir, name)


# --------------------------------------------------------------------------- the rest
def deviations_section() -> None:
    """docs/deviations.md, the one list of deviations that the README also points to."""
    path = REPO_ROOT / "docs" / "deviations.md"
    if not path.exists():
        md(f"(docs/deviations.md not found at {path})")
        return
    lines = path.read_text().splitlines()
    body = [("#" + l) if l.startswith("## ") else l for l in lines if not l.startswith("# ")]
    md("\n".join(body) + "\n\n*Source: `docs/deviations.md`.*")


def runs_section(results_dir) -> None:
    """Wall time of every notebook and every run."""
    study = load_study(results_dir)
    if study:
        pairs = pd.DataFrame([{"notebook": p["notebook"], "setting": p["setting"], "status": p["status"],
                               "seconds": p.get("seconds")} for p in study["pairs"]])
        md("Notebook runs of this study, with the seconds each took (`complete earlier`: skipped in the last "
           "invocation because its outputs were complete; the seconds are those of the run that made them):")
        show_table(pairs, digits=0)
    runs = runs_table(results_dir)
    if runs.empty:
        md("No runs.")
        return
    md(f"Every run behind the tables ({len(runs)} run{'s' if len(runs) != 1 else ''}, "
       f"{runs['train seconds'].sum() / 60:.1f} minutes of training "
       "recorded in their metrics.json; a base phase loaded from the cache counts only its loading time):")
    show_table(runs_display(runs), digits=1)


def runs_display(runs: pd.DataFrame) -> pd.DataFrame:
    """runs_table with the columns a reader needs: the run's name already says its dataset, phase
    count and seed; precision and completeness only where some run differs."""
    cols = ["run", "used as", "avg CNN", "avg NME", "train seconds", "seconds per phase"]
    if (runs.precision != "fp32").any():
        cols.insert(2, "precision")
    if not runs.complete.astype(bool).all():
        cols.append("complete")
    return runs[cols]


def provenance_section(results_dir) -> None:
    study = load_study(results_dir)
    prov = (study or {}).get("provenance")
    if not prov:
        md("No provenance recorded (the notebooks were run by hand; each table's sidecar .json holds its own).")
        return
    git = prov.get("git", {})
    md(f"- **date** {prov.get('date')}\n- **git commit** `{git.get('commit')}`"
       f"{' with uncommitted changes' if git.get('dirty') else ''}\n"
       f"- **device** {_device_text(prov.get('device', {}))}, "
       f"torch threads {prov.get('device', {}).get('torch_threads')}")
    show_table(pd.DataFrame([{"package": k, "version": v} for k, v in prov.get("versions", {}).items()]))
    for d in prov.get("data", []):
        how = ("sha256 of torchvision's files, whose MD5 sums torchvision checks when it downloads them"
               if d.get("format") == "torchvision" else "sha256 of every file listed in its SHA256SUMS, checked")
        md(f"Data **{d['dataset']}** from `{d['folder']}` ({how}):")
        show_table(pd.DataFrame([{"file": f["file"], "sha256": f["sha256"], "matches SHA256SUMS": f["ok"]}
                                 for f in d["files"]]))
    if not prov.get("data"):
        md("Data: synthetic (made in memory from a seed); no files.")
    campaigns = sorted((ex.resolve_results_dir(results_dir) / "study" / "campaigns").glob("*.json"))
    if campaigns:
        md("Runs trained elsewhere (`python -m lucir.campaign`, brought here with `land`): where, when, by which "
           "commit and command, and the runs each lease trained.")
        rows = []
        for path in campaigns:
            c = json.loads(path.read_text())
            p = c.get("provenance", {})
            rows.append({"trained": c.get("started"), "device": _device_text(p.get("device", {})),
                         "commit": (p.get("git", {}).get("commit") or "")[:12],
                         "torch": p.get("versions", {}).get("torch"), "seconds": c.get("seconds"),
                         "image-steps/s": c.get("rate"),
                         "runs": ", ".join(f"{r['run']} ({r['state']})" for r in c.get("runs", [])),
                         "command": c.get("command")})
        show_table(pd.DataFrame(rows), digits=0)
    sidecars = []
    for experiment in FIGURES:
        for p in study_pairs(study, experiment):
            path = ex.table_path(results_dir, experiment, p["setting"]).with_suffix(".json")
            if path.exists():
                meta = json.loads(path.read_text())
                sidecars.append({"table": f"{experiment}/{p['setting']}", "written": meta.get("date"),
                                 "commit": (meta.get("git", {}).get("commit") or "")[:12],
                                 "notebook seconds": meta.get("notebook_seconds")})
    if sidecars:
        md("When each table was written, and by which commit (*notebook seconds*: the notebook's own time to "
           "write it; in a study the runs are trained before, so it only loads them):")
        show_table(pd.DataFrame(sidecars), digits=1)


# --------------------------------------------------------------------------- files beside report.html
REPORT = "report"  # the report's notebook, notebooks/report.ipynb


def build_report(results_dir: Path, reports_dir: Path, env: dict) -> Path:
    """Execute notebooks/report.ipynb on the results (in a kernel started with `env`,
    lucir.notebook_runner.kernel_env), convert it to one HTML file, <reports>/report.html (code
    hidden, figures embedded, no script from the network), and write the files beside it (export)."""
    import nbformat
    from nbconvert import HTMLExporter

    from .notebook_runner import execute
    executed = Path(reports_dir) / "executed" / f"{REPORT}.ipynb"
    execute(REPORT, executed, {"results_dir": str(results_dir)}, env)
    exporter = HTMLExporter(template_name="lab", exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nbformat.read(executed, as_version=4))
    body = re.sub(r'<script[^>]*src="https?://[^"]*"[^>]*>\s*</script>', "", body)  # self-contained, offline
    html = Path(reports_dir) / "report.html"
    res.atomic_write(html, lambda p: Path(p).write_text(body, encoding="utf-8"))
    export(results_dir, reports_dir)
    return html


def export(results_dir, reports_dir) -> list[Path]:
    """What a reader of the repository sees without running anything, next to report.html:
    tables/<experiment>__<setting>.csv (the tidy tables the report was built from, as written by
    the notebooks), summaries/<experiment>.csv (each figure's closing table, as its notebook and
    report section end: for Fig. 9, the final accuracies beside the paper's), claims.csv (every
    check of the paper's claims, whichever figures ran), headline.csv (the main-curves summary
    beside the published numbers), headline.md (headline.csv as a Markdown table, the README's),
    main_curves.png (Fig. 5/6 of this study; a study without main curves, such as Fig. 9 and Fig. 3
    alone, has <experiment>.png for each of its figures instead) and runs.csv (every run: its
    averages, training seconds in all and per phase, precision: what the study cost)."""
    out = Path(reports_dir)
    written = []
    study = load_study(results_dir)
    for experiment in FIGURES:
        settings = ([p["setting"] for p in study_pairs(study, experiment) if p["status"] in ("done", "complete earlier")]
                    if study else [p.stem for p in sorted((ex.resolve_results_dir(results_dir) / "tables" /
                                                          experiment).glob("*.csv"))])
        for setting in settings:
            source = ex.table_path(results_dir, experiment, setting)
            if source.exists():
                target = out / "tables" / f"{experiment}__{setting}.csv"
                res.atomic_write(target, lambda p, text=source.read_text(): Path(p).write_text(text))
                written.append(target)
    runs = runs_table(results_dir)
    if len(runs):
        res.atomic_write(out / "runs.csv", lambda p: runs.drop(columns=["config"]).to_csv(
            p, index=False, float_format="%.2f"))
        written.append(out / "runs.csv")
    found = {experiment: tables(results_dir, experiment) for experiment in FIGURES}
    for experiment, t in found.items():
        if len(t):
            summary = FIGURES[experiment].summary(t)
            summary = summary if isinstance(summary.index, pd.RangeIndex) else summary.reset_index()
            target = out / "summaries" / f"{experiment}.csv"
            res.atomic_write(target, lambda p, f=summary: f.to_csv(p, index=False))
            written.append(target)
    checks, main = claims(results_dir), found["main_curves"]
    if len(checks) or len(main):  # with the main curves always, as lucir.compare reads it beside headline.csv
        res.atomic_write(out / "claims.csv", lambda p: checks.to_csv(p, index=False, float_format="%.2f"))
        written.append(out / "claims.csv")
    if len(main):
        res.atomic_write(out / "headline.csv",
                         lambda p: headline_table(main).to_csv(p, index=False, float_format="%.2f"))
        written.append(out / "headline.csv")
        text = headline_markdown(pd.read_csv(out / "headline.csv")) + "\n"  # as the README shows it
        res.atomic_write(out / "headline.md", lambda p: Path(p).write_text(text))
        written.append(out / "headline.md")
        plots.setup()
        fig = FIGURES["main_curves"].plot(main)
        # two lines and a tight box: one panel is narrower than the title on one line
        fig.suptitle(f"{(study or {}).get('profile', 'study')}: accuracy after each phase\n(mean and std over runs)")
        written.append(_write_png(fig, out / "main_curves.png"))
    else:
        plots.setup()
        written += [_write_png(FIGURES[experiment].plot(t), out / f"{experiment}.png")
                    for experiment, t in found.items() if len(t)]
    return written


def _write_png(fig: plt.Figure, path: Path) -> Path:
    """`fig` as a PNG beside report.html (written atomically, in a tight box), then closed."""
    res.atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def headline_markdown(headline: pd.DataFrame) -> str:
    """reports/<profile>/headline.csv as the README's table: average incremental accuracy (%) per
    phase count and curve, mean ± std over runs where there are several, beside the paper's, and,
    where our setting is the paper's, the difference ours - paper for each curve."""
    curves = [c for c in ex.MAIN_CURVES if c in set(headline.curve)]
    ours = headline.drop_duplicates(["setting", "phases", "curve"])
    paper = headline[headline["published source"] == published.PAPER]
    paper_curves = sorted(set(paper.curve), key=list(ex.MAIN_CURVES).index)
    diff_curves = [c for c in paper_curves if paper[paper.curve == c]["ours - published"].notna().any()]
    lines = ["| phases | " + " | ".join(curves) + "".join(f" | paper {c}" for c in paper_curves)
             + "".join(f" | {c} - paper" for c in diff_curves) + " |",
             "|---" * (1 + len(curves) + len(paper_curves) + len(diff_curves)) + "|"]
    for (setting, phases), g in ours.groupby(["setting", "phases"]):
        cells = []
        for curve in curves:
            row = g[g.curve == curve]
            if row.empty:
                cells.append("—")
                continue
            r = row.iloc[0]
            cells.append(f"{r.ours:.2f}" + (f" ± {r['ours std']:.2f}" if r.runs > 1 else ""))
        diffs = []
        for curve in paper_curves:
            p = paper[(paper.setting == setting) & (paper.phases == phases) & (paper.curve == curve)]
            cells.append(f"{p.published.iloc[0]:.2f}" if len(p) else "—")
            if curve in diff_curves:
                diff = p["ours - published"].iloc[0] if len(p) else None
                diffs.append("—" if diff is None or pd.isna(diff) else f"{diff:+.2f}")
        lines.append(f"| {phases} | " + " | ".join(cells + diffs) + " |")
    return "\n".join(lines)


def claims_markdown(claims_table: pd.DataFrame) -> str:
    """reports/<profile>/claims.csv as the README's table: one row per check of the paper's
    claims. A column whose filled cells are all alike (seed noise "unknown: 1 run" in a one-seed
    study) is left out; the README's text says what it held."""
    claims_table = claims_table.fillna("")  # an empty cell (no seed noise to tell) reads back as NaN
    keep = [c for c in claims_table.columns
            if c in ("check", "holds") or claims_table[c][claims_table[c] != ""].nunique() > 1]
    lines = ["| " + " | ".join(keep) + " |", "|---" * len(keep) + "|"]
    for _, row in claims_table[keep].iterrows():
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)
