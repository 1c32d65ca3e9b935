"""Build a training dataset once: detect + align faces, record class words, optionally cache VAE latents.

`python -m training.prepare --images DIR_OR_LIST [...] --out DATASET_DIR [--detector insightface]
[--latents --base SDXL_DIR] [--workers N] [--part I/N]`. Output: shards/*.safetensors (aligned uint8
crops, optional latent mean/std) + their JSON, index.json and report.json / failures.tsv listing every
skipped image. Progress is saved every --save-every seconds and on Ctrl-C / SIGTERM; re-running the same
command skips every image already recorded (used or failed) and continues.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.data import SHARD_DIR, resize_target
from training.shards import (
    ShardWriter,
    done_images,
    latent_settings,
    prefix_part,
    read_records,
    seal_leftover_pieces,
    shard_prefix,
    write_index,
)
from uniid_core.cli import argument_parser, path_problem, positive_int, require_paths, run_cli
from uniid_core.errors import FaceDetectionError, UniIDError
from uniid_core.face.align import align_face
from uniid_core.face.class_word import class_word_from_gender
from uniid_core.face.detect import DetectedFace, FaceDetector, face_backend_names, make_detector
from uniid_core.face.image import load_image
from uniid_core.face.insightface_backend import DEFAULT_DET_SIZE, DEFAULT_ROOT, OFFICIAL_PACK
from uniid_core.face.prealigned import PreAlignedDetector
from uniid_core.face.providers import PROVIDERS
from uniid_core.face.references import SELECT_MODES

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
LIST_EXTENSIONS = {".txt", ".lst", ".list", ".tsv"}
INTERRUPTED = 130


@dataclass
class InputImage:
    """One image to prepare and, when the file list gives one, its class word."""

    path: str
    class_word: str | None = None


def collect_inputs(sources: Iterable[str]) -> list[InputImage]:
    """Expand folders (recursively, sorted), file lists ('path' or 'path<TAB>class word' lines) and files.

    An image named more than once (a folder and a list that overlap) is kept once, at its first mention
    and with that mention's class word, so it never becomes two samples or two failures.
    """
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
    unique: dict[str, InputImage] = {}
    for item in images:
        unique.setdefault(item.path, item)
    if len(unique) < len(images):
        print(
            f"--images names {len(images) - len(unique)} image(s) more than once: each is prepared once "
            "(with the class word of its first mention)",
            file=sys.stderr,
        )
    return list(unique.values())


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


class LatentEncoder:
    """Encodes 512x512 targets with the SDXL VAE and keeps the latent distribution (mean, std)."""

    def __init__(self, base: str, device: str, dtype: torch.dtype) -> None:
        """Load the VAE from a diffusers SDXL folder."""
        from diffusers import AutoencoderKL

        self.vae = AutoencoderKL.from_pretrained(base, subfolder="vae", dtype=dtype).to(device).eval()
        self.device = device
        self.dtype = dtype

    @torch.no_grad()
    def __call__(self, targets: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch of (H, W, 3) uint8 targets -> unscaled latent mean and std, float16 on the CPU."""
        pixels = torch.from_numpy(np.stack(targets)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        dist = self.vae.encode(pixels.to(self.device, self.dtype)).latent_dist
        return dist.mean.float().cpu().half(), dist.std.float().cpu().half()


def build_detector(args: argparse.Namespace, threads: int | None = None) -> FaceDetector:
    """The face detector the options ask for (`threads` caps MTCNN's onnxruntime threads per worker)."""
    return make_detector(
        args.detector,
        root=args.detector_root or None,
        name=args.detector_name,
        provider=args.detector_provider,
        det_size=args.det_size,
        threads=threads,
    )


def process_image(
    item: InputImage, detector: FaceDetector, writer: ShardWriter, args: argparse.Namespace
) -> None:
    """Detect, align and buffer one image, or record why it was skipped."""
    try:
        image = load_image(item.path)
        faces = detector.detect(image)
    except (FaceDetectionError, OSError, ValueError) as exc:
        writer.fail(item.path, f"unreadable: {exc}")
        return
    if not faces and args.no_face == "skip":
        writer.fail(item.path, "no face detected")
        return
    if faces:
        face = pick_face(faces, args.select)
        aligned = face.aligned if face.aligned is not None else align_face(image, face.landmarks)
    else:
        face = PreAlignedDetector().detect(image)[0]
        face.score = 0.0
        aligned = face.aligned
    entry = {
        "image": item.path,
        "class_word": class_word_for(face, item.class_word or args.class_word),
        "original_size": [int(image.shape[0]), int(image.shape[1])],
        "score": float(face.score),
        "num_faces": len(faces),
    }
    target = resize_target(image, args.resolution) if args.latents else None
    writer.add(aligned, entry, target)


def _raise_interrupt(signum: int, frame: object) -> None:
    """Turn SIGTERM (cluster pre-emption, `kill`) into the same graceful stop as Ctrl-C."""
    raise KeyboardInterrupt


def _ignore_signals() -> None:
    """Let a save in progress finish: a second Ctrl-C or SIGTERM must not abort it (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def prepare_items(
    out: Path,
    items: list[InputImage],
    args: argparse.Namespace,
    prefix: str,
    stop: Any = None,
    on_image: Callable[[], None] | None = None,
    threads: int | None = None,
) -> None:
    """Prepare `items` into shards named `prefix`, saving a piece every --save-every seconds.

    Any exception (Ctrl-C included) first saves what was finished, then propagates. `stop` (an Event)
    ends the loop after the current image; `on_image` is called after each image.
    """
    detector = build_detector(args, threads)
    encoder = None
    if args.latents:
        dtype = torch.float16 if args.vae_dtype == "fp16" else torch.float32
        encoder = LatentEncoder(args.base, args.device, dtype)
    writer = ShardWriter(
        out, prefix, args.shard_size, encoder, args.resolution if args.latents else None, args.vae_batch
    )
    saved_at = time.monotonic()
    try:
        for item in items:
            if stop is not None and stop.is_set():
                break
            process_image(item, detector, writer, args)
            if on_image is not None:
                on_image()
            if writer.full():
                writer.seal()
                saved_at = time.monotonic()
            elif time.monotonic() - saved_at >= args.save_every:
                writer.save_piece()
                saved_at = time.monotonic()
    except BaseException:
        _ignore_signals()
        writer.save_piece()
        raise
    writer.seal()


def limit_threads(threads: int) -> None:
    """Cap this process's CPU threads (torch, OpenCV; MTCNN's onnxruntime gets `threads` too)."""
    torch.set_num_threads(threads)
    try:
        import cv2

        cv2.setNumThreads(threads)
    except ImportError:
        pass


def _worker(
    out: Path,
    items: list[InputImage],
    args: argparse.Namespace,
    prefix: str,
    stop: Any,
    done: Any,
    threads: int,
) -> None:
    """Entry point of one worker process: Ctrl-C is the parent's to handle, SIGTERM stops gracefully."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    limit_threads(threads)

    def count() -> None:
        with done.get_lock():
            done.value += 1

    try:
        prepare_items(out, items, args, prefix, stop, count, threads)
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED)


class Throughput:
    """Finished-image count with the times of the first and the latest finish (steady rate, no start-up)."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.count = self.first_count = 0
        self.first: float | None = None
        self.last: float | None = None

    def update(self, count: int) -> None:
        """Record that `count` images are finished by now."""
        if count > self.count:
            now = time.perf_counter()
            if self.first is None:
                self.first, self.first_count = now, count
            self.last = now
            self.progress.update(count - self.count)
            self.count = count

    def steady(self) -> float | None:
        """Images/s between the first and the latest finish (None before two finishes)."""
        if self.first is None or self.last == self.first:
            return None
        return (self.count - self.first_count) / (self.last - self.first)


def run_workers(out: Path, pending: list[InputImage], args: argparse.Namespace) -> Throughput:
    """Prepare the pending images in this process (--workers 1) or in several worker processes."""
    part, parts = args.part
    workers = max(1, min(args.workers, len(pending)))
    progress = _progress(len(pending))
    finished = Throughput(progress)
    try:
        if workers == 1:
            if args.threads:
                limit_threads(args.threads)
            prefix = shard_prefix(part, parts, 0, 1)
            prepare_items(
                out,
                pending,
                args,
                prefix,
                on_image=lambda: finished.update(finished.count + 1),
                threads=args.threads,
            )
            return finished
        context = multiprocessing.get_context("spawn")
        stop, done = context.Event(), context.Value("q", 0)
        threads = args.threads or max(1, (os.cpu_count() or 1) // workers)
        processes = [
            context.Process(
                target=_worker,
                args=(
                    out,
                    pending[w::workers],
                    args,
                    shard_prefix(part, parts, w, workers),
                    stop,
                    done,
                    threads,
                ),
                name=f"prepare-worker-{w}",
            )
            for w in range(workers)
        ]
        for process in processes:
            process.start()
        try:
            while any(p.is_alive() for p in processes):
                processes[0].join(timeout=0.1)
                finished.update(done.value)
        except KeyboardInterrupt:
            _ignore_signals()
            stop.set()
            for process in processes:
                process.join()
            raise
        finished.update(done.value)
        codes = [p.exitcode for p in processes]
        if INTERRUPTED in codes:
            raise KeyboardInterrupt
        if any(codes):
            raise UniIDError(
                f"prepare workers exited with codes {codes} (see their errors above); what they finished is "
                "saved: fix the cause and run the same command again to continue"
            )
        return finished
    finally:
        progress.close()


def _progress(total: int) -> Any:
    """A tqdm bar on stderr."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="prepare", unit="img", file=sys.stderr)


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
        "--detector",
        choices=face_backend_names(),
        default="insightface",
        help="insightface (official; gives man/woman), mtcnn (ships with the pack), pre-aligned",
    )
    parser.add_argument(
        "--detector-root", default=None, help=f"insightface model root (default {DEFAULT_ROOT})"
    )
    parser.add_argument(
        "--detector-name", default=OFFICIAL_PACK, help=f"insightface model pack (official: {OFFICIAL_PACK})"
    )
    parser.add_argument(
        "--detector-provider",
        default="CPU",
        help=f"onnxruntime provider for insightface: {', '.join(PROVIDERS)}",
    )
    parser.add_argument(
        "--det-size",
        type=int,
        default=DEFAULT_DET_SIZE,
        help="insightface detection size (official: 320); smaller sizes are tried when no face is found",
    )
    parser.add_argument("--select", choices=SELECT_MODES, default=SELECT_MODES[0], help="which face to keep")
    parser.add_argument("--class-word", default=None, help="use this class word for every image")
    parser.add_argument(
        "--no-face",
        choices=("skip", "whole-image"),
        default="skip",
        help="skip (and report) images without a face, or use the whole image resized to 112x112 as the face "
        "with class word 'person' (the official fallback, in RGB)",
    )
    parser.add_argument("--shard-size", type=positive_int, default=1000, help="samples per shard")
    parser.add_argument(
        "--save-every",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="save finished images at least this often (a kill loses at most this much work)",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="worker processes on this machine (each its own detector)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads per worker (torch, OpenCV, MTCNN); default: cores / workers (1 worker: as is)",
    )
    parser.add_argument(
        "--part",
        type=_part,
        default=(0, 1),
        metavar="I/N",
        help="process only every N-th image from the I-th (one part per machine; default: 0/1, every image)",
    )
    parser.add_argument(
        "--latents", action="store_true", help="also cache VAE latents of the training targets"
    )
    parser.add_argument("--base", default=None, help="diffusers SDXL folder (for --latents)")
    parser.add_argument("--resolution", type=int, default=512, help="target size for --latents")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device for the VAE"
    )
    parser.add_argument("--vae-dtype", choices=("fp32", "fp16"), default="fp32", help="VAE precision")
    parser.add_argument("--vae-batch", type=positive_int, default=8, help="images per VAE encoder call")
    args = parser.parse_args(argv)
    if args.latents and not args.base:
        parser.error("--latents needs --base SDXL_DIR (the VAE to encode with)")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Prepare (or finish preparing) a dataset and print a summary; returns the report.

    The returned report also holds "this_run": images, seconds and the steady images/s of this run
    (between the first and the last finished image, so without model loading and worker start-up).
    Ctrl-C or SIGTERM saves what is finished and exits with code 130.
    """
    args = parse_args(argv)
    if args.latents:
        require_paths(
            path_problem("--base", args.base, "folder", "vae/config.json", "an SDXL folder (its vae/)")
        )
    out = Path(args.out)
    part, parts = args.part
    items = collect_inputs(args.images)[part::parts]
    seal_leftover_pieces(out, lambda prefix: prefix_part(prefix) == (part if parts > 1 else None))
    done = done_images(out)
    pending = [it for it in items if it.path not in done]
    shards, pieces = read_records(out)
    settings = latent_settings(shards + pieces)
    wanted = (bool(args.latents), args.resolution if args.latents else None)
    if pending and settings and settings != {wanted}:
        raise UniIDError(
            f"{out} was prepared with (latents, resolution) = {sorted(settings)}, this run asks for {wanted}:"
            " use the same --latents/--resolution to resume, or a new --out folder"
        )
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    if in_main_thread:
        signal.signal(signal.SIGTERM, _raise_interrupt)
    start = time.perf_counter()
    steady = None
    try:
        if pending:
            steady = run_workers(out, pending, args).steady()
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: every finished image is saved in {out / SHARD_DIR}; run the same command again "
            "to continue where it stopped",
            file=sys.stderr,
        )
        raise SystemExit(INTERRUPTED) from None
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous[0])
            signal.signal(signal.SIGTERM, previous[1])
    elapsed = time.perf_counter() - start
    report = write_index(out, args.detector)
    rate = f" in {elapsed:.1f} s" if pending else ""
    if steady:
        rate += f" ({steady:.2f} images/s after start-up)"
    print(
        f"prepared {report['num_samples']} samples ({len(items) - len(pending)} images were already done, "
        f"{len(pending)} this run{rate}), skipped {report['num_failed']} (listed in {out / 'failures.tsv'}); "
        f"class words {report['class_words']}",
        file=sys.stderr,
    )
    return dict(report, this_run={"images": len(pending), "seconds": elapsed, "steady_images_per_s": steady})


if __name__ == "__main__":
    sys.exit(run_cli(main))
