"""Outside images to model input: light backgrounds inverted (option to keep them), transparency as white, framed like
the dataset's images, upright, every format Pillow reads, every skipped file named."""

import csv
import os
import threading

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from support import PATCH_CLS, make_split, on_page
from vit_lightning.data.datasets import DIGITS, PRODUCTS
from vit_lightning.data.preprocess import frame, has_light_background, load_images, prepare_image, printable
from vit_lightning.training.cli import main
from vit_lightning.training.datamodule import MNISTDataModule


def test_light_background_is_inverted_back_to_the_original_and_dark_ones_are_kept():
    images, _ = make_split(20, seed=1)
    for image in torch.from_numpy(images):
        original = Image.fromarray(image.numpy())
        inverted = Image.fromarray((255 - image).numpy())
        assert torch.equal(prepare_image(original, 28), image)
        assert torch.equal(prepare_image(inverted, 28), image)
        assert torch.equal(prepare_image(inverted, 28, auto_invert=False), 255 - image)


def test_transparent_background_counts_as_white_so_dark_strokes_become_light():
    drawing = Image.new("RGBA", (280, 280), (0, 0, 0, 0))  # a sketchpad: transparent, black strokes
    drawing.paste((0, 0, 0, 255), (120, 40, 160, 240))
    pixels = prepare_image(drawing, 28)
    assert not has_light_background(pixels)
    assert pixels[14, 14] == 255 and pixels[0, 0] == 0 and pixels[14, 2] == 0


def test_has_light_background_reads_the_frame_only():
    dark = torch.zeros(28, 28, dtype=torch.uint8)
    dark[1:-1, 1:-1] = 255  # a bright object filling all but the frame
    assert not has_light_background(dark)
    assert has_light_background(255 - dark)


def test_load_images_inverts_unless_told_not_to(tmp_path):
    images, _ = make_split(3, seed=2)
    for index, image in enumerate(images):
        Image.fromarray(255 - image).save(tmp_path / f"paper{index}.png")
    loaded, names, failures = load_images(tmp_path, 28)
    assert names == ["paper0.png", "paper1.png", "paper2.png"] and not failures
    assert torch.equal(loaded, torch.from_numpy(images))
    kept, _, _ = load_images(tmp_path, 28, auto_invert=False)
    assert torch.equal(kept, 255 - torch.from_numpy(images))


@pytest.mark.slow
def test_predict_classifies_inverted_test_images_like_the_originals(exported, tmp_path):
    run = exported(*PATCH_CLS)
    images, _ = make_split(30, seed=1)  # the tiny dataset's test images
    classes = {}
    for kind, pixels in (("original", images), ("inverted", 255 - images)):
        folder = tmp_path / kind
        folder.mkdir()
        for index, image in enumerate(pixels):
            Image.fromarray(image).save(folder / f"{index:02d}.png")
        output = tmp_path / f"{kind}.csv"
        main(["predict", "--data.root", str(run.data), "--trainer.default_root_dir", str(tmp_path / "run"),
              "--ckpt_path", str(run.ckpt), "--data.predict_path", str(folder), "--predictions.output", str(output)])
        classes[kind] = [(row["class"], row["confidence"]) for row in csv.DictReader(output.open())]
    assert len(classes["original"]) == 30 and classes["inverted"] == classes["original"]
    # the model's output depends on its input (its head is no longer zero), so inverted pixels that were not
    # restored exactly would show in the confidences
    assert len({confidence for _, confidence in classes["original"]}) > 1


def drawing(kind: str) -> np.ndarray:
    """A clean drawing (light on black, 200x200): a digit-like figure, or a product-like one that fills its box."""
    canvas = Image.new("L", (200, 200), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "seven":
        draw.line([(40, 30), (160, 30), (80, 180)], fill=255, width=14)
    elif kind == "zero":
        draw.ellipse((55, 25, 145, 175), outline=255, width=14)
    elif kind == "four":
        draw.line([(120, 180), (120, 20), (40, 130), (160, 130)], fill=255, width=14)
    else:  # a bag
        draw.rectangle((20, 60, 180, 170), fill=200)
        draw.arc((60, 20, 140, 100), 180, 360, fill=255, width=10)
    return np.asarray(canvas, dtype=np.float32)


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a.float().flatten(), b.float().flatten()]))[0, 1].item()


@pytest.mark.parametrize("kind, framing", [("seven", DIGITS), ("zero", DIGITS), ("four", DIGITS), ("bag", PRODUCTS)])
def test_an_image_on_a_page_is_framed_back_to_the_datasets_format(kind, framing):
    """A dataset-format image (framed as MNIST's digits or Fashion-MNIST's products were) photographed as dark ink
    at 3x size somewhere on a noisy light-grey page, with specks of ink: framing restores it; resizing the page as
    a whole (the switch off) does not."""
    original = frame(drawing(kind), 28, framing)
    rng = np.random.default_rng(0)
    for _ in range(3):
        page = on_page(original.numpy(), rng)
        page[rng.integers(0, page.shape[0], 2), rng.integers(0, page.shape[1], 2)] = 30  # two specks of ink
        framed = prepare_image(Image.fromarray(page), 28, framing=framing)
        assert correlation(framed, original) > 0.9
        assert correlation(prepare_image(Image.fromarray(page), 28), original) < 0.4


def test_framing_keeps_images_of_the_models_size_and_blank_ones():
    images, _ = make_split(5, seed=3)
    for image in torch.from_numpy(images):  # the dataset's own format: as it is
        assert torch.equal(prepare_image(Image.fromarray(image.numpy()), 28, framing=DIGITS), image)
    blank = prepare_image(Image.new("L", (300, 200), 230), 28, framing=DIGITS)
    assert blank.shape == (28, 28) and blank.max() == 0  # a light page with nothing on it: inverted, empty


def test_exif_orientation_is_applied(tmp_path):
    upright = np.zeros((56, 56), dtype=np.uint8)
    upright[:, :28] = 255  # bright left half
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # as a phone stores a portrait photo
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to show
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    [image], _, _ = load_images(tmp_path, 28, auto_invert=False)
    assert image[:, :12].float().mean() > 240 and image[:, 16:].float().mean() < 15


def test_every_format_pillow_reads_float_tiffs_scaled_and_every_skipped_file_named(tmp_path):
    gradient = np.tile(np.linspace(0, 1, 28, dtype=np.float32), (28, 1))
    Image.fromarray(gradient, mode="F").save(tmp_path / "float.tif")  # 32-bit float in 0..1
    Image.fromarray((gradient * 255).astype(np.uint8)).convert("RGB").save(tmp_path / "colour.ppm")
    (tmp_path / "notes.txt").write_text("not an image")
    os.mkfifo(tmp_path / "x.png")  # a named pipe: opening it for reading would wait for a writer
    result = {}
    reader = threading.Thread(target=lambda: result.update(loaded=load_images(tmp_path, 28, auto_invert=False)),
                              daemon=True)
    reader.start()
    reader.join(timeout=30)
    assert "loaded" in result, "load_images blocked on a named pipe"
    images, names, failures = result["loaded"]
    assert names == ["colour.ppm", "float.tif"]
    assert images[1, 0, ::9].tolist() == (gradient[0, ::9] * 255).round().astype(int).tolist()
    assert images[0, 0, -1] == 255 and images[0, 0, 0] == 0
    assert failures == [f"{tmp_path / 'notes.txt'}: not a readable image (UnidentifiedImageError)",
                        f"{tmp_path / 'x.png'}: not a regular file"]


def test_file_names_that_are_not_utf8_print_with_escapes():
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1: not UTF-8
    assert printable(name) == "caf\\xe9.png" and printable("café.png") == "café.png"


def test_predict_frames_unless_told_not_to(tmp_path):
    page = Image.fromarray(on_page(frame(drawing("seven"), 28, DIGITS).numpy(), np.random.default_rng(1)))
    page.save(tmp_path / "page.png")
    for framing, expected in ((True, prepare_image(page, 28, framing=DIGITS)), (False, prepare_image(page, 28))):
        data = MNISTDataModule(predict_path=str(tmp_path), framing=framing)
        data.setup("predict")
        assert torch.equal(data.datasets["predict"].images[0], expected)
