"""Run by tests/test_distributed.py under torchrun: train a tiny model, save this rank's parameters.

usage: ddp_worker.py OUT_DIR DUMP_PREFIX [--resume] [KEY=VALUE ...]
"""
import sys

import torch

from conftest import tiny
from mtdiff.data.sources import ImageSet
from mtdiff.distributed import close_world
from mtdiff.train import Trainer


def toy_data() -> ImageSet:
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(64, 1, 32, 32, generator=g) * 255).to(torch.uint8)
    return ImageSet(images, torch.randint(0, 10, (64,), generator=g), [str(i) for i in range(10)], "toy")


def main(argv: list[str]) -> None:
    out, prefix, *rest = argv
    resume = "--resume" in rest
    overrides = [a for a in rest if a != "--resume"]
    torch.set_num_threads(1)
    trainer = Trainer(tiny("mnist-masked-x", *overrides), out, data=toy_data(), resume=resume, progress=False)
    trainer.run()
    close_world()
    torch.save({k: v.detach().cpu() for k, v in trainer.model.state_dict().items()},
               f"{prefix}-rank{trainer.world.rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1:])
