"""The gradio page of a run: one tab per task the run supports (:attr:`.tasks.Offer.tabs`), each a thin wrapper
of :class:`.tasks.Tasks`; its functions are gradio API endpoints too (``/generate``, ``/restore``,
``/classify``, ``/translate``). Errors come back as a message in the page."""

from __future__ import annotations

import math
import sys
import traceback

from ..errors import MtdiffError
from ..sampling import SAMPLERS
from .tasks import EACH, GENERATED, MAX_COUNT, Tasks

__all__ = ["build", "theme", "CSS", "QUEUE"]

QUEUE = "model"  # every request that runs the network shares this queue: one at a time per model
CANVAS = (256, 256)  # drawing canvases, in pixels
CSS = """
.pixels img, .pixels canvas { image-rendering: pixelated; }
.converted img { width: 96px !important; height: 96px !important; object-fit: contain; }
"""


def theme(gr):
    """gradio's default theme with the system's fonts (nothing fetched from outside)."""
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def _errors_in_page(gr, fn):
    """``fn`` with every error raised as a ``gr.Error`` (shown in the page; the server goes on)."""

    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except MtdiffError as e:
            raise gr.Error(str(e), print_exception=False) from None
        except Exception as e:  # a bug: the page says so, the console has the traceback
            traceback.print_exc(file=sys.stderr)
            raise gr.Error(f"{type(e).__name__}: {e}", print_exception=False) from None

    return call


def _step_progress(progress):
    return lambda k, n: progress((k, n), desc="sampling", unit="steps")


def build(tasks: Tasks):
    """The page (a ``gr.Blocks``) of ``tasks.run``."""
    from .optional import require_gradio

    gr = require_gradio()
    run, o = tasks.run, tasks.offer
    guard = lambda fn: _errors_in_page(gr, fn)
    title = f"mtdiff: {run.directory.name}"
    brush = gr.Brush(colors=["#000000"], default_color="#000000", default_size=14, color_mode="fixed")
    hole_brush = gr.Brush(colors=["#ff3030"], default_color="#ff3030", default_size=24, color_mode="fixed")

    # what every drawing surface shares: a numpy RGBA value on a fixed-size canvas, one layer, PNG
    canvas = dict(
        type="numpy", image_mode="RGBA", canvas_size=CANVAS, layers=False, format="png", elem_classes=["pixels"]
    )

    def sketchpad(label: str, elem_id: str):
        return gr.Sketchpad(label=label, elem_id=elem_id, sources=("upload",), brush=brush, fixed_canvas=True, **canvas)

    def hole_editor(label: str, elem_id: str):
        return gr.ImageEditor(
            label=label,
            elem_id=elem_id,
            sources=("upload", "clipboard"),
            brush=hole_brush,
            eraser=gr.Eraser(default_size=24),
            transforms=(),
            **canvas,
        )

    def converted(label: str, elem_id: str):
        return gr.Image(
            label=label, elem_id=elem_id, format="png", interactive=False, elem_classes=["pixels", "converted"]
        )

    def gallery(label: str, elem_id: str, visible: bool = True):
        return gr.Gallery(
            label=label, elem_id=elem_id, format="png", columns=6, object_fit="contain", height="auto",
            elem_classes=["pixels"], visible=visible, allow_preview=False,
        )  # fmt: skip

    def sampling_fields(tab: str, count: int):
        with gr.Row():
            n = gr.Slider(1, MAX_COUNT, value=count, step=1, label="count", elem_id=f"{tab}-count")
            seed = gr.Number(0, precision=0, label="seed", minimum=0, elem_id=f"{tab}-seed")
        with gr.Row():
            sampler = gr.Dropdown(list(SAMPLERS), value="dpm-solver", label="sampler", elem_id=f"{tab}-sampler")
            steps = gr.Number(
                20, precision=0, label=f"steps (1 to {run.process.num_timesteps})", elem_id=f"{tab}-steps"
            )
        return n, seed, sampler, steps

    def test_picker(tab: str, target):
        """A "test image #" field and button that put a test image on ``target``."""
        with gr.Row():
            index = gr.Number(0, precision=0, label="test image #", minimum=0, scale=2, elem_id=f"{tab}-test-index")
            pick = gr.Button("pick test image", scale=1, elem_id=f"{tab}-test-pick")
        pick.click(guard(tasks.test_image), [index], [target], api_visibility="private", concurrency_id=QUEUE)
        return index, pick

    guidance_help = {
        "classifier-free": "classifier-free guidance on what is given (0: none)",
        "head": "head guidance towards the label chosen (0: none)",
    }.get(o.guidance or "", "guidance (this run has none)")
    mods = ", ".join(f"{n} ({m.value})" for n, m in run.model.modalities.items()) or "none (a plain DDPM)"

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(
            f"## {title}\n{run.config.name or 'run'} at step {run.step:,}; modalities: {mods}. "
            "Images are the model's size; a drawing or an upload is converted as the model expects it "
            "(grey, white on black) and shown."
        )
        with gr.Tabs():
            # ------------------------------------------------------------------ generate
            with gr.Tab("generate", id="generate", elem_id="tab-generate"):
                with gr.Row():
                    with gr.Column(scale=1):
                        count, seed, sampler, steps = sampling_fields("generate", 16)
                        guidance = gr.Number(
                            0,
                            label=guidance_help,
                            minimum=0,
                            visible=o.guidance is not None,
                            elem_id="generate-guidance",
                        )
                        label = gr.Dropdown(
                            [GENERATED, EACH, *map(str, range(o.num_classes))],
                            value=GENERATED,
                            label="label (generated, or given)",
                            visible=o.label is not None,
                            elem_id="generate-label",
                        )
                        caption = gr.Textbox(
                            label="caption (empty: generated)", visible=o.text is not None, elem_id="generate-caption"
                        )
                        with gr.Accordion("class mask (draw it: empty canvas = generated)", visible=bool(o.class_map)):
                            mask_drawing = sketchpad("class mask strokes", "generate-mask")
                            mask_class = gr.Dropdown(
                                [str(k) for k in range(1, max(o.map_classes, 2))], value="1", label="class painted"
                            )
                        hole = "image with a hole (upload, paint the hole)"
                        with gr.Accordion(hole, visible=bool(o.masked), open=False):
                            masked = hole_editor("image; paint the unknown pixels", "generate-masked")
                        go = gr.Button("generate", variant="primary", elem_id="generate-run")
                    with gr.Column(scale=2):
                        images = gallery("images", "generate-images")
                        maps = gallery("class masks", "generate-maps", visible=bool(o.class_map))
                        table = gr.Dataframe(headers=tasks.columns(), label="per sample", elem_id="generate-table")
                        drift = gr.Textbox(label="drift", visible=bool(o.masked), elem_id="generate-drift")

                def generate(count, seed, sampler, steps, guidance, label, caption, mask, mask_class, masked,
                             progress=gr.Progress()):  # noqa: B008  # fmt: skip
                    out = tasks.generate(
                        count, seed, sampler, steps, guidance, label, caption, mask,
                        int(mask_class) if str(mask_class).isdigit() else mask_class, masked, _step_progress(progress),
                    )  # fmt: skip
                    return out["images"], out["maps"], out["rows"], out["drift"]

                go.click(
                    guard(generate),
                    [count, seed, sampler, steps, guidance, label, caption, mask_drawing, mask_class, masked],
                    [images, maps, table, drift],
                    api_name="generate",
                    concurrency_id=QUEUE,
                )

            # ------------------------------------------------------------------ restore
            if o.masked:
                with gr.Tab("restore", id="restore", elem_id="tab-restore"):
                    with gr.Row():
                        with gr.Column(scale=1):
                            editor = hole_editor("upload or pick a test image, then paint the hole", "restore-editor")
                            test_picker("restore", editor)
                            r_count, r_seed, r_sampler, r_steps = sampling_fields("restore", 4)
                            r_go = gr.Button("restore", variant="primary", elem_id="restore-run")
                        with gr.Column(scale=1):
                            with gr.Row():
                                r_input = converted("input (as the model sees it)", "restore-input")
                                r_hole = converted("hole (white)", "restore-hole")
                            r_images = gallery("restorations (known pixels kept)", "restore-images")
                            r_drift = gr.Textbox(label="drift", elem_id="restore-drift")

                    def restore(editor, count, seed, sampler, steps, progress=gr.Progress()):  # noqa: B008
                        out = tasks.restore(editor, count, seed, sampler, steps, _step_progress(progress))
                        return out["input"], out["hole"], out["images"], out["drift"]

                    r_go.click(
                        guard(restore),
                        [editor, r_count, r_seed, r_sampler, r_steps],
                        [r_input, r_hole, r_images, r_drift],
                        api_name="restore",
                        concurrency_id=QUEUE,
                    )
                    editor.upload(guard(_enlarge), [editor], [editor], api_visibility="private")

            # ------------------------------------------------------------------ classify
            if o.classify:
                with gr.Tab("classify", id="classify", elem_id="tab-classify"):
                    with gr.Row():
                        with gr.Column(scale=1):
                            digit = sketchpad("draw a digit (or upload one)", "classify-canvas")
                            test_picker("classify", digit)
                            method = gr.Radio(
                                ["head", "elbo"],
                                value="head",
                                label="method (elbo: 10 passes a class)",
                                elem_id="classify-method",
                            )
                            c_go = gr.Button("classify", variant="primary", elem_id="classify-run")
                        with gr.Column(scale=1):
                            c_input = converted("input (as the model sees it)", "classify-input")
                            probs = gr.Label(
                                num_top_classes=o.num_classes, label="class probabilities", elem_id="classify-probs"
                            )

                    def classify(value, method):
                        out = tasks.classify(value, method)
                        return out["input"], out["probs"]

                    c_go.click(
                        guard(classify), [digit, method], [c_input, probs], api_name="classify", concurrency_id=QUEUE
                    )

            # ------------------------------------------------------------------ translate
            if o.sources:
                source = run.model.modalities[o.source]
                by_class = source.value == "class_map"
                with gr.Tab("translate", id="translate", elem_id="tab-translate"):
                    with gr.Row():
                        with gr.Column(scale=1):
                            what = "draw a class mask" if by_class else f"draw the {o.source} image"
                            drawing = sketchpad(what, "translate-canvas")
                            t_class = gr.Dropdown(
                                [str(k) for k in range(1, max(getattr(source, "num_classes", 2), 2))],
                                value="1",
                                label="class painted (0 is the background)",
                                visible=by_class,
                                elem_id="translate-class",
                            )
                            t_count, t_seed, t_sampler, t_steps = sampling_fields("translate", 8)
                            t_guidance = gr.Number(
                                0, label=guidance_help, minimum=0, visible=o.guidance == "classifier-free"
                            )
                            t_go = gr.Button("translate", variant="primary", elem_id="translate-run")
                        with gr.Column(scale=1):
                            t_input = converted("source (as the model sees it)", "translate-input")
                            t_images = gallery("images", "translate-images")

                    def translate(drawing, cls, count, seed, sampler, steps, guidance, progress=gr.Progress()):  # noqa: B008
                        cls = int(cls) if str(cls).isdigit() else cls
                        step = _step_progress(progress)
                        out = tasks.translate(drawing, cls, count, seed, sampler, steps, guidance, step)
                        return out["input"], out["images"]

                    t_go.click(
                        guard(translate),
                        [drawing, t_class, t_count, t_seed, t_sampler, t_steps, t_guidance],
                        [t_input, t_images],
                        api_name="translate",
                        concurrency_id=QUEUE,
                    )
    return demo


def _enlarge(value):
    """An upload onto a hole editor, enlarged (nearest, a whole factor) to fill the canvas, so the brush is
    finer than the pixels; the task gets the same pixels back."""
    import gradio as gr
    import numpy as np

    from .convert import upscale

    if not isinstance(value, dict) or value.get("background") is None:
        return gr.skip()
    bg = np.asarray(value["background"])
    factor = math.ceil(max(CANVAS) / max(bg.shape[:2]))
    if factor <= 1:
        return gr.skip()  # writing the value back would be an upload again: an endless loop of them
    return upscale(bg, factor)
