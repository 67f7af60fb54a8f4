"""``python -m vit_lightning.demo --ckpt_path best|last|PATH`` (or ``--model DIR``) ``[--port N]``: a drawing pad in the
browser (Gradio) showing the model's top-3 classes and its attention rollout as you draw or upload an image.

Local only by default (``--host 127.0.0.1``), no network needed; it needs the model only, no dataset files. Images go
through the same preprocessing as ``predict`` (:func:`vit_lightning.data.preprocess.prepare_image`): light
backgrounds inverted unless ``--auto_invert false``, framed like the dataset's images unless ``--framing false``.
"""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vit_lightning.data.datasets import DATASETS, DIGITS, unit_range
from vit_lightning.errors import UserError, exit_on_user_error
from vit_lightning.outputs import RunFolder
from vit_lightning.serving.checkpoints import load_checkpoint, resolve_checkpoint
from vit_lightning.serving.model_folder import PretrainedViT, from_checkpoint, load_model_folder
from vit_lightning.data.preprocess import prepare_image

DISPLAY_SIZE = 224  # pixels of the attention picture


class Predictor:
    """The demo's computation, without the web page: an image to top classes and an attention rollout picture."""

    def __init__(self, model: PretrainedViT):
        self.model = model.eval()
        self.size = model.architecture["image_size"]
        self.framing = DATASETS[model.dataset].framing if model.dataset in DATASETS else DIGITS

    def __call__(self, image: Image.Image | None, auto_invert: bool = True, frame: bool = True
                 ) -> tuple[dict[str, float] | None, np.ndarray | None]:
        """Class probabilities (all classes; the page shows the top 3) and the rollout over the model's input as
        an RGB picture; ``(None, None)`` for no image or an empty canvas."""
        if image is None:
            return None, None
        pixels = prepare_image(image, self.size, auto_invert, self.framing if frame else None)
        if pixels.min() == pixels.max():  # an empty canvas (or a blank image): nothing to classify
            return None, None
        images = unit_range(pixels)
        with torch.inference_mode():
            probabilities = self.model(images).softmax(-1)[0]
            rollout = self.model.attention_rollout(images)[0]
        return dict(zip(self.model.classes, probabilities.tolist())), rollout_picture(pixels, rollout)


def rollout_picture(pixels: torch.Tensor, rollout: torch.Tensor) -> np.ndarray:
    """The model's input (grey) with the attention rollout over it (warm colours: more relevance), uint8 RGB."""
    import matplotlib

    heat = torch.nn.functional.interpolate(rollout[None, None], size=pixels.shape, mode="bilinear")[0, 0]
    heat = (heat / heat.max()).numpy()
    colours = matplotlib.colormaps["inferno"](heat)[..., :3]
    grey = unit_range(pixels)[0, 0].numpy()[..., None]
    blend = (0.45 * grey + 0.55 * colours) * 255
    picture = Image.fromarray(blend.clip(0, 255).astype(np.uint8))
    return np.asarray(picture.resize((DISPLAY_SIZE, DISPLAY_SIZE), Image.Resampling.NEAREST))


def build_demo(predictor: Predictor, title: str, auto_invert: bool = True, frame: bool = True):
    """The Gradio page: a sketchpad (draw, or upload an image), the top-3 classes and the attention rollout."""
    import gradio as gr

    def classify(value: dict | None, invert: bool, framed: bool):
        return predictor(value.get("composite") if value else None, invert, framed)

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"## {title}\nPick the brush and draw with the mouse, or upload an image: the top 3 classes "
                    f"update as you draw. Classes: {', '.join(predictor.model.classes)}.")
        with gr.Row():
            pad = gr.Sketchpad(label="draw or upload", sources=("upload",), type="pil", image_mode="RGBA",
                               format="png", canvas_size=(280, 280), elem_id="pad",
                               brush=gr.Brush(default_size=20, colors=["#000000"], color_mode="fixed"))
            with gr.Column():
                top3 = gr.Label(label="top 3", num_top_classes=3, elem_id="top3")
                rollout = gr.Image(label="attention rollout over the model's input", type="numpy",
                                   interactive=False, elem_id="rollout")
                invert = gr.Checkbox(value=auto_invert, label="invert a light background (dark strokes on paper)")
                framed = gr.Checkbox(value=frame, label="frame like the dataset (crop, scale and centre the drawing)")
        # strokes fire "change"; an upload fires "upload" (Gradio 6)
        for trigger in (pad.change, pad.upload, invert.change, framed.change):
            trigger(classify, [pad, invert, framed], [top3, rollout], show_progress="hidden",
                    trigger_mode="always_last")
    return demo


def load_model(args: argparse.Namespace) -> tuple[PretrainedViT, str]:
    """The model of ``--model DIR`` or ``--ckpt_path``, and a line naming it."""
    if args.model is not None:
        return load_model_folder(args.model), str(args.model)
    path = Path(resolve_checkpoint(args.ckpt_path, RunFolder(args.run_dir).checkpoints, fit=False))
    return from_checkpoint(load_checkpoint(path), path), str(path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vit_lightning.demo", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt_path", help="best, last (in --trainer.default_root_dir) or a .ckpt file")
    source.add_argument("--model", type=Path, help="a model folder written by python -m vit_lightning.export")
    parser.add_argument("--trainer.default_root_dir", dest="run_dir", type=Path, default=Path("runs"),
                        help="the run folder whose checkpoints/ holds best and last (default: runs)")
    parser.add_argument("--port", type=int, default=7860, help="default 7860")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                        "only; 0.0.0.0 shares it with the network)")
    parser.add_argument("--auto_invert", choices=("true", "false"), default="true",
                        help="invert images with a light background (default true)")
    parser.add_argument("--framing", choices=("true", "false"), default="true",
                        help="crop, scale and centre images as the dataset's were (default true)")
    return parser.parse_args(argv)


def require_free_port(host: str, port: int) -> None:
    """Raise a one-line :class:`UserError` unless ``host:port`` can be listened on now (checked before the model
    and Gradio are loaded)."""
    if not 1 <= port <= 65535:
        raise UserError(f"--port {port} is not a port number; choose one from 1 to 65535 (default 7860)")
    try:
        socket.create_server((host, port)).close()
    except OSError as error:
        raise UserError(f"--port {port}: cannot serve on {host}:{port} ({os.strerror(error.errno) if error.errno else error}); choose another "
                        "--port (or --host)") from None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    require_free_port(args.host, args.port)
    model, source = load_model(args)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: works offline
    hosts = [h for h in os.environ.get("no_proxy", "").split(",") if h]
    os.environ["no_proxy"] = os.environ["NO_PROXY"] = ",".join(hosts + ["localhost", "127.0.0.1", args.host])
    title = f"Vision Transformer: {model.dataset or 'classifier'}"
    demo = build_demo(Predictor(model), title, auto_invert=args.auto_invert == "true", frame=args.framing == "true")
    try:
        demo.launch(server_name=args.host, server_port=args.port, quiet=True, prevent_thread_lock=True,
                    ssr_mode=False)
    except OSError as error:
        raise UserError(f"--port {args.port}: cannot serve on {args.host}:{args.port} ({str(error).strip()[:160]}); "
                        "choose another --port") from None
    print(f"demo of {source} at http://{args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        demo.close()


if __name__ == "__main__":
    exit_on_user_error(main)
