"""The one config dataclass, its presets, and validation with one-line errors.

Every hyperparameter of the study is a field here, with the paper's default and the section
it comes from. Methods are presets (sets of field values), never subclasses.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Optional


class ConfigError(ValueError):
    """A bad config value; the message is one line meant for the user."""


def one_line(error, limit: int = 400) -> str:
    """An exception ("Type: message") or a text, on one line of at most `limit` characters: how
    errors reach the user, study.json and the progress display."""
    text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
    return " ".join(text.split())[:limit]


def _f(default, help: str):
    """A dataclass field with its one-line meaning (shown by `python -m lucir run --help`)."""
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    # --- data and protocol (Sec. 4.1) ---
    dataset: str = _f("cifar100", "cifar100 | imagenet | imagenet_subset | tiny_imagenet | synthetic")
    data_dir: Optional[str] = _f(None, "data folder; None = $LUCIR_DATA, else ~/.cache/lucir/data, where CIFAR-100 "
                                 "is downloaded on first use (never a hard-coded path)")
    num_classes: Optional[int] = _f(None, "use the first N classes of the class order; None = all")
    train_per_class: Optional[int] = _f(None, "keep the first N train images of each class; None = all")
    test_per_class: Optional[int] = _f(None, "keep the first N test images of each class; None = all")
    base_classes: int = _f(50, "classes of the base phase (Sec. 4.1: half); 0 = B0, no base phase")
    phases: int = _f(5, "incremental phases after the base phase (1, 2, 5, 10 in Fig. 5)")
    class_order_seed: int = _f(1993, "seed of the class order (np.random.seed(1993) + shuffle)")
    class_order_run: int = _f(0, "which order of that seed: run k of the authors' code (--nb_runs) takes the (k+1)-th "
                              "shuffle of np.arange(classes) after np.random.seed(class_order_seed); 0 = the paper's")
    seed: int = _f(0, "run seed: initialisation, sampling, augmentation (separate from the order)")
    image_size: int = _f(224, "ImageNet crop size (RandomResizedCrop / CenterCrop); CIFAR is 32")
    # --- model (Sec. 3.2, 4.1) ---
    model: Optional[str] = _f(None, "resnet32 | resnet18; None = resnet32 for CIFAR/synthetic, resnet18 for ImageNet")
    cosine_normalization: bool = _f(True, "CN: cosine classifier of Eq. 4 (False = linear FC with bias, iCaRL)")
    last_relu: Optional[bool] = _f(None, "ReLU at the end of the last block; None = off with CN, on without (Sec. 4.1)")
    eta_init: float = _f(1.0, "initial value of the learnable scale eta of Eq. 4 (official code: 1.0)")
    imprint: bool = _f(True, "imprint new-class weights from normalised feature means (official code)")
    # --- method switches (Sec. 3, ablation of Fig. 7a) ---
    distillation: bool = _f(True, "keep old knowledge by distillation (False = finetune lower bound)")
    less_forget: bool = _f(True, "LC: Eq. 6 feature distillation with old-class embeddings fixed")
    inter_class_separation: bool = _f(True, "IS: margin ranking loss of Eq. 8")
    adaptive_weight: bool = _f(True, "AW: lambda of Eq. 7 (False = fixed lambda_base, Fig. 8)")
    class_balanced_finetune: bool = _f(False, "CBF: finetune the classifier on balanced exemplars after each phase")
    joint_training: bool = _f(False, "train on all data of the seen classes every phase (upper bound)")
    # --- loss hyperparameters (Sec. 4.1) ---
    lambda_base: float = _f(5.0, "lambda_base of Eq. 7 (Sec. 4.1: 5 for CIFAR-100, 10 for ImageNet)")
    lambda_direction: str = _f("code", "Eq. 7 direction: code = sqrt(|Co|/|Cn|) (official), paper = sqrt(|Cn|/|Co|)")
    K: int = _f(2, "hard negatives per anchor in Eq. 8")
    margin: float = _f(0.5, "margin m of Eq. 8")
    temperature: float = _f(2.0, "Omega of Eq. 2 (iCaRL / LwF distillation)")
    # --- memory (Sec. 4.1) ---
    memory_per_class: int = _f(20, "R_per: exemplars kept per old class (grows with classes)")
    memory_total: Optional[int] = _f(None, "R_total: fixed total budget (2000 CIFAR); overrides R_per when set")
    # --- optimisation (Sec. 4.1 and official scripts) ---
    epochs: int = _f(160, "epochs per phase")
    lr: float = _f(0.1, "learning rate at the start of every phase")
    lr_milestones: tuple = _f((80, 120), "epochs after which lr is divided (stepped per epoch)")
    lr_gamma: float = _f(0.1, "lr factor at each milestone")
    batch_size: int = _f(128, "batch size")
    momentum: float = _f(0.9, "SGD momentum")
    weight_decay: float = _f(5e-4, "weight decay (Sec. 4.1: 5e-4 CIFAR, 1e-4 ImageNet)")
    base_epochs: Optional[int] = _f(None, "epochs of the base phase; None = epochs")
    base_lr_milestones: Optional[tuple] = _f(None, "milestones of the base phase; None = lr_milestones")
    cbf_epochs: int = _f(20, "epochs of the class-balanced finetune (official ImageNet setting)")
    cbf_lr: float = _f(0.01, "learning rate of the class-balanced finetune")
    cbf_lr_milestones: tuple = _f((10,), "milestones of the class-balanced finetune")
    # --- evaluation and running ---
    nme_flip: str = _f("channels", "second view of each exemplar averaged into the NME means: channels = RGB->BGR "
                       "(official CIFAR code's [:, :, :, ::-1] on N,H,W,C), horizontal = true flip, none (official "
                       "ImageNet code: D2 = D)")
    eval_batch_size: int = _f(256, "batch size for feature extraction and evaluation")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    cache_base: bool = _f(True, "reuse the base-phase model across runs (cache keyed by what it depends on)")
    cache_dir: Optional[str] = _f(None, "cache folder; None = $LUCIR_CACHE, else $XDG_CACHE_HOME/lucir (~/.cache/lucir)")
    progress: bool = _f(True, "show a progress bar per phase")
    checkpoint_every: int = _f(1, "write the epoch checkpoint (everything needed to resume inside a phase) every N "
                               "epochs and after a phase's last epoch; 0 = only the checkpoint at each phase's end")
    workers: Optional[int] = _f(None, "JPEG decoding processes (ImageNet-style data); None = one per core, at most 8; "
                                "0 = in the training process; results do not depend on it")
    amp: str = _f("off", "precision of the forward passes (losses stay float32): off = the paper's fp32; bf16 = "
                  "bfloat16 autocast (GPUs with native bfloat16, compute capability 8.0+; the CPU); fp16 = float16 "
                  "autocast with a gradient scaler (CUDA, for GPUs without bfloat16: V100, T4)")
    compile: bool = _f(False, "torch.compile the backbone for training (the growing head stays eager; a graph break "
                       "or too many recompiles is an error); changes float rounding, so results differ from an "
                       "eager run's")
    compile_mode: str = _f("default", "torch.compile's mode with compile=true: default; reduce-overhead = CUDA graphs "
                           "(one recorded graph per batch size, replayed); max-autotune = also tune the kernels")
    fused_sgd: bool = _f(False, "SGD's update in torch's fused kernel (one launch for all parameters): the same "
                         "update (momentum, weight decay), rounded in another order; off = torch's default SGD")
    deterministic: bool = _f(False, "GPU runs: deterministic cuDNN and torch algorithms, so a run repeats to the bit "
                             "(CPU runs always do, on one machine: docs/resume.md); runtime only, slower on a GPU")
    dist_timeout_minutes: float = _f(60.0, "torchrun runs: minutes a rank may wait in a collective (for another rank's "
                                     "work, e.g. rank 0 waiting on the base-phase cache lock) before the job stops "
                                     "(torch's default: 10 for nccl); runtime only")

    # ---------------------------------------------------------------- derived values
    @property
    def resolved_model(self) -> str:
        if self.model:
            return self.model
        return "resnet18" if self.dataset in IMAGENET_LIKE else "resnet32"

    @property
    def resolved_last_relu(self) -> bool:
        return (not self.cosine_normalization) if self.last_relu is None else self.last_relu

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# The second view of each exemplar for the NME class means (nme_flip): the official CIFAR-100 code
# reverses the colour channels, a horizontal flip is what its comment ("Flipped version") meant.
NME_VIEWS = ("channels", "horizontal", "none")
AMP_MODES = ("off", "bf16", "fp16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
IMAGENET_LIKE = ("imagenet", "imagenet_subset", "tiny_imagenet")
DATASETS = ("cifar100", "synthetic") + IMAGENET_LIKE

# The ImageNet protocol (Sec. 4.1 and the authors' imagenet-class-incremental scripts: 90 epochs,
# lr steps at 30 and 60, weight decay 1e-4, lambda_base 10 in run.sh, NME means without a second
# view, D2 = D). For these datasets a field not given explicitly (by the preset or an override)
# takes this value instead of the CIFAR-100 default above; the model is ResNet-18 by `model=None`.
IMAGENET_DEFAULTS = dict(epochs=90, lr_milestones=(30, 60), lambda_base=10.0, weight_decay=1e-4, nme_flip="none")
DATASET_DEFAULTS: dict[str, dict] = {
    "imagenet": {**IMAGENET_DEFAULTS, "base_classes": 500},  # ImageNet-Full: half of 1000 classes
    "imagenet_subset": dict(IMAGENET_DEFAULTS),
}
# ... and per preset: the official code runs LUCIR on ImageNet with the class-balanced finetune
# (cbf_class_incremental_cosine_imagenet.py, --cb_finetune in run_all.sh).
PRESET_DATASET_DEFAULTS: dict[tuple[str, str], dict] = {
    ("lucir", "imagenet"): dict(class_balanced_finetune=True),
    ("lucir", "imagenet_subset"): dict(class_balanced_finetune=True),
}


def dataset_defaults(preset: str, dataset: str) -> dict:
    """The defaults that `dataset` (and `preset` on it) set differently from the Config defaults."""
    return {**DATASET_DEFAULTS.get(dataset, {}), **PRESET_DATASET_DEFAULTS.get((preset, dataset), {})}


# Presets: each method is a set of switches (STYLE habit 4). Ablation rows of Fig. 7a are
# lucir with switches off; see README.
PRESETS: dict[str, dict] = {
    "lucir": {},
    "icarl": dict(cosine_normalization=False, less_forget=False, inter_class_separation=False,
                  adaptive_weight=False),
    "finetune": dict(cosine_normalization=False, less_forget=False, inter_class_separation=False,
                     adaptive_weight=False, distillation=False),
    "joint": dict(cosine_normalization=False, less_forget=False, inter_class_separation=False,
                  adaptive_weight=False, distillation=False, joint_training=True),
    # Fig. 7a ablation rows
    "cn": dict(less_forget=False, inter_class_separation=False),
    "cn_lc": dict(inter_class_separation=False),
    "cn_lc_is": {},
    "cn_lc_is_cbf": dict(class_balanced_finetune=True),
    # LUCIR on the synthetic dataset, 2 incremental phases: seconds on a CPU.
    "smoke": dict(dataset="synthetic", num_classes=10, base_classes=4, phases=2, epochs=12,
                  lr_milestones=(9,), batch_size=32, memory_per_class=10, train_per_class=40,
                  test_per_class=20, cbf_epochs=2, cbf_lr_milestones=(1,)),
}


def field_help() -> list[tuple[str, str, str]]:
    """(name, default, meaning) for every field, for --help and docs/config.md; the default names
    the datasets (and presets) that set another one, e.g. "160 (imagenet, imagenet_subset: 90)"."""
    rows = []
    for f in fields(Config):
        default = repr(f.default if f.default is not dataclasses.MISSING else f.default_factory())
        other: dict[str, list[str]] = {}
        for dataset, values in DATASET_DEFAULTS.items():
            if f.name in values:
                other.setdefault(repr(values[f.name]), []).append(dataset)
        for (preset, dataset), values in PRESET_DATASET_DEFAULTS.items():
            if f.name in values:
                other.setdefault(repr(values[f.name]), []).append(f"{dataset} with preset {preset}")
        extra = "; ".join(f"{', '.join(where)}: {value}" for value, where in other.items())
        rows.append((f.name, f"{default} ({extra})" if extra else default, f.metadata.get("help", "")))
    return rows


def config_table() -> str:
    """The markdown table of every field (docs/config.md holds it; a test keeps the two equal)."""
    rows = ["| field | default | meaning |", "|---|---|---|"]
    for name, default, meaning in field_help():
        rows.append(f"| `{name}` | `{default}` | {meaning.replace('|', chr(92) + '|')} |")
    return "\n".join(rows)


def _parse_value(name: str, raw, annotation):
    """Convert `raw` (a string from the command line, or a Python value) to the field's type."""
    hint = annotation
    optional = False
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
    if isinstance(raw, str):
        text = raw.strip()
        if optional and text.lower() in ("none", "null", ""):
            return None
        if hint is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"field '{name}' expects true or false, got '{raw}'")
        if hint is tuple:
            try:
                return tuple(int(p) for p in text.strip("()[]").split(",") if p.strip())
            except ValueError:
                raise ConfigError(f"field '{name}' expects comma-separated integers, got '{raw}'") from None
        try:
            return hint(text)
        except ValueError:
            raise ConfigError(f"field '{name}' expects {hint.__name__}, got '{raw}'") from None
    if raw is None:
        if optional:
            return None
        raise ConfigError(f"field '{name}' cannot be None")
    if hint is bool:
        if not isinstance(raw, bool):
            raise ConfigError(f"field '{name}' expects true or false, got {raw!r}")
        return raw
    if hint is tuple:
        if not isinstance(raw, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in raw):
            raise ConfigError(f"field '{name}' expects a list of integers, got {raw!r}")
        return tuple(raw)
    if hint is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if not isinstance(raw, hint) or (hint is int and isinstance(raw, bool)):
        raise ConfigError(f"field '{name}' expects {hint.__name__}, got {raw!r}")
    return raw


def make_config(preset: str = "lucir", **overrides) -> Config:
    """The preset's config with `overrides` applied (strings are parsed), validated."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}'{_suggest(preset, PRESETS)}; "
                          f"choose one of: {', '.join(PRESETS)}")
    values = upgrade({**PRESETS[preset], **overrides})
    dataset = str(values.get("dataset", Config.dataset)).strip()
    for name, value in dataset_defaults(preset, dataset).items():
        values.setdefault(name, value)  # only where neither the preset nor an override gives it
    hints = typing.get_type_hints(Config)
    known = {f.name for f in fields(Config)}
    parsed = {}
    for name, raw in values.items():
        if name not in known:
            raise ConfigError(f"unknown config field '{name}'{_suggest(name, known)}")
        parsed[name] = _parse_value(name, raw, hints[name])
    config = Config(**parsed)
    validate(config)
    return config


def upgrade(values: dict) -> dict:
    """Field values of an older `config.json` (or command) in today's terms."""
    values = dict(values)
    if isinstance(values.get("nme_flip"), bool):  # written before nme_flip had three values
        values["nme_flip"] = "horizontal" if values["nme_flip"] else "none"
    if str(values.get("amp")).lower() in ("true", "false"):  # amp was on/off before fp16: on was bfloat16
        values["amp"] = "bf16" if str(values["amp"]).lower() == "true" else "off"
    return values


def config_from_dict(values: dict) -> Config:
    """Rebuild a config from `config.json` (a full dict of fields)."""
    return make_config("lucir", **values)


def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def validate(c: Config) -> None:
    """Raise ConfigError with one clear line for any value the trainer cannot run."""
    if c.dataset not in DATASETS:
        raise ConfigError(f"unknown dataset '{c.dataset}'{_suggest(c.dataset, DATASETS)}; "
                          f"choose one of: {', '.join(DATASETS)}")
    if c.model not in (None, "resnet32", "resnet18"):
        raise ConfigError(f"unknown model '{c.model}'; choose resnet32 or resnet18")
    if c.nme_flip not in NME_VIEWS:
        raise ConfigError(f"nme_flip must be one of {', '.join(NME_VIEWS)}, got '{c.nme_flip}'")
    if c.amp not in AMP_MODES:
        raise ConfigError(f"amp must be one of {', '.join(AMP_MODES)}, got '{c.amp}'")
    if c.compile_mode not in COMPILE_MODES:
        raise ConfigError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got '{c.compile_mode}'")
    if c.compile_mode != "default" and not c.compile:
        raise ConfigError(f"compile_mode={c.compile_mode} needs compile=true")
    if c.lambda_direction not in ("code", "paper"):
        raise ConfigError(f"lambda_direction must be 'code' or 'paper', got '{c.lambda_direction}'")
    positive = ["phases", "epochs", "batch_size", "eval_batch_size", "K", "image_size", "cbf_epochs"]
    for name in positive:
        if getattr(c, name) < 1:
            raise ConfigError(f"field '{name}' must be at least 1, got {getattr(c, name)}")
    if c.checkpoint_every < 0:
        raise ConfigError(f"field 'checkpoint_every' must be 0 or more, got {c.checkpoint_every}")
    if c.workers is not None and c.workers < 0:
        raise ConfigError(f"field 'workers' must be 0 or more (or None), got {c.workers}")
    for name in ("num_classes", "train_per_class", "test_per_class", "base_epochs"):
        if getattr(c, name) is not None and getattr(c, name) < 1:
            raise ConfigError(f"field '{name}' must be at least 1, got {getattr(c, name)}")
    if c.memory_per_class < 1:
        raise ConfigError(f"memory budget memory_per_class (R_per) must be at least 1, got {c.memory_per_class}")
    if c.memory_total is not None and c.memory_total < 1:
        raise ConfigError(f"memory budget memory_total (R_total) must be at least 1, got {c.memory_total}")
    for name in ("lr", "cbf_lr", "eta_init", "dist_timeout_minutes"):
        if not getattr(c, name) > 0:
            raise ConfigError(f"field '{name}' must be positive, got {getattr(c, name)}")
    if c.class_order_run < 0:
        raise ConfigError(f"field 'class_order_run' must be 0 or more, got {c.class_order_run}")
    if c.base_classes < 0:
        raise ConfigError(f"base_classes must be 0 or more, got {c.base_classes}")
    if c.num_classes is not None:
        phase_sizes(c.num_classes, c.base_classes, c.phases)  # raises on a bad split
    _check_milestones(c)
    if c.less_forget and not c.cosine_normalization:
        raise ConfigError("less_forget (LC) needs cosine_normalization (CN): Eq. 6 fixes cosine embeddings")
    if c.inter_class_separation and not c.cosine_normalization:
        raise ConfigError("inter_class_separation (IS) needs cosine_normalization (CN): Eq. 8 ranks cosine scores")


def _check_milestones(c: Config) -> None:
    """Each stage's milestones fall within its epochs (1 to epochs; the lr is stepped after epoch
    m), so that no step is silently never taken: lr_milestones=200 with epochs=10 is refused."""
    stages = [("lr_milestones", c.lr_milestones, "epochs", c.epochs)]
    if c.base_lr_milestones is not None or c.base_epochs is not None:  # else the base phase is an incremental one's twin
        base = "base_lr_milestones" if c.base_lr_milestones is not None else "lr_milestones"
        stages.append((base, c.base_lr_milestones or c.lr_milestones,
                       "base_epochs" if c.base_epochs is not None else "epochs", c.base_epochs or c.epochs))
    if c.class_balanced_finetune:
        stages.append(("cbf_lr_milestones", c.cbf_lr_milestones, "cbf_epochs", c.cbf_epochs))
    for name, milestones, epochs_name, epochs in stages:
        outside = [m for m in milestones if not 1 <= m <= epochs]
        fix = "base_lr_milestones" if epochs_name == "base_epochs" else name
        if outside:
            raise ConfigError(f"{name} = {','.join(map(str, milestones))} has {','.join(map(str, outside))} outside "
                              f"the {epochs_name} = {epochs} of its stage (the lr is divided after each of epochs "
                              f"1..{epochs}); set {fix} within them")


def phase_sizes(num_classes: int, base_classes: int, phases: int) -> list[int]:
    """Classes per phase: [base] + equal increments, or `phases` equal groups for B0."""
    if base_classes >= num_classes:
        raise ConfigError(f"base_classes ({base_classes}) must be fewer than the {num_classes} classes")
    rest = num_classes - base_classes
    if rest % phases:
        raise ConfigError(f"{phases} phases do not divide the {rest} classes after the base phase "
                          f"({num_classes} classes, base {base_classes})")
    step = rest // phases
    if base_classes == 0:
        return [step] * phases
    return [base_classes] + [step] * phases
