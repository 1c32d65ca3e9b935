"""training.prepare on real photos: faces aligned once, failures reported, re-runs resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.training.conftest import prepare_command, samples_by_image, write_noise_images
from training.data import FaceDataset, ResumableBatchSampler
from training.prepare import main as prepare_main


def test_prepare_reports_failures_and_writes_shards(prepared: tuple[Path, dict]) -> None:
    out, report = prepared
    failed = {Path(f["image"]).name: f["reason"] for f in report["failures"]}
    assert "no face" in failed["no_face.png"]
    assert failed["broken.jpg"].startswith("unreadable")
    assert report["num_samples"] >= 4
    assert (out / "failures.tsv").read_text().count("\n") == len(failed) + 1
    index = json.loads((out / "index.json").read_text())
    assert index["latent_resolution"] == 64
    assert len(index["shards"]) >= 2
    with safe_open(str(out / "shards" / index["shards"][0]["file"]), framework="pt") as handle:
        faces = handle.get_tensor("faces")
        assert faces.dtype == torch.uint8 and faces.shape[1:] == (112, 112, 3)
        assert handle.get_tensor("latent_mean").shape[1:] == (4, 8, 8)
    for shard in index["shards"]:
        for entry in shard["entries"]:
            assert entry["class_word"] in ("man", "woman", "person")
            assert len(entry["original_size"]) == 2


def test_prepare_rerun_resumes(prepared: tuple[Path, dict], photo_dir: Path, tiny_base: Path) -> None:
    out, report = prepared
    shards_before = sorted(p.name for p in (out / "shards").iterdir())
    again = prepare_main(prepare_command(photo_dir, out, tiny_base))
    assert sorted(p.name for p in (out / "shards").iterdir()) == shards_before
    assert again["num_samples"] == report["num_samples"]
    assert again["num_failed"] == report["num_failed"]


def test_dataset_reads_cached_latents_and_pixels(prepared: tuple[Path, dict]) -> None:
    out, report = prepared
    cached = FaceDataset(out, resolution=64)
    assert cached.use_latents and len(cached) == report["num_samples"]
    item = cached[0]
    assert item["face"].shape == (112, 112, 3) and item["latent_mean"].shape == (4, 8, 8)
    pixels = FaceDataset(out, resolution=64, use_cached_latents=False)[0]
    assert pixels["pixels"].shape == (64, 64, 3) and pixels["pixels"].dtype == torch.uint8
    assert torch.equal(pixels["original_size"], item["original_size"])


def test_sampler_splits_ranks_and_resumes_mid_epoch() -> None:
    ranks = [ResumableBatchSampler(10, 2, seed=3, rank=r, world_size=2) for r in range(2)]
    for sampler in ranks:
        sampler.set_epoch(1)
    batches = [list(s) for s in ranks]
    assert len(batches[0]) == len(batches[1]) == 2
    seen = [i for b in batches for batch in b for i in batch]
    assert len(seen) == len(set(seen)) == 8
    ranks[0].set_epoch(1, start_batch=1)
    assert list(ranks[0]) == batches[0][1:]


def test_prepare_in_parts_then_index(tmp_path: Path, photo_dir: Path) -> None:
    out = tmp_path / "parts"
    common = ["--images", str(photo_dir), "--out", str(out), "--detector", "pre-aligned", "--shard-size", "2"]
    first = prepare_main([*common, "--part", "0/2"])
    prepare_main([*common, "--part", "1/2"])
    merged = prepare_main(common)
    names = sorted(p.name for p in (out / "shards").glob("*.json"))
    assert any(n.startswith("shard_p000_") for n in names) and any(n.startswith("shard_p001_") for n in names)
    assert not any(n.startswith("shard_0") for n in names)
    total = len(list(photo_dir.iterdir()))
    assert merged["num_samples"] + merged["num_failed"] == total > first["num_samples"] + first["num_failed"]
    assert [Path(f["image"]).name for f in merged["failures"]] == ["broken.jpg"]
    assert len(FaceDataset(out, use_cached_latents=False)) == merged["num_samples"]


def test_no_face_fallback_uses_the_whole_image_in_rgb(tmp_path: Path, photo_dir: Path) -> None:
    out = tmp_path / "fallback"
    args = ["--images", str(photo_dir / "no_face.png"), "--out", str(out), "--detector", "mtcnn"]
    report = prepare_main([*args, "--no-face", "whole-image"])
    assert report["num_samples"] == 1 and report["num_failed"] == 0
    dataset = FaceDataset(out, use_cached_latents=False)
    assert dataset.samples[0].class_word == "person"
    face = dataset.face(0)
    assert face.shape == (112, 112, 3) and face[..., 0].float().mean() > 0


def test_an_image_named_twice_is_prepared_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    photos = write_noise_images(tmp_path / "photos", 3)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    words = tmp_path / "words.txt"
    words.write_text(f"{photos[1]}\twoman\n{tmp_path / 'broken.jpg'}\n{tmp_path / 'broken.jpg'}\n")
    images = [str(words), str(tmp_path / "photos"), str(photos[0])]
    report = prepare_main(["--images", *images, "--out", str(tmp_path / "ds"), "--detector", "pre-aligned"])
    assert "names 3 image(s) more than once: each is prepared once" in capsys.readouterr().err
    assert (report["num_samples"], report["num_failed"]) == (3, 1)
    found = samples_by_image(tmp_path / "ds")
    assert sorted(found) == [str(p.resolve()) for p in photos]
    assert found[str(photos[1].resolve())][0] == "woman", "the first mention's class word"
