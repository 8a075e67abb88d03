"""Many processes (DDP through torchrun, gloo on the CPU): the same steps as one process with the
same global batch, on every rank, and a run resumed on another number of processes."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtdiff.checkpoint import load_checkpoint
from mtdiff.distributed import World, shard

WORKER = Path(__file__).with_name("ddp_worker.py")
SETTINGS = [
    "train.log_every=1",
    "train.sample_every=0",
    "train.warmup_steps=1",
    "train.lr=1e-3",
    "train.batch_size=8",
    "model.dropout=0.0",
    "modalities.label.kind=label",
    "train.cond_drop_prob=0.3",
    "train.enc_drop_prob=0.3",
    "train.precision=fp32",
    "train.lr_schedule=constant",
    "train.device=cpu",
]  # a decaying lr depends on train.steps, which the resume test extends


def _launch(
    tmp_path,
    nproc: int,
    out: str,
    steps: int,
    *extra: str,
    resume: bool = False,
    preset: str = "mnist-masked-x",
    fails: bool = False,
    settings: list[str] = SETTINGS,
) -> list[dict] | str:
    """Train ``preset`` in ``nproc`` processes; returns each rank's final parameters (``fails``: its stderr)."""
    prefix = tmp_path / f"{out}-{nproc}p-{steps}"
    args = [
        str(tmp_path / out),
        str(prefix),
        *(["--resume"] if resume else []),
        f"--preset={preset}",
        *settings,
        f"train.steps={steps}",
        f"train.ckpt_every={steps}",
        *extra,
    ]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(WORKER),
        *args,
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, cwd=WORKER.parent, env={**_env(), "OMP_NUM_THREADS": "1"}
    )
    if fails:
        assert proc.returncode != 0
        return proc.stderr
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(f"{prefix}-rank{r}.pt") for r in range(nproc)]


def _env():
    import os

    return dict(os.environ)


def _assert_close(a: dict, b: dict, atol: float = 2e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """4 steps on 1 process: what 2 processes must match, and what a resumed run must reach."""
    return _launch(tmp_path_factory.mktemp("one"), 1, "one", 4)


def test_two_processes_equal_one_with_the_same_global_batch(tmp_path, one_process):
    """2 processes x 4 rows (with condition and encoding dropout, micro-batches of 2) take the same 4
    steps as 1 process x 8 rows; every rank holds the same parameters."""
    two = _launch(tmp_path, 2, "two", 4, "train.micro_batch=2")
    one = one_process
    for k in two[0]:
        torch.testing.assert_close(two[0][k], two[1][k], rtol=0, atol=0)  # ranks agree exactly
    _assert_close(two[0], one[0])
    torch.testing.assert_close(load_checkpoint(tmp_path / "two")["model"], two[0])  # rank 0 saved them


def test_two_processes_equal_one_with_an_image_backbone_input_from_an_image_folder(tmp_path):
    """The same with an image modality as the -X backbone input (edges -> image), dropped with cond_drop_prob:
    its "nothing known" value is fixed, not drawn per process, so 2 processes still take 1 process's steps.
    The images come from a folder: ``mtdiff prepare-data`` decodes it into the data cache once and every process
    maps it from there (a copy per process of ImageNet-64 would be ~16 GB each); so does the later run. Before
    that, the torchrun job stops at once, saying how to prepare it, rather than wait for a decoding rank."""
    from PIL import Image

    from mtdiff.cli.main import main as cli

    g = torch.Generator().manual_seed(0)
    for i in range(16):
        (tmp_path / "folder" / str(i % 2)).mkdir(parents=True, exist_ok=True)
        pixels = (torch.rand(32, 32, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(tmp_path / "folder" / str(i % 2) / f"{i}.png")
    folder = ["data.source=folder", f"data.root={tmp_path / 'folder'}", f"data.cache={tmp_path / 'cache'}"]
    stderr = _launch(tmp_path, 2, "early", 2, *folder, preset="fashion-edges2img", fails=True)
    assert "is not in the data cache" in stderr and "mtdiff prepare-data" in stderr
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    sets = [f"--set={x}" for x in folder]
    assert cli(["prepare-data", "--config", "fashion-edges2img", *sets, "--workers", "2"]) == 0
    two = _launch(tmp_path, 2, "two", 2, "train.micro_batch=2", *folder, preset="fashion-edges2img")
    one = _launch(tmp_path, 1, "one", 2, *folder, preset="fashion-edges2img")
    decoded = [
        int((tmp_path / f"{run}-rank{r}.decoded").read_text())
        for run, r in (("two-2p-2", 0), ("two-2p-2", 1), ("one-1p-2", 0))
    ]
    assert decoded == [0, 0, 0]
    assert len(list((tmp_path / "cache").iterdir())) == 1  # one entry, no leftover temporary folder
    for k in two[0]:
        torch.testing.assert_close(two[0][k], two[1][k], rtol=0, atol=0)
    _assert_close(two[0], one[0])


def test_rank_zero_encodes_the_latents_once_and_the_other_maps_them(tmp_path):
    """With data.autoencoder and no latents in the data cache yet, rank 0 encodes every training image (and source
    image) once into the data cache while the other rank waits, then maps them; neither runs the encoder in the
    steps, and 2 processes take 1 process's steps (the latter maps the same entry)."""
    pytest.importorskip("diffusers", reason="the latent-space tests need diffusers (pip install diffusers)")
    from conftest import paired_folder, tiny_vae

    from mtdiff.cli.main import main as cli

    root, vae = paired_folder(tmp_path / "pairs", n=8, size=32), tiny_vae(tmp_path / "vae")
    data = ["data.source=paired", f"data.root={root}", "data.image_size=32", f"data.autoencoder={vae}"]
    data.append(f"data.cache={tmp_path / 'cache'}")
    sets = [f"--set={x}" for x in [*data, "data.latent_cache=false"]]  # the images only
    assert cli(["prepare-data", "--config", "cityscapes256-latent-x", *sets, "--workers", "2"]) == 0
    settings = [s for s in SETTINGS if not s.startswith("modalities.label")]  # pairs have no labels
    latent = dict(preset="cityscapes256-latent-x", settings=settings)
    two = _launch(tmp_path, 2, "two", 2, "train.micro_batch=2", *data, **latent)
    one = _launch(tmp_path, 1, "one", 2, *data, **latent)
    encoded = [int((tmp_path / f"{run}-rank{r}.encoded").read_text()) for run, r in (("two-2p-2", 0), ("two-2p-2", 1))]
    assert encoded == [16, 0] and (tmp_path / "one-1p-2-rank0.encoded").read_text() == "0"
    assert len([p for p in (tmp_path / "cache").iterdir() if p.name.startswith("latents-")]) == 1
    for k in two[0]:
        torch.testing.assert_close(two[0][k], two[1][k], rtol=0, atol=0)
    _assert_close(two[0], one[0])


def test_resume_on_another_number_of_processes(tmp_path, one_process):
    """2 steps on 2 processes, then resumed to 4 on 1: the parameters of 4 uninterrupted steps on 1."""
    _launch(tmp_path, 2, "mixed", 2)
    resumed = _launch(tmp_path, 1, "mixed", 4, resume=True)
    _assert_close(resumed[0], one_process[0])


def test_batch_must_split_evenly(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=3",
            str(WORKER),
            str(tmp_path / "r"),
            str(tmp_path / "p"),
            *SETTINGS,
            "train.steps=1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=WORKER.parent,
    )
    assert (
        proc.returncode != 0 and "train.batch_size=8 is the global batch and must be divisible by the 3" in proc.stderr
    )


@pytest.mark.parametrize("n,size", [(10, 3), (2, 4), (64, 2)])
def test_shards_cover_every_item_once(n, size):
    parts = [list(shard(n, World(rank=r, size=size))) for r in range(size)]
    assert sum(parts, []) == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_a_resumed_run_draws_each_process_its_own_dropout_masks(tmp_path):
    """With dropout, 2 processes draw different masks (each its own generator); a run resumed from a checkpoint
    on 2 processes goes on drawing each process's own masks, so it ends where the uninterrupted run ends:
    the same generator state on every rank, and the same parameters."""
    import shutil

    dropout = ["model.dropout=0.1", "train.ckpt_every=2"]
    straight = _launch(tmp_path, 2, "straight", 4, *dropout)
    rng = [torch.load(tmp_path / f"straight-2p-4-rank{r}.rng") for r in range(2)]
    assert not torch.equal(rng[0], rng[1])  # each process its own masks
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    checkpoints = tmp_path / "resumed" / "checkpoints"
    shutil.rmtree(checkpoints / f"ckpt-{4:09d}")
    (checkpoints / "latest.json").unlink(missing_ok=True)
    assert load_checkpoint(tmp_path / "resumed")["meta"]["step"] == 2
    resumed = _launch(tmp_path, 2, "resumed", 4, *dropout, resume=True)
    for r in range(2):
        assert torch.equal(torch.load(tmp_path / f"resumed-2p-4-rank{r}.rng"), rng[r]), f"rank {r}"
        _assert_close(resumed[r], straight[r], atol=1e-6)


def test_two_processes_equal_one_with_every_modality_at_once(tmp_path):
    """mnist-omni (masked image and class mask as backbone inputs, a caption, a label, a class mask and a
    representation head, each dropped independently): 2 processes take 1 process's steps, and every parameter
    gets a gradient (DDP stops at step 2 otherwise)."""
    pytest.importorskip("sentence_transformers")
    two = _launch(tmp_path, 2, "two", 2, "train.micro_batch=2", preset="mnist-omni")
    one = _launch(tmp_path, 1, "one", 2, preset="mnist-omni")
    for k in two[0]:
        torch.testing.assert_close(two[0][k], two[1][k], rtol=0, atol=0)
    _assert_close(two[0], one[0])
