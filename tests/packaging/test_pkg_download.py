"""The model download helper: folder layout, atomic writes and verification, with the network mocked.

The UniID release is served by an in-memory Hub object handed to the helper; nothing reaches the network.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import os
import threading
import zipfile
from pathlib import Path

import pytest
import torch

from uniid_core import download
from uniid_core.errors import CheckpointError

BUFFALO = next(e for e in download.MANIFEST if e.name == "buffalo_l")
FACE_NET = next(e for e in download.MANIFEST if e.name == "face_net")


def _comfy(tmp_path: Path) -> Path:
    root = tmp_path / "ComfyUI"
    (root / "models").mkdir(parents=True)
    return root


def _zip_bytes(tmp_path: Path, members: tuple[str, ...], prefix: str = "") -> bytes:
    path = tmp_path / "pack.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name in members:
            archive.writestr(prefix + name, b"onnx-bytes-" + name.encode())
    return path.read_bytes()


def _serving(payloads: dict[str, bytes | Exception]) -> tuple[list[str], download.Fetcher]:
    calls: list[str] = []

    def fake_fetch(url: str, dest: Path) -> None:
        calls.append(url)
        payload = payloads[url]
        if isinstance(payload, Exception):
            raise payload
        assert dest.name.endswith(".part"), "downloads must land in a .part file first"
        dest.write_bytes(payload)

    return calls, fake_fetch


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".part") or p.name.startswith("."))


def test_layout_matches_comfyui_folders() -> None:
    places = {e.name: f"{e.folder}/{e.target}" for e in download.MANIFEST}
    assert places["uniid"] == "uniid/UniID"
    assert places["face_net"] == "uniid/glint360k_r100.pth"
    assert places["buffalo_l"] == "insightface/models/buffalo_l"
    assert places["antelopev2"] == "insightface/models/antelopev2"
    assert places["sdxl_base"] == "checkpoints/sd_xl_base_1.0.safetensors"
    text = download.describe_layout()
    for entry in download.MANIFEST:
        assert f"ComfyUI/models/{entry.folder}/{entry.target}" in text
    assert "huggingface.co/pangly/UniID" in text


def test_zip_pack_is_flattened_and_moved_atomically(tmp_path: Path) -> None:
    comfy = _comfy(tmp_path)
    payload = _zip_bytes(tmp_path, BUFFALO.members, prefix="buffalo_l/")
    calls, fetch = _serving({BUFFALO.urls[0]: payload})
    assert download.run(comfy, only=["buffalo_l"], fetch=fetch) == 0
    dest = comfy / "models" / "insightface" / "models" / "buffalo_l"
    assert sorted(p.name for p in dest.iterdir()) == sorted(BUFFALO.members)
    assert _leftovers(comfy / "models") == []
    assert calls == [BUFFALO.urls[0]]
    assert download.run(comfy, only=["buffalo_l"], fetch=fetch) == 0
    assert calls == [BUFFALO.urls[0]], "an installed pack must not be downloaded again"


def test_second_source_used_when_first_fails(tmp_path: Path) -> None:
    comfy = _comfy(tmp_path)
    payload = _zip_bytes(tmp_path, BUFFALO.members)
    calls, fetch = _serving({BUFFALO.urls[0]: OSError("HTTP 404"), BUFFALO.urls[1]: payload})
    path = download.install_model_file(BUFFALO, comfy / "models", BUFFALO.urls, fetch)
    assert calls == list(BUFFALO.urls)
    assert (path / "det_10g.onnx").is_file()


@pytest.mark.parametrize(
    "payload_kind, message",
    [("not_zip", "not a valid archive"), ("missing_member", "lacks det_10g.onnx"), ("empty", "empty")],
)
def test_broken_pack_leaves_nothing_behind(tmp_path: Path, payload_kind: str, message: str) -> None:
    comfy = _comfy(tmp_path)
    payloads = {
        "not_zip": b"<html>rate limited</html>",
        "missing_member": _zip_bytes(tmp_path, tuple(m for m in BUFFALO.members if m != "det_10g.onnx")),
        "empty": b"",
    }
    _, fetch = _serving({url: payloads[payload_kind] for url in BUFFALO.urls})
    with pytest.raises(CheckpointError, match=message) as info:
        download.install_model_file(BUFFALO, comfy / "models", BUFFALO.urls, fetch)
    assert "insightface/models/buffalo_l" in str(info.value).replace("\\", "/")
    assert not (comfy / "models" / "insightface" / "models" / "buffalo_l").exists()
    assert _leftovers(comfy / "models") == []


def test_checksum_and_size_are_enforced(tmp_path: Path) -> None:
    comfy = _comfy(tmp_path)
    state = tmp_path / "backbone.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, state)
    data = state.read_bytes()
    url = "https://example.invalid/backbone.pth"
    _, fetch = _serving({url: data})
    wrong_sha = dataclasses.replace(FACE_NET, sha256="0" * 64)
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        download.install_model_file(wrong_sha, comfy / "models", [url], fetch)
    wrong_size = dataclasses.replace(FACE_NET, size=len(data) + 1)
    with pytest.raises(CheckpointError, match="expected"):
        download.install_model_file(wrong_size, comfy / "models", [url], fetch)
    assert not FACE_NET.destination(comfy / "models").exists()
    right = dataclasses.replace(FACE_NET, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    assert download.install_model_file(right, comfy / "models", [url], fetch).read_bytes() == data
    assert _leftovers(comfy / "models") == []


def test_pickle_that_is_not_a_state_dict_is_refused(tmp_path: Path) -> None:
    comfy = _comfy(tmp_path)
    url = "https://example.invalid/backbone.pth"
    _, fetch = _serving({url: b"definitely not a torch file"})
    with pytest.raises(CheckpointError, match="not a loadable state dict"):
        download.install_model_file(FACE_NET, comfy / "models", [url], fetch)


def test_manual_entries_say_where_files_go(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    comfy = _comfy(tmp_path)
    calls, fetch = _serving({})
    assert download.run(comfy, only=["face_net"], fetch=fetch) == 1
    out = capsys.readouterr().out
    assert calls == []
    assert "ComfyUI/models/uniid/glint360k_r100.pth" in out and "The UniID release provides it" in out
    assert "--url face_net=URL" in out


def test_cli_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="does not exist"):
        download.main(["--comfyui", str(tmp_path / "nowhere")])
    comfy = str(_comfy(tmp_path))
    with pytest.raises(SystemExit, match="NAME=URL"):
        download.main(["--comfyui", comfy, "--url", "nonsense"])
    with pytest.raises(SystemExit, match="NAME=URL"):
        download.main(["--comfyui", comfy, "--url", "uniid=https://example.invalid/x"])
    assert download.main(["--list"]) == 0


def test_url_override_takes_urls_and_local_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    comfy = _comfy(tmp_path)
    for bad in ("/no/such/backbone.pth", "ftp://example.invalid/backbone.pth"):
        with pytest.raises(SystemExit, match="neither an http://, https://, file:// URL nor an existing"):
            download.main(["--comfyui", str(comfy), "--only", "face_net", "--url", f"face_net={bad}"])
    local = tmp_path / "downloads" / "backbone.pth"
    local.parent.mkdir()
    torch.save({"fc.weight": torch.ones(2, 2)}, local)
    assert download.main(["--comfyui", str(comfy), "--only", "face_net", "--url", f"face_net={local}"]) == 0
    assert f"downloading {local.resolve().as_uri()}" in capsys.readouterr().out
    assert FACE_NET.destination(comfy / "models").read_bytes() == local.read_bytes()
    assert _leftovers(comfy / "models") == []


class _ShortReply(http.server.BaseHTTPRequestHandler):
    """Announces 1000 bytes, sends 400, closes: a connection dropped half-way."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"x" * 400)

    def log_message(self, *args: object) -> None:
        return None


def test_a_download_shorter_than_announced_is_refused(tmp_path: Path) -> None:
    comfy = _comfy(tmp_path)
    server = http.server.HTTPServer(("127.0.0.1", 0), _ShortReply)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/backbone.pth"
        with pytest.raises(OSError, match="received 400 of the 1000 bytes announced"):
            download.fetch_url(url, tmp_path / "part")
        with pytest.raises(CheckpointError, match="received 400 of the 1000 bytes"):
            download.install_model_file(FACE_NET, comfy / "models", [url])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert not FACE_NET.destination(comfy / "models").exists()
    assert _leftovers(comfy / "models") == []


def test_forced_reinstall_keeps_the_old_pack_until_the_new_one_is_in_place(tmp_path: Path, monkeypatch):
    comfy = _comfy(tmp_path)
    _, fetch = _serving({BUFFALO.urls[0]: _zip_bytes(tmp_path, BUFFALO.members, prefix="buffalo_l/")})
    dest = download.install_model_file(BUFFALO, comfy / "models", BUFFALO.urls[:1], fetch)
    old = {p.name: p.read_bytes() for p in dest.iterdir()}
    real_replace = os.replace

    def interrupted_move(src, dst):  # Ctrl-C just as the new pack would take the old one's place
        if Path(dst) == dest and not Path(src).parent.name.startswith(f".{dest.name}.previous"):
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupted_move)
    with pytest.raises(KeyboardInterrupt):
        download.install_model_file(BUFFALO, comfy / "models", BUFFALO.urls[:1], fetch)
    monkeypatch.setattr(os, "replace", real_replace)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == old
    assert _leftovers(comfy / "models") == []
