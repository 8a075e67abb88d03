"""Run by tests/test_distributed.py under torchrun: train a tiny model, save this rank's parameters.

usage: ddp_worker.py OUT_DIR DUMP_PREFIX [--resume] [--preset=NAME] [KEY=VALUE ...]   (preset: mnist-masked-x)

With ``data.source=...`` among the overrides the trainer loads that source itself (else random toy images),
and each rank writes how many image folders it decoded to DUMP_PREFIX-rankR.decoded, and how many images it
put through a VAE encoder to DUMP_PREFIX-rankR.encoded.
"""

import sys
from pathlib import Path

import torch
from conftest import tiny

import mtdiff.data
from mtdiff.data import ImageSet
from mtdiff.distributed import close_world
from mtdiff.models.autoencoder import LatentMap
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
    decoded = []
    real = mtdiff.data.load_image_folder
    mtdiff.data.load_image_folder = lambda *a, **k: decoded.append(1) or real(*a, **k)
    encoded = []
    real_encode = LatentMap.encode
    LatentMap.encode = lambda self, x: encoded.append(len(x)) or real_encode(self, x)
    own_data = any(a.startswith("data.source=") for a in overrides)
    trainer = Trainer(
        tiny(preset, *overrides), out, data=None if own_data else toy_data(), resume=resume, progress=False
    )
    trainer.run()
    close_world()
    Path(f"{prefix}-rank{trainer.world.rank}.decoded").write_text(str(len(decoded)))
    Path(f"{prefix}-rank{trainer.world.rank}.encoded").write_text(str(sum(encoded)))
    torch.save(
        {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}, f"{prefix}-rank{trainer.world.rank}.pt"
    )
    torch.save(torch.get_rng_state(), f"{prefix}-rank{trainer.world.rank}.rng")  # where its dropout masks stand


if __name__ == "__main__":
    main(sys.argv[1:])
