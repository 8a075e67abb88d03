"""The page's tasks on a run, without gradio: what the run offers (:class:`Offer`, from its modalities'
``value``, ``has_head`` and ``translation_source``) and one method per tab, each taking the page's raw inputs
and returning pictures and text; a bad input is an :class:`~mtdiff.errors.InputError` with a one-line message."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import InputError, MtdiffError
from ..runs import Run
from ..sampling import SAMPLERS
from .convert import class_map, colour_map, hole_mask, painted, to_pixels, upscale

__all__ = ["Offer", "Tasks", "MAX_COUNT", "GENERATED", "EACH"]

MAX_COUNT = 64  # samples per request
GENERATED = "generated"  # the label choice that leaves the label to the model
EACH = "each"  # the label choice that cycles through the classes
Progress = Callable[[int, int], None]  # (steps done, steps in all)


@dataclass(frozen=True)
class Offer:
    """What a run's page offers, from its modalities: ``masked`` an image modality that is a view of the image
    (restoration); ``label`` a class modality, ``classify`` whether it has a head; ``text`` a caption;
    ``class_map`` a per-pixel class modality; ``sources`` the modalities images translate from; ``vectors``."""

    masked: str | None = None
    label: str | None = None
    num_classes: int = 0
    classify: bool = False
    text: str | None = None
    class_map: str | None = None
    map_classes: int = 0
    sources: tuple[str, ...] = ()
    vectors: tuple[str, ...] = ()
    guidance: str | None = None  # "classifier-free", "head" (towards a given label) or None

    @classmethod
    def of(cls, run: Run) -> Offer:
        mods = run.model.modalities
        first = lambda value, ok=lambda m: True: next((n for n, m in mods.items() if m.value == value and ok(m)), None)
        label, cmap = first("class"), first("class_map")
        classify = label is not None and mods[label].has_head
        guidance = "classifier-free" if run.guidable and run.model.conditioned else "head" if classify else None
        return cls(
            masked=first("image", lambda m: not m.translation_source),
            label=label,
            num_classes=mods[label].num_classes if label else 0,
            classify=classify,
            text=first("text"),
            class_map=cmap,
            map_classes=mods[cmap].num_classes if cmap else 0,
            sources=tuple(n for n, m in mods.items() if m.translation_source),
            vectors=tuple(n for n, m in mods.items() if m.value == "vector"),
            guidance=guidance,
        )

    @property
    def tabs(self) -> tuple[str, ...]:
        """The tabs the run supports, in page order."""
        return (
            ("generate",)
            + ("restore",) * bool(self.masked)
            + ("classify",) * self.classify
            + (("translate",) * bool(self.sources))
        )

    @property
    def source(self) -> str | None:
        """The modality the translate tab draws (the run's first translation source)."""
        return self.sources[0] if self.sources else None


def _int(value: Any, what: str, lo: int, hi: int | None = None) -> int:
    """A whole number in [lo, hi] from a page field (a float that is whole is fine)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer()
    if not ok or value < lo or (hi is not None and value > hi):
        span = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise InputError(f"{what} must be a whole number in {span}, got {value!r}")
    return int(value)


class Tasks:
    """The page's tasks on ``run``; ``test_images`` (uint8 [N, C, H, W]) is where "test image #" picks from,
    loaded from the run's data source on first use when not given."""

    def __init__(self, run: Run, test_images: torch.Tensor | None = None):
        self.run, self.offer = run, Offer.of(run)
        self.size, self.channels = run.config.data.image_size, run.config.data.channels
        self._tests = test_images

    # ------------------------------------------------------------------ shared

    def sampling(self, sampler: str, steps: Any, seed: Any) -> dict[str, Any]:
        """The sampler options of a request, checked."""
        if sampler not in SAMPLERS:
            raise InputError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        steps = _int(steps, "steps", 1, self.run.process.num_timesteps)
        return {"sampler": sampler, "steps": steps, "seed": _int(seed, "seed", 0, 2**63 - 1)}

    def _guidance(self, guidance: Any, label_given: bool) -> dict[str, float]:
        """``guidance`` (0 or 1: none) as the run's kind of guidance."""
        if guidance is None or guidance in (0, 1):
            return {}
        if not isinstance(guidance, (int, float)) or isinstance(guidance, bool) or not 0 < guidance < 1e6:
            raise InputError(f"guidance must be a number > 0 (0 or 1: none), got {guidance!r}")
        if self.offer.guidance == "classifier-free":
            return {"guidance": float(guidance)}
        if self.offer.guidance == "head" and label_given:
            return {"head_guidance": float(guidance)}
        if self.offer.guidance == "head":
            raise InputError("guidance on this run steers towards a given label: choose a label, or set guidance 0")
        raise InputError("this run has no guidance (it was trained without condition dropout or label head)")

    def _progress(self, progress: Progress | None, steps: int):
        return None if progress is None else lambda k, *_: progress(k + 1, steps)

    def image(self, value: Any, *, fit: str = "digit", what: str = "the image"):
        """A page image (drawing, upload or editor value) as (pixels [1, C, S, S], uint8 preview)."""
        return to_pixels(_picture(value), self.size, self.channels, fit=fit, what=what)

    def known(self, editor: Any, what: str = "the image") -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """An editor's background (the picture) and the hole painted over it: (pixels [1, C, S, S], keep
        [1, 1, S, S], uint8 preview)."""
        if not isinstance(editor, dict) or editor.get("background") is None:
            raise InputError(f"{what} is missing: upload a picture or pick a test image, then paint the hole")
        background = editor["background"]
        pixels, preview = to_pixels(background, self.size, self.channels, fit="frame", what=what)
        shape = np.asarray(background).shape[:2]
        paint = painted(editor.get("layers"), shape)
        if paint.shape != shape:
            raise InputError(f"the painted layer ({paint.shape}) does not match {what} ({shape})")
        hole = hole_mask(paint, self.size)
        if not hole.any():
            raise InputError(f"no hole painted: paint over the part of {what} to restore with the brush")
        keep = torch.from_numpy((~hole).astype(np.float32))[None, None]
        return pixels, keep, preview

    def pictures(self, images: torch.Tensor) -> list[np.ndarray]:
        """Pixels [N, C, H, W] in [-1, 1] -> uint8 pictures for the page."""
        u8 = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return [a[..., 0] if a.shape[-1] == 1 else a for a in u8.permute(0, 2, 3, 1).numpy()]

    def _map(self, drawing: Any, cls: Any) -> np.ndarray:
        classes = self.offer.map_classes
        return class_map(_picture(drawing), self.size, _int(cls, "the class painted", 1, classes - 1), classes)

    # ------------------------------------------------------------------ tabs

    def generate(
        self,
        count: Any = 8,
        seed: Any = 0,
        sampler: str = "dpm-solver",
        steps: Any = 20,
        guidance: Any = 0,
        label: Any = GENERATED,
        caption: str = "",
        mask_drawing: Any = None,
        mask_class: Any = 1,
        masked: Any = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Samples with any of the run's modalities given (a label, a caption, a class mask drawn, an image with
        a hole), the rest generated: {"images": [(picture, caption)], "maps": [...], "rows": table rows,
        "drift": text}."""
        o, n = self.offer, _int(count, "count", 1, MAX_COUNT)
        opts = self.sampling(sampler, steps, seed)
        given: dict[str, Any] = {}
        label = GENERATED if label in (None, "") else str(label)
        if label != GENERATED:
            if o.label is None:
                raise InputError("a label needs a run with a class modality; this run has none")
            k = int(label) if label.isdigit() else label
            given[o.label] = EACH if label == EACH else _int(k, "label", 0, o.num_classes - 1)
        if caption and caption.strip():
            if o.text is None:
                raise InputError(f"a caption needs a run with a text modality; this run has {self.modalities()}")
            given[o.text] = caption.strip()
        if _drawn(mask_drawing):
            if o.class_map is None:
                raise InputError(f"a class mask needs a run with a class map; this run has {self.modalities()}")
            given[o.class_map] = torch.from_numpy(self._map(mask_drawing, mask_class))
        if isinstance(masked, dict) and masked.get("background") is not None:
            if o.masked is None:
                raise InputError(f"an image with a hole needs a masked-image run; this run has {self.modalities()}")
            pixels, keep, _ = self.known(masked, "the masked image")
            given[o.masked] = (pixels, keep)
        opts.update(self._guidance(guidance, o.label in given))
        out = self.run.generate(given, n, callback=self._progress(progress, opts["steps"]), **opts)
        return self._shown(out, given.get(o.text) if o.text else None)

    def _shown(self, out, caption: str | None = None) -> dict[str, Any]:
        """A :class:`~mtdiff.runs.Samples` as the page shows it."""
        o, n = self.offer, len(out.images)
        texts = [f"#{i}" for i in range(n)]
        probs = out.data.get(o.label) if o.label else None
        rows = []
        for i in range(n):
            row = [i]
            if o.label:
                k = int(out.labels[i])
                p = float(probs[i, k]) if probs is not None and probs.is_floating_point() and probs.ndim == 2 else 1.0
                row += [k, round(p, 3)]
                texts[i] = f"{k}"
            if o.text:
                row.append(caption or "")
                texts[i] = caption or texts[i]
            for v in o.vectors:
                row.append(round(float(out.data[v][i].float().norm()), 3))
            rows.append(row)
        maps = []
        if o.class_map and o.class_map in out.data:
            m = out.data[o.class_map]
            m = m.argmax(1) if m.is_floating_point() and m.ndim == 4 else m
            maps = [(colour_map(x.cpu().numpy(), o.map_classes), texts[i]) for i, x in enumerate(m)]
        drift = ""
        if out.drift is not None:
            drift = "drift of the model's own estimate on the known pixels (mean |error|, in [-1, 1] units): " + (
                ", ".join(f"{float(d):.4f}" for d in out.drift)
            )
        return {"images": list(zip(self.pictures(out.images), texts)), "maps": maps, "rows": rows, "drift": drift}

    def columns(self) -> list[str]:
        """The headers of :meth:`generate`'s table."""
        o = self.offer
        return [
            "sample",
            *(["label", "p(label)"] if o.label else []),
            *(["caption"] if o.text else []),
            *(f"|{v}|" for v in o.vectors),
        ]

    def restore(
        self,
        editor: Any,
        count: Any = 4,
        seed: Any = 0,
        sampler: str = "dpm-solver",
        steps: Any = 20,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Restorations of the editor's picture in the hole painted over it, the known pixels kept:
        {"input": the picture as the model sees it, "hole": white where painted, "images", "drift"}."""
        if self.offer.masked is None:
            raise InputError(f"restore needs a masked-image run; this run has {self.modalities()}")
        n = _int(count, "count", 1, MAX_COUNT)
        opts = self.sampling(sampler, steps, seed)
        pixels, keep, preview = self.known(editor)
        out = self.run.generate(
            {self.offer.masked: (pixels, keep)}, n, callback=self._progress(progress, opts["steps"]), **opts
        )
        shown = self._shown(out)
        hole = ((1 - keep[0, 0]).numpy() * 255).astype(np.uint8)
        return {"input": preview, "hole": hole, "images": shown["images"], "drift": shown["drift"]}

    def classify(self, value: Any, method: str = "head") -> dict[str, Any]:
        """The label head's (or the ELBO's) class probabilities for a drawing or upload: {"input", "probs"}."""
        if not self.offer.classify:
            raise InputError(f"classify needs a run with a label head; this run has {self.modalities()}")
        if method not in ("head", "elbo"):
            raise InputError(f"method must be 'head' or 'elbo', got {method!r}")
        pixels, preview = self.image(value, what="the digit")
        probs = self.run.classify(pixels, method=method, seed=0)[0]
        return {"input": preview, "probs": {str(k): float(p) for k, p in enumerate(probs)}}

    def translate(
        self,
        drawing: Any,
        cls: Any = 1,
        count: Any = 4,
        seed: Any = 0,
        sampler: str = "dpm-solver",
        steps: Any = 20,
        guidance: Any = 0,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Images generated from a drawn class mask (strokes painted with class ``cls``) or a drawn source
        image (edges): {"input": the source as the model sees it, "images"}."""
        o = self.offer
        if o.source is None:
            raise InputError(f"translate needs a class-map or source-image modality; this run has {self.modalities()}")
        n = _int(count, "count", 1, MAX_COUNT)
        opts = self.sampling(sampler, steps, seed)
        mod = self.run.model.modalities[o.source]
        if mod.value == "class_map":
            classes = _int(cls, "the class painted", 1, mod.num_classes - 1)
            source = class_map(_picture(drawing), self.size, classes, mod.num_classes, what="the drawing")
            preview, given = colour_map(source, mod.num_classes), torch.from_numpy(source)
        else:
            given, preview = self.image(drawing, what="the drawing")
        opts.update(self._guidance(guidance, False))
        out = self.run.generate({o.source: given}, n, callback=self._progress(progress, opts["steps"]), **opts)
        return {"input": preview, "images": self._shown(out)["images"]}

    # ------------------------------------------------------------------ test images

    def test_image(self, index: Any, factor: int = 8):
        """Test image ``index`` of the run's data, enlarged ``factor`` times to paint on (:func:`upscale`)."""
        tests = self.tests()
        i = _int(index, "test image #", 0, len(tests) - 1)
        a = tests[i].permute(1, 2, 0).numpy()
        return upscale(a[..., 0] if a.shape[-1] == 1 else a, factor)

    def tests(self) -> torch.Tensor:
        """The run's test images (uint8 [N, C, H, W]), loaded once."""
        if self._tests is None:
            self._tests = _test_images(self.run)
        return self._tests

    def modalities(self) -> str:
        """The run's modalities and what each holds, for messages."""
        mods = self.run.model.modalities
        return ", ".join(f"{n} ({m.value})" for n, m in mods.items()) or "no modalities (a plain DDPM)"


def _picture(value: Any) -> Any:
    """The picture of an editor or sketchpad value (its composite, else its background), or ``value`` itself."""
    if isinstance(value, dict):
        return value.get("composite") if value.get("composite") is not None else value.get("background")
    return value


def _drawn(value: Any) -> bool:
    """Whether an editor or sketchpad value holds anything (a background or a painted layer)."""
    if value is None:
        return False
    if not isinstance(value, dict):
        return True
    background = value.get("background")
    plain = background is None or np.ptp(np.asarray(background)) == 0  # an untouched canvas
    return not plain or bool(painted(value.get("layers")).any())


def _test_images(run: Run) -> torch.Tensor:
    """The first 1,000 test images of the run's data source."""
    from ..build import load_data

    try:
        return load_data(run.config, "test").images[:1000]
    except MtdiffError as e:
        raise InputError(f"no test images for this run: {e}") from None
