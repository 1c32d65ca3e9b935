"""uniid_core imports without the optional packages (insightface, onnxruntime) and never pulls in ComfyUI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BLOCKED = ("insightface", "onnxruntime", "comfy", "comfy_extras", "folder_paths", "torchvision")

PROBE = """
import importlib, json, pkgutil, sys

BLOCKED = sys.argv[1].split(",")
for name in BLOCKED:
    sys.modules[name] = None
import uniid_core
failed = {}
names = [m.name for m in pkgutil.walk_packages(uniid_core.__path__, "uniid_core.")]
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
leaked = sorted(m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] in BLOCKED)
print(json.dumps({"modules": names, "failed": failed, "leaked": leaked}))
"""


def test_core_imports_without_optional_packages(repo_root: Path) -> None:
    result = subprocess.run([sys.executable, "-c", PROBE, ",".join(BLOCKED)], cwd=repo_root,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "uniid_core.download" in report["modules"]
    assert report["failed"] == {}, f"modules that need {BLOCKED} at import time: {report['failed']}"
    assert report["leaked"] == []
