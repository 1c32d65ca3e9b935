"""Build a training dataset once: detect + align faces, record class words, optionally cache VAE latents.

`python -m training.prepare --images DIR_OR_LIST [...] --out DATASET_DIR [--detector insightface]
[--latents --base SDXL_DIR]`. Output: shards/shard_NNNNN.safetensors (aligned uint8 crops, optional
latent mean/std) + shard_NNNNN.json, index.json and report.json / failures.tsv listing every skipped image.
Re-running skips every image already recorded (used or failed) and appends new shards.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from training.data import FORMAT_VERSION, INDEX_NAME, SHARD_DIR, resize_target, write_json_atomic
from uniid_core.cli import argument_parser, path_problem, require_paths, run_cli
from uniid_core.errors import FaceDetectionError, UniIDError
from uniid_core.face.align import align_face
from uniid_core.face.class_word import class_word_from_gender
from uniid_core.face.detect import DetectedFace, FaceDetector, make_detector
from uniid_core.face.image import load_image
from uniid_core.face.prealigned import PreAlignedDetector

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
LIST_EXTENSIONS = {".txt", ".lst", ".list", ".tsv"}


@dataclass
class InputImage:
    """One image to prepare and, when the file list gives one, its class word."""

    path: str
    class_word: str | None = None


@dataclass
class ShardBuffer:
    """Samples of the shard being built."""

    faces: list[np.ndarray] = field(default_factory=list)
    targets: list[np.ndarray] = field(default_factory=list)
    entries: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)


def collect_inputs(sources: Iterable[str]) -> list[InputImage]:
    """Expand folders (recursively, sorted), file lists ('path' or 'path<TAB>class word' lines) and files."""
    images: list[InputImage] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            images.extend(InputImage(str(p.resolve())) for p in files)
        elif path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
            for line in path.read_text(encoding="utf-8").splitlines():
                if not line.strip() or line.startswith("#"):
                    continue
                name, _, word = line.partition("\t")
                item = Path(name.strip())
                item = item if item.is_absolute() else path.parent / item
                images.append(InputImage(str(item.resolve()), word.strip() or None))
        elif path.is_file():
            images.append(InputImage(str(path.resolve())))
        else:
            raise UniIDError(f"--images {source}: not a folder, file list or image file")
    return images


def pick_face(faces: list[DetectedFace], select: str) -> DetectedFace:
    """The largest face (default, as the nodes do) or the detector's most confident one (official)."""
    if select == "score":
        return max(faces, key=lambda f: f.score)
    return max(faces, key=lambda f: f.area)


def class_word_for(face: DetectedFace, forced: str | None) -> str:
    """Forced word if given, else 'man'/'woman' from the detector's gender, else 'person'."""
    if forced:
        return forced
    return class_word_from_gender(face.gender)


def done_images(out: Path) -> set[str]:
    """Every image already recorded (used or failed) in a completed shard."""
    done: set[str] = set()
    for meta in sorted((out / SHARD_DIR).glob("shard_*.json")):
        record = json.loads(meta.read_text(encoding="utf-8"))
        done.update(e["image"] for e in record["entries"])
        done.update(f["image"] for f in record["failures"])
    return done


class LatentEncoder:
    """Encodes 512x512 targets with the SDXL VAE and keeps the latent distribution (mean, std)."""

    def __init__(self, base: str, device: str, dtype: torch.dtype) -> None:
        """Load the VAE from a diffusers SDXL folder."""
        from diffusers import AutoencoderKL

        self.vae = AutoencoderKL.from_pretrained(base, subfolder="vae", dtype=dtype).to(device).eval()
        self.device = device
        self.dtype = dtype

    @torch.no_grad()
    def __call__(self, targets: list[np.ndarray], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, H, W, 3) uint8 -> unscaled latent mean and std, float16 on the CPU."""
        means, stds = [], []
        for start in range(0, len(targets), batch_size):
            chunk = torch.from_numpy(np.stack(targets[start : start + batch_size]))
            pixels = chunk.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
            dist = self.vae.encode(pixels.to(self.device, self.dtype)).latent_dist
            means.append(dist.mean.float().cpu().half().contiguous())
            stds.append(dist.std.float().cpu().half().contiguous())
        return torch.cat(means).contiguous(), torch.cat(stds).contiguous()


class Preparer:
    """Runs detection/alignment image by image and writes finished shards atomically."""

    def __init__(self, out: Path, detector: FaceDetector, args: argparse.Namespace) -> None:
        """Set up the output folder and, with --latents, the VAE."""
        self.out = out
        self.detector = detector
        self.args = args
        (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        part, parts = args.part
        self.prefix = "shard_" if parts == 1 else f"shard_p{part:03d}_"
        pattern = re.compile(re.escape(self.prefix) + r"(\d+)\.json$")
        numbers = [int(m.group(1)) for p in (out / SHARD_DIR).iterdir() if (m := pattern.match(p.name))]
        self.next_shard = max(numbers) + 1 if numbers else 0
        dtype = torch.float16 if args.vae_dtype == "fp16" else torch.float32
        self.encoder = LatentEncoder(args.base, args.device, dtype) if args.latents else None

    def process(self, item: InputImage, buffer: ShardBuffer) -> None:
        """Detect, align and buffer one image, or record why it was skipped."""
        try:
            image = load_image(item.path)
            faces = self.detector.detect(image)
        except (FaceDetectionError, OSError, ValueError) as exc:
            buffer.failures.append({"image": item.path, "reason": f"unreadable: {exc}"})
            return
        if not faces and self.args.no_face == "skip":
            buffer.failures.append({"image": item.path, "reason": "no face detected"})
            return
        if faces:
            face = pick_face(faces, self.args.select)
            aligned = face.aligned if face.aligned is not None else align_face(image, face.landmarks)
        else:
            face = PreAlignedDetector().detect(image)[0]
            face.score = 0.0
            aligned = face.aligned
        buffer.faces.append(np.ascontiguousarray(aligned, dtype=np.uint8))
        if self.encoder is not None:
            buffer.targets.append(resize_target(image, self.args.resolution))
        buffer.entries.append(
            {
                "image": item.path,
                "class_word": class_word_for(face, item.class_word or self.args.class_word),
                "original_size": [int(image.shape[0]), int(image.shape[1])],
                "score": float(face.score),
                "num_faces": len(faces),
            }
        )

    def flush(self, buffer: ShardBuffer) -> None:
        """Write the buffered shard (tensors first, then its JSON, which marks it complete)."""
        if not buffer.entries and not buffer.failures:
            return
        name = f"{self.prefix}{self.next_shard:05d}"
        record: dict[str, Any] = {"file": None, "entries": buffer.entries, "failures": buffer.failures}
        if buffer.entries:
            tensors = {"faces": torch.from_numpy(np.stack(buffer.faces))}
            if self.encoder is not None:
                tensors["latent_mean"], tensors["latent_std"] = self.encoder(
                    buffer.targets, self.args.vae_batch
                )
            target = self.out / SHARD_DIR / f"{name}.safetensors"
            tmp = target.with_name(f".{target.name}.tmp")
            save_file(tensors, str(tmp))
            tmp.replace(target)
            record["file"] = target.name
            record["latents"] = self.encoder is not None
            record["latent_resolution"] = self.args.resolution if self.encoder is not None else None
        write_json_atomic(self.out / SHARD_DIR / f"{name}.json", record)
        self.next_shard += 1
        buffer.__init__()

    def run(self, items: list[InputImage]) -> None:
        """Process every pending image, flushing a shard every --shard-size used images."""
        buffer = ShardBuffer()
        progress = _progress(len(items))
        for item in items:
            self.process(item, buffer)
            progress.update(1)
            if len(buffer.entries) >= self.args.shard_size or len(buffer.failures) >= self.args.shard_size:
                self.flush(buffer)
        self.flush(buffer)
        progress.close()


def _progress(total: int) -> Any:
    """A tqdm bar on stderr."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="prepare", unit="img", file=sys.stderr)


def existing_latent_settings(out: Path) -> set[tuple[bool, int | None]]:
    """(has latents, resolution) of the shards already written, to refuse mixing settings on resume."""
    settings = set()
    for meta in (out / SHARD_DIR).glob("shard_*.json"):
        record = json.loads(meta.read_text(encoding="utf-8"))
        if record["file"]:
            settings.add((bool(record.get("latents")), record.get("latent_resolution")))
    return settings


def write_index(out: Path, detector: str) -> dict[str, Any]:
    """Merge the shard JSONs into index.json and write report.json + failures.tsv; returns the report."""
    shards, failures = [], []
    for meta in sorted((out / SHARD_DIR).glob("shard_*.json")):
        record = json.loads(meta.read_text(encoding="utf-8"))
        failures.extend(record["failures"])
        if record["file"]:
            shards.append(
                {"file": record["file"], "latents": bool(record.get("latents")), "entries": record["entries"]}
            )
    settings = existing_latent_settings(out)
    if len(settings) > 1:
        raise UniIDError(
            f"{out} mixes shards with different latent settings {settings}: prepare into a new --out"
        )
    num = sum(len(s["entries"]) for s in shards)
    resolution = next(iter(settings))[1] if settings else None
    index = {
        "version": FORMAT_VERSION,
        "detector": detector,
        "num_samples": num,
        "shards": shards,
        "latent_resolution": resolution,
    }
    write_json_atomic(out / INDEX_NAME, index)
    words: dict[str, int] = {}
    for shard in shards:
        for entry in shard["entries"]:
            words[entry["class_word"]] = words.get(entry["class_word"], 0) + 1
    report = {"num_samples": num, "num_failed": len(failures), "class_words": words, "failures": failures}
    write_json_atomic(out / "report.json", report)
    lines = ["image\treason"] + [f"{f['image']}\t{f['reason']}" for f in failures]
    (out / "failures.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def _part(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N."""
    try:
        part, parts = (int(x) for x in text.split("/"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--part must look like I/N (e.g. 0/4), got {text!r}") from exc
    if not 0 <= part < parts:
        raise argparse.ArgumentTypeError(f"--part {text}: need 0 <= I < N")
    return part, parts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argument_parser("python -m training.prepare", __doc__.split("\n")[0])
    parser.add_argument(
        "--images", nargs="+", required=True, help="folders, file lists (.txt) or image files"
    )
    parser.add_argument("--out", required=True, help="dataset folder (created; re-running resumes)")
    parser.add_argument(
        "--detector", default="insightface", help="insightface (gives man/woman), mtcnn, pre-aligned"
    )
    parser.add_argument(
        "--detector-root", default=None, help="insightface model root (default ~/.insightface)"
    )
    parser.add_argument(
        "--select", choices=("largest", "score"), default="largest", help="which face to keep"
    )
    parser.add_argument("--class-word", default=None, help="use this class word for every image")
    parser.add_argument(
        "--no-face",
        choices=("skip", "whole-image"),
        default="skip",
        help="skip (and report) images without a face, or use the whole image resized to 112x112 as the face "
        "with class word 'person' (the official fallback, in RGB)",
    )
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    parser.add_argument(
        "--part",
        type=_part,
        default=(0, 1),
        metavar="I/N",
        help="process only every N-th image, starting at the I-th (default: 0/1, every image)",
    )
    parser.add_argument(
        "--latents", action="store_true", help="also cache VAE latents of the training targets"
    )
    parser.add_argument("--base", default=None, help="diffusers SDXL folder (for --latents)")
    parser.add_argument("--resolution", type=int, default=512, help="target size for --latents")
    parser.add_argument(
        "--detector-provider", default="CPU", help="onnxruntime provider for insightface (CPU, CUDA, ...)"
    )
    parser.add_argument("--det-size", type=int, default=640, help="insightface detection size")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device for the VAE"
    )
    parser.add_argument("--vae-dtype", choices=("fp32", "fp16"), default="fp32", help="VAE precision")
    parser.add_argument("--vae-batch", type=int, default=8, help="images per VAE encoder call")
    args = parser.parse_args(argv)
    if args.latents and not args.base:
        parser.error("--latents needs --base SDXL_DIR (the VAE to encode with)")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Prepare (or finish preparing) a dataset and print a summary; returns the report."""
    args = parse_args(argv)
    if args.latents:
        require_paths(path_problem("--base", args.base, "folder", "model_index.json", "an SDXL folder"))
    out = Path(args.out)
    part, parts = args.part
    items = collect_inputs(args.images)[part::parts]
    done = done_images(out) if (out / SHARD_DIR).is_dir() else set()
    pending = [it for it in items if it.path not in done]
    settings = existing_latent_settings(out) if (out / SHARD_DIR).is_dir() else set()
    wanted = (bool(args.latents), args.resolution if args.latents else None)
    if pending and settings and settings != {wanted}:
        raise UniIDError(
            f"{out} was prepared with (latents, resolution) = {sorted(settings)}, this run asks for {wanted}:"
            " use the same --latents/--resolution to resume, or a new --out folder"
        )
    options: dict[str, Any] = {}
    if args.detector == "insightface":
        options = {"provider": args.detector_provider, "det_size": args.det_size}
        if args.detector_root:
            options["root"] = args.detector_root
    if pending:
        Preparer(out, make_detector(args.detector, **options), args).run(pending)
    report = write_index(out, args.detector)
    print(
        f"prepared {report['num_samples']} samples ({len(items) - len(pending)} images were already done), "
        f"skipped {report['num_failed']} (listed in {out / 'failures.tsv'}); "
        f"class words {report['class_words']}",
        file=sys.stderr,
    )
    return report


if __name__ == "__main__":
    sys.exit(run_cli(main))
