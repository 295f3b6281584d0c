"""Published numbers, to put beside ours (never used as measurements); each figure's claim is in
its module of lucir.figures.

docs/protocol.md ("Published numbers the report compares against") gives the source of each:
the paper's Fig. 9 captions, PODNet's Table 1 (the LUCIR and iCaRL papers' own numbers) and
PODNet's re-run over 3 class orders. Accuracies are in percent.
"""
from __future__ import annotations

import pandas as pd

from .config import Config, make_config

# The two sources of published average incremental accuracies, as tables and reports name them.
PAPER = "paper (PODNet Table 1)"
PODNET = "PODNet re-run, 3 orders"

# Average incremental accuracy (%), CIFAR-100, 50 base classes: (source, curve, phases, mean, std).
# "iCaRL" is one number in both sources; iCaRL classifies by nearest mean of exemplars, so we put
# it beside our iCaRL-NME.
AVERAGE_INCREMENTAL_ACCURACY = [
    (PAPER, "LUCIR-CNN", 5, 63.42, None),
    (PAPER, "LUCIR-CNN", 10, 60.18, None),
    (PAPER, "LUCIR-NME", 5, 63.12, None),
    (PAPER, "LUCIR-NME", 10, 60.12, None),
    (PAPER, "iCaRL-NME", 5, 57.17, None),
    (PAPER, "iCaRL-NME", 10, 52.57, None),
    (PODNET, "LUCIR-CNN", 5, 64.01, 0.91),
    (PODNET, "LUCIR-CNN", 10, 61.22, 0.69),
    (PODNET, "LUCIR-CNN", 25, 57.57, 0.23),
    (PODNET, "LUCIR-NME", 5, 63.63, None),
    (PODNET, "LUCIR-NME", 10, 60.83, None),
    (PODNET, "LUCIR-NME", 25, 56.82, None),
    (PODNET, "iCaRL-NME", 5, 58.08, None),
    (PODNET, "iCaRL-NME", 10, 53.78, None),
    (PODNET, "iCaRL-NME", 25, 50.60, None),
]

# Final top-1 accuracy (%) on all 100 classes, CIFAR-100 B50 + 1 phase (the paper's Fig. 9).
FINAL_ACCURACY_ONE_PHASE = {"iCaRL-CNN": 51.80, "iCaRL-NME": 59.13, "LUCIR-NME": 60.21, "LUCIR-CNN": 62.34}

def paper_config(dataset: str = "cifar100") -> Config:
    """The paper's LUCIR config for `dataset`: the reference for "how this study differs". The
    Config defaults are the paper's CIFAR-100 setting, and ImageNet's own (Sec. 4.1) are
    lucir.config.DATASET_DEFAULTS."""
    return make_config("lucir", dataset=dataset)


def average_accuracy_table() -> pd.DataFrame:
    """The published average incremental accuracies as a tidy table."""
    return pd.DataFrame(AVERAGE_INCREMENTAL_ACCURACY,
                        columns=["source", "curve", "phases", "published", "published_std"])


# Fields that describe the setting (data, schedule, loss hyperparameters), not the method or the
# run: the study's profiles reduce some of these, and the report lists each difference.
SETTING_FIELDS = ("num_classes", "base_classes", "train_per_class", "test_per_class", "image_size", "model",
                  "eta_init", "imprint", "lambda_base", "lambda_direction", "K", "margin", "temperature",
                  "memory_total", "epochs", "lr", "lr_milestones", "lr_gamma", "batch_size", "momentum",
                  "weight_decay", "base_epochs", "base_lr_milestones", "cbf_epochs", "cbf_lr", "cbf_lr_milestones",
                  "nme_flip")


def setting_differences(values: dict, dataset: str | None = None) -> dict:
    """{field: (ours, paper)} for the setting fields of a config dict that differ from the paper.
    base_epochs / base_lr_milestones equal to None mean "as epochs / lr_milestones"."""
    dataset = dataset or values.get("dataset", "cifar100")
    paper = paper_config(dataset).to_dict()
    resolved = dict(values)
    for name, fallback in (("base_epochs", "epochs"), ("base_lr_milestones", "lr_milestones")):
        for d in (resolved, paper):
            if d.get(name) is None:
                d[name] = d.get(fallback)
    out = {}
    for name in SETTING_FIELDS:
        ours, ref = resolved.get(name, paper.get(name)), paper.get(name)
        if isinstance(ours, tuple):
            ours = list(ours)
        if isinstance(ref, tuple):
            ref = list(ref)
        if ours != ref:
            out[name] = (shown(name, ours), shown(name, ref))
    return out


def shown(name: str, value):
    """A config value as the report shows it: None spelled out where it has a meaning."""
    if value is None and name in ("num_classes", "train_per_class", "test_per_class"):
        return "all"
    if value is None and name in ("base_epochs", "base_lr_milestones"):
        return "as " + name[len("base_"):]
    return value
