"""Comfy Registry and frontend conventions: icon size, a help page per node, names a Registry install uses."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import tomllib
from PIL import Image

ICON_LIMIT = 400
"""The Comfy Registry's largest icon side in pixels."""


def _registered_nodes(repo_root: Path) -> set[str]:
    """The node_id of every V3 schema in nodes/*.py (read without importing ComfyUI)."""
    ids = set()
    for path in sorted((repo_root / "nodes").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "node_id":
                ids.add(ast.literal_eval(node.value))
    assert ids, "no io.Schema(node_id=...) found in nodes/"
    return ids


@pytest.fixture(scope="module")
def snapshot(repo_root: Path) -> dict:
    return json.loads((repo_root / "tests" / "packaging" / "data" / "node_schema.json").read_text())


def test_icon_fits_the_registry_limit(repo_root: Path) -> None:
    with Image.open(repo_root / "icon.png") as icon:
        assert max(icon.size) <= ICON_LIMIT, f"icon.png is {icon.size}; the Registry allows {ICON_LIMIT}px"


def test_web_directory_is_declared(repo_root: Path) -> None:
    tree = ast.parse((repo_root / "__init__.py").read_text())
    values = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
              for t in n.targets if isinstance(t, ast.Name) and isinstance(n.value, ast.Constant)}
    assert values.get("WEB_DIRECTORY") == "./web"
    assert (repo_root / "web" / "docs").is_dir()


def test_every_node_has_a_help_page_with_its_inputs(repo_root: Path, snapshot: dict) -> None:
    nodes = _registered_nodes(repo_root) | set(snapshot["our_nodes"])
    docs = repo_root / "web" / "docs"
    missing = sorted(name for name in nodes if not (docs / f"{name}.md").is_file())
    assert not missing, f"add web/docs/<NodeName>.md for {missing} (inputs, outputs, how to use)"
    for name in sorted(nodes):
        text = (docs / f"{name}.md").read_text()
        assert text.startswith("# UniID "), f"{name}.md must start with the node's display name"
        assert "## Inputs" in text and "## How to use" in text, name
        inputs = snapshot["nodes"].get(name, {}).get("input", {})
        for group in (inputs.get("required", {}), inputs.get("optional", {})):  # "hidden" ones ComfyUI fills
            for input_name in group:
                assert f"**{input_name}**" in text, f"{name}.md does not explain input {input_name}"
    extra = sorted(p.stem for p in docs.glob("*.md") if p.stem not in nodes)
    assert not extra, f"help pages for nodes that do not exist: {extra}"


def test_names_match_a_registry_install(repo_root: Path, scripts_on_path: Path) -> None:
    import workflow_check

    name = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]["name"]
    assert workflow_check.PACK_NAME == name
    readme = (repo_root / "README.md").read_text()
    assert f"custom_nodes/{name}" in readme and f"Templates -> {name}" in readme
    assert not re.search(r"custom_nodes/ComfyUI-UniID|Templates -> ComfyUI-UniID", readme)
    for workflow in (repo_root / "workflows").glob("*.json"):
        assert workflow.with_suffix(".jpg").is_file(), f"{workflow.name} has no thumbnail"
