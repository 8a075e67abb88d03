"""Training throughput of the mtdiff U-Net against diffusers' UNet2DModel of the same size, and the cost
of MT-Diffusion's heads, all measured in one run.

    python -m benchmarks.throughput [--device cuda] [--sizes cifar32,adm64] [--batch N] [--steps 10]
                                    [--compile | --no-compile] [--out-dir benchmarks/results]

Sizes (the issue's): ``cifar32``, 32x32x3, channels (128, 256, 256, 256), 2 res blocks, attention at 16,
batch 256 (about 36M parameters); ``adm64``, ADM ImageNet-64, 192 channels x (1, 2, 3, 4), 3 res blocks,
attention at 32, 16 and 8, batch 128. Both networks get 64-channel attention heads, scale-shift time
conditioning, convolutional resampling and no dropout. A backbone step is x_t from random data, the
eps MSE, backward and a fused AdamW step, under bf16 autocast on a GPU (fp32 on the CPU). The MT
overhead compares ``mtdiff.train.Trainer.train_step`` (data derivation, loss, EMA: everything) of
MT-Diffusion-X with a masked-image modality and its mask head against single-task DDPM on the same
backbone.

Each case runs in its own process (clean peak memory, compile caches). FLOPs are counted with
``torch.utils.flop_counter`` on one eager training step; MFU divides the achieved FLOP/s by the GPU's
dense bf16 peak (the table below); a CPU has no such figure, so there only the achieved FLOP/s is given.
On a CPU the default batch is cut to fit minutes, and the result says so. Writes
``throughput-<device>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import machine, slug

RESULTS = Path(__file__).parent / "results"

SIZES = {
    "cifar32": {
        "image_size": 32,
        "channels": 128,
        "channel_mult": (1, 2, 2, 2),
        "num_res_blocks": 2,
        "attention_resolutions": (16,),
        "batch": 256,
        "cpu_batch": 8,
    },
    "adm64": {
        "image_size": 64,
        "channels": 192,
        "channel_mult": (1, 2, 3, 4),
        "num_res_blocks": 3,
        "attention_resolutions": (32, 16, 8),
        "batch": 128,
        "cpu_batch": 2,
    },
}
# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, matched against the device name
# by gpu_key (whole words, the longest key wins).
GPU_PEAK_BF16 = {
    "H200": 989.4e12,
    "H100 PCIe": 756.0e12,
    "H100": 989.4e12,
    "A100": 312.0e12,
    "L40S": 362.05e12,
    "L40": 181.05e12,
    "L4": 121.0e12,
    "A10G": 70.0e12,
    "RTX 4090": 165.2e12,
}
# The anchor: one H100, bf16, diffusers UNet2DModel (img/s).
ANCHOR = {"cifar32": {"eager": 2154, "compiled": 4371}, "adm64": {"eager": 240}}


# ---------------------------------------------------------------------------- the networks


def mtdiff_unet(size: dict):
    from mtdiff.models.unet import UNet

    return UNet(
        image_size=size["image_size"],
        in_channels=3,
        out_channels=3,
        model_channels=size["channels"],
        channel_mult=size["channel_mult"],
        num_res_blocks=size["num_res_blocks"],
        attention_resolutions=size["attention_resolutions"],
        num_head_channels=64,
        dropout=0.0,
    )


def diffusers_unet(size: dict):
    from diffusers import UNet2DModel

    res = [size["image_size"] // 2**i for i in range(len(size["channel_mult"]))]
    attn = [r in size["attention_resolutions"] for r in res]
    return UNet2DModel(
        sample_size=size["image_size"],
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(size["channels"] * m for m in size["channel_mult"]),
        layers_per_block=size["num_res_blocks"],
        attention_head_dim=64,
        dropout=0.0,
        resnet_time_scale_shift="scale_shift",
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
    )


def mt_trainer(size: dict, arm: str, batch: int, device: str, compile_: bool, tmp: str):
    """A Trainer for single-task DDPM (``ddpm``) or MT-Diffusion-X with a masked image (``mt-x``) on synthetic data."""
    from mtdiff.config import load_config
    from mtdiff.data import ImageSet
    from mtdiff.train import Trainer

    s = size["image_size"]
    g = torch.Generator().manual_seed(0)
    n = max(2 * batch, 64)
    data = ImageSet(
        (torch.rand(n, 3, s, s, generator=g) * 255).to(torch.uint8),
        torch.randint(0, 10, (n,), generator=g),
        [str(i) for i in range(10)],
        "synthetic",
    )
    preset = {"ddpm": "mnist-ddpm", "mt-x": "mnist-masked-x"}[arm]
    cfg = load_config(
        preset,
        [
            f"data.image_size={s}",
            "data.channels=3",
            f"model.channels={size['channels']}",
            f"model.channel_mult={list(size['channel_mult'])}",
            f"model.num_res_blocks={size['num_res_blocks']}",
            f"model.attention_resolutions={list(size['attention_resolutions'])}",
            "model.num_head_channels=64",
            "model.dropout=0.0",
            f"train.batch_size={batch}",
            f"train.device={device}",
            f"train.compile={str(compile_).lower()}",
            "train.sample_every=0",
            "train.log_every=1000000",
        ],
    )
    return Trainer(cfg, Path(tmp) / arm, data=data, progress=False)


# ---------------------------------------------------------------------------- one case, in its own process


def backbone_step(model, opt, batch: int, size: dict, device, amp, diffusers: bool):
    """x_t of random data, eps MSE, backward, fused AdamW: the same work for both networks."""
    s = size["image_size"]
    x0 = torch.randn(batch, 3, s, s, device=device)
    noise = torch.randn_like(x0)
    t = torch.randint(0, 1000, (batch,), device=device)
    ab = (1 - torch.linspace(1e-4, 0.02, 1000, device=device)).cumprod(0)[t].view(-1, 1, 1, 1)
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        out = model(xt, t)
        eps = out.sample if diffusers else out["eps"]
        loss = F.mse_loss(eps.float(), noise)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def peak_rss() -> int:
    """This process's peak resident memory in bytes: VmHWM where /proc has it (ru_maxrss would also count
    the forking parent's peak, carried over exec), else ru_maxrss (KiB on Linux, bytes on macOS)."""
    try:
        return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss if sys.platform == "darwin" else rss * 1024


def run_case(case: dict) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    device, size, batch = torch.device(case["device"]), case["spec"], case["batch"]
    cuda = device.type == "cuda"
    tmp = tempfile.mkdtemp()
    if case["arm"] in ("mtdiff", "diffusers"):
        model = (mtdiff_unet if case["arm"] == "mtdiff" else diffusers_unet)(size).to(device)
        if cuda and case["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        params = sum(p.numel() for p in model.parameters())

        def count_step():
            backbone_step(model, opt, batch, size, device, cuda, case["arm"] == "diffusers")

        if case["compile"]:
            model.compile()
        step = count_step
    else:
        trainer = mt_trainer(size, case["arm"], batch, case["device"], case["compile"], tmp)
        params = sum(p.numel() for p in trainer.model.parameters())
        step = count_step = trainer.train_step

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t_first = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - t_first  # includes compiling when compiled
    for _ in range(case["warmup"] - 1):
        step()
    sync()
    times = []
    for _ in range(case["repeats"]):
        t0 = time.perf_counter()
        for _ in range(case["steps"]):
            step()
        sync()
        times.append((time.perf_counter() - t0) / case["steps"])
    sec = statistics.median(times)
    peak_mem = torch.cuda.max_memory_allocated(device) if cuda else peak_rss()
    if case["compile"] and case["arm"] in ("mtdiff", "diffusers"):
        flops = None  # counted on the eager case of the same arm
    else:
        with FlopCounterMode(display=False) as fc:
            count_step()
        flops = fc.get_total_flops()
    return {
        **case,
        "params": params,
        "sec_per_step": sec,
        "img_per_s": batch / sec,
        "first_step_s": round(first, 2),
        "peak_memory_gib": peak_mem / 2**30,
        "peak_memory_kind": "max allocated (CUDA)" if cuda else "peak RSS of the process",
        "flops_per_step": flops,
        "step_times": times,
    }


# ---------------------------------------------------------------------------- the driver


def gpu_key(name: str) -> str | None:
    """The longest GPU_PEAK_BF16 key found in ``name`` as whole words ("NVIDIA L40" is an L40, not an L4)."""
    found = [k for k in GPU_PEAK_BF16 if re.search(rf"(?<!\w){re.escape(k)}(?!\w)", name)]
    return max(found, key=len, default=None)


def peak_flops(device: str) -> tuple[float | None, str]:
    """The data-sheet peak MFU is measured against (None for CPUs and unknown GPUs: achieved FLOP/s only)."""
    if torch.device(device).type == "cuda":
        name = torch.cuda.get_device_name(device)
        if key := gpu_key(name):
            return GPU_PEAK_BF16[key], f"{key} dense bf16 data-sheet peak"
        return None, f"unknown GPU {name!r} (no entry in GPU_PEAK_BF16)"
    return None, "no data-sheet peak for a CPU"


def spawn(case: dict, threads: int | None) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.throughput", "--case", json.dumps(case)]
    cmd += ["--threads", str(threads)] if threads else []
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if proc.returncode:
        return {
            **case,
            "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}",
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        "## Training throughput (`python -m benchmarks.throughput`)",
        "",
        f"Command: `{r['command']}`",
        "",
        f"Device: {m['device_name']} ({m['device']}), torch {m['torch']}, {m['torch_threads']} CPU threads. MFU: "
        + (
            f"against the {r['peak_label']} ({r['peak_flops'] / 1e12:.1f} TFLOP/s)."
            if r["peak_flops"]
            else f"none ({r['peak_label']}); achieved TFLOP/s only."
        ),
        "",
    ]
    if r["cpu_batches"]:
        lines += [
            "**On a CPU, with batches cut to fit minutes:** the ratios compare the networks on the same "
            "machine; the GPU goals (img/s, MFU) need a GPU run.",
            "",
        ]
    lines += [
        "| size | arm | compiled | batch | params | img/s | ms/step | first step s | peak GiB | TFLOP/step | "
        "TFLOP/s | MFU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in r["cases"]:
        head = f"| {c['size']} | {c['arm']} | {'yes' if c['compile'] else 'no'} | {c['batch']} |"
        if "error" in c:
            lines.append(f"{head} error: {c['error']} ||||||||")
            continue
        tflop = f"{c['flops_per_step'] / 1e12:.3f}" if c.get("flops_per_step") else "-"
        rate = f"{c['tflops_achieved']:.3f}" if c.get("tflops_achieved") else "-"
        mfu = f"{100 * c['mfu']:.1f}%" if c.get("mfu") is not None else "-"
        lines.append(
            f"{head} {c['params'] / 1e6:.1f}M | {c['img_per_s']:.1f} | {1e3 * c['sec_per_step']:.0f} | "
            f"{c['first_step_s']} | {c['peak_memory_gib']:.2f} | {tflop} | {rate} | {mfu} |"
        )
    lines += ["", "| ratio | value | goal |", "|---|---|---|"]
    lines += [f"| {k} | {v['value']:.3f} | {v['goal']} |" for k, v in r["ratios"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", default="cifar32,adm64")
    ap.add_argument(
        "--mt-sizes", default=None, help="sizes for the MT overhead (default: all on a GPU, cifar32 on a CPU)"
    )
    ap.add_argument("--batch", type=int, default=None, help="one batch for every size (default: the issue's on a GPU)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per repeat (default 20 on a GPU, 2 on a CPU)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 on a GPU, 1 on a CPU)")
    ap.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time torch.compile'd networks (default: on a GPU only)",
    )
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return {}

    cuda = torch.device(args.device).type == "cuda"
    compile_ = cuda if args.compile is None else args.compile
    sizes = args.sizes.split(",")
    mt_sizes = (args.mt_sizes or (args.sizes if cuda else "cifar32")).split(",")
    common = {
        "device": args.device,
        "steps": args.steps or (20 if cuda else 2),
        "repeats": args.repeats,
        "warmup": args.warmup or (5 if cuda else 1),
        "channels_last": args.channels_last,
    }
    batch = {s: args.batch or SIZES[s]["batch" if cuda else "cpu_batch"] for s in sizes}
    cases = []
    for s in sizes:
        for compiled in [False, True] if compile_ else [False]:
            for arm in ("diffusers", "mtdiff"):
                cases.append(
                    {**common, "size": s, "spec": SIZES[s], "arm": arm, "compile": compiled, "batch": batch[s]}
                )
    for s in mt_sizes:
        for arm in ("ddpm", "mt-x"):
            cases.append(
                {
                    **common,
                    "size": s,
                    "spec": SIZES[s],
                    "arm": arm,
                    "compile": False,
                    "batch": args.batch or SIZES[s]["batch" if cuda else "cpu_batch"],
                }
            )
    peak, peak_label = peak_flops(args.device)
    results = []
    for case in cases:
        print(
            f"[throughput] {case['size']} {case['arm']} {'compiled' if case['compile'] else 'eager'} "
            f"batch {case['batch']} ...",
            flush=True,
        )
        results.append(spawn(case, args.threads))
    eager_flops = {(c["size"], c["arm"]): c.get("flops_per_step") for c in results if not c["compile"]}
    for c in results:
        if "error" in c:
            continue
        c["flops_per_step"] = c.get("flops_per_step") or eager_flops.get((c["size"], c["arm"]))
        c["tflops_achieved"] = c["flops_per_step"] / c["sec_per_step"] / 1e12 if c["flops_per_step"] else None
        c["mfu"] = c["tflops_achieved"] * 1e12 / peak if c["tflops_achieved"] and peak else None

    def ips(size, arm, compiled=False):
        return next(
            (
                c["img_per_s"]
                for c in results
                if c["size"] == size and c["arm"] == arm and c["compile"] == compiled and "error" not in c
            ),
            float("nan"),
        )

    ratios = {}
    for s in sizes:
        ratios[f"{s}: mtdiff eager / diffusers eager"] = {
            "value": ips(s, "mtdiff") / ips(s, "diffusers"),
            "goal": ">= 2",
        }
        if compile_:
            ratios[f"{s}: mtdiff compiled / diffusers compiled"] = {
                "value": ips(s, "mtdiff", True) / ips(s, "diffusers", True),
                "goal": "> 1",
            }
            ratios[f"{s}: mtdiff compiled / diffusers eager"] = {
                "value": ips(s, "mtdiff", True) / ips(s, "diffusers"),
                "goal": "-",
            }
    for s in mt_sizes:
        ratios[f"{s}: MT-Diffusion-X (mask head) / single-task, img/s"] = {
            "value": ips(s, "mt-x") / ips(s, "ddpm"),
            "goal": ">= 0.95",
        }
    m = machine(args.device)
    result = {
        "benchmark": "throughput",
        "command": shlex.join(["python", "-m", "benchmarks.throughput", *(sys.argv[1:] if argv is None else argv)]),
        "machine": m,
        "peak_flops": peak,
        "peak_label": peak_label,
        "cpu_batches": not cuda and args.batch is None,
        "anchor_h100_diffusers_img_per_s": ANCHOR,
        "cases": results,
        "ratios": ratios,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    tag = slug(m["device_name"]) if cuda else "cpu"
    (args.out_dir / f"throughput-{tag}.json").write_text(json.dumps(result, indent=1))
    (args.out_dir / f"throughput-{tag}.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
