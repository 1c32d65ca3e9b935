"""Dataset preparation speed: images/s of `training.prepare` per worker and thread, with and without latents.

Runs the real command on face photos (600x600 crops of insightface's sample photo, or --photos DIR) for
each worker count, each worker capped at --threads CPU threads, and reports its steady rate (first to
last finished image: no model loading or worker start-up) next to the overall one. With --latents the VAE
is SDXL-shaped (random weights: the same arithmetic as the real one) and encodes the targets.

`python benchmarks/bench_prepare.py [--detector mtcnn] [--latents] [--workers 1,2] [--threads 1]
[--images 32] [--device cpu]` (insightface: add --detector insightface --detector-root DIR).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_train import make_photos  # noqa: E402

from training.prepare import main as prepare_main  # noqa: E402
from uniid_core.face.detect import face_backend_names  # noqa: E402
from uniid_core.face.insightface_backend import DEFAULT_DET_SIZE  # noqa: E402
from uniid_core.family import SDXL  # noqa: E402

TINY_VAE = dict(
    block_out_channels=(16, 16, 16, 16),
    layers_per_block=1,
    latent_channels=4,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=8,
)


def write_vae(folder: Path, shape: str) -> Path:
    """A random-weight VAE in a diffusers folder layout (`folder`/vae), SDXL-shaped or tiny."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(**(SDXL.reference_vae if shape == "sdxl" else TINY_VAE)).save_pretrained(folder / "vae")
    return folder


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Time training.prepare for each worker count and print a JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--detector", default="mtcnn", choices=face_backend_names())
    parser.add_argument("--detector-root", default=None)
    parser.add_argument("--detector-provider", default="CPU")
    parser.add_argument("--det-size", type=int, default=DEFAULT_DET_SIZE)
    parser.add_argument("--images", type=int, default=32, help="photos to make (ignored with --photos)")
    parser.add_argument("--photos", default=None, help="folder of your own face photos")
    parser.add_argument("--latents", action="store_true", help="also encode 512x512 targets with the VAE")
    parser.add_argument("--vae", choices=("sdxl", "tiny"), default="sdxl")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--vae-dtype", choices=("fp32", "fp16"), default="fp32")
    parser.add_argument("--workers", default="1", help="comma-separated worker counts to time")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per worker")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        photos = Path(args.photos) if args.photos else work / "photos"
        if not args.photos:
            make_photos(photos, args.images)
        files = [p for p in photos.rglob("*") if p.is_file()]
        command = ["--images", str(photos), "--detector", args.detector, "--threads", str(args.threads)]
        command += ["--det-size", str(args.det_size), "--detector-provider", args.detector_provider]
        if args.detector_root:
            command += ["--detector-root", args.detector_root]
        if args.latents:
            base = write_vae(work / "base", args.vae)
            command += ["--latents", "--base", str(base), "--resolution", str(args.resolution)]
            command += ["--device", args.device, "--vae-dtype", args.vae_dtype]
        runs = {}
        for workers in (int(w) for w in args.workers.split(",")):
            report = prepare_main([*command, "--out", str(work / f"ds_{workers}"), "--workers", str(workers)])
            run = report["this_run"]
            runs[str(workers)] = {
                "seconds": round(run["seconds"], 2),
                "images_per_s_with_startup": round(run["images"] / run["seconds"], 3),
                "images_per_s_steady": round(run["steady_images_per_s"], 3),
                "images_per_s_steady_per_worker": round(run["steady_images_per_s"] / workers, 3),
                "samples": report["num_samples"],
            }
        summary = {
            "detector": args.detector,
            "latents": f"{args.vae} VAE, {args.resolution}px, {args.vae_dtype}" if args.latents else None,
            "device": args.device,
            "images": len(files),
            "threads_per_worker": args.threads,
            "cpu_count": os.cpu_count(),
            "workers": runs,
            "note": "steady: between the first and the last finished image; with_startup: whole command",
        }
        print(json.dumps(summary, indent=1))
        return summary
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
