"""Run by tests/test_distributed.py under torchrun: train a tiny model, save this rank's parameters.

usage: ddp_worker.py OUT_DIR DUMP_PREFIX [--resume] [--preset=NAME] [KEY=VALUE ...]   (preset: mnist-masked-x)
"""

import sys

import torch
from conftest import tiny

from mtdiff.data import ImageSet
from mtdiff.distributed import close_world
from mtdiff.train import Trainer


def toy_data() -> ImageSet:
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(64, 1, 32, 32, generator=g) * 255).to(torch.uint8)
    return ImageSet(images, torch.randint(0, 10, (64,), generator=g), [str(i) for i in range(10)], "toy")


def main(argv: list[str]) -> None:
    out, prefix, *rest = argv
    resume = "--resume" in rest
    preset = next((a.split("=", 1)[1] for a in rest if a.startswith("--preset=")), "mnist-masked-x")
    overrides = [a for a in rest if a != "--resume" and not a.startswith("--preset=")]
    torch.set_num_threads(1)
    trainer = Trainer(tiny(preset, *overrides), out, data=toy_data(), resume=resume, progress=False)
    trainer.run()
    close_world()
    torch.save(
        {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}, f"{prefix}-rank{trainer.world.rank}.pt"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
