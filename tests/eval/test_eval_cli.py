"""`python -m uniid_core.evaluate`: the CSV and summary JSON it promises; one-line errors for bad input."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from tests.eval.conftest import EILEEN
from uniid_core import cli
from uniid_core.clip_score import ClipScorer
from uniid_core.evaluate import main as evaluate

COLUMNS = [
    "image",
    "prompt",
    "face_found",
    "num_faces",
    "face_box",
    "identity_similarity_face_net",
    "identity_similarity_insightface",
    "clip_score",
    "note",
]


@pytest.fixture(scope="module")
def face_net_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight IResNet-100 saved as safetensors (the CLI loads only the real layout)."""
    from safetensors.torch import save_file

    from uniid_core.models.iresnet import iresnet100

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("face_net") / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in iresnet100().state_dict().items()}, str(path))
    return path


def _generated_folder(folder: Path, eileen: np.ndarray, group_photo: np.ndarray) -> Path:
    """Four 'generated' images: a face whose PNG carries its prompt, a group, no face, a broken file."""
    folder.mkdir()
    info = PngInfo()
    info.add_text("uniid", json.dumps({"prompt": "a photo of a woman astronaut", "seed": 42}))
    Image.fromarray(eileen).save(folder / "a_face.png", pnginfo=info)
    Image.fromarray(group_photo).save(folder / "b_group.jpg", quality=95)
    Image.fromarray(np.full((96, 96, 3), 128, np.uint8)).save(folder / "c_flat.png")
    (folder / "d_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_writes_the_csv_and_summary_it_promises(
    tmp_path: Path, eileen, group_photo, face_net_file: Path, arcface_pack: Path, tiny_clip: Path, capsys
) -> None:
    images = _generated_folder(tmp_path / "generated", eileen, group_photo)
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"b_group.jpg": "six people", "c_flat": "a gray square", "zz.png": "x"}))
    out = tmp_path / "report"
    argv = ["--images", str(images), "--ref", str(EILEEN), "--prompts", str(prompts), "--detector", "mtcnn"]
    argv += ["--face-net", str(face_net_file), "--insightface-recognition", str(arcface_pack)]
    argv += ["--clip", str(tiny_clip), "--device", "cpu", "--batch-size", "2", "--out", str(out)]
    summary = evaluate(argv)
    captured = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["evaluation.csv", "evaluation.json"]
    assert json.loads((out / "evaluation.json").read_text()) == summary
    with open(out / "evaluation.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        face, group, flat, broken = rows = list(reader)
    assert [r["image"] for r in rows] == ["a_face.png", "b_group.jpg", "c_flat.png", "d_broken.png"]

    assert face["prompt"] == "a photo of a woman astronaut" and face["face_found"] == "1"
    assert float(face["identity_similarity_face_net"]) == pytest.approx(1.0, abs=1e-5)
    assert float(face["identity_similarity_insightface"]) == pytest.approx(1.0, abs=1e-5)
    assert int(group["num_faces"]) >= 6 and len(group["face_box"].split()) == 4
    assert float(group["identity_similarity_insightface"]) < 0.95
    assert float(group["identity_similarity_face_net"]) < 1.0 - 1e-4
    assert flat["face_found"] == "0" and flat["identity_similarity_face_net"] == ""
    assert flat["note"] == "no face found (detector: mtcnn)" and flat["clip_score"] != ""
    assert broken["prompt"] == "" and broken["clip_score"] == "" and "could not read" in broken["note"]

    scorer = ClipScorer(tiny_clip)
    expected = scorer.score(
        torch.stack(
            [scorer.preprocess(np.asarray(Image.open(images / r["image"]).convert("RGB"))) for r in rows[:3]]
        ),
        [r["prompt"] for r in rows[:3]],
    )
    assert [float(r["clip_score"]) for r in rows[:3]] == pytest.approx(expected, abs=1e-4)

    assert (summary["num_images"], summary["faces_found"], summary["face_detection_rate"]) == (4, 2, 0.5)
    sims = [float(face["identity_similarity_face_net"]), float(group["identity_similarity_face_net"])]
    ours = summary["identity_similarity"]["face_net"]
    assert ours["mean"] == pytest.approx(np.mean(sims), abs=1e-6) and ours["scored"] == 2
    assert ours["mean_with_misses"] == pytest.approx(sum(sims) / 4, abs=1e-6)
    assert (
        ours["model"] == str(face_net_file) and summary["identity_similarity"]["insightface"]["scored"] == 2
    )
    assert "cosine similarity" in summary["identity_similarity"]["definition"]
    clip = summary["clip_score"]
    assert (clip["model"], clip["scored"]) == ("clip-tiny", 3)
    assert clip["definition"].startswith("100 * max(cosine(CLIP image embedding, CLIP text embedding")
    assert clip["mean"] == pytest.approx(np.mean(expected), abs=1e-4)
    assert summary["prompts"] == {
        "file": str(prompts),
        "images_with_prompt": 3,
        "entries_matching_no_image": 1,
    }
    assert summary["detector"] == {"backend": "mtcnn", "face_select": "largest"}
    assert summary["reference"] == {"photos": [str(EILEEN)], "faces_used": 1, "skipped": []}
    assert "faces found in 2 of 4 images (50.0%)" in captured.out
    assert "warning: 1 --prompts entries match no image, e.g. 'zz.png'" in captured.err


def test_reference_folder_csv_prompts_and_default_out_without_tqdm(
    tmp_path: Path, eileen, group_photo, arcface_pack: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # importing it now fails: the bar falls back silently
    images = _generated_folder(tmp_path / "generated", eileen, group_photo)
    refs = tmp_path / "refs"
    refs.mkdir()
    Image.fromarray(eileen).save(refs / "1.png")
    Image.fromarray(np.full((96, 96, 3), 90, np.uint8)).save(refs / "2.png")
    prompts = tmp_path / "prompts.csv"
    prompts.write_text('image,prompt\nb_group,"six people, smiling"\n', encoding="utf-8")
    argv = ["--images", str(images), "--ref", str(refs), "--detector", "mtcnn", "--prompts", str(prompts)]
    summary = evaluate([*argv, "--insightface-recognition", str(arcface_pack / "w600k_r50.onnx")])
    assert "evaluate:" not in capsys.readouterr().err
    assert summary["clip_score"] is None
    assert list(summary["identity_similarity"]) == ["definition", "insightface"]
    assert summary["reference"]["faces_used"] == 1 and summary["reference"]["photos"][0] == str(
        refs / "1.png"
    )
    assert len(summary["reference"]["skipped"]) == 1 and "no face found" in summary["reference"]["skipped"][0]
    assert summary["prompts"]["images_with_prompt"] == 2  # the CSV's one and a_face.png's PNG metadata
    with open(images / "evaluation.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == [
            c for c in COLUMNS if c not in ("identity_similarity_face_net", "clip_score")
        ]
        rows = list(reader)
    assert rows[1]["prompt"] == "six people, smiling" and rows[0]["prompt"] == "a photo of a woman astronaut"
    assert float(rows[0]["identity_similarity_insightface"]) == pytest.approx(1.0, abs=1e-5)
    assert (images / "evaluation.json").is_file()


def _one_error_line(main, argv: list[str], capsys) -> str:
    assert cli.run_cli(main, argv) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_bad_input_is_one_clear_line_before_any_model_loads(
    tmp_path: Path, arcface_pack: Path, capsys
) -> None:
    images = tmp_path / "generated"
    images.mkdir()
    not_clip = tmp_path / "not_clip"
    not_clip.mkdir()
    argv = [
        "--images",
        str(images),
        "--ref",
        str(tmp_path / "me.jpg"),
        "--face-net",
        str(tmp_path / "r100.pth"),
    ]
    line = _one_error_line(evaluate, [*argv, "--clip", str(not_clip)], capsys)
    assert f"--ref {tmp_path / 'me.jpg'}: no such file or folder" in line
    assert f"--face-net {tmp_path / 'r100.pth'}: no such file or folder" in line
    assert f"--clip {not_clip} holds no config.json: give a transformers CLIP folder" in line
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(images / "x.png")
    ref = ["--images", str(images), "--ref", str(EILEEN)]
    assert "no face-recognition model to score with" in _one_error_line(evaluate, ref, capsys)
    line = _one_error_line(
        evaluate, [*ref, "--insightface-recognition", str(arcface_pack), "--clip", str(tmp_path)], capsys
    )
    assert "holds no config.json" in line
    (tmp_path / "config.json").write_text("{}")
    line = _one_error_line(
        evaluate, [*ref, "--insightface-recognition", str(arcface_pack), "--clip", str(tmp_path)], capsys
    )
    assert "--clip needs the images' prompts, but none of the 1 images has one" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    line = _one_error_line(
        evaluate, ["--images", str(empty), "--ref", str(EILEEN), "--face-net", str(EILEEN)], capsys
    )
    assert f"--images {empty} holds no images" in line
    line = _one_error_line(
        evaluate, ["--images", str(images), "--ref", str(empty), "--face-net", str(EILEEN)], capsys
    )
    assert f"--ref {empty} holds no images" in line
    bad_prompts = tmp_path / "prompts.txt"
    bad_prompts.write_text("x.png: a prompt")
    line = _one_error_line(evaluate, [*ref, "--face-net", str(EILEEN), "--prompts", str(bad_prompts)], capsys)
    assert "give a .json or a .csv file" in line
