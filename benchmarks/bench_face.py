"""Time face detection, alignment and the face net per image for each available backend on CPU.

Usage: python benchmarks/bench_face.py [--repeats 5] [--threads N] [--insightface-root DIR] [images...]
Without images it uses the photos bundled in the insightface wheel (one portrait, one group photo).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

from uniid_core.cli import argument_parser, run_cli  # noqa: E402
from uniid_core.errors import UniIDError  # noqa: E402
from uniid_core.face.align import align_face, faces_to_tensor  # noqa: E402
from uniid_core.face.detect import FaceDetector, make_detector  # noqa: E402
from uniid_core.face.image import load_image  # noqa: E402
from uniid_core.face.references import select_face  # noqa: E402


def _best_ms(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Fastest wall and CPU time of fn in ms over repeats after a warm-up (CPU time ignores other load)."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - start_cpu) * 1000)
    return min(wall), min(cpu)


def _default_images() -> list[Path]:
    """The insightface wheel's sample portrait and group photo."""
    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "no images given and the insightface wheel (with its sample photos) is not installed"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "images"
    return [folder / "Tom_Hanks_54745.png", folder / "t1.jpg"]


def _insightface_root(given: str | None) -> Path | None:
    """First folder with models/buffalo_l or models/antelopev2 (argument, $UNIID_INSIGHTFACE_ROOT, ...)."""
    candidates = [Path(given)] if given else []
    candidates += [Path(p) for p in os.environ.get("UNIID_INSIGHTFACE_ROOT", "").split(os.pathsep) if p]
    candidates += [
        Path("~/.insightface").expanduser(),
        REPO_ROOT.parent / "ComfyUI" / "models" / "insightface",
    ]
    for root in candidates:
        if any((root / "models" / name).is_dir() for name in ("buffalo_l", "antelopev2")):
            return root
    return None


def _detectors(args: argparse.Namespace) -> dict[str, FaceDetector]:
    """Every backend that can be built here, by display name; reasons for the others are printed."""
    found: dict[str, FaceDetector] = {}
    for label, backend, options in (
        ("mtcnn (onnxruntime)", "mtcnn", {"engine": "onnxruntime", "threads": args.threads}),
        ("mtcnn (opencv dnn)", "mtcnn", {"engine": "opencv"}),
    ):
        try:
            found[label] = make_detector(backend, **options)
        except (UniIDError, ImportError) as exc:
            print(f"skipped {label}: {exc}")
    root = _insightface_root(args.insightface_root)
    if root is None:
        print("skipped insightface: no buffalo_l/antelopev2 pack found (pass --insightface-root)")
    else:
        name = "buffalo_l" if (root / "models" / "buffalo_l").is_dir() else "antelopev2"
        try:
            found[f"insightface {name} (det 640)"] = make_detector("insightface", root=root, name=name)
        except (UniIDError, ImportError) as exc:
            print(f"skipped insightface: {exc}")
    found["pre-aligned"] = make_detector("pre-aligned")
    return found


def _face_net(threads: int | None) -> Callable[[np.ndarray], object] | None:
    """IResNet-100 with random weights (CORE-MODELS' module), or None when it is not there yet."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    try:
        from uniid_core.models.iresnet import iresnet100
    except ImportError as exc:
        print(f"face net not timed: uniid_core.models.iresnet is not importable ({exc})")
        return None
    net = iresnet100().eval()

    def run(crops: np.ndarray) -> object:
        with torch.inference_mode():
            return net(faces_to_tensor(crops))

    return run


def main(argv: list[str] | None = None) -> int:
    """Print a per-image timing table: detection, alignment, face net and their sum (ms)."""
    parser = argument_parser("python benchmarks/bench_face.py", __doc__.splitlines()[0])
    parser.add_argument(
        "images", nargs="*", type=Path, help="photos to time (default: insightface's sample photos)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per image (fastest is shown)")
    parser.add_argument("--threads", type=int, default=None, help="torch and onnxruntime intra-op threads")
    parser.add_argument(
        "--insightface-root", default=None, help="insightface model root (default: insightface's own)"
    )
    args = parser.parse_args(argv)

    import onnxruntime
    import torch

    face_net = _face_net(args.threads)
    ort_threads = args.threads or "default (one per physical core)"
    print(f"cpu cores: {os.cpu_count()}; torch {torch.__version__}, threads: {torch.get_num_threads()}")
    print(f"onnxruntime {onnxruntime.__version__}, intra-op threads: {ort_threads}")
    print(f"onnxruntime providers: {', '.join(onnxruntime.get_available_providers())}")
    images = {path.name: load_image(path) for path in (args.images or _default_images())}
    net_ms, net_cpu = float("nan"), float("nan")
    if face_net is not None:
        one = np.zeros((1, 112, 112, 3), np.uint8)
        net_ms, net_cpu = _best_ms(lambda: face_net(one), args.repeats)
        print(f"face net (IResNet-100, random weights, batch 1): {net_ms:.1f} ms wall, {net_cpu:.1f} ms CPU")
    print(f"times: fastest of {args.repeats} runs after a warm-up, per image; CPU = process CPU time")
    columns = ("backend", "image", "size", "faces", "detect ms", "det CPU", "align ms", "net ms", "total ms")
    widths = (26, 22, 9, 5, 9, 8, 8, 8, 9)
    header = " ".join(
        f"{c:>{w}}" if i > 1 else f"{c:{w}}" for i, (c, w) in enumerate(zip(columns, widths, strict=True))
    )
    print(header)
    print("-" * len(header))
    for label, detector in _detectors(args).items():
        for name, image in images.items():
            faces = detector.detect(image)
            detect_ms, detect_cpu = _best_ms(lambda d=detector, im=image: d.detect(im), args.repeats)
            align_ms = float("nan")
            if faces:
                face = select_face(faces, "largest")[1]
                align_ms = 0.0
                if face.aligned is None:
                    align_ms = _best_ms(lambda im=image, f=face: align_face(im, f.landmarks), args.repeats)[0]
            total = detect_ms + align_ms + net_ms
            size = f"{image.shape[1]}x{image.shape[0]}"
            print(
                f"{label:26} {name:22} {size:>9} {len(faces):5d} {detect_ms:9.1f} {detect_cpu:8.1f} "
                f"{align_ms:8.2f} {net_ms:8.1f} {total:9.1f}"
            )
    if face_net is None:
        print("face-net time not measured (uniid_core.models.iresnet missing): detection + alignment only")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
