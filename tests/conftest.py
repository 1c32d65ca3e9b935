"""Shared fixtures: where the golden parity data lives."""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def _golden_dir() -> Path:
    return Path(os.environ.get("UNIID_GOLDEN_DIR", REPO_ROOT.parent / "shared" / "golden"))


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """The official-output parity folder (../shared/golden or $UNIID_GOLDEN_DIR)."""
    path = _golden_dir()
    if not (path / "make_weights.py").is_file():
        pytest.skip(f"golden parity data not found at {path} (set UNIID_GOLDEN_DIR)")
    return path
