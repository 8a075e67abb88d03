"""mtdiff serve: the input conversion and the tasks without a browser, then the page in headless Chromium.

The browser tests start ``mtdiff serve --run mnist-label-m`` (shipped: nothing to train) and, in this process, the
page of a tiny mnist-omni run trained here (every tab); they draw with mouse events, type, click and check what
the page shows against the Python API. They are skipped, with the reason, where gradio, selenium, Chromium or
its driver is missing.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtdiff.app.convert import class_map, colour_map, hole_mask, painted, to_pixels, upscale
from mtdiff.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- conversion (pure)


def test_drawing_on_white_canvas_becomes_white_digit_on_black():
    canvas = np.zeros((256, 256, 4), np.uint8)  # a transparent sketchpad: the canvas is white
    canvas[40:220, 120:136] = [0, 0, 0, 255]  # a black stroke
    pixels, shown = to_pixels(canvas, 32)
    assert pixels.shape == (1, 1, 32, 32) and pixels.dtype == torch.float32
    assert pixels.min() == -1 and pixels.max() == 1 and shown.shape == (32, 32)
    assert shown[:, :4].max() == 0 and shown[16, 14:18].max() == 255  # background black, stroke white, centred
    rows = np.nonzero(shown.max(1))[0]
    assert rows.max() - rows.min() + 1 == 20  # the digit box of MNIST (20 of 32 pixels)
    white = np.full((300, 200, 3), 255, np.uint8)  # an opaque white upload of another size, drawn in grey
    white[100:200, 90:110] = 60
    assert to_pixels(white, 32)[1].max() == 255 and to_pixels(white, 32)[1][0].max() == 0


def test_model_sized_upload_is_kept_and_whole_factor_enlargement_comes_back_exactly():
    g = np.random.default_rng(0)
    digit = np.zeros((32, 32), np.uint8)
    digit[6:26, 10:22] = g.integers(0, 256, (20, 12))
    pixels, shown = to_pixels(digit, 32)
    assert np.array_equal(shown, digit)
    assert torch.equal(pixels[0, 0], torch.from_numpy(digit).float() / 127.5 - 1)
    big = np.asarray(upscale(digit, 8))
    assert big.shape == (256, 256)
    assert np.array_equal(to_pixels(big, 32, fit="frame")[1], digit)
    rgb = np.stack([digit] * 3, -1)  # colour uploads and PIL images of any mode
    assert np.array_equal(to_pixels(Image.fromarray(rgb), 32)[1], digit)
    assert np.array_equal(to_pixels(Image.fromarray(digit).convert("P"), 32)[1], digit)
    assert to_pixels(rgb, 32, channels=3)[0].shape == (1, 3, 32, 32)


def test_an_upload_onto_the_hole_editor_is_enlarged_once_then_left_alone():
    """The editor fires "upload" when its value is set, so a value written back would fire it again, forever."""
    gr = pytest.importorskip("gradio")
    from mtdiff.app.page import CANVAS, _enlarge

    digit = np.zeros((32, 32), np.uint8)
    digit[6:26, 13:19] = 255
    big = np.asarray(_enlarge({"background": digit, "layers": [], "composite": digit}))
    assert big.shape == CANVAS and np.array_equal(big[::8, ::8], digit)
    for settled in ({"background": big, "layers": [], "composite": big}, {"background": None}, None):
        assert _enlarge(settled) == gr.skip()


@pytest.mark.parametrize(
    "value, message",
    [
        (None, "empty"),
        (np.full((64, 64, 4), 255, np.uint8), "empty"),  # a white canvas, nothing drawn
        (np.zeros((64, 64, 4), np.uint8), "empty"),  # an untouched transparent sketchpad
        (np.zeros((4, 4), np.uint8), "8 to 4096 pixels"),
        (np.zeros((64, 64, 2), np.uint8), "must be an image"),
        (np.zeros((64,), np.uint8), "must be an image"),
        (np.array([["a"] * 16] * 16), "numbers"),
    ],
)
def test_bad_pictures_are_one_line_input_errors(value, message):
    with pytest.raises(InputError, match=message):
        to_pixels(value, 32)


def test_hole_mask_class_map_and_colours():
    paint = np.zeros((256, 256), bool)
    paint[64:128, 0:256] = True  # rows 8..15 of 32 at scale 8
    hole = hole_mask(paint, 32)
    assert hole.shape == (32, 32) and hole[8:16].all() and not hole[:8].any() and not hole[16:].any()
    layer = np.zeros((256, 256, 4), np.uint8)
    layer[64:128, :, 3] = 255
    assert np.array_equal(painted([layer]), paint) and not painted(None, (5, 5)).any()
    strokes = np.zeros((128, 128, 4), np.uint8)
    strokes[20:100, 60:70] = [0, 0, 0, 255]
    m = class_map(strokes, 32, 4, 11)
    assert m.dtype == np.int64 and set(np.unique(m)) == {0, 4}
    from mtdiff.app.tasks import _picture  # a sketchpad's value: its composite is the drawing

    assert np.array_equal(class_map(_picture({"background": None, "layers": [], "composite": strokes}), 32, 4, 11), m)
    with pytest.raises(InputError, match=r"\[1, 10\]"):
        class_map(strokes, 32, 0, 11)
    rgb = colour_map(m, 11)
    assert rgb.shape == (32, 32, 3) and rgb[m == 0].max() == 0 and rgb[m == 4].min(0).max() > 0


# ---------------------------------------------------------------------------- tasks on shipped runs


@pytest.fixture(scope="module")
def label_run():
    import mtdiff

    return mtdiff.load_run("mnist-label-m")


@pytest.fixture(scope="module")
def demo_run():
    import mtdiff

    return mtdiff.load_run("mnist-demo")


def test_offer_follows_the_modalities(label_run, demo_run):
    from mtdiff.app.tasks import Offer

    o = Offer.of(label_run)
    assert o.tabs == ("generate", "classify") and o.label == "label" and o.num_classes == 10 and o.guidance == "head"
    d = Offer.of(demo_run)
    assert d.tabs == ("generate", "restore") and d.masked == "masked" and d.label is None and d.guidance is None


def test_default_run_prefers_the_default_then_a_label_head(monkeypatch):
    from mtdiff import app
    from mtdiff.app import default_run
    from mtdiff.shipped import shipped_names

    assert default_run() == "mnist-label-m"
    monkeypatch.setattr(app, "DEFAULT", "not-shipped")  # then the first shipped model with a label head
    first = next(n for n in shipped_names() if n not in ("mnist-ddpm", "mnist-demo", "mnist-masked-x"))  # no label head
    assert default_run() == first == "mnist-label-m"


def test_generate_is_run_generate_with_the_seed_and_bad_requests_say_why(label_run):
    from mtdiff.app.tasks import Tasks

    tasks = Tasks(label_run)
    out = tasks.generate(3, 5, "dpm-solver", 4, 0, "7")
    ref = label_run.generate({"label": 7}, 3, seed=5, sampler="dpm-solver", steps=4)
    assert [np.array_equal(a, b) for (a, _), b in zip(out["images"], tasks.pictures(ref.images))] == [True] * 3
    assert [row[1] for row in out["rows"]] == [7, 7, 7] and [c for _, c in out["images"]] == ["7"] * 3
    for bad, message in [
        ({"steps": 0}, r"steps must be a whole number in \[1, 1000\]"),
        ({"count": 0}, "count must be"),
        ({"caption": "a seven"}, "a caption needs a run with a text modality"),
        ({"sampler": "euler"}, "sampler must be one of"),
        ({"guidance": 3}, "choose a label"),
        ({"label": "12"}, "label must be"),
    ]:
        with pytest.raises(InputError, match=message):
            tasks.generate(**{"count": 1, "steps": 2, **bad})
    with pytest.raises(InputError, match="restore needs a masked-image run"):
        tasks.restore({"background": np.zeros((32, 32), np.uint8)})


def test_restore_keeps_the_known_pixels(demo_run):
    from mtdiff.app.tasks import Tasks

    digit = np.zeros((32, 32), np.uint8)
    digit[6:26, 12:20] = 255
    bg = np.asarray(upscale(digit, 8).convert("RGBA"))
    layer = np.zeros_like(bg)
    layer[80:176, 40:216] = [255, 48, 48, 255]  # the hole: rows 10..21, columns 5..26
    tasks = Tasks(demo_run, test_images=torch.from_numpy(digit)[None, None])
    out = tasks.restore({"background": bg, "layers": [layer], "composite": bg}, 2, 0, "dpm-solver", 3)
    keep = out["hole"] == 0
    assert np.array_equal(out["input"], digit) and (~keep).sum() == 12 * 22
    assert all(np.array_equal(im[keep], digit[keep]) for im, _ in out["images"])
    assert out["drift"].startswith("drift") and np.asarray(tasks.test_image(0)).shape == (256, 256)
    with pytest.raises(InputError, match="no hole painted"):
        tasks.restore({"background": bg, "layers": [np.zeros_like(bg)]}, 1, 0, "dpm-solver", 2)
    with pytest.raises(InputError, match="missing"):
        tasks.restore({"background": None, "layers": []})


# ---------------------------------------------------------------------------- the command without gradio


def test_serve_without_gradio_says_how_to_install(monkeypatch, capsys):
    from mtdiff.cli.main import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    assert main(["serve", "--run", "mnist-label-m"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['mtdiff serve: error: the web app needs gradio: pip install "mtdiff[app]"']


def test_serving_beyond_this_machine_warns(monkeypatch, capsys, label_run):
    pytest.importorskip("gradio")
    import mtdiff.app as app

    class Fake:
        def block_thread(self):
            pass

        def close(self):
            pass

    monkeypatch.setattr(app, "launch", lambda *a, **k: Fake())
    app.serve(label_run, "0.0.0.0", 7000)
    out = capsys.readouterr()
    assert "warning: serving on 0.0.0.0" in out.err and "http://localhost:7000" in out.out
    app.serve(label_run, "127.0.0.1", 7000)
    assert "warning" not in capsys.readouterr().err


# ---------------------------------------------------------------------------- the page in headless Chromium


def _browser_missing() -> str | None:
    for module in ("gradio", "gradio_client", "selenium"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install -e '.[test]')"
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        return "no chromium (apt-get install chromium)"
    if not shutil.which("chromedriver"):
        return "no chromedriver (apt-get install chromium-driver)"
    return None


browser_only = pytest.mark.skipif(_browser_missing() is not None, reason=str(_browser_missing()))
WAIT = 240  # seconds for a result: a loaded CI machine samples slowly


@pytest.fixture(scope="module")
def browser():
    """A factory of headless Chromium sessions (each its own cookies and page); all closed at the end."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    drivers = []

    def start():
        opts = webdriver.ChromeOptions()
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1400,1000",
        ):
            opts.add_argument(arg)
        opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
        driver.set_page_load_timeout(WAIT)
        drivers.append(driver)
        return driver

    yield start
    for d in drivers:
        d.quit()


@pytest.fixture(scope="module")
def label_server():
    """``mtdiff serve --run mnist-label-m`` on a free port: (url, seconds from the command to the page)."""
    from mtdiff.app import free_port

    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "mtdiff.cli.main", "serve", "--run", "mnist-label-m", "--port", str(port)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mtdiff serve exited {proc.returncode}: {proc.stdout.read()}")
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                if time.perf_counter() - t0 > WAIT:
                    pytest.fail("mtdiff serve did not answer")
                time.sleep(0.2)
        yield url, time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def omni_server(tmp_path_factory):
    """The page of a tiny mnist-omni run (every modality, so every tab) trained here for 2 steps, served in this
    process: (url, run)."""
    pytest.importorskip("gradio")
    pytest.importorskip("sentence_transformers", reason="the caption encoder (pip install -e '.[test]')")
    import mtdiff
    from mtdiff.app import free_port, launch
    from tests.conftest import tiny_run

    out = tiny_run(tmp_path_factory.mktemp("omni") / "run", "mnist-omni")
    run = mtdiff.load_run(out)
    digit = np.zeros((1, 1, 32, 32), np.uint8)
    digit[..., 6:26, 13:19] = 255  # "test image #0": a one
    port = free_port()
    demo = launch(run, "127.0.0.1", port, block=False, tests=torch.from_numpy(digit))
    yield f"http://127.0.0.1:{port}", run
    demo.close()


def _open(driver, url: str, tab: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, WAIT).until(lambda d: d.find_elements(By.ID, "generate-run"))
    if tab != "generate":
        next(b for b in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text.strip() == tab).click()
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, f"{tab}-run").is_displayed())


def _type(driver, elem_id: str, text, enter: bool = False):
    """Type into the field of component ``elem_id`` the way a person does: select all, type over it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input, #{elem_id} textarea")
    field.click()
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(str(text) + (Keys.ENTER if enter else ""))
    if not enter:
        field.send_keys(Keys.TAB)


def _choose(driver, elem_id: str, option: str):
    """Pick ``option`` in a dropdown by clicking it open and clicking the option."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def item(d):
        found = [li for li in d.find_elements(By.CSS_SELECTOR, f"#{elem_id} li[role=option]") if _item(li) == option]
        if not found:
            d.find_element(By.CSS_SELECTOR, f"#{elem_id} input").click()
        return found[0] if found else None

    WebDriverWait(driver, 60).until(item).click()


def _idle(driver, elem_id: str):
    """Wait until component ``elem_id`` has its value (its progress tracker hidden again)."""
    from selenium.webdriver.support.ui import WebDriverWait

    time.sleep(1)
    css = f"#{elem_id} [data-testid=status-tracker]"
    WebDriverWait(driver, WAIT).until(
        lambda d: all("hide" in t.get_attribute("class") for t in d.find_elements("css selector", css))
    )
    time.sleep(1)


def _item(li) -> str:
    return li.get_attribute("textContent").replace("\u2713", "").strip()  # the tick of the chosen one


def _draw(driver, elem_id: str, strokes, tool: str = "Brush"):
    """Choose the brush of canvas ``elem_id`` and draw ``strokes`` (lists of (x, y) offsets from the canvas
    centre, in CSS pixels) with the mouse."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, elem_id)
    box.find_element(By.CSS_SELECTOR, f"button[aria-label='{tool}']").click()
    canvas = max(box.find_elements(By.CSS_SELECTOR, "canvas"), key=lambda c: c.size["width"] * c.size["height"])
    for stroke in strokes:
        moves = ActionChains(driver).move_to_element_with_offset(canvas, *stroke[0]).click_and_hold()
        for x, y in stroke[1:]:
            moves.move_to_element_with_offset(canvas, x, y)
        moves.release().perform()
    time.sleep(0.5)  # the editor hands its layers to the page after the stroke


def _line(a, b, n: int = 12):
    return [(round(a[0] + (b[0] - a[0]) * i / n), round(a[1] + (b[1] - a[1]) * i / n)) for i in range(n + 1)]


def _images(driver, elem_id: str, count: int | None = None, old: list | None = None) -> list[np.ndarray]:
    """Wait for the pictures of component ``elem_id`` (``count`` of them, other than ``old``), and fetch them as
    the browser got them."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def srcs(d):
        s = [im.get_attribute("src") for im in d.find_elements(By.CSS_SELECTOR, f"#{elem_id} img")]
        s = [x for x in s if x and "/file=" in x]
        return s if s and (count is None or len(s) == count) and s != old else None

    found = WebDriverWait(driver, WAIT).until(srcs)
    return [np.asarray(Image.open(io.BytesIO(urllib.request.urlopen(src, timeout=30).read()))) for src in found]


def _toasts(driver) -> dict[str, str]:
    """The messages in the page now: {element id: text}."""
    return {t.id: t.text for t in driver.find_elements("css selector", ".toast-message-text")}


def _message(driver, click: str, text: str) -> str:
    """Click ``click`` and wait for a new message in the page containing ``text``; its text."""
    from selenium.webdriver.support.ui import WebDriverWait

    before = set(_toasts(driver))
    driver.find_element("id", click).click()

    def new(d):
        return next((t for k, t in _toasts(d).items() if k not in before and text in t), None)

    return WebDriverWait(driver, WAIT).until(new)


def _top_label(driver, expected: str | None = None) -> str:
    """The class the page's probabilities put first (once it is ``expected``, where given)."""
    from selenium.webdriver.support.ui import WebDriverWait

    def top(d):
        lines = [x.strip() for x in d.find_element("id", "classify-probs").text.split("\n") if x.strip()]
        shown = lines[1] if len(lines) > 2 else None  # the heading, the label, then one line per class
        return shown if shown and (expected is None or shown == expected) else None

    return WebDriverWait(driver, WAIT).until(top)


@browser_only
def test_generate_tab_gives_the_seeded_images(label_server, browser, label_run, tmp_path):
    from mtdiff.app.tasks import Tasks

    url, ready = label_server
    print(f"page ready {ready:.1f} s after the command")
    d = browser()
    _open(d, url, "generate")
    _type(d, "generate-count", 4)
    _type(d, "generate-seed", 3)
    _type(d, "generate-steps", 8)
    _choose(d, "generate-label", "7")
    d.find_element("id", "generate-run").click()
    got = _images(d, "generate-images", 4)
    assert all(im.shape == (32, 32) for im in got)
    ref = Tasks(label_run).pictures(label_run.generate({"label": 7}, 4, seed=3, sampler="dpm-solver", steps=8).images)
    assert all(np.array_equal(a, b) for a, b in zip(got, ref))
    assert d.find_element("id", "generate-images").text.split().count("7") == 4  # the captions: the labels
    assert d.save_screenshot(str(tmp_path / "generate.png")) and (tmp_path / "generate.png").stat().st_size > 10_000


@browser_only
def test_classify_tab_reads_a_drawing_and_an_upload(label_server, browser, label_run, tmp_path):
    url, _ = label_server
    d = browser()
    _open(d, url, "classify")
    _draw(d, "classify-canvas", [_line((0, -90), (0, 90))])  # a "1"
    d.find_element("id", "classify-run").click()
    shown = _images(d, "classify-input", 1)[0]
    assert shown.shape == (32, 32) and shown[:, :3].max() == 0 and shown.max() == 255  # white on black
    answer = _top_label(d)
    assert answer == str(int(label_run.classify(Image.fromarray(shown)).argmax())) == "1"
    # an upload of a test digit (a 7 in MNIST's test split), as a colour PNG 4 times the model's size
    from mtdiff.build import load_data

    data = load_data(label_run.config, "test")
    digit = data.images[0, 0].numpy()
    assert int(data.labels[0]) == 7
    path = tmp_path / "seven.png"
    Image.fromarray(np.stack([digit] * 3, -1)).resize((128, 128), Image.Resampling.NEAREST).save(path)
    d.find_element("css selector", "#classify-canvas button[aria-label='Clear canvas']").click()
    d.find_element("css selector", "#classify-canvas input[type=file]").send_keys(str(path))
    time.sleep(1)
    d.find_element("id", "classify-run").click()
    assert _top_label(d, "7") == "7"
    assert d.save_screenshot(str(tmp_path / "classify.png"))


@browser_only
def test_bad_input_gets_a_message_and_the_next_request_works(label_server, browser, tmp_path):
    from gradio_client import Client

    url, _ = label_server
    d = browser()
    _open(d, url, "classify")
    assert "the digit is empty" in _message(d, "classify-run", "empty")  # nothing drawn
    tiny = tmp_path / "tiny.png"  # a blank upload of 4 x 4 pixels: the canvas scales it up, still blank
    Image.new("L", (4, 4), 255).save(tiny)
    d.find_element("css selector", "#classify-canvas input[type=file]").send_keys(str(tiny))
    time.sleep(1)
    assert "empty" in _message(d, "classify-run", "empty")
    _open(d, url, "generate")
    _type(d, "generate-count", 2)
    _type(d, "generate-steps", 0)
    assert "steps must be a whole number in [1, 1000]" in _message(d, "generate-run", "steps must be")
    _type(d, "generate-steps", 5)
    d.find_element("id", "generate-run").click()
    assert [im.shape for im in _images(d, "generate-images", 2)] == [(32, 32)] * 2
    # a caption on a run without text, through the API (the page shows no caption box there)
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match="a caption needs a run with a text modality"):
        client.predict(1, 0, "dpm-solver", 2, 0, "generated", "a seven", None, "1", None, api_name="/generate")
    # an image of a wrong size through the API (the page's canvas scales every upload to itself)
    from gradio_client import handle_file

    editor = {"background": None, "layers": [], "composite": handle_file(str(tiny))}
    with pytest.raises(Exception, match="must be 8 to 4096 pixels on each side, got 4x4"):
        client.predict(editor, "head", api_name="/classify")


@browser_only
def test_two_sessions_at_once_get_their_own_images(label_server, browser, label_run):
    from mtdiff.app.tasks import Tasks

    url, _ = label_server
    pages = [browser(), browser()]
    for seed, d in zip((11, 12), pages):
        _open(d, url, "generate")
        _type(d, "generate-count", 3)
        _type(d, "generate-seed", seed)
        _type(d, "generate-steps", 6)
    for d in pages:  # both queued at once
        d.find_element("id", "generate-run").click()
    tasks = Tasks(label_run)
    for seed, d in zip((11, 12), pages):
        ref = tasks.pictures(label_run.generate({}, 3, seed=seed, sampler="dpm-solver", steps=6).images)
        got = _images(d, "generate-images", 3)
        assert all(np.array_equal(a, b) for a, b in zip(got, ref)), f"seed {seed}"


@browser_only
def test_api_client_gets_the_same_images(label_server, label_run):
    from gradio_client import Client

    from mtdiff.app.tasks import Tasks

    client = Client(label_server[0], verbose=False)
    images, _, table, _ = client.predict(2, 4, "dpm-solver", 5, 0, "3", "", None, "1", None, api_name="/generate")
    got = [np.asarray(Image.open(item["image"])) for item in images]
    ref = Tasks(label_run).pictures(label_run.generate({"label": 3}, 2, seed=4, sampler="dpm-solver", steps=5).images)
    assert all(np.array_equal(a, b) for a, b in zip(got, ref))
    assert [row[1] for row in table["data"]] == [3, 3]


@browser_only
def test_every_tab_of_a_run_with_every_modality(omni_server, browser, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    url, run = omni_server
    d = browser()
    _open(d, url, "generate")
    tabs = [b.text.strip() for b in d.find_elements("css selector", "button[role=tab]")]
    assert tabs == ["generate", "restore", "classify", "translate"]
    # generate from a caption typed in
    _type(d, "generate-count", 2)
    _type(d, "generate-steps", 3)
    _type(d, "generate-caption", "the number seven")
    d.find_element("id", "generate-run").click()
    assert [im.shape for im in _images(d, "generate-images", 2)] == [(32, 32)] * 2
    assert "the number seven" in d.find_element("id", "generate-table").text
    # restore: a test image picked, the hole painted with the mouse
    _open(d, url, "restore")
    d.find_element("id", "restore-test-pick").click()
    _idle(d, "restore-editor")
    _type(d, "restore-count", 2)
    _type(d, "restore-steps", 3)
    for _ in range(3):  # a stroke drawn before the picked image reached the editor is wiped with it: paint again
        _draw(d, "restore-editor", [_line((-100, 0), (100, 0))])
        before = set(_toasts(d))
        d.find_element("id", "restore-run").click()

        def done(d, before=before):
            shown = d.find_elements("css selector", "#restore-images img")
            return "images" if shown else next((t for k, t in _toasts(d).items() if k not in before), None)

        if WebDriverWait(d, WAIT).until(done) == "images":
            break
    restored = _images(d, "restore-images", 2)
    shown, hole = _images(d, "restore-input", 1)[0], _images(d, "restore-hole", 1)[0]
    keep = hole == 0
    assert 0 < (~keep).sum() < keep.sum()
    assert shown[6:26, 13:19].min() == 255 and shown[:, :10].max() == 0  # the test image, as the model sees it
    assert all(r.shape == (32, 32) and np.array_equal(r[keep], shown[keep]) for r in restored)
    assert "drift" in d.find_element("css selector", "#restore-drift textarea").get_attribute("value")
    # translate: a class mask drawn, its class chosen
    _open(d, url, "translate")
    _draw(d, "translate-canvas", [_line((-40, -80), (40, 80))])
    _choose(d, "translate-class", "8")
    _type(d, "translate-count", 3)
    _type(d, "translate-steps", 3)
    d.find_element("id", "translate-run").click()
    assert [im.shape for im in _images(d, "translate-images", 3)] == [(32, 32)] * 3
    source = _images(d, "translate-input", 1)[0]
    assert source.shape == (32, 32, 3) and source[0, 0].max() == 0 and source.max() > 0  # coloured strokes on black
    assert d.save_screenshot(str(tmp_path / "translate.png"))
