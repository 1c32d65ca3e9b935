"""Packaging-test fixtures: repo paths and a network guard so no test can download anything."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root."""
    return REPO_ROOT


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any attempt to open an outside connection (loopback stays allowed for the browser test)."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> object:
        host = address[0] if isinstance(address, tuple) else ""
        if isinstance(address, tuple) and host not in ("127.0.0.1", "localhost", "::1"):
            raise AssertionError(f"packaging tests must not reach the network (tried {address})")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(scope="session")
def scripts_on_path() -> Path:
    """Make scripts/ importable (workflow_check, workflow_graph, build_workflows)."""
    scripts = REPO_ROOT / "scripts"
    if str(scripts) not in sys.path:
        sys.path.insert(0, str(scripts))
    return scripts


@pytest.fixture(scope="session")
def comfy_runtime() -> tuple[Path, str]:
    """(ComfyUI folder, Python with ComfyUI's requirements) from COMFYUI_PATH / COMFYUI_PYTHON, else skip."""
    raw = os.environ.get("COMFYUI_PATH")
    if not raw:
        pytest.skip("needs COMFYUI_PATH (a ComfyUI 0.3.60+ folder) to check against a real ComfyUI")
    path = Path(raw)
    if not (path / "nodes.py").is_file() or not (path / "main.py").is_file():
        pytest.skip(f"needs a ComfyUI folder at COMFYUI_PATH={raw} (no nodes.py/main.py there)")
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    probe = subprocess.run([python, "-c", "import torch, torchvision, aiohttp, yaml, PIL"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"needs a Python with ComfyUI's requirements (set COMFYUI_PYTHON); {python}: {last}")
    return path, python
