"""Outside images to model input: light backgrounds inverted (option to keep them), transparency as white."""

import csv

import pytest
import torch
from PIL import Image

from support import PATCH_CLS, make_split
from vit_lightning.training.cli import main
from vit_lightning.data.preprocess import load_images
from vit_lightning.data.preprocess import has_light_background, prepare_image


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
