"""Run UniID's main job once: reference photo in, face-personalised image out (called by quickstart.sh).

With real model files (--base, --uniid, --face-net, or UNIID_BASE / UNIID_WEIGHTS / UNIID_FACE_NET) it runs
the official settings (insightface buffalo_l at det size 320 when installed, else the bundled MTCNN).
Without them it builds small random stand-in weights and runs the same code path on them, with real MTCNN
face detection and alignment on a public-domain photo shipped in scripts/assets, and says loudly that the
picture is from stand-in weights.
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
SAMPLE_PHOTO = REPO_ROOT / "scripts" / "assets" / "eileen_collins.jpg"


def _official_detector(insightface_root: str) -> tuple[str, str]:
    """insightface when it and the buffalo_l pack are there (the official detector), else mtcnn; and why."""
    if importlib.util.find_spec("insightface") is None:
        return "mtcnn", "insightface is not installed (pip install insightface for the official detector)"
    from uniid_core.errors import FaceDetectionError
    from uniid_core.face.insightface_backend import OFFICIAL_PACK, check_model_folder

    try:
        check_model_folder(insightface_root, OFFICIAL_PACK)
    except FaceDetectionError as exc:
        return "mtcnn", f"the official buffalo_l pack is not usable: {exc}"
    return "insightface", "insightface buffalo_l at det size 320, as the official code"


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
        "--face-net",
        default=os.environ.get("UNIID_FACE_NET"),
        help="IResNet-100 face net, e.g. glint360k_r100.pth (or $UNIID_FACE_NET)",
    )
    parser.add_argument(
        "--ref", nargs="+", help=f"reference photo(s) of one person (default: {SAMPLE_PHOTO.name})"
    )
    parser.add_argument(
        "--prompt", default="a photo of a <class word>, portrait, natural light", help="the prompt"
    )
    parser.add_argument(
        "--detector",
        default=None,
        help="insightface, mtcnn or pre-aligned (default with your files: insightface when it and buffalo_l "
        "are installed, else mtcnn; mtcnn with stand-in weights)",
    )
    parser.add_argument(
        "--insightface-root",
        default=os.environ.get("UNIID_INSIGHTFACE_ROOT", "~/.insightface"),
        help="folder holding models/buffalo_l/*.onnx (or $UNIID_INSIGHTFACE_ROOT)",
    )
    parser.add_argument("--out", default=str(REPO_ROOT / "quickstart-output"), help="output folder")
    parser.add_argument("--seed", default="42", help="sampling seed (official: 42)")
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
        run += ["--insightface-root", args.insightface_root]
        settings = []
        if detector is None:
            detector, why = _official_detector(args.insightface_root)
            print(f"Face detector: {detector} ({why}).")
    else:
        from standin_weights import build

        print(f"{BANNER}\nNo model files given: building small RANDOM stand-in weights in {STANDIN_DIR}.\n"
              "The image will be noise: it proves the install and the whole code path, not the quality.\n"
              f"{BANNER}")
        paths = build(STANDIN_DIR)
        run = ["--base", str(paths["base"]), "--uniid", str(paths["uniid"])]
        run += ["--face-net", str(paths["face_net"])]
        settings = ["--steps", "4", "--width", "64", "--height", "64", "--device", "cpu", "--dtype", "fp32"]
        detector = detector or "mtcnn"
    if not refs:
        refs = [str(SAMPLE_PHOTO)]
        source = SAMPLE_PHOTO.parent.relative_to(REPO_ROOT) / "SOURCE.md"
        print(f"Reference photo: {SAMPLE_PHOTO.relative_to(REPO_ROOT)} (a NASA photo in the public domain, "
              f"see {source}), detected and aligned with {detector}.")
    out = Path(args.out) / ("real" if real else "standin")
    written = generate([*run, "--ref", *refs, "--prompt", args.prompt, "--detector", detector,
                        "--seed", args.seed, "--out", str(out), *settings])
    print(BANNER)
    for path in written:
        print(f"wrote {path}")
    if real:
        print("Made with your model files and the official settings (30 steps, CFG 7.5, merge step 5,\n"
              "seed 42, official celebrity names); every setting is in the PNG's 'uniid' text chunk.")
    else:
        print("THIS IMAGE COMES FROM RANDOM STAND-IN WEIGHTS (noise by design). It shows that face\n"
              "detection, identity encoding and UniID sampling ran end to end. For a real portrait:\n"
              "  bash scripts/quickstart.sh --base SDXL_DIFFUSERS_DIR --uniid RELEASE_FOLDER "
              "--face-net FACE_NET_FILE --ref PHOTO")
    print(BANNER)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
