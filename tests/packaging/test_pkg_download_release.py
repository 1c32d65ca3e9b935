"""The UniID release download: discovery, checks, resume and offline advice, against an in-memory Hub."""

from __future__ import annotations

import errno
import hashlib
import io
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as safetensors_bytes

from tests.core.conftest import TINY_CONFIG, randomize
from uniid_core import download
from uniid_core.checkpoint import load_uniid
from uniid_core.hub_release import STAGING, HubUnavailable, HuggingFaceHub, RemoteFile
from uniid_core.models import FaceRecognitionNet, UniIDModel
from uniid_core.release import KIND_FACE_NET, scan_release

REPO = "pangly/UniID"


def _torch_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def release_files() -> dict[str, bytes]:
    """A release as the official training script writes it: accelerate checkpoints plus the face net."""
    return _release_files(seed=5)


def _release_files(seed: int) -> dict[str, bytes]:
    model = randomize(UniIDModel(TINY_CONFIG), seed=seed)
    state = model.state_dict()
    text = {f"module.{k}": v for k, v in state.items() if k.startswith("text_branch.")}
    adapter = {k: v.contiguous() for k, v in state.items() if k.startswith("adapter_branch.")}
    return {
        ".gitattributes": b"*.bin filter=lfs\\n",
        "README.md": b"# UniID weights\\n",
        "text_branch/checkpoint-12/pytorch_model.bin": _torch_bytes(text),
        "text_branch/checkpoint-12/config.json": b'{"num_text_branch_tokens": 2}',
        "text_branch/checkpoint-12/optimizer.bin": _torch_bytes({"state": torch.zeros(3)}),
        "text_branch/checkpoint-12/random_states_0.pkl": b"\\x80\\x04not for us",
        "adapter_branch/checkpoint-16/pytorch_model.bin": _torch_bytes(adapter),
        "adapter_branch/checkpoint-16/model.safetensors": safetensors_bytes(adapter),
        "adapter_branch/checkpoint-16/config.json": b'{"num_adapter_tokens": 4}',
        "face_recognition_model/backbone.pth": _torch_bytes(FaceRecognitionNet((1, 1, 1, 1)).state_dict()),
    }


class FakeHub:
    """The Hub in memory: lists files with sizes and LFS checksums, serves them, can fail on demand."""

    def __init__(
        self,
        files: dict[str, bytes],
        unreachable: Exception | None = None,
        interrupt: set[str] | None = None,
        tamper: set[str] | None = None,
    ) -> None:
        self.files = files
        self.unreachable = unreachable
        self.interrupt = set(interrupt or ())
        self.tamper = set(tamper or ())
        self.listed: list[tuple[str, str]] = []
        self.downloads: list[str] = []
        self.resumed: dict[str, int] = {}

    def list_files(self, repo_id: str, revision: str) -> list[RemoteFile]:
        self.listed.append((repo_id, revision))
        if self.unreachable is not None:
            raise self.unreachable
        lfs = (".bin", ".pth", ".safetensors", ".pkl")
        return [
            RemoteFile(path, len(data), hashlib.sha256(data).hexdigest() if path.endswith(lfs) else None)
            for path, data in self.files.items()
        ]

    def download(self, repo_id: str, path: str, revision: str, folder: Path) -> Path:
        assert repo_id == REPO and folder.name == STAGING
        self.downloads.append(path)
        data = self.files[path]
        partial = folder / ".cache" / (path + ".incomplete")
        if path in self.interrupt:
            self.interrupt.discard(path)
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_bytes(data[: len(data) // 2])
            raise OSError("connection reset by peer")
        if partial.is_file():
            self.resumed[path] = partial.stat().st_size
            partial.unlink()
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data[::-1] if path in self.tamper else data)
        return target


def _run(hub: FakeHub, *args: str) -> int:
    return download.main([*args], hub=hub)


def _comfy(tmp_path: Path) -> Path:
    (tmp_path / "ComfyUI" / "models").mkdir(parents=True)
    return tmp_path / "ComfyUI"


def test_release_lands_in_models_uniid_and_loads(tmp_path: Path, release_files, capsys) -> None:
    comfy = _comfy(tmp_path)
    hub = FakeHub(release_files)
    assert _run(hub, "--comfyui", str(comfy), "--only", "uniid", "face_net") == 0
    dest = comfy / "models" / "uniid" / "UniID"
    fetched = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert fetched == [
        "README.md",
        "adapter_branch/checkpoint-16/config.json",
        "adapter_branch/checkpoint-16/model.safetensors",
        "face_recognition_model/backbone.pth",
        "text_branch/checkpoint-12/config.json",
        "text_branch/checkpoint-12/pytorch_model.bin",
    ], "training state, repo metadata and the .bin copy beside model.safetensors are not fetched"
    assert hub.listed == [(REPO, "main")]
    assert sorted(hub.downloads) == fetched
    for path in fetched:
        assert (dest / path).read_bytes() == release_files[path]
    model = load_uniid(dest)
    assert model.text_branch is not None and model.adapter_branch is not None
    assert scan_release(dest).of(KIND_FACE_NET) == [dest / "face_recognition_model" / "backbone.pth"]
    out = capsys.readouterr().out
    assert f"face_net: provided by the release, at {dest / 'face_recognition_model'}" in out
    assert "found adapter branch: adapter_branch/checkpoint-16/model.safetensors" in out
    assert _run(hub, "--comfyui", str(comfy), "--only", "uniid") == 0
    assert len(hub.downloads) == len(fetched), "files in place are not downloaded again"


def test_dry_run_prints_what_goes_where_and_writes_nothing(tmp_path: Path, release_files, capsys) -> None:
    hub = FakeHub(release_files)
    dest = tmp_path / "release"
    assert _run(hub, "--dest", str(dest), "--dry-run") == 0
    out = capsys.readouterr().out
    assert hub.downloads == [] and not dest.exists()
    assert f"-> {dest / 'text_branch' / 'checkpoint-12' / 'pytorch_model.bin'}" in out
    assert "(branch checkpoint)" in out and "(weights (face net?))" in out
    assert "skipped    text_branch/checkpoint-12/optimizer.bin  (training state" in out


def test_interrupted_download_resumes_and_keeps_finished_files(tmp_path: Path, release_files, capsys) -> None:
    dest = tmp_path / "release"
    adapter = "adapter_branch/checkpoint-16/model.safetensors"
    hub = FakeHub(release_files, interrupt={adapter})
    assert _run(hub, "--dest", str(dest)) == 1
    assert "run the same command again to resume" in capsys.readouterr().err
    assert not (dest / adapter).exists(), "an unfinished file never appears at its final place"
    assert (dest / STAGING).is_dir(), "the partial download is kept for the next run"
    before = list(hub.downloads)
    assert _run(hub, "--dest", str(dest)) == 0
    assert hub.resumed == {adapter: len(release_files[adapter]) // 2}
    again = hub.downloads[len(before) :]
    assert adapter in again and not set(again) & {p for p in before if p != adapter}
    assert not (dest / STAGING).exists()
    assert load_uniid(dest).adapter_branch is not None


def test_corrupt_download_is_never_moved_into_place(tmp_path: Path, release_files, capsys) -> None:
    dest = tmp_path / "release"
    text = "text_branch/checkpoint-12/pytorch_model.bin"
    assert _run(FakeHub(release_files, tamper={text}), "--dest", str(dest)) == 1
    assert "sha256 mismatch" in capsys.readouterr().err
    assert not (dest / text).exists()
    broken = dict(release_files)
    broken[text] = b"<html>rate limited</html>"
    assert _run(FakeHub(broken), "--dest", str(dest)) == 1
    err = capsys.readouterr().err
    assert f"the text branch is not in {dest}: {text} (intact" in err, "no half release is 'OK'"
    assert "not weights-only readable" in err
    assert not (dest / text).exists()
    unlisted = FakeHub(broken)
    unlisted.list_files = lambda repo, revision: [  # no sha256 listed: the bytes may be a server's error page
        RemoteFile(path, len(data)) for path, data in broken.items()
    ]
    assert _run(unlisted, "--dest", str(dest)) == 1
    assert f"{text}: the download is not readable weights" in capsys.readouterr().err
    assert not (dest / text).exists()


def test_offline_says_in_one_line_where_to_put_the_files(tmp_path: Path, release_files, capsys, monkeypatch):
    dest = tmp_path / "release"
    unreachable = FakeHub(release_files, unreachable=HubUnavailable("ConnectError: name resolution failed"))
    assert _run(unreachable, "--dest", str(dest)) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "huggingface.co/pangly/UniID" in lines[0] and str(dest) in lines[0]
    assert "name resolution failed" in lines[0]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = FakeHub(release_files)
    assert _run(hub, "--dest", str(dest)) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "HF_HUB_OFFLINE" in lines[0] and str(dest) in lines[0]
    assert hub.listed == [], "offline mode must not touch the Hub"
    assert not dest.exists()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert _run(FakeHub(release_files), "--dest", str(dest)) == 0
    assert _run(unreachable, "--dest", str(dest)) == 0, "a release already in place stays usable offline"
    assert "in place at" in capsys.readouterr().out


def test_files_in_place_are_compared_by_sha256(tmp_path: Path, release_files, capsys) -> None:
    """Retrained weights keep their byte count: a new revision must still replace them."""
    retrained = _release_files(seed=6)
    assert {k: len(v) for k, v in retrained.items()} == {k: len(v) for k, v in release_files.items()}
    dest = tmp_path / "release"
    assert _run(FakeHub(release_files), "--dest", str(dest)) == 0
    hub = FakeHub(retrained)
    assert _run(hub, "--dest", str(dest), "--revision", "v2") == 0
    text = "text_branch/checkpoint-12/pytorch_model.bin"
    assert f"fetching   {text} (the file in place differs from the Hub's)" in capsys.readouterr().out
    assert (dest / text).read_bytes() == retrained[text]
    assert load_uniid(dest).fingerprint == randomize(UniIDModel(TINY_CONFIG), seed=6).refresh_fingerprint()
    before = len(hub.downloads)
    assert _run(hub, "--dest", str(dest), "--revision", "v2") == 0
    assert len(hub.downloads) == before, "files whose sha256 matches are not downloaded again"


def test_training_state_and_published_non_weights_are_left_out(tmp_path: Path, release_files, capsys) -> None:
    """accelerate's sampler.bin / dl_state_dict.bin are never fetched; a published .bin holding Python
    objects is fetched, found intact, and left out with a note instead of failing every run."""
    sampler = _torch_bytes(torch.utils.data.RandomSampler(range(4)))  # pickled object, as accelerate saves it
    files = {
        **release_files,
        "text_branch/checkpoint-12/sampler.bin": sampler,
        "text_branch/checkpoint-12/dl_state_dict.bin": sampler,
        "extras/sampler_state.bin": sampler,
    }
    hub = FakeHub(files)
    dest = tmp_path / "release"
    assert _run(hub, "--dest", str(dest)) == 0
    out = capsys.readouterr().out
    assert not any(name.endswith(("/sampler.bin", "/dl_state_dict.bin")) for name in hub.downloads)
    assert "skipped    text_branch/checkpoint-12/sampler.bin" not in out
    assert "extras/sampler_state.bin" in hub.downloads
    assert "skipped    extras/sampler_state.bin  (extras/sampler_state.bin: not weights-only readable" in out
    assert not (dest / "extras").exists() and not (dest / STAGING).exists()
    assert _run(hub, "--dest", str(dest), "--dry-run") == 0
    assert "skipped    text_branch/checkpoint-12/sampler.bin  (training state" in capsys.readouterr().out


class _HubWithFailingDownloads(HuggingFaceHub):
    """The real Hub client with its listing served from memory (hf_hub_download is replaced per case)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.listing = FakeHub(files)

    def list_files(self, repo_id: str, revision: str) -> list[RemoteFile]:
        return self.listing.list_files(repo_id, revision)


@pytest.mark.parametrize(
    "case, expected, resumable",
    [
        ("read-only", "cannot write {staging} (Permission denied); choose a folder you can write", 0),
        ("disk full", "cannot write {staging} (No space left on device); free some disk space", 0),
        ("not at revision", "is not in pangly/UniID at revision v9 (the Hub answered: not found); check", 0),
        ("connection lost", "download interrupted (LocalEntryNotFoundError: cannot reach the Hub)", 1),
        ("reset", "download interrupted (ConnectionResetError: [Errno 104] Connection reset by peer)", 1),
    ],
)
def test_only_connection_trouble_is_called_an_interruption(
    tmp_path: Path, release_files, capsys, monkeypatch, case: str, expected: str, resumable: int
) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub", reason="the real Hub client maps the errors")
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    dest = tmp_path / "release"
    staging = str(dest / STAGING)
    raised = {
        "read-only": PermissionError(errno.EACCES, "Permission denied", staging),
        "disk full": OSError(errno.ENOSPC, "No space left on device", staging),
        "not at revision": EntryNotFoundError("404 Client Error. Entry Not Found for url"),
        "connection lost": LocalEntryNotFoundError("cannot reach the Hub"),
        "reset": ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
    }[case]

    def failing_download(*args, **kwargs):
        raise raised

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", failing_download)
    hub = _HubWithFailingDownloads(release_files)
    assert download.main(["--dest", str(dest), "--revision", "v9"], hub=hub) == 1
    err = capsys.readouterr().err
    assert expected.format(staging=staging) in err
    assert ("run the same command again to resume" in err) == bool(resumable)


def test_face_net_is_found_in_a_release_under_another_name(tmp_path: Path, release_files, capsys) -> None:
    comfy = _comfy(tmp_path)
    dest = comfy / "models" / "uniid" / "UniID-v1"
    hub = FakeHub(release_files)
    assert _run(hub, "--comfyui", str(comfy), "--dest", str(dest), "--only", "uniid", "face_net") == 0
    face = dest / "face_recognition_model" / "backbone.pth"
    assert f"face_net: provided by the release, at {face}" in capsys.readouterr().out
