"""LUCIR (Hou et al., CVPR 2019): a thin, faithful reproduction. See README.md."""
import warnings

# tqdm.auto warns inside a Jupyter kernel without ipywidgets, then falls back to a text bar.
warnings.filterwarnings("ignore", message="IProgress not found")
from .config import Config, ConfigError, PRESETS, make_config
from .data import DataError
from .trainer import TrainingDiverged, run_incremental

__all__ = ["Config", "ConfigError", "DataError", "PRESETS", "TrainingDiverged", "make_config", "run_incremental"]
__version__ = "0.1.0"
