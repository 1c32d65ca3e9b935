"""Run UniID's main job once: reference photo in, face-personalised image out (called by quickstart.sh).

With real model files (--base, --uniid, --face-net, or UNIID_BASE / UNIID_WEIGHTS / UNIID_FACE_NET) it runs
the official settings. Without them it builds small random stand-in weights and runs the same code path on
them, and says loudly that the picture is from stand-in weights.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from uniid_core.cli import argument_parser, run_cli  # noqa: E402  (light: no torch, so --help is instant)

STANDIN_DIR = Path(os.environ.get("UNIID_STANDIN_DIR", REPO_ROOT / ".quickstart" / "standin"))
BANNER = "=" * 78


def _sample_photo() -> Path | None:
    """insightface's bundled group photo, when that optional package is installed."""
    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        return None
    photo = Path(next(iter(spec.submodule_search_locations))) / "data" / "images" / "t1.jpg"
    return photo if photo.is_file() else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options (each model path also read from an environment variable)."""
    parser = argument_parser(
        "bash scripts/quickstart.sh",
        "Make one face-personalised image with UniID: from your model files when all three are given, "
        "else from small random stand-in weights (the image is then noise, but every stage has run).",
    )
    parser.add_argument(
        "--base", default=os.environ.get("UNIID_BASE"), help="diffusers SDXL folder (or $UNIID_BASE)"
    )
    parser.add_argument(
        "--uniid", default=os.environ.get("UNIID_WEIGHTS"), help="UniID weights (or $UNIID_WEIGHTS)"
    )
    parser.add_argument(
        "--face-net", default=os.environ.get("UNIID_FACE_NET"),
        help="IResNet-100 face net, e.g. glint360k_r100.pth (or $UNIID_FACE_NET)",
    )
    parser.add_argument(
        "--ref", nargs="+", help="reference photo(s) of one person (default: a bundled sample face)"
    )
    parser.add_argument(
        "--prompt", default="a photo of a <class word>, portrait, natural light", help="the prompt"
    )
    parser.add_argument("--detector", default="mtcnn", help="mtcnn, insightface or pre-aligned")
    parser.add_argument("--out", default=str(REPO_ROOT / "quickstart-output"), help="output folder")
    parser.add_argument("--seed", default="42", help="sampling seed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Pick real or stand-in weights, run uniid_core.generate, report where the image is."""
    args = parse_args(argv)
    from uniid_core.generate import main as generate

    given = [args.base, args.uniid, args.face_net]
    real = all(given) and all(Path(p).exists() for p in given)
    if any(given) and not real:
        flags = ("--base", "--uniid", "--face-net")
        pairs = zip(flags, given, strict=True)
        missing = [f"{flag} {p!r}" for flag, p in pairs if not p or not Path(p).exists()]
        print(f"Model files missing or not found: {', '.join(missing)}. Give all three to use your models.")
        return 2
    detector, refs = args.detector, args.ref
    if real:
        run = ["--base", args.base, "--uniid", args.uniid, "--face-net", args.face_net]
        settings = []
    else:
        from standin_weights import build

        print(f"{BANNER}\nNo model files given: building small RANDOM stand-in weights in {STANDIN_DIR}.\n"
              "The image will be noise: it proves the install and the whole code path, not the quality.\n"
              f"{BANNER}")
        paths = build(STANDIN_DIR)
        run = ["--base", str(paths["base"]), "--uniid", str(paths["uniid"])]
        run += ["--face-net", str(paths["face_net"])]
        settings = ["--steps", "4", "--width", "64", "--height", "64", "--device", "cpu", "--dtype", "fp32"]
        if not refs:
            photo = _sample_photo()
            if photo is None:
                refs, detector = [str(paths["aligned_face"])], "pre-aligned"
            else:
                refs = [str(photo)]
    if not refs:
        print("Give a reference photo with --ref PHOTO.")
        return 2
    out = Path(args.out) / ("real" if real else "standin")
    written = generate([*run, "--ref", *refs, "--prompt", args.prompt, "--detector", detector,
                        "--seed", args.seed, "--out", str(out), *settings])
    print(BANNER)
    for path in written:
        print(f"wrote {path}")
    if real:
        print("Made with your model files and the official settings (30 steps, CFG 7.5, merge step 5).")
    else:
        print("THIS IMAGE COMES FROM RANDOM STAND-IN WEIGHTS (noise by design). It shows that face\n"
              "detection, identity encoding and UniID sampling ran end to end. For a real portrait:\n"
              "  bash scripts/quickstart.sh --base SDXL_DIFFUSERS_DIR --uniid UNIID.safetensors "
              "--face-net glint360k_r100.pth --ref PHOTO")
    print(BANNER)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
