"""vsae codec core: the video-specific autoencoder, its training, reprojection, interpolation and bundle.

The applications of the fitted model (explore, edit, mask propagation) are the subpackage codec.apps;
argtypes.py holds the argparse types every `vsae` command line uses. Imports nothing from protocol/,
sender/, receiver/ or bench/: the data path flows one way.
"""

from .bundle import dumps, load, loads, save
from .errors import BundleError, VsaeError
from .evaluate import evaluate
from .model import DEFAULT_MODEL, MODELS, AutoEncoder, ModelConfig, Normalization, model_config
from .ops import Codec, Key, Projection, upsample
from .pipeline import BaselineReconstructor, OutputFrame, Reconstructor
from .train import FitOptions, FitResult, fit

__all__ = [
    "AutoEncoder", "BundleError", "Codec", "DEFAULT_MODEL", "FitOptions", "FitResult", "Key", "MODELS",
    "BaselineReconstructor", "ModelConfig", "Normalization", "OutputFrame", "Projection", "Reconstructor", "VsaeError", "dumps",
    "evaluate", "fit", "load", "loads", "model_config", "save", "upsample",
]
