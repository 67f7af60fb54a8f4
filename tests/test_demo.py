"""The drawing-pad demo: its computation, its errors, and the real page in Debian's chromium via Playwright."""

import csv
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from support import PATCH_CLS, REPO, make_split
from vit_lightning.training.cli import main as train_cli
from vit_lightning.serving.demo import DISPLAY_SIZE, Predictor, main
from vit_lightning.errors import exit_on_user_error
from vit_lightning.serving.model_folder import load_model_folder

CHROMIUM = shutil.which("chromium")


@pytest.mark.slow
def test_predictor_gives_the_models_classes_and_a_rollout_picture(exported):
    model = load_model_folder(exported(*PATCH_CLS).folder)
    predictor = Predictor(model)
    images, _ = make_split(5, seed=1)
    for image in images:
        probabilities, picture = predictor(Image.fromarray(image))
        with torch.no_grad():
            expected = model(torch.from_numpy(image)[None, None].float() / 255).softmax(-1)[0]
        assert list(probabilities) == model.classes
        assert torch.allclose(torch.tensor(list(probabilities.values())), expected, atol=1e-6)
        assert picture.shape == (DISPLAY_SIZE, DISPLAY_SIZE, 3) and picture.dtype == np.uint8
        assert predictor(Image.fromarray(255 - image))[0] == probabilities  # paper-style image: inverted first
    assert predictor(None) == (None, None)
    assert predictor(Image.new("RGBA", (280, 280), (0, 0, 0, 0))) == (None, None)  # an empty sketchpad


def test_bad_model_is_one_line_and_a_source_is_required(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(lambda: main(["--model", str(tmp_path / "missing"), "--port", str(free_port())]))
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.startswith(f"error: --model {tmp_path / 'missing'} is not a model folder")
    with pytest.raises(SystemExit) as exit_info:
        main(["--port", "1"])
    assert exit_info.value.code == 2 and "one of the arguments --ckpt_path --model is required" in capsys.readouterr().err


@pytest.mark.parametrize("port, message", [("70000", "--port 70000 is not a port number; choose one from 1 to 65535"),
                                           ("busy", "cannot serve on 127.0.0.1:{port} (Address already in use)")])
def test_a_port_that_cannot_serve_is_one_line_before_anything_loads(tmp_path, capsys, port, message):
    with socket.create_server(("127.0.0.1", 0)) as busy:  # another server listens there
        number = port if port != "busy" else str(busy.getsockname()[1])
        with pytest.raises(SystemExit) as exit_info:
            exit_on_user_error(lambda: main(["--model", str(tmp_path / "missing"), "--port", number]))
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.count("\n") == 1 and message.format(port=number) in err, err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def demo_server(exported):
    """``python -m vit_lightning.demo --model FOLDER`` on a free localhost port; yields its URL."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "vit_lightning.demo", "--model", str(exported(*PATCH_CLS).folder),
                                "--port", str(port)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        line = process.stdout.readline()  # the demo prints its address once it serves
        assert f"at http://127.0.0.1:{port} " in line, line + (process.stdout.read() if process.poll() else "")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def ready(page) -> None:
    """Wait until the Gradio app has rendered the drawing pad and finished loading (events are wired), so an
    upload or stroke is not lost on a loaded machine."""
    from playwright.sync_api import expect

    page.wait_for_load_state("networkidle", timeout=120_000)
    expect(page.locator("#pad canvas").first).to_be_visible(timeout=120_000)


def upload_to_pad(page, image: Path) -> None:
    """Upload ``image`` into the drawing pad and wait until the pad shows it (its placeholder goes); on a loaded
    machine an upload can arrive before the editor listens, so it is given again, at most twice more."""
    from playwright.sync_api import expect

    placeholder = page.locator("#pad").get_by_text("Upload an image or select the draw tool to start")
    for _ in range(3):
        page.set_input_files("#pad input[type=file]", image)
        try:
            expect(placeholder).to_be_hidden(timeout=30_000)
            return
        except AssertionError:
            continue
    raise AssertionError(f"the drawing pad never showed {image}")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium; "
                                             ".ci/run installs it)")
def test_page_in_a_real_browser_shows_the_class_predict_gives(exported, demo_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    run = exported(*PATCH_CLS)
    images, _ = make_split(3, seed=1)
    upload = tmp_path / "paper.png"
    Image.fromarray(255 - images[2]).save(upload)  # a test image as dark ink on paper: the demo must invert it
    output = tmp_path / "predictions.csv"
    train_cli(["predict", "--data.root", str(run.data), "--trainer.default_root_dir", str(tmp_path / "run"),
               "--ckpt_path", str(run.ckpt), "--data.predict_path", str(upload), "--predictions.output", str(output)])
    (row,) = csv.DictReader(output.open())

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(demo_server)
            ready(page)
            upload_to_pad(page, upload)
            heading = page.locator('#top3 [data-testid="label-output-value"]')
            expect(heading).to_have_text(row["class"], timeout=120_000)  # generous: CI machines may be loaded
            expect(page.locator("#rollout img")).to_be_visible()
            page.screenshot(path=tmp_path / "demo.png", full_page=True)

            page.reload()  # drawing: a stroke with the brush gives a prediction as well
            ready(page)
            page.click('#pad button[aria-label="Brush"]')
            box = page.locator("#pad canvas").first.bounding_box()
            x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.2
            page.mouse.move(x, y)
            page.mouse.down()
            for step in range(1, 16):
                page.mouse.move(x + step * 4, y + step * box["height"] * 0.04)
            page.mouse.up()
            expect(heading).to_have_text(re.compile(r"^[0-9]$"), timeout=120_000)
        finally:
            browser.close()
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    print(f"screenshot: {tmp_path / 'demo.png'}")
