"""The README's two commands: quickstart and the test script; CI runs that same script."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest


def _two_commands(readme: str) -> list[str]:
    """Command lines of the README's "Two commands" block, comments removed (as the project hook reads it)."""
    section = re.split(r"^#+ .*[Tt]wo commands.*$", readme, maxsplit=1, flags=re.M)[1]
    block = section.split("```", 2)[1].split("\n", 1)[1]
    return [line.split(" #", 1)[0].strip() for line in block.splitlines() if line.split(" #", 1)[0].strip()]


def test_readme_two_commands_and_ci_run_the_same_script(repo_root: Path) -> None:
    commands = _two_commands((repo_root / "README.md").read_text())
    assert commands == ["bash scripts/quickstart.sh", "bash scripts/run_tests.sh"]
    ci = (repo_root / ".ci" / "run").read_text()
    assert "set -euo pipefail" in ci and os.access(repo_root / ".ci" / "run", os.X_OK)
    assert 'UNIID_FRESH_VENV=1 bash scripts/run_tests.sh' in ci
    script = (repo_root / "scripts" / "run_tests.sh").read_text()
    assert 'TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"' in script
    assert "torch.version.cuda is not None" not in script, "a CUDA build of torch must be accepted"
    for name in ("run_tests.sh", "quickstart.sh"):
        assert subprocess.run(["bash", "-n", str(repo_root / "scripts" / name)]).returncode == 0


@pytest.mark.parametrize("script,words", [("quickstart.sh", ("--base", "--ref", "TORCH_SPEC")),
                                          ("run_tests.sh", ("UNIID_VENV", "TORCH_SPEC", "PYTEST ARGS"))])
def test_help_comes_before_any_install(repo_root: Path, tmp_path: Path, script: str, words) -> None:
    venv = tmp_path / "venv"
    env = {**os.environ, "UNIID_VENV": str(venv), "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(repo_root / "scripts" / script), "--help"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert all(word in result.stdout for word in words)
    assert not venv.exists(), "--help must not create or install anything"


@pytest.fixture(scope="module")
def linked_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv that sees this environment's packages through a .pth file (nothing to download)."""
    venv = tmp_path_factory.mktemp("tests-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = Path(sysconfig.get_paths()["purelib"])
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "uniid_parent_env.pth").write_text(f"{purelib}\n")
    return venv


def _run_tests(repo_root: Path, venv: Path, *pytest_args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "UNIID_VENV": str(venv), "PIP_NO_INDEX": "1"}
    for inherited in ("COMFYUI_PATH", "UNIID_FRESH_VENV", "TORCH_SPEC"):  # set when CI itself runs this test
        env.pop(inherited, None)
    return subprocess.run(["bash", str(repo_root / "scripts" / "run_tests.sh"), *pytest_args], cwd=repo_root,
                          env=env, capture_output=True, text=True, timeout=600)


def test_test_script_reuses_a_venv_and_runs_pytest(repo_root: Path, linked_venv: Path) -> None:
    result = _run_tests(repo_root, linked_venv, "tests/packaging/test_pkg_metadata.py")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "installing torch" not in result.stdout, "the venv's torch must be reused"
    assert re.search(r"^\d+ passed", result.stdout, re.M), result.stdout[-2000:]
    assert "build; the tests use the CPU)" in result.stdout


def test_test_script_fails_when_pytest_runs_nothing(repo_root: Path, linked_venv: Path) -> None:
    result = _run_tests(repo_root, linked_venv, "tests/packaging/test_pkg_metadata.py", "-k", "no_such_test")
    assert result.returncode == 1
    assert "pytest collected no tests (exit 5)" in result.stderr
