"""Generate UniID images without ComfyUI: `python -m uniid_core.generate --base SDXL --uniid FILE ...`.

Official defaults: 30 steps, CFG 7.5, merge step 5 (text x0.5 -> x1.8, adapter 0.8 -> 1.2), normalized
adapter rescaling, 1024x1024, the official negative prompt, seed 42, insightface buffalo_l at det size 320,
the official celebrity names for the text anchor. PNGs carry every setting in their metadata.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .anchor import BUILTIN_NAMES, load_names, names_digest, names_path
from .cli import argument_parser, path_problem, require_paths, run_cli
from .diffusers_pipeline import DEFAULT_NEGATIVE, GenerationSettings, UniIDPipeline
from .face.detect import face_backend_names, make_detector
from .face.image import load_image
from .face.insightface_backend import DEFAULT_DET_SIZE, DEFAULT_ROOT, OFFICIAL_PACK
from .face.references import prepare_faces
from .precision import DTYPES, dtype_label
from .rescaler import rescaler_from_text
from .schedule import MergeSchedule

OFFICIAL_SEED = 42


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    defaults = MergeSchedule()
    parser = argument_parser("python -m uniid_core.generate", __doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="diffusers SDXL folder (e.g. SDXL base or RealVisXL)")
    parser.add_argument("--uniid", required=True, help="UniID weights (.safetensors, or official folders)")
    parser.add_argument(
        "--face-net", required=True, help="IResNet-100 face net (backbone.pth or .safetensors)"
    )
    parser.add_argument("--ref", nargs="+", required=True, help="reference photo(s) of one person")
    parser.add_argument("--prompt", required=True, help="use <class word> where 'man'/'woman' should go")
    parser.add_argument("--negative", default=DEFAULT_NEGATIVE, help="negative prompt (official)")
    parser.add_argument("--steps", type=int, default=30, help="sampling steps")
    parser.add_argument("--cfg", type=float, default=7.5, help="classifier-free guidance scale")
    parser.add_argument(
        "--merge-step", type=int, default=defaults.merge_step,
        help="step from which the 'after' scales apply (0: from the start)",
    )
    parser.add_argument(
        "--text-before", type=float, default=defaults.text_before, help="text scale before merge step"
    )
    parser.add_argument(
        "--text-after", type=float, default=defaults.text_after, help="text scale from merge step"
    )
    parser.add_argument(
        "--adapter-before", type=float, default=defaults.adapter_before, help="adapter scale before merge"
    )
    parser.add_argument(
        "--adapter-after", type=float, default=defaults.adapter_after, help="adapter scale from merge step"
    )
    parser.add_argument(
        "--rescale", default="normalized", help="adapter combination: normalized (official) or add"
    )
    parser.add_argument(
        "--rescale-params", default="", help="parameters of the --rescale strategy, 'name=value, ...'"
    )
    parser.add_argument(
        "--layer-weights",
        default="",
        help="adapter weight per block group or layer, e.g. 'input:1, middle:0.5, output:1.2' or '0-3:0'",
    )
    parser.add_argument("--width", type=int, default=1024, help="image width in pixels")
    parser.add_argument("--height", type=int, default=1024, help="image height in pixels")
    parser.add_argument(
        "--seed", type=int, default=OFFICIAL_SEED, help="noise seed (official: 42; written to the PNG)"
    )
    parser.add_argument("--num-images", type=int, default=1, help="images to make with this identity")
    parser.add_argument(
        "--detector", default="insightface", help=f"face detector: {', '.join(face_backend_names())}"
    )
    parser.add_argument(
        "--det-size",
        type=int,
        default=DEFAULT_DET_SIZE,
        help="insightface detection size (official 320; others are tried only when no face is found)",
    )
    parser.add_argument(
        "--insightface-model", default=OFFICIAL_PACK, help=f"insightface pack (official {OFFICIAL_PACK})"
    )
    parser.add_argument(
        "--insightface-root", default=DEFAULT_ROOT, help="folder holding models/<pack>/*.onnx"
    )
    parser.add_argument(
        "--select",
        default="largest",
        help="largest, score (the most confident face, as the official code) or a face index from the left",
    )
    parser.add_argument(
        "--celeb-names",
        default="official",
        help=f"names for the text-token anchor: {' or '.join(BUILTIN_NAMES)}, or a file with one per line",
    )
    parser.add_argument("--class-word", default=None, help="override the detected man/woman")
    parser.add_argument(
        "--combine", default="mean_features", choices=("mean_features", "mean_tokens"),
        help="how several reference photos make one identity",
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device to run on"
    )
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="default fp16 on GPU, fp32 on CPU"
    )
    parser.add_argument("--out", required=True, help="output folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Path]:
    """Detect and align the references, encode the identity, sample, write PNGs; returns their paths."""
    args = parse_args(argv)
    rescaler = rescaler_from_text(args.rescale, args.rescale_params, args.layer_weights)
    require_paths(
        path_problem("--base", args.base, "folder", "model_index.json", "a diffusers SDXL folder"),
        path_problem("--uniid", args.uniid),
        path_problem("--face-net", args.face_net, "file", what="the face-net weights file"),
        *(path_problem("--ref", ref, "file", what="an image file") for ref in args.ref),
    )
    dtype = (
        DTYPES[args.dtype]
        if args.dtype
        else (torch.float16 if args.device.startswith("cuda") else torch.float32)
    )
    select: str | int = int(args.select) if args.select.lstrip("-").isdigit() else args.select
    names = load_names(args.celeb_names)
    insightface = args.detector == "insightface"
    detector = make_detector(
        args.detector, root=args.insightface_root, name=args.insightface_model, det_size=args.det_size
    )
    faces = prepare_faces(
        [load_image(p) for p in args.ref],
        detector,
        select=select,
        class_word=args.class_word,
    )
    pipeline = UniIDPipeline.from_pretrained(
        args.base, args.uniid, args.face_net, args.device, dtype, names=names
    )
    identity = pipeline.encode_identity(faces.tensor, faces.class_word, args.combine)
    schedule = MergeSchedule(
        args.merge_step, args.text_before, args.text_after, args.adapter_before, args.adapter_after
    )
    settings = GenerationSettings(
        prompt=args.prompt,
        negative_prompt=args.negative,
        num_inference_steps=args.steps,
        guidance_scale=args.cfg,
        height=args.height,
        width=args.width,
        seed=args.seed,
        num_images=args.num_images,
        schedule=schedule,
        rescale=rescaler,
    )
    images = pipeline(identity, settings)
    record = {
        "prompt": _substituted(args.prompt, faces.class_word),
        "negative": args.negative,
        "steps": args.steps,
        "cfg": args.cfg,
        "merge_step": args.merge_step,
        "text_before": args.text_before,
        "text_after": args.text_after,
        "adapter_before": args.adapter_before,
        "adapter_after": args.adapter_after,
        "rescale": args.rescale,
        **({"rescale_params": dict(rescaler.params)} if rescaler.params else {}),
        **({"layer_weights": args.layer_weights} if rescaler.weights else {}),
        "width": args.width,
        "height": args.height,
        "seed": args.seed,
        "class_word": faces.class_word,
        "references": [str(p) for p in args.ref],
        "detector": args.detector,
        **({"insightface_model": args.insightface_model, "det_size": args.det_size} if insightface else {}),
        "face_select": args.select,
        "face_boxes": [[round(v, 1) for v in face.box] for face in faces.faces],
        "combine": args.combine,
        "base": args.base,
        "uniid": args.uniid,
        "uniid_fingerprint": pipeline.model.fingerprint,
        "face_net": args.face_net,
        "celeb_names": args.celeb_names
        if args.celeb_names in BUILTIN_NAMES
        else str(names_path(args.celeb_names)),
        "celeb_names_sha256": names_digest(names),
        "scheduler": type(pipeline.sdxl.scheduler).__name__,
        "noise_device": pipeline.device.type,
        "dtype": dtype_label(dtype),
    }
    return write_pngs(images, Path(args.out), record)


def _substituted(prompt: str, word: str) -> str:
    """The prompt as sampled (class word filled in)."""
    from .face.class_word import substitute_class_word

    return substitute_class_word(prompt, word)


def write_pngs(images: list, out: Path, record: dict) -> list[Path]:
    """Save <seed>_<n>.png files with the settings as JSON text chunk 'uniid' and a 'parameters' line."""
    from PIL.PngImagePlugin import PngInfo

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, image in enumerate(images):
        info = PngInfo()
        info.add_text("uniid", json.dumps(record))
        info.add_text(
            "parameters",
            f"{record['prompt']}\nNegative prompt: {record['negative']}\nSteps: "
            f"{record['steps']}, CFG scale: {record['cfg']}, Seed: {record['seed']}, Size: "
            f"{record['width']}x{record['height']}, UniID merge step: {record['merge_step']}",
        )
        path = out / f"{record['seed']}_{n}.png"
        image.save(path, pnginfo=info)
        paths.append(path)
    print("\n".join(str(p) for p in paths), file=sys.stderr)
    return paths


if __name__ == "__main__":
    sys.exit(run_cli(main))
