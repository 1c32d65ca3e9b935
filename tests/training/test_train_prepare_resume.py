"""training.prepare: the default (insightface) path runs, interruptions lose seconds, resume is exact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.training.conftest import samples_by_image, write_noise_images
from training.data import SHARD_DIR
from training.prepare import main as prepare_main
from training.prepare import parse_args
from training.shards import PIECE_DIR, done_images, read_records, write_index
from uniid_core.errors import FaceDetectionError
from uniid_core.face.prealigned import PreAlignedDetector

REPO = Path(__file__).resolve().parents[2]
SLOW_DRIVER = '''
import os, signal, sys, time
import training.prepare as prepare
from uniid_core.face.prealigned import PreAlignedDetector


class SlowDetector(PreAlignedDetector):
    """Pre-aligned detection that takes SLOW_DETECT_S seconds and logs each call (a line per image).

    The HOLD_AT-th call of each process waits until the file RELEASE exists (the test's checkpoint).
    """

    calls = 0

    def detect(self, image):
        SlowDetector.calls += 1
        if SlowDetector.calls == int(os.environ["HOLD_AT"]):
            while not os.path.exists(os.environ["RELEASE"]):
                time.sleep(0.02)
        time.sleep(float(os.environ["SLOW_DETECT_S"]))
        with open(os.environ["DETECT_LOG"], "a") as log:
            log.write("x\\n")
        return super().detect(image)


prepare.make_detector = lambda backend, **options: SlowDetector()  # module level: spawned workers get it too

if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even when in background
    prepare.main(sys.argv[1:])
'''


def red_square_photos(folder: Path) -> Path:
    """Two 'faces' the stand-in SCRFD finds (red squares) and one photo without (a blue square)."""
    folder.mkdir()
    for name, color in (("face_a.png", (255, 0, 0)), ("face_b.png", (255, 0, 0)), ("none.png", (0, 0, 255))):
        image = np.zeros((320, 320, 3), np.uint8)
        image[48:144, 160:256] = color
        Image.fromarray(image).save(folder / name)
    return folder


def test_default_detector_is_insightface_at_the_official_det_size(
    tmp_path: Path, standin_insightface_root: Path
) -> None:
    photos = red_square_photos(tmp_path / "photos")
    command = ["--images", str(photos), "--out", str(tmp_path / "ds"), "--detector-root"]
    args = parse_args([*command, str(standin_insightface_root)])
    assert (args.detector, args.det_size, args.detector_provider, args.detector_name) == (
        "insightface",
        320,
        "CPU",
        "buffalo_l",
    )
    report = prepare_main([*command, str(standin_insightface_root), "--detector-provider", "cpu"])
    assert report["num_samples"] == 2 and report["class_words"] == {"man": 2}
    assert [(Path(f["image"]).name, f["reason"]) for f in report["failures"]] == [
        ("none.png", "no face detected")
    ]
    faces = samples_by_image(tmp_path / "ds")
    assert len(faces) == 2 and all(len(crop) == 112 * 112 * 3 for _, crop in faces.values())


def test_detector_provider_option_reaches_onnxruntime(tmp_path: Path, standin_insightface_root: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the refusal of a missing provider cannot be shown here")
    photos = red_square_photos(tmp_path / "photos")
    command = ["--images", str(photos), "--out", str(tmp_path / "ds")]
    with pytest.raises(FaceDetectionError, match="CUDAExecutionProvider.*not available"):
        prepare_main(
            [*command, "--detector-root", str(standin_insightface_root), "--detector-provider", "CUDA"]
        )


def test_ctrl_c_saves_every_finished_image_and_the_rerun_continues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = write_noise_images(tmp_path / "photos", 7)
    command = ["--images", str(tmp_path / "photos"), "--detector", "pre-aligned", "--shard-size", "3"]
    reference = prepare_main([*command, "--out", str(tmp_path / "reference")])
    calls = []

    class InterruptedDetector(PreAlignedDetector):
        def detect(self, image: np.ndarray) -> list:
            calls.append(1)
            if len(calls) == 5:
                raise KeyboardInterrupt
            return super().detect(image)

    monkeypatch.setattr("training.prepare.make_detector", lambda backend, **options: InterruptedDetector())
    out = tmp_path / "ds"
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        prepare_main([*command, "--out", str(out)])
    assert stopped.value.code == 130
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers, (
        "handlers restored"
    )
    assert done_images(out) == {str(p.resolve()) for p in photos[:4]}, "the 4 finished images are saved"
    shards, pieces = read_records(out)
    assert [len(r.data["entries"]) for r in shards] == [3] and [len(r.data["entries"]) for r in pieces] == [1]
    assert write_index(out, "pre-aligned")["num_samples"] == 4
    assert len(samples_by_image(out)) == 4, "a dataset index can list pieces as well as shards"
    calls.clear()
    again = prepare_main([*command, "--out", str(out)])
    assert len(calls) == 3 == again["this_run"]["images"], "the rerun detects only the 3 images not yet done"
    assert again["num_samples"] == reference["num_samples"] == 7
    assert samples_by_image(out) == samples_by_image(tmp_path / "reference")
    assert not list((out / SHARD_DIR / PIECE_DIR).iterdir()), "pieces are sealed into shards"


def run_driver(tmp_path: Path, args: list[str], delay: float, hold_at: int = 0) -> subprocess.Popen:
    """Start training.prepare with a slow, logging pre-aligned detector in its own process group.

    With `hold_at`, each process's detector waits at that image until release(tmp_path) is called.
    """
    driver = tmp_path / "slow_prepare.py"
    driver.write_text(SLOW_DRIVER, encoding="utf-8")
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        OMP_NUM_THREADS="1",
        SLOW_DETECT_S=str(delay),
        DETECT_LOG=str(tmp_path / "detect.log"),
        HOLD_AT=str(hold_at),
        RELEASE=str(tmp_path / "release"),
    )
    return subprocess.Popen(
        [sys.executable, str(driver), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for_pieces(out: Path, prefixes: dict[str, int], process: subprocess.Popen) -> None:
    """Block until each shard prefix has saved the given number of pieces (the run saves as it goes)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        names = [p.name for p in (out / SHARD_DIR / PIECE_DIR).glob("*.json")]
        if all(sum(n.startswith(k) for n in names) >= v for k, v in prefixes.items()):
            return
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    raise AssertionError(f"pieces {prefixes} did not appear; stderr: {process.communicate()[1][-2000:]}")


def release(tmp_path: Path) -> None:
    """Let held detectors go on."""
    (tmp_path / "release").touch()


def detections(tmp_path: Path) -> int:
    """How many images the slow detector has looked at so far."""
    log = tmp_path / "detect.log"
    return len(log.read_text().splitlines()) if log.is_file() else 0


def test_sigkill_loses_at_most_the_last_save_interval(tmp_path: Path) -> None:
    write_noise_images(tmp_path / "photos", 24)
    common = ["--images", str(tmp_path / "photos"), "--detector", "pre-aligned", "--shard-size", "10"]
    prepare_main([*common, "--out", str(tmp_path / "reference")])
    out = tmp_path / "ds"
    args = [*common, "--out", str(out), "--save-every", "0.3"]
    process = run_driver(tmp_path, args, delay=0.1, hold_at=15)
    wait_for_pieces(out, {"shard_00001-": 1}, process)
    deadline = time.monotonic() + 60
    while detections(tmp_path) < 14 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    seen, saved = detections(tmp_path), len(done_images(out))
    assert seen == 14 and 10 <= saved <= 14, "held at image 15: a shard of 10 and pieces after it"
    assert seen - saved <= 3, "a kill loses at most the images of one save interval (0.3 s / 0.1 s each)"
    rerun = run_driver(tmp_path, args, delay=0.0)
    _, stderr = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, stderr[-3000:]
    assert detections(tmp_path) - seen == 24 - saved, "the rerun detects exactly the images not saved"
    assert samples_by_image(out) == samples_by_image(tmp_path / "reference")


def test_workers_stop_on_ctrl_c_and_resume_with_another_worker_count(tmp_path: Path) -> None:
    write_noise_images(tmp_path / "photos", 16)
    common = ["--images", str(tmp_path / "photos"), "--detector", "pre-aligned", "--shard-size", "4"]
    prepare_main([*common, "--out", str(tmp_path / "reference")])
    out = tmp_path / "ds"
    args = [*common, "--out", str(out), "--workers", "2", "--save-every", "0.3"]
    process = run_driver(tmp_path, args, delay=0.2, hold_at=3)
    wait_for_pieces(out, {"shard_w00_": 1, "shard_w01_": 1}, process)
    os.killpg(process.pid, signal.SIGINT)
    time.sleep(0.5)
    release(tmp_path)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "run the same command again" in stderr
    seen, saved = detections(tmp_path), len(done_images(out))
    assert seen == saved == 6, "each worker finishes the image it is on, saves everything and stops"
    names = {p.name for p in (out / SHARD_DIR).rglob("*.json")}
    assert any(n.startswith("shard_w00_") for n in names) and any(n.startswith("shard_w01_") for n in names)
    report = prepare_main([*common, "--out", str(out), "--workers", "1"])
    assert report["num_samples"] == 16
    assert samples_by_image(out) == samples_by_image(tmp_path / "reference")
    assert not list((out / SHARD_DIR / PIECE_DIR).iterdir())
