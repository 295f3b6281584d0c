"""The figures as a reader meets them: Fig. 9 two by two with a colour bar in counts and the
old/new boundary marked, no figure wider than a notebook or the report shows it unscaled."""
from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

from lucir import experiments as ex  # noqa: E402
from lucir import plots  # noqa: E402
from lucir.figures import confusion_matrices  # noqa: E402

# The width at which JupyterLab and report.html show a figure without shrinking it (px at 96 dpi).
MAX_WIDTH_PX = 960


def _confusion_study(root, n=10, n_old=6, per=5) -> pd.DataFrame:
    """Four runs of Fig. 9 with hand-made matrices: class k's images all predicted as class k,
    except that iCaRL-CNN puts every old-class image into the first new class."""
    rows = []
    for curve in confusion_matrices.CONFUSION_PANELS:
        method, clf = curve.split("-")
        run = root / method
        run.mkdir(exist_ok=True)
        matrix = np.diag(np.full(n, per))
        if curve == "iCaRL-CNN":
            matrix[:n_old] = 0
            matrix[:n_old, n_old] = per
        np.save(confusion_matrices.confusion_file(run, 1, clf), matrix)
        acc = 100 * np.trace(matrix) / matrix.sum()
        for phase, seen in ((0, n_old), (1, n)):
            rows.append(dict(experiment="confusion_matrices", setting="s", dataset="cifar100", method=method,
                             variant="", classifier=clf, curve=curve, phases=1, seed=0, class_order_seed=1993,
                             memory_per_class=20, reduced=True, phase=phase, classes_seen=seen, metric="acc",
                             value=acc, run_dir=str(run)))
    return pd.DataFrame(rows, columns=ex.TABLE_COLUMNS)


@pytest.fixture
def figure(tmp_path):
    plots.setup()
    fig = confusion_matrices.plot(_confusion_study(tmp_path))
    yield fig
    matplotlib.pyplot.close(fig)


def test_confusion_matrices_two_by_two_in_the_papers_order(figure):
    panels = [ax for ax in figure.axes if ax.images]
    assert len(panels) == 4
    positions = sorted({(round(ax.get_position().x0, 2), round(ax.get_position().y0, 2)) for ax in panels})
    assert len({x for x, _ in positions}) == 2 and len({y for _, y in positions}) == 2, "a 2x2 grid"
    titles = [ax.get_title() for ax in sorted(panels, key=lambda a: (-a.get_position().y0, a.get_position().x0))]
    assert [t.split(":")[0] for t in titles] == ["(a) iCaRL-CNN", "(b) iCaRL-NME", "(c) LUCIR-NME", "(d) LUCIR-CNN"]
    assert titles[0].startswith("(a) iCaRL-CNN: 40.00%") and "old predicted as new: 100.0%" in titles[0]
    assert titles[3].startswith("(d) LUCIR-CNN: 100.00%") and "old predicted as new: 0.0%" in titles[3]


def test_confusion_matrices_mark_the_old_new_boundary(figure):
    panels = [ax for ax in figure.axes if ax.images]
    assert len(panels) == 4
    for ax in panels:
        dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
        xs = {tuple(line.get_xdata()) for line in dashed}
        ys = {tuple(line.get_ydata()) for line in dashed}
        assert (5.5, 5.5) in xs and (5.5, 5.5) in ys, "a vertical and a horizontal line between class 5 and 6"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["old (6)", "new (4)"]


def test_confusion_matrices_share_one_colour_bar_in_counts(figure):
    images = [ax.images[0] for ax in figure.axes if ax.images]
    assert len({im.get_clim() for im in images}) == 1, "one colour scale for the four panels"
    assert images[0].get_clim() == pytest.approx((0, np.log1p(5)))
    lucir_cnn = next(ax for ax in figure.axes if ax.get_title().startswith("(d)")).images[0]
    assert np.allclose(lucir_cnn.get_array(), np.log1p(np.diag(np.full(10, 5)))), "entries are log(1 + count)"
    bars = [ax for ax in figure.axes if not ax.images and ax.get_label() == "<colorbar>"]
    assert len(bars) == 1
    assert [t.get_text() for t in bars[0].get_yticklabels()] == ["0", "1", "2", "5"]


def test_confusion_matrices_fit_the_notebook_and_report_width(figure):
    assert figure.get_figwidth() * figure.dpi <= MAX_WIDTH_PX
    assert figure.get_figheight() * figure.dpi <= MAX_WIDTH_PX
