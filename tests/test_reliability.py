"""Killed runs and full disks lose nothing: SIGKILL at random moments over many cycles (during steps and
during checkpoint writes) always leaves a complete, verified checkpoint, and the resumed run ends
bit-identical to one never killed; a full disk during a save stops the run with a clear message and
the previous checkpoint intact."""
import errno
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import tiny
from mtdiff.checkpoint import latest_checkpoint, load_checkpoint
from mtdiff.train import Trainer, TrainingError

SMALL = ["model.channels=8", "model.channel_mult=[1,2]", "model.num_res_blocks=1", "model.attention_resolutions=[16]",
         "model.num_heads=2", "train.log_every=2", "train.sample_every=0", "train.warmup_steps=3", "train.lr=1e-3",
         "train.batch_size=8", "model.dropout=0.1"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two classes of 16 random 32 px grey PNGs: a data set that loads in milliseconds."""
    root = tmp_path_factory.mktemp("digits")
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir()
        for i in range(16):
            Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def _cmd(out, folder, steps: int, resume: bool = False) -> list[str]:
    if resume:
        return [sys.executable, "-m", "mtdiff", "train", "--out", str(out), "--resume", "--quiet"]
    cmd = [sys.executable, "-m", "mtdiff", "train", "--config", "mnist-masked-x", "--out", str(out), "--quiet"]
    for o in [*SMALL, "data.source=folder", f"data.root={folder}", f"train.steps={steps}", "train.ckpt_every=1",
              "modalities.masked.max_patches=4"]:
        cmd += ["--set", o]
    return cmd


@pytest.mark.slow
def test_sigkill_at_random_moments_over_many_cycles(tmp_path, folder):
    """Kill -9 after a random 0.5-3 s, again and again, until the run finishes: after every kill the
    latest checkpoint loads with verified checksums, and the end equals an uninterrupted run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    steps, rng = 60, random.Random(0)
    subprocess.run(_cmd(tmp_path / "ref", folder, steps), check=True, env=env, capture_output=True)
    run, kills, during_write, finished = tmp_path / "killed", 0, 0, False
    for cycle in range(40):
        proc = subprocess.Popen(_cmd(run, folder, steps, resume=latest_checkpoint(run) is not None), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            proc.wait(timeout=rng.uniform(0.5, 3.0))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            during_write += any((run / "checkpoints").glob(".tmp-*"))   # a half-written checkpoint was left behind
            if latest_checkpoint(run) is not None:
                load_checkpoint(run, fallback=False)                   # complete and verified, never a fallback
            continue
        assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
        finished = True
        break
    assert finished and kills >= 5, f"{kills} kills before the run finished"
    print(f"{kills} kills, {during_write} during a checkpoint write")
    ref = load_file(str(latest_checkpoint(tmp_path / "ref") / "model.safetensors"))
    got = load_file(str(latest_checkpoint(run) / "model.safetensors"))
    assert load_checkpoint(run)["meta"]["step"] == steps
    for k in ref:
        assert torch.equal(ref[k], got[k]), k


def test_disk_full_during_a_save_stops_with_the_previous_checkpoint_intact(tmp_path, folder, monkeypatch):
    import mtdiff.checkpoint as ckpt

    real, calls = ckpt.save_file, {"n": 0}

    def save_file(tensors, path):
        calls["n"] += 1
        if calls["n"] > 3:                 # the second checkpoint: half a file, then ENOSPC
            with open(path, "wb") as f:
                f.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        real(tensors, path)

    monkeypatch.setattr(ckpt, "save_file", save_file)
    cfg = tiny("mnist-masked-x", *SMALL[5:], "data.source=folder", f"data.root={folder}", "train.steps=4",
               "train.ckpt_every=2")
    trainer = Trainer(cfg, tmp_path / "r", progress=False)
    with pytest.raises(TrainingError, match=r"could not write the checkpoint of step 4 .*No space left on device; "
                                            r"the previous checkpoint .*ckpt-000000002 is intact.*--resume"):
        trainer.run()
    assert load_checkpoint(tmp_path / "r", fallback=False)["meta"]["step"] == 2
    assert not list((tmp_path / "r" / "checkpoints").glob(".tmp-*"))    # the partial write was removed
