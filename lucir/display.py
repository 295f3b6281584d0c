"""How the report and the notebooks show things: the report's style sheet, plain HTML tables,
Markdown, boxes and the table of a figure's checks. IPython is imported only when something is
shown, so that the package's core (and the GPU machine's image, which has no IPython) imports
this module without it."""
from __future__ import annotations

import html
import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from . import plots

CSS = """<style>
body, .jp-Notebook { max-width: 1180px; margin: 0 auto !important; }
.jp-RenderedHTMLCommon table.report { border-collapse: collapse; margin: 0.4em 0 1.2em 0; font-size: 12.5px; }
.jp-RenderedHTMLCommon table.report th { background: #eef1f5; text-align: left; padding: 3px 8px; }
.jp-RenderedHTMLCommon table.report td { padding: 2px 8px; text-align: left; vertical-align: top; }
.jp-RenderedHTMLCommon table.report td.num { text-align: right; font-variant-numeric: tabular-nums;
  white-space: nowrap; }
.jp-RenderedHTMLCommon table.report td.nowrap { white-space: nowrap; }
.claim { border-left: 4px solid #7f7f7f; background: #f6f6f6; padding: 6px 10px; margin: 6px 0 10px 0; }
.verdict-no { color: #b00020; font-weight: 600; } .verdict-yes { color: #1b7f3a; font-weight: 600; }
.notrun { border-left: 4px solid #e0a800; background: #fff8e1; padding: 6px 10px; }
.failed { border-left: 4px solid #b00020; background: #fdecee; padding: 6px 10px; }
.jp-OutputArea-output img { max-width: 100%; height: auto; }
</style>"""


# A number as a table shows it, with its spread, or a dash for none: "63.42", "64.01 ± 0.91", "—"
# (right-aligned like numbers).
NUMBER = re.compile(r"—|[-+]?\d+(\.\d+)?( ± \d+(\.\d+)?)?")


# --------------------------------------------------------------------------- display helpers
def display(obj) -> None:
    """IPython's display, imported here: the package's core (and the GPU machine's image, which has
    no IPython) imports this module without it; only a notebook that shows something needs it."""
    from IPython.display import display as ipython_display
    ipython_display(obj)


def HTML(text: str):  # noqa: N802  IPython's name
    from IPython.display import HTML as ipython_html
    return ipython_html(text)


def Markdown(text: str):  # noqa: N802  IPython's name
    from IPython.display import Markdown as ipython_markdown
    return ipython_markdown(text)


def show(fig) -> None:
    display(fig)
    plt.close(fig)


def show_table(df: pd.DataFrame, digits: int = 2) -> None:
    """A plain HTML table: numbers right-aligned with `digits` decimals, missing values as a dash."""
    def cell(v):
        if v is None or (isinstance(v, (float, np.floating)) and np.isnan(v)):
            return '<td class="num">—</td>'
        if isinstance(v, (bool, np.bool_)):
            return f"<td>{'yes' if v else 'no'}</td>"
        if isinstance(v, (float, np.floating)):
            return f'<td class="num">{v:.{digits}f}</td>'
        if isinstance(v, (int, np.integer)):
            return f'<td class="num">{v}</td>'
        text = str(v)
        attr = ' class="num"' if NUMBER.fullmatch(text) else (
            ' class="nowrap"' if len(text) <= 24 or " " not in text else "")
        return f"<td{attr}>{html.escape(text)}</td>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in df.itertuples(index=False))
    display(HTML(f'<table class="report"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'))


def md(text: str) -> None:
    display(Markdown(text))


def box(text: str, kind: str = "claim") -> None:
    display(HTML(f'<div class="{kind}">{text}</div>'))


def _yes(ok: bool) -> str:
    return '<span class="verdict-yes">yes</span>' if ok else '<span class="verdict-no">no</span>'


def setup() -> None:
    plots.setup()
    display(HTML(CSS))



def checks_table(rows: list[tuple]) -> None:
    """The table of checks of a claim: (check, ours, holds[, seed noise])."""
    noise = any(len(r) > 3 for r in rows)
    head = "<tr><th>check of the claim</th><th>ours</th><th>holds</th>" + ("<th>seed noise</th>" if noise else "")
    body = "".join(f"<tr><td>{html.escape(r[0])}</td><td>{html.escape(r[1])}</td><td>{_yes(r[2])}</td>"
                   + (f"<td>{html.escape(r[3] if len(r) > 3 else '')}</td>" if noise else "") + "</tr>"
                   for r in rows)
    display(HTML(f'<table class="report">{head}</tr>{body}</table>'))
