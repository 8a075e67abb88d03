"""mtdiff: MT-Diffusion in PyTorch, one diffusion model that generates several modalities at once.

A trained run does every task through its methods (see :mod:`mtdiff.runs`)::

    import mtdiff
    run = mtdiff.load_run("runs/demo")
    images = run.sample(16, seed=0).images

The building blocks are exported too: the process, the model, the loss, the samplers and guidance
wrappers, the config loader and (imported on first use) the trainer.
"""

from importlib.metadata import PackageNotFoundError, version

from .config import Config, load_config
from .errors import InputError, MtdiffError
from .loss import mt_loss
from .models import MTModel, UNet
from .process import MTProcess
from .runs import Run, Samples, load_run
from .sampling import (
    ClassifierFreeGuidance,
    HeadGuidance,
    ancestral,
    ddim,
    dpm_solver,
    generate,
    generate_conditional,
    generate_joint,
    inverse,
    restore,
)


def __getattr__(name: str):
    """``mtdiff.Trainer`` imports the training stack on first use, so inference never loads it."""
    if name == "Trainer":
        from .train import Trainer

        return Trainer
    raise AttributeError(f"module 'mtdiff' has no attribute {name!r}")


try:
    __version__ = version("mtdiff")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "load_run",
    "Run",
    "Samples",
    "Config",
    "load_config",
    "MTProcess",
    "MTModel",
    "UNet",
    "mt_loss",
    "ancestral",
    "ddim",
    "dpm_solver",
    "generate",
    "generate_joint",
    "generate_conditional",
    "restore",
    "inverse",
    "ClassifierFreeGuidance",
    "HeadGuidance",
    "Trainer",
    "MtdiffError",
    "InputError",
    "__version__",
]
