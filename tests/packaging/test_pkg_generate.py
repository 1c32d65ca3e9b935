"""`python -m uniid_core.generate` on stand-in weights: the names list option and the settings in the PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from uniid_core.anchor import load_names, names_digest
from uniid_core.errors import UniIDError
from uniid_core.generate import main as generate


@pytest.fixture(scope="module")
def standin(scripts_on_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from standin_weights import build

    return build(tmp_path_factory.mktemp("standin"))


def _args(standin: dict[str, Path], repo_root: Path, out: Path, *extra: str) -> list[str]:
    photo = repo_root / "scripts" / "assets" / "eileen_collins.jpg"
    models = ["--base", str(standin["base"]), "--uniid", str(standin["uniid"])]
    models += ["--face-net", str(standin["face_net"])]
    return [
        *models,
        "--ref",
        str(photo),
        "--detector",
        "mtcnn",
        "--prompt",
        "a photo of a <class word>",
        "--steps",
        "2",
        "--width",
        "64",
        "--height",
        "64",
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        "--out",
        str(out),
        *extra,
    ]


def _run(args: list[str]) -> tuple[dict, bytes]:
    (path,) = generate(args)
    with Image.open(path) as image:
        return json.loads(image.text["uniid"]), image.tobytes()


def test_celeb_names_file_is_used_and_recorded(standin, repo_root: Path, tmp_path: Path) -> None:
    names = tmp_path / "names.txt"
    names.write_text("# my list\nAda Lovelace King\nAlan Mathison Turing\n", encoding="utf-8")
    official, official_pixels = _run(_args(standin, repo_root, tmp_path / "a"))
    mine, mine_pixels = _run(_args(standin, repo_root, tmp_path / "b", "--celeb-names", str(names)))
    # One photo with one face: the most confident face is the largest and both combine modes are the
    # official single-photo path, so these settings are recorded but give the very same picture.
    other, other_pixels = _run(
        _args(standin, repo_root, tmp_path / "c", "--select", "score", "--combine", "mean_tokens")
    )
    assert official["celeb_names"] == "official"
    assert official["celeb_names_sha256"] == names_digest(load_names())
    assert mine["celeb_names"] == str(names)
    assert mine["celeb_names_sha256"] == names_digest(["Ada Lovelace King", "Alan Mathison Turing"])
    assert mine_pixels != official_pixels, "the names list sets the text-token anchor"
    assert other["face_select"] == "score" and other["combine"] == "mean_tokens"
    assert official["face_select"] == "largest" and official["combine"] == "mean_features"
    assert other_pixels == official_pixels
    for record in (official, mine, other):
        assert record["seed"] == 42 and record["detector"] == "mtcnn" and len(record["face_boxes"]) == 1
        assert record["uniid"] == str(standin["uniid"]) and record["face_net"] == str(standin["face_net"])
    with pytest.raises(UniIDError, match="names file not found"):
        generate(_args(standin, repo_root, tmp_path / "d", "--celeb-names", str(tmp_path / "none.txt")))
