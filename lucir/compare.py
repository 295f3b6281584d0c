"""Your run beside the reference: two finished study reports compared cell by cell.

    python -m lucir.compare REFERENCE OTHER

A report folder is what `python -m lucir.study` writes (report.html, headline.csv, claims.csv);
the committed ones are reports/<profile>/. Two kinds of cell are compared:

- each headline accuracy (headline.csv: average incremental accuracy of a setting, phase count and
  curve). They agree when |other - reference| <= 2 sqrt(std_ref^2 + std_other^2), the project's
  seed-noise rule (lucir.claims.beyond_noise), each std being the spread between seeds that its report
  shows. A report with one run of a cell has no spread of its own; for it the spread the project
  measured between two seeds of ours at full CIFAR-100 is taken (reports/authors_code/summary.csv,
  per classifier), and the verdict says so;
- each check of the paper's claims (claims.csv): it agrees when it holds, or fails, in both.

A report of a profile without main curves (paper_cifar_fig9: Fig. 9 and Fig. 3 alone) has no
headline.csv; it is compared on its claims, and the verdict says that it has no headline cells.

The verdict is "reproduced" when every cell compared agrees, else "not reproduced" with the cells
that differ and by how much, and the machines of both (CPU model and torch, read from each
report's provenance section). `python -m lucir.study` prints it at the end of a study whose
profile has a committed report, writes it to verdict.md and puts it at the top of report.html.
Exit status 0: reproduced; 1: not reproduced; 2: bad input (a folder that is not a report), one
line on stderr.
"""
from __future__ import annotations

import argparse
import html as html_mod
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .claims import spread as seed_spread
from .provenance import REPO_ROOT

CELL = ["setting", "phases", "curve"]
MEASURED = REPO_ROOT / "reports" / "authors_code" / "summary.csv"


# the headline of a report without main curves: no cell, the columns that a merge on CELL needs
NO_HEADLINE = pd.DataFrame({"setting": pd.Series(dtype=object), "phases": pd.Series(dtype="int64"),
                            "curve": pd.Series(dtype=object), "ours": pd.Series(dtype=float),
                            "ours std": pd.Series(dtype=float), "runs": pd.Series(dtype="int64")})


class CompareError(Exception):
    """A folder that cannot be compared: one line for the user."""


@dataclass
class Comparison:
    reference: str                        # how the reference folder is named in the verdict
    other: str
    machines: dict                        # {"reference": {...}, "other": {...}}: cpu, torch, commit, date
    headline: pd.DataFrame                # one row per cell in both: ref, other, diff, allowed, agrees, spread
    claims: pd.DataFrame                  # one row per check in both: figure, check, reference, other, agrees, noise
    missing: list = field(default_factory=list)  # cells or checks in only one of the two

    @property
    def differing(self) -> int:
        return int((~self.headline.agrees).sum() + (~self.claims.agrees).sum())

    @property
    def reproduced(self) -> bool:
        return self.differing == 0 and len(self.headline) + len(self.claims) > 0


# --------------------------------------------------------------------------- reading a report
def read_report(folder) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(headline cells, claims, machine) of a finished report folder, or CompareError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CompareError(f"'{folder}' is not a folder")
    if not (folder / "claims.csv").exists():
        missing = " or ".join(n for n in ("headline.csv", "claims.csv") if not (folder / n).exists())
        raise CompareError(f"'{folder}' is not a study report: no {missing} (python -m lucir.study "
                           "writes them beside report.html once a figure's notebook has run)")
    try:
        head = pd.read_csv(folder / "headline.csv") if (folder / "headline.csv").exists() else NO_HEADLINE
        claims = pd.read_csv(folder / "claims.csv", keep_default_na=False)
    except (ValueError, OSError) as e:
        raise CompareError(f"'{folder}': unreadable report table ({e})".replace("\n", " ")) from None
    need = {"headline.csv": (head, set(CELL) | {"ours", "ours std", "runs"}),
            "claims.csv": (claims, {"figure", "check", "holds"})}
    for name, (frame, cols) in need.items():
        if not cols <= set(frame.columns):
            raise CompareError(f"'{folder / name}' lacks the column(s) {', '.join(sorted(cols - set(frame.columns)))}")
    head = head.drop_duplicates(CELL)[CELL + ["ours", "ours std", "runs"]].reset_index(drop=True)
    return head, claims, machine(folder)


def machine(folder) -> dict:
    """CPU, torch version, commit and date of the study behind a report, from its report.html's
    provenance section (lucir.report.provenance_section); 'unknown' where it says nothing."""
    try:
        text = (Path(folder) / "report.html").read_text(encoding="utf-8")
    except OSError:
        text = ""
    plain = html_mod.unescape(re.sub(r"<[^>]+>", "", text))

    def find(pattern):
        m = re.findall(pattern, plain)
        return m[-1].strip() if m else "unknown"
    torch = re.findall(r"<td[^>]*>torch</td>\s*<td[^>]*>([^<]+)</td>", text)
    return {"device": find(r"device (.+?), torch threads"), "torch": torch[-1].strip() if torch else "unknown",
            "commit": find(r"git commit ([0-9a-f]{7,40})")[:12], "date": find(r"\bdate (\S+)")}


def measured_spread() -> tuple[dict, str]:
    """The spread between two seeds of ours that the project measured at full CIFAR-100 (B50 + 10
    phases, 8 epochs a phase), per classifier, and where it comes from; ({}, reason) without it."""
    try:
        t = pd.read_csv(MEASURED)
        ours = t[t.implementation == "ours"]
        spread = {"CNN": float(ours.avg_incremental_acc_cnn.std()), "NME": float(ours.avg_incremental_acc_nme.std())}
    except (OSError, ValueError, AttributeError, KeyError):
        return {}, "no measured spread found"
    if len(ours) < 2 or any(np.isnan(v) for v in spread.values()):
        return {}, "no measured spread found"
    return spread, (f"std between {len(ours)} seeds of ours at full CIFAR-100, B50 + 10 phases, 8 epochs a phase "
                    "(reports/authors_code/summary.csv)")


# --------------------------------------------------------------------------- comparing
def compare(reference, other, reference_name: str | None = None, other_name: str | None = None) -> Comparison:
    ref_head, ref_claims, ref_machine = read_report(reference)
    oth_head, oth_claims, oth_machine = read_report(other)
    spread, source = measured_spread()
    cells = ref_head.merge(oth_head, on=CELL, suffixes=(" ref", " other"), how="outer", indicator=True)
    missing = [f"headline {r.setting}, {r.phases} phase{'s' if r.phases != 1 else ''}, {r.curve}: only in the "
               f"{'reference' if r._merge == 'left_only' else 'other'}"
               for _, r in cells[cells._merge != "both"].iterrows()]
    rows = []
    for _, r in cells[cells._merge == "both"].iterrows():
        stds, whence = [], []
        for side in ("ref", "other"):
            std, runs = r[f"ours std {side}"], r[f"runs {side}"]
            if runs >= 2 and not pd.isna(std):
                stds.append(float(std))
                whence.append(f"{int(runs)} seeds")
            else:
                measured = spread.get(str(r["curve"]).rsplit("-", 1)[-1])
                stds.append(np.nan if measured is None else measured)
                whence.append("1 run: measured spread" if measured is not None else "1 run: no spread")
        diff = float(r["ours other"]) - float(r["ours ref"])
        allowed = 2 * seed_spread(*stds) if not any(np.isnan(stds)) else 0.005  # no spread: equal as printed
        rows.append({"setting": r["setting"], "phases": int(r["phases"]), "curve": r["curve"],
                     "reference": float(r["ours ref"]), "other": float(r["ours other"]), "other - reference": diff,
                     "allowed": allowed, "agrees": bool(abs(diff) <= allowed + 1e-9),
                     "spread from": "; ".join(dict.fromkeys(whence))})
    headline = pd.DataFrame(rows, columns=["setting", "phases", "curve", "reference", "other", "other - reference",
                                           "allowed", "agrees", "spread from"])
    headline.attrs["measured"] = source if any("measured" in w for w in headline["spread from"]) else ""
    key = ["figure", "check"]
    both = ref_claims.merge(oth_claims, on=key, suffixes=(" ref", " other"), how="outer", indicator=True)
    missing += [f"claim {r.figure}: {r.check}: only in the {'reference' if r._merge == 'left_only' else 'other'}"
                for _, r in both[both._merge != "both"].iterrows()]
    both = both[both._merge == "both"]
    noise = both["seed noise ref"] if "seed noise ref" in both else pd.Series("", index=both.index)
    claims = pd.DataFrame({"figure": both.figure, "check": both.check, "reference": both["holds ref"],
                           "other": both["holds other"], "agrees": both["holds ref"] == both["holds other"],
                           "noise": noise.fillna("")}).reset_index(drop=True)
    return Comparison(reference_name or str(reference), other_name or str(other),
                      {"reference": ref_machine, "other": oth_machine}, headline, claims, missing)


# --------------------------------------------------------------------------- the verdict
def _machine_text(m: dict) -> str:
    return f"{m['device']}, torch {m['torch']} (commit {m['commit']}, {m['date']})"


def verdict_markdown(c: Comparison) -> str:
    """The verdict as Markdown: the one line, the machines, the cells that differ and by how much."""
    h, k = c.headline, c.claims
    bad_h, bad_k = h[~h.agrees], k[~k.agrees]
    if c.reproduced and not c.missing:
        head = f"**Reproduced**: every cell agrees with `{c.reference}`"
    elif c.reproduced:
        head = (f"**Reproduced** where compared: the {len(h) + len(k)} cells in both agree with `{c.reference}` "
                f"({len(c.missing)} in one report only)")
    elif not len(h) + len(k):
        head = f"**Not reproduced**: nothing in common with `{c.reference}` to compare"
    else:
        head = (f"**Not reproduced**: {c.differing} of {len(h) + len(k)} cells differ from `{c.reference}` "
                f"({len(bad_h)} of {len(h)} headline accuracies, {len(bad_k)} of {len(k)} claims)")
    lines = [head + ".", "",
             f"- reference `{c.reference}`: {_machine_text(c.machines['reference'])}",
             f"- this run `{c.other}`: {_machine_text(c.machines['other'])}", ""]
    if len(h) or any(m.startswith("headline") for m in c.missing):
        lines += [f"Headline accuracies (average incremental, %): {int(h.agrees.sum())} of {len(h)} agree within "
                  "2 sqrt(std_ref^2 + std_this^2), each std the spread between seeds its report shows"
                  + (f"; where a report has 1 run, the {h.attrs['measured']}" if h.attrs.get("measured") else "") + "."]
    else:
        lines += ["Headline accuracies: none in either report (a profile without main curves); compared on the "
                  "claims alone."]
    if len(h):
        lines += ["", "| setting | phases | curve | reference | this run | this - reference | allowed | agrees |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r.setting} | {r.phases} | {r.curve} | {r.reference:.2f} | {r.other:.2f} | "
                  f"{r['other - reference']:+.2f} | {r.allowed:.2f} | {'yes' if r.agrees else '**no**'} |"
                  for _, r in h.iterrows()]
    lines += ["", f"Claims of the paper: {int(k.agrees.sum())} of {len(k)} hold (or fail) in both."]
    if len(bad_k):
        lines += ["", "| figure | check | reference | this run | reference's seed noise |", "|---|---|---|---|---|"]
        lines += [f"| {r.figure} | {r.check} | {r.reference} | {r.other} | {r.noise} |"
                  for _, r in bad_k.iterrows()]
    if c.missing:
        more = f"; and {len(c.missing) - 6} more" if len(c.missing) > 6 else ""
        lines += ["", f"Not compared ({len(c.missing)} in one report only): " + "; ".join(c.missing[:6]) + more + "."]
    return "\n".join(lines) + "\n"


def verdict_html(c: Comparison) -> str:
    """The verdict as a block for the top of report.html."""
    import mistune
    body = mistune.create_markdown(plugins=["table"])(verdict_markdown(c)).replace("<table>", '<table class="report">')
    kind = "claim" if c.reproduced else "failed"
    return (f'<div class="{kind}" id="verdict" style="margin:1em auto;max-width:1180px;padding:8px 12px;'
            f'border-left:4px solid {"#1b7f3a" if c.reproduced else "#b00020"}">'
            f"<h2>This run beside the reference</h2>{body}</div>")


def put_on_top(report_html: Path, block: str) -> None:
    """Insert `block` at the top of report.html's page (after <main>, or <body>); once."""
    text = report_html.read_text(encoding="utf-8")
    text = re.sub(r'<div class="[^"]*" id="verdict".*?</div>(?=<!-- /verdict -->)<!-- /verdict -->', "", text,
                  flags=re.S)
    m = re.search(r"<main[^>]*>", text) or re.search(r"<body[^>]*>", text)
    at = m.end() if m else 0
    report_html.write_text(text[:at] + block + "<!-- /verdict -->" + text[at:], encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lucir.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("reference", help="a finished report folder (e.g. reports/quick)")
    p.add_argument("other", help="another finished report folder (e.g. results/quick/report)")
    args = p.parse_args(argv)
    try:
        c = compare(args.reference, args.other)
    except CompareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(verdict_markdown(c), end="")
    return 0 if c.reproduced else 1


if __name__ == "__main__":
    raise SystemExit(main())
