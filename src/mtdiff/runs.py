"""A run directory, and the Python API on a trained run: ``generate`` (any modalities given, the rest generated;
docs/API.md) and its thin wrappers sample, restore, classify, translate, represent.

    run = mtdiff.load_run("runs/demo")
    images = run.sample(16, seed=0).images               # [16, C, H, W] pixels in [-1, 1]
    out = run.generate({"label": 3}, 8, seed=0)          # = run.sample(8, labels=3, seed=0)

Images go in as pixel tensors ``[N, C, H, W]`` (or ``[C, H, W]``) in [-1, 1] or as PIL images, and come out
as pixel tensors (``Samples.pil()`` gives PIL images). Sampler settings default to the run's ``sample``
config, the same as the command line. Every call draws its randomness from ``generator`` or, without one,
from a generator seeded with ``seed`` on the run's device: the same seed gives the same result.

The API lives in a few modules, all re-exported here: :mod:`mtdiff.trained` (``Run``, ``Samples``: the tasks),
:mod:`mtdiff.inputs` (the values given, read into the diffusion space), :mod:`mtdiff.roles` (what a task asks of
a modality), :mod:`mtdiff.loading` (``load_run``, ``resolve_device``), :mod:`mtdiff.rundir` (the run directory:
``read_run_config``, ``read_log``).
"""

from .inputs import IMAGE
from .loading import load_run, resolve_device
from .roles import (
    class_conditions,
    gives_class,
    gives_vector,
    num_classes,
    takes_text,
    translation_source,
    views_image,
)
from .rundir import read_log, read_run_config
from .trained import Run, Samples

__all__ = [
    "Run",
    "Samples",
    "IMAGE",
    "gives_class",
    "takes_text",
    "gives_vector",
    "views_image",
    "translation_source",
    "load_run",
    "read_run_config",
    "class_conditions",
    "num_classes",
    "resolve_device",
    "read_log",
]
