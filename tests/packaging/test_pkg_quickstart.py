"""The newcomer command's Python part runs end to end on stand-in weights and says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image


def test_quickstart_on_standin_weights(repo_root: Path, tmp_path: Path) -> None:
    env = {**os.environ, "UNIID_STANDIN_DIR": str(tmp_path / "standin")}
    for name in ("UNIID_BASE", "UNIID_WEIGHTS", "UNIID_FACE_NET"):
        env.pop(name, None)
    result = subprocess.run([sys.executable, str(repo_root / "scripts" / "quickstart.py"), "--out",
                             str(tmp_path / "out")], cwd=repo_root, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "RANDOM STAND-IN WEIGHTS" in result.stdout
    assert "scripts/assets/eileen_collins.jpg" in result.stdout
    images = sorted((tmp_path / "out" / "standin").glob("*.png"))
    assert len(images) == 1
    with Image.open(images[0]) as image:
        assert image.size == (64, 64)
        settings = json.loads(image.text["uniid"])
    assert (tmp_path / "standin" / "STANDIN_WEIGHTS.txt").is_file()
    assert settings["references"] == [str(repo_root / "scripts" / "assets" / "eileen_collins.jpg")]
    assert settings["detector"] == "mtcnn" and "det_size" not in settings, "real detection, not pre-aligned"
    (box,) = settings["face_boxes"]
    assert 40 < box[0] < box[2] < 200 and 20 < box[1] < box[3] < 220, f"the face, found in the photo: {box}"
    assert settings["face_select"] == "largest" and settings["combine"] == "mean_features"
    assert settings["celeb_names"] == "official" and len(settings["celeb_names_sha256"]) == 16
    assert settings["uniid"].endswith(".safetensors") and settings["face_net"]
    assert settings["seed"] == 42 and settings["noise_device"] == "cpu"


def test_quickstart_refuses_partial_model_paths(repo_root: Path, tmp_path: Path) -> None:
    script = repo_root / "scripts" / "quickstart.py"
    command = [sys.executable, str(script), "--base", str(tmp_path / "missing")]
    result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "--uniid None" in result.stdout and "--base" in result.stdout
