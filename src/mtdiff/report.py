"""``mtdiff report``: one self-contained HTML page about a run (every image embedded as base64).

Sections: the run (config summary), loss curves from ``log.jsonl``, the schedule (alpha_bar_t and
each modality's alpha~_t, and KL(q(z_t | z_0, X) || N(0, I)) over t whose value at T is the prior
term L0), joint samples, and, as the run's modalities allow, class-conditional samples,
restorations and translations generated on the spot, then every metrics JSON in the run directory.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import torch

from .rundir import CONFIG_FILE
from .runs import Run, load_run, read_log

__all__ = ["write_report", "prior_kl_curve"]


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _grid_png(images: torch.Tensor, nrow: int | None = None, captions: list[str] | None = None) -> str:
    import tempfile

    from .viz import save_grid

    with tempfile.TemporaryDirectory() as d:
        path = save_grid(images, Path(d) / "g.png", nrow=nrow, captions=captions)
        return base64.b64encode(path.read_bytes()).decode()


def _img(b64: str, alt: str, cls: str = "grid") -> str:
    return f'<img class="{cls}" alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _loss_figure(log: list[dict[str, Any]]):
    import matplotlib.pyplot as plt

    rows = [r for r in log if "loss" in r]
    keys = (
        [k for k in rows[0] if k not in ("step", "lr", "img_per_s", "grad_norm", "skipped_nonfinite")] if rows else []
    )
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for k in keys:
        ax.plot([r["step"] for r in rows], [r[k] for r in rows], label=k)
    ax.set(xlabel="step", ylabel="batch mean", yscale="log", title="training loss (Eq. 6) and its terms")
    ax.legend(fontsize=8)
    return fig


@torch.no_grad()
def prior_kl_curve(
    run: Run, z0: torch.Tensor, data: dict[str, torch.Tensor], points: int = 50
) -> tuple[list[int], list[float]]:
    """Per-dimension KL(q(z_t | z_0, X) || N(0, I)) at ``points`` times; its value at T - 1 is L0."""
    enc = run.model.encode(data)
    ts = torch.linspace(0, run.process.num_timesteps - 1, points).round().long().tolist()
    kls = []
    for t in ts:
        mean, std = run.process.q_mean_std(z0, torch.full((z0.shape[0],), t, dtype=torch.long), enc)
        var = (std**2).expand_as(mean)
        kls.append(float((0.5 * (mean**2 + var - 1 - var.log())).mean()))
    return ts, kls


def _schedule_figure(run: Run, kl: tuple[list[int], list[float]] | None):
    import matplotlib.pyplot as plt

    p = run.process
    fig, axes = plt.subplots(1, 2 if kl else 1, figsize=(10 if kl else 5, 3.2), squeeze=False)
    ax = axes[0, 0]
    ax.plot(p.alphas_cumprod.numpy(), label="alpha_bar_t")
    for name in p.modalities:
        ax.plot(p.alpha_tilde[name].numpy(), label=f"alpha~_t ({name})")
    ax.set(xlabel="t", title="signal of z_0 and of each E_i(x_i) in z_t (Eq. 4)")
    ax.legend(fontsize=8)
    if kl:
        axes[0, 1].plot(*kl)
        axes[0, 1].set(xlabel="t", yscale="log", title=f"KL(q(z_t | z_0, X) || N(0, I)) per dim; L0 = {kl[1][-1]:.2e}")
    return fig


def _metrics_tables(run_dir: Path) -> str:
    parts = []
    for path in sorted(run_dir.glob("*.json")) + sorted(run_dir.glob("eval/*.json")):  # eval/: mtdiff evaluate
        try:
            obj = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not isinstance(obj, dict):
            continue
        rows = "".join(
            f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>"
            for k, v in obj.items()
            if not isinstance(v, (list, dict))
        )
        parts.append(f"<h3>{html.escape(str(path.relative_to(run_dir)))}</h3><table>{rows}</table>")
    return "".join(parts) or "<p>No metrics JSON in the run directory yet (see <code>mtdiff evaluate</code>).</p>"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _generated_sections(run: Run, test, num: int, steps: int, seed: int) -> list[tuple[str, str]]:
    """(title, html) for each kind of generation the run's modalities allow."""
    from .evaluate import representation_cosine, restoration_grid, translate
    from .runs import num_classes, views_image

    m, kw = run.model, {"steps": steps, "seed": seed}
    s = run.sample(num, **kw)
    out = [
        (
            "Joint samples",
            _img(_grid_png(s.images, captions=s.captions), "joint samples")
            + _kv(representation_cosine(m, s, s.images)),
        )
    ]
    if num_classes(m) is not None:
        c = run.sample(num, labels="each", **kw)
        out.append(
            (
                "Class-conditional samples (printed: the given class)",
                _img(_grid_png(c.images, captions=c.captions), "class-conditional samples"),
            )
        )
    if test is not None and run.modality(views_image) is not None:
        grid, ncol, stats = restoration_grid(run, test, num=min(num, 8), per_input=2, **kw)
        out.append(
            (
                "Restorations (rows: image, masked, two restorations)",
                _img(_grid_png(grid, nrow=ncol * 2), "restorations") + _kv(stats),
            )
        )
    # translation sources: per-pixel data of another domain (class maps), or source images the backbone reads
    sources = [
        n for n, mod in m.modalities.items() if mod.translation_source and (not mod.image_data or n in m.conditioned)
    ]
    if test is not None and sources:
        grid, scores = translate(run, test, modality=sources[0], num=min(num, 8), **kw)
        cols = int(scores.pop("columns"))
        out.append(
            (
                "Translations (source, ground truth, generated)",
                _img(_grid_png(grid, nrow=2 * cols), "translations") + _kv(scores),
            )
        )
    return out


def _kv(d: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>" for k, v in d.items())
    return f"<table>{rows}</table>"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
img{max-width:100%}img.grid{image-rendering:pixelated;width:520px}img.plot{width:auto}
table{border-collapse:collapse;margin:.5em 0}
td{border:1px solid #ddd;padding:.2em .6em;font-size:.9em}pre{background:#f6f6f6;padding:.6em;overflow:auto}"""


def write_report(
    run_dir: str | Path, out: str | Path | None = None, *, num: int = 16, steps: int = 50, seed: int = 0, test=None
) -> Path:
    """Write ``out`` (default RUN/report.html; ``runs/NAME/report.html`` for a shipped model) and return its
    path. ``test``: the reference split (default: the run's own test split, if it can be loaded; sections that
    need it are left out otherwise)."""
    import matplotlib

    matplotlib.use("Agg")
    run = load_run(run_dir)
    run_dir = run.directory  # a shipped model's name resolved to its folder
    if test is None:
        try:
            from .build import load_data

            test = load_data(run.config, "test")
        except Exception as e:  # no local copy of the data: the report says so and goes on
            test, missing = None, f"{type(e).__name__}: {e}"
    sections = [
        (
            "Run",
            f"<p>{html.escape(run.config.name)}, step {run.step}, model "
            f"{sum(p.numel() for p in run.model.parameters()) / 1e6:.2f}M parameters.</p>"
            f"<details><summary>config.yaml</summary><pre>{html.escape((run_dir / CONFIG_FILE).read_text())}</pre>"
            "</details>",
        )
    ]
    log = read_log(run_dir)
    if any("loss" in r for r in log):
        sections.append(("Loss curves", _img(_png(_loss_figure(log)), "loss curves", "plot")))
    kl = None
    if test is not None:
        batch = test.batch(torch.arange(min(256, len(test))), "cpu")
        data = {n: mod.derive(batch, torch.Generator().manual_seed(0)) for n, mod in run.model.modalities.items()}
        data = run.latent.encode_data(data, run.model.modalities)
        kl = prior_kl_curve(run, run.latent.encode(batch["image"]), data)
    l0 = (
        (
            f"<p>Prior term L0 = KL(q(z_T | z_0, X) || N(0, I)) = {kl[1][-1]:.2e} nats per dimension on "
            f"{len(batch['image'])} test samples.</p>"
        )
        if kl
        else ""
    )
    sections.append(("Schedule", _img(_png(_schedule_figure(run, kl)), "schedule", "plot") + l0))
    sections += _generated_sections(run, test, num, steps, seed)
    if test is None:
        sections.append(
            (
                "Not shown",
                f"<p>The test split could not be loaded ({html.escape(missing)}): no "
                "restorations, translations or prior KL.</p>",
            )
        )
    sections.append(("Metrics", _metrics_tables(run_dir)))
    body = "".join(f"<section><h2>{html.escape(t)}</h2>{h}</section>" for t, h in sections)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>mtdiff report: {html.escape(str(run_dir))}</title>"
        f"<style>{_CSS}</style></head><body><h1>mtdiff report: {html.escape(run_dir.name)}</h1>{body}</body></html>"
    )
    out = Path(out) if out is not None else run.output_dir / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return out
