"""Score generated images: `python -m uniid_core.evaluate --images DIR --ref PHOTO --face-net FILE ...`.

Per image and on average: identity similarity (cosine of face-recognition embeddings against the reference
photos; our IResNet-100 face net with --face-net, insightface's ArcFace model with
--insightface-recognition, or both side by side), the face-detection rate, and with --clip the CLIP
text-image score of each image against its prompt. Writes <out>/evaluation.csv (one row per image) and
<out>/evaluation.json (the summary, with each metric's definition), atomically. Nothing is downloaded:
every model path is given by the user.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .cli import argument_parser, path_problem, require_paths, run_cli
from .errors import FaceDetectionError, UniIDError
from .face.detect import face_backend_names
from .face.insightface_backend import DEFAULT_DET_SIZE
from .similarity import SIMILARITY_DEFINITION, FaceCrop, ImageScore, Reference, find_face, score_faces
from .weights_file import atomic_write

if TYPE_CHECKING:
    from .clip_score import ClipScorer
    from .face.detect import FaceDetector
    from .face.recognition import FaceEmbedder

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CSV_NAME = "evaluation.csv"
SUMMARY_NAME = "evaluation.json"
MISSES_DEFINITION = "mean_with_misses: the same mean with every image without a face counted as 0"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argument_parser("python -m uniid_core.evaluate", __doc__.split("\n")[0])
    parser.add_argument("--images", required=True, help="folder of generated images (png, jpg, webp, bmp)")
    parser.add_argument(
        "--ref", nargs="+", required=True, help="reference photo(s) of the person, or folder(s) of them"
    )
    parser.add_argument(
        "--face-net",
        default=None,
        help="our IResNet-100 face net (backbone.pth or .safetensors): the default scorer",
    )
    parser.add_argument(
        "--insightface-recognition",
        default=None,
        help="insightface ArcFace recognition model (.onnx, e.g. buffalo_l/w600k_r50.onnx, or its pack "
        "folder): a second scorer, independent of the net that conditioned",
    )
    parser.add_argument(
        "--prompts",
        default=None,
        help='prompts of the images: JSON {"image file name": "prompt"} or CSV with columns image,prompt '
        "(PNGs from uniid_core.generate carry their prompt and need none)",
    )
    parser.add_argument(
        "--clip",
        default=None,
        help="local transformers CLIP folder (e.g. clip-vit-large-patch14) for CLIP score",
    )
    parser.add_argument(
        "--detector", default="insightface", choices=face_backend_names(), help="face detector backend"
    )
    parser.add_argument(
        "--insightface-root", default="~/.insightface", help="folder holding models/<pack>/*.onnx (detector)"
    )
    parser.add_argument("--insightface-model", default="buffalo_l", help="insightface pack of the detector")
    parser.add_argument("--det-size", type=int, default=DEFAULT_DET_SIZE, help="insightface detection size")
    parser.add_argument(
        "--select", default="largest", help="face to score when there are several: largest, score or an index"
    )
    parser.add_argument(
        "--provider", default="CPU", help="onnxruntime provider of the insightface models (CPU, CUDA, ...)"
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (face net, CLIP)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="images embedded per batch")
    parser.add_argument(
        "--out", default=None, help=f"folder for {CSV_NAME} and {SUMMARY_NAME} (default: the --images folder)"
    )
    return parser.parse_args(argv)


def image_files(folder: Path, option: str = "--images") -> list[Path]:
    """The images directly inside a folder, by name (hidden files left out)."""
    files = [
        p
        for p in sorted(folder.iterdir())
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    ]
    if not files:
        raise UniIDError(f"{option} {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def reference_files(paths: list[str]) -> list[Path]:
    """Reference photos: the files given, and the images inside any folder given."""
    files: list[Path] = []
    for path in map(Path, paths):
        files.extend(image_files(path, "--ref") if path.is_dir() else [path])
    return files


def read_prompts(path: Path) -> dict[str, str]:
    """Image name (file name or stem) -> prompt, from a JSON object or a CSV with image,prompt columns."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        data = json.loads(text)
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise UniIDError(f'--prompts {path}: expected a JSON object {{"image file name": "prompt", ...}}')
        return {str(k): v for k, v in data.items()}
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or not {"image", "prompt"} <= set(reader.fieldnames):
            raise UniIDError(f"--prompts {path}: the CSV needs a header with the columns image and prompt")
        return {row["image"]: row["prompt"] or "" for row in reader}
    raise UniIDError(f"--prompts {path}: give a .json or a .csv file")


def png_prompt(path: Path) -> str | None:
    """The prompt uniid_core.generate wrote into a PNG's 'uniid' text chunk, if any."""
    if path.suffix.lower() != ".png":
        return None
    from PIL import Image

    try:
        with Image.open(path) as image:
            record = json.loads(getattr(image, "text", {}).get("uniid", "null"))
    except (OSError, ValueError):
        return None
    prompt = record.get("prompt") if isinstance(record, dict) else None
    return prompt if isinstance(prompt, str) else None


class _SilentBar:
    """Stands in for tqdm where it is not installed."""

    def update(self, count: int = 1) -> None:
        """Show nothing."""

    def close(self) -> None:
        """Nothing to close."""


def progress_bar(total: int, desc: str) -> Any:
    """A tqdm bar on stderr, or a silent stand-in when tqdm is missing."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _SilentBar()
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr)


def _check_paths(args: argparse.Namespace) -> None:
    """Every path option, checked on the file system before anything is loaded."""
    require_paths(
        path_problem("--images", args.images, "folder", what="the folder of generated images"),
        *(path_problem("--ref", ref, what="a photo or a folder of photos") for ref in args.ref),
        args.face_net and path_problem("--face-net", args.face_net, "file", what="the face-net weights file"),
        args.insightface_recognition
        and path_problem("--insightface-recognition", args.insightface_recognition),
        args.prompts and path_problem("--prompts", args.prompts, "file", what="a .json or .csv prompts file"),
        args.clip
        and path_problem("--clip", args.clip, "folder", "config.json", "a transformers CLIP folder"),
    )
    if not args.face_net and not args.insightface_recognition:
        raise UniIDError(
            "no face-recognition model to score with: give --face-net (the IResNet-100 UniID uses) and/or "
            "--insightface-recognition (an insightface ArcFace .onnx)"
        )


def _similarity_summary(scores: list[ImageScore], model: str, name: str) -> dict[str, Any]:
    """Mean, mean with misses as 0, min and max of one scorer's similarities."""
    found = [s.score for s in scores if s.score is not None]
    if not found:
        return {"model": model, "net": name, "scored": 0, "mean": None, "mean_with_misses": None}
    return {
        "model": model,
        "net": name,
        "scored": len(found),
        "mean": sum(found) / len(found),
        "mean_with_misses": sum(found) / len(scores),
        "min": min(found),
        "max": max(found),
    }


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8", newline=""))


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


@dataclass
class Scorers:
    """What scores the images: detector, face selection, nets with their references, optional CLIP."""

    detector: FaceDetector
    select: str | int
    embedders: dict[str, FaceEmbedder]
    references: dict[str, Reference]
    reference_paths: list[Path]
    clip: ClipScorer | None = None


@dataclass
class Results:
    """Per-image outcome: the face found (or why not), each net's score, the CLIP scores by image index."""

    crops: list[FaceCrop] = field(default_factory=list)
    scores: dict[str, list[ImageScore]] = field(default_factory=dict)
    clip_scores: dict[int, float] = field(default_factory=dict)


def _prompts(args: argparse.Namespace, paths: list[Path]) -> tuple[dict[Path, str | None], list[str]]:
    """Each image's prompt (the --prompts file first, else its PNG metadata) and the file's unused keys."""
    given = read_prompts(Path(args.prompts)) if args.prompts else {}
    prompts = {p: given.get(p.name, given.get(p.stem)) or png_prompt(p) for p in paths}
    unmatched = sorted(set(given) - {p.name for p in paths} - {p.stem for p in paths})
    if unmatched:
        print(
            f"warning: {len(unmatched)} --prompts entries match no image, e.g. {unmatched[0]!r}",
            file=sys.stderr,
        )
    if args.clip and not any(prompts.values()):
        raise UniIDError(
            f"--clip needs the images' prompts, but none of the {len(paths)} images has one: give --prompts "
            "(image file names as keys)"
        )
    return prompts, unmatched


def _load_scorers(args: argparse.Namespace, reference_paths: list[Path]) -> Scorers:
    """Build the detector, load the nets and CLIP, and embed the reference photos with every net."""
    from .face.detect import make_detector
    from .face.image import load_image
    from .face.recognition import FaceNetEmbedder, OnnxFaceEmbedder

    select: str | int = int(args.select) if args.select.lstrip("-").isdigit() else args.select
    options = {"root": args.insightface_root, "name": args.insightface_model, "det_size": args.det_size}
    insightface = {**options, "provider": args.provider} if args.detector == "insightface" else {}
    detector = make_detector(args.detector, **insightface)
    embedders: dict[str, FaceEmbedder] = {}
    if args.face_net:
        from .checkpoint import load_face_net

        embedders["face_net"] = FaceNetEmbedder(
            load_face_net(args.face_net, device=args.device), args.batch_size
        )
    if args.insightface_recognition:
        embedders["insightface"] = OnnxFaceEmbedder(
            args.insightface_recognition, args.provider, args.batch_size
        )
    photos = [load_image(p) for p in reference_paths]
    references = {key: Reference.from_photos(photos, e, detector, select) for key, e in embedders.items()}
    clip = None
    if args.clip:
        from .clip_score import ClipScorer

        clip = ClipScorer(args.clip, args.device, args.batch_size)
    return Scorers(detector, select, embedders, references, reference_paths, clip)


def _score_all(
    paths: list[Path], prompts: dict[Path, str | None], scorers: Scorers, batch_size: int
) -> Results:
    """Load, detect and score the images a batch at a time (only the small crops stay in memory)."""
    from .face.image import load_image

    results = Results(scores={key: [] for key in scorers.embedders})
    numbered = list(enumerate(paths))
    bar = progress_bar(len(paths), "evaluate")
    for start in range(0, len(paths), batch_size):
        batch: list[FaceCrop] = []
        pixels, texts, clip_indices = [], [], []
        for index, path in numbered[start : start + batch_size]:
            try:
                image = load_image(path)
            except FaceDetectionError as exc:
                batch.append(FaceCrop(index, None, reason=str(exc)))
            else:
                batch.append(find_face(image, scorers.detector, scorers.select, index))
                if scorers.clip is not None and prompts[path]:
                    pixels.append(scorers.clip.preprocess(image))
                    texts.append(prompts[path])
                    clip_indices.append(index)
            bar.update(1)
        for key, embedder in scorers.embedders.items():
            results.scores[key].extend(score_faces(batch, scorers.references[key], embedder).scores)
        if pixels:
            clip_scores = scorers.clip.score(torch.stack(pixels), texts)
            results.clip_scores.update(zip(clip_indices, clip_scores, strict=True))
        results.crops.extend(batch)
    bar.close()
    return results


def _rows(
    paths: list[Path], prompts: dict[Path, str | None], scorers: Scorers, results: Results
) -> list[dict]:
    """One CSV row per image; an empty cell where there is no score, and the reason in note."""
    rows = []
    for crop, path in zip(results.crops, paths, strict=True):
        row: dict[str, Any] = {
            "image": path.name,
            "prompt": prompts[path] or "",
            "face_found": int(crop.aligned is not None),
            "num_faces": crop.num_faces,
            "face_box": "" if crop.box is None else " ".join(f"{v:.1f}" for v in crop.box),
        }
        for key in scorers.embedders:
            row[f"identity_similarity_{key}"] = _cell(results.scores[key][crop.index].score)
        if scorers.clip is not None:
            row["clip_score"] = _cell(results.clip_scores.get(crop.index))
        no_prompt = scorers.clip is not None and not prompts[path]
        row["note"] = crop.reason or ("no prompt: no CLIP score" if no_prompt else "")
        rows.append(row)
    return rows


def _summary(
    args: argparse.Namespace,
    paths: list[Path],
    prompts: dict[Path, str | None],
    unmatched: list[str],
    scorers: Scorers,
    results: Results,
) -> dict[str, Any]:
    """The means, rates and settings of the run, with the definition of each metric."""
    from .clip_score import CLIP_SCORE_DEFINITION

    found = sum(c.aligned is not None for c in results.crops)
    model_paths = {"face_net": args.face_net, "insightface": args.insightface_recognition}
    reference = next(iter(scorers.references.values()))
    detector: dict[str, Any] = {"backend": args.detector, "face_select": args.select}
    if args.detector == "insightface":
        detector.update(insightface_model=args.insightface_model, det_size=args.det_size)
    similarity: dict[str, Any] = {
        "definition": f"{SIMILARITY_DEFINITION}; mean over the images with a face; {MISSES_DEFINITION}"
    }
    for key, embedder in scorers.embedders.items():
        similarity[key] = _similarity_summary(results.scores[key], str(model_paths[key]), embedder.name)
    clip = None
    if scorers.clip is not None:
        values = list(results.clip_scores.values())
        clip = {
            "definition": CLIP_SCORE_DEFINITION,
            "model": scorers.clip.name,
            "path": str(args.clip),
            "scored": len(values),
            "mean": sum(values) / len(values) if values else None,
        }
    return {
        "images_folder": str(args.images),
        "num_images": len(paths),
        "faces_found": found,
        "face_detection_rate": found / len(paths),
        "detector": detector,
        "reference": {
            "photos": [str(p) for p in scorers.reference_paths],
            "faces_used": reference.num_faces,
            "skipped": reference.notes,
        },
        "identity_similarity": similarity,
        "clip_score": clip,
        "prompts": {
            "file": args.prompts,
            "images_with_prompt": sum(bool(v) for v in prompts.values()),
            "entries_matching_no_image": len(unmatched),
        },
        "csv": CSV_NAME,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Score every image of the folder, write the CSV and the summary JSON, print the means; returns the
    summary."""
    args = parse_args(argv)
    _check_paths(args)
    if args.batch_size < 1:
        raise UniIDError(f"--batch-size must be at least 1, got {args.batch_size}")
    paths = image_files(Path(args.images))
    reference_paths = reference_files(args.ref)
    prompts, unmatched = _prompts(args, paths)
    scorers = _load_scorers(args, reference_paths)
    results = _score_all(paths, prompts, scorers, args.batch_size)
    summary = _summary(args, paths, prompts, unmatched, scorers, results)
    out = Path(args.out) if args.out else Path(args.images)
    _write_text(out / CSV_NAME, _csv_text(_rows(paths, prompts, scorers, results)))
    _write_text(out / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
    _print_summary(summary, out)
    return summary


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    """The headline numbers and where the files are."""
    rate = 100 * summary["face_detection_rate"]
    print(f"faces found in {summary['faces_found']} of {summary['num_images']} images ({rate:.1f}%)")
    for key, value in summary["identity_similarity"].items():
        if isinstance(value, dict):
            mean = "-" if value["mean"] is None else f"{value['mean']:.4f}"
            print(f"identity similarity ({key}: {value['net']}): mean {mean} over {value['scored']} faces")
    clip = summary["clip_score"]
    if clip:
        mean = "-" if clip["mean"] is None else f"{clip['mean']:.2f}"
        print(f"CLIP score ({clip['model']}): mean {mean} over {clip['scored']} images")
    print(f"wrote {out / CSV_NAME} and {out / SUMMARY_NAME}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
