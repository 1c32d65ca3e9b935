"""Every command-line tool: complete --help, and a user's mistake ends in one clear line, no traceback."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from uniid_core import cli

REPO = Path(__file__).resolve().parents[2]
MODULES = (
    "uniid_core.generate",
    "uniid_core.parity",
    "uniid_core.convert",
    "uniid_core.download",
    "uniid_core.evaluate",
    "training.prepare",
    "training.train",
    "training.export",
)
SCRIPTS = (
    "benchmarks/bench_attention.py",
    "benchmarks/bench_comfy_step.py",
    "benchmarks/bench_face.py",
    "benchmarks/bench_identity.py",
    "benchmarks/bench_train.py",
    "scripts/quickstart.py",
)


def _load(name: str) -> ModuleType:
    """A tool module: importable by name, or a script under benchmarks/ or scripts/ loaded from its file."""
    if not name.endswith(".py"):
        return importlib.import_module(name)
    path = REPO / name
    spec = importlib.util.spec_from_file_location(f"uniid_tool_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Parsed(Exception):
    """Raised in place of argument parsing, carrying the tool's parser."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__("parsed")
        self.parser = parser


def _parser_of(main: Callable, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The ArgumentParser a tool's main() builds (captured when it starts parsing; nothing else runs)."""

    def capture(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise _Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(_Parsed) as caught:
        main([])
    return caught.value.parser


@pytest.mark.parametrize("name", MODULES + SCRIPTS)
def test_help_lists_every_option_with_help_and_default(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _load(name)
    parser = _parser_of(module.main, monkeypatch)
    assert parser.formatter_class is cli.HelpFormatter, f"{name}: build the parser with cli.argument_parser"
    text = parser.format_help()
    assert "--debug" in text
    for action in parser._actions:
        label = "/".join(action.option_strings) or action.dest
        assert action.help, f"{name}: {label} has no help text"
        default = action.default
        shown = default not in (None, False, argparse.SUPPRESS) and not (isinstance(default, list | tuple)
                                                                          and not default)
        if shown and "default" not in action.help:
            entry = parser._get_formatter()._format_action(action)
            assert "(default: " in " ".join(entry.split()), f"{name}: {label} hides its default"


@pytest.mark.parametrize("name", MODULES + SCRIPTS)
def test_every_entry_point_runs_through_the_shared_runner(name: str) -> None:
    path = REPO / (name if name.endswith(".py") else name.replace(".", "/") + ".py")
    tail = path.read_text().rsplit('if __name__ == "__main__":', 1)[1]
    assert "sys.exit(run_cli(main))" in tail


def _run(main: Callable, argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    status = cli.run_cli(main, argv)
    err = capsys.readouterr().err
    return status, err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_generate_checks_every_path_before_loading_models(tmp_path: Path, capsys) -> None:
    from uniid_core import generate

    face_dir = tmp_path / "backbone"
    face_dir.mkdir()
    not_sdxl = tmp_path / "not_sdxl"
    not_sdxl.mkdir()
    argv = ["--base", str(not_sdxl), "--uniid", str(tmp_path / "missing.safetensors"), "--face-net",
            str(face_dir), "--ref", str(tmp_path / "me.jpg"), "--prompt", "a photo", "--out", str(tmp_path)]
    status, err = _run(generate.main, argv, capsys)
    line = _one_error_line(err)
    assert status == 1
    assert f"--base {not_sdxl} holds no model_index.json: give a diffusers SDXL folder" in line
    assert f"--uniid {tmp_path / 'missing.safetensors'}: no such file or folder" in line
    assert f"--face-net {face_dir} is a folder" in line
    assert f"--ref {tmp_path / 'me.jpg'}: no such file or folder" in line


def test_train_missing_or_broken_config(tmp_path: Path, capsys) -> None:
    from training import train

    status, err = _run(train.main, ["--config", "/nope.yaml"], capsys)
    assert status == 1
    assert "--config /nope.yaml: no such file or folder; check the path" in _one_error_line(err)
    broken = tmp_path / "broken.yaml"
    broken.write_text("stage: [text\n")
    status, err = _run(train.main, ["--config", str(broken)], capsys)
    assert status == 1
    _one_error_line(err)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("stage: text\nlearning_rat: 1e-4\n")
    status, err = _run(train.main, ["--config", str(unknown)], capsys)
    assert status == 1 and "unknown config keys ['learning_rat']" in _one_error_line(err)


def test_export_and_prepare_name_the_wrong_input(tmp_path: Path, capsys) -> None:
    from training import export, prepare

    argv = ["--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "x")]
    status, err = _run(export.main, argv, capsys)
    assert status == 1 and str(tmp_path / "run") in _one_error_line(err)
    argv = ["--images", str(tmp_path / "photos"), "--out", str(tmp_path / "ds")]
    status, err = _run(prepare.main, argv, capsys)
    assert status == 1 and f"--images {tmp_path / 'photos'}" in _one_error_line(err)
    status, err = _run(prepare.main, [*argv, "--latents", "--base", str(tmp_path / "sdxl")], capsys)
    assert status == 1 and f"--base {tmp_path / 'sdxl'}: no such file or folder" in _one_error_line(err)


def test_parity_needs_the_golden_folder(tmp_path: Path, capsys) -> None:
    from uniid_core import parity

    status, err = _run(parity.main, [str(tmp_path)], capsys)
    assert status == 1 and f"{tmp_path} holds no golden_case*.safetensors" in _one_error_line(err)


def test_os_errors_name_the_file_and_what_to_do(tmp_path: Path, capsys) -> None:
    def main(argv: list[str]) -> int:
        (tmp_path / "missing" / "file.txt").read_text()
        return 0

    status, err = _run(main, [], capsys)
    assert status == 1
    missing = tmp_path / "missing" / "file.txt"
    assert _one_error_line(err) == f"error: {missing}: No such file or directory; check the path"


def test_debug_flag_or_variable_shows_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    from uniid_core.errors import UniIDError

    def main(argv: list[str]) -> int:
        raise UniIDError("bad input")

    with pytest.raises(UniIDError):
        cli.run_cli(main, ["--debug"])
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(UniIDError):
        cli.run_cli(main, [])


def test_bugs_keep_their_traceback_and_ctrl_c_exits_130(capsys) -> None:
    def bug(argv: list[str]) -> int:
        raise ZeroDivisionError("a bug, not a user mistake")

    def interrupted(argv: list[str]) -> int:
        raise KeyboardInterrupt

    with pytest.raises(ZeroDivisionError):
        cli.run_cli(bug, [])
    assert cli.run_cli(interrupted, []) == cli.INTERRUPTED
    assert capsys.readouterr().err.strip() == "interrupted"


def test_results_become_exit_status() -> None:
    assert cli.run_cli(lambda argv: 3, []) == 3
    assert cli.run_cli(lambda argv: [Path("a.png")], []) == 0
    assert cli.run_cli(lambda argv: None, []) == 0


def test_runner_silences_transformers_torchvision_notice_only(capsys) -> None:
    notice = logging.getLogger("transformers.utils.import_utils")
    other = logging.getLogger("uniid_test_other")
    handler = logging.StreamHandler(sys.stderr)
    for logger in (notice, other):
        logger.addHandler(handler)
    try:

        def main(argv: list[str]) -> int:
            notice.warning("`CLIPImageProcessor` requires torchvision (not installed)")
            other.warning("a warning that matters")
            return 0

        assert cli.run_cli(main, []) == 0
    finally:
        for logger in (notice, other):
            logger.removeHandler(handler)
        notice.setLevel(logging.NOTSET)
    err = capsys.readouterr().err
    assert "torchvision" not in err and "a warning that matters" in err


def test_comfy_step_benchmark_skips_without_comfyui(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    bench = _load("benchmarks/bench_comfy_step.py")
    assert cli.run_cli(bench.main, []) == 0
    assert capsys.readouterr().out.startswith("skipped: this benchmark runs inside ComfyUI; give --comfyui")
    assert cli.run_cli(bench.main, ["--comfyui", "/nonexistent"]) == 0
    assert "/nonexistent is not a ComfyUI folder" in capsys.readouterr().out


def test_real_entry_point_prints_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(cli.DEBUG_ENV, None)
    result = subprocess.run(
        [sys.executable, "-m", "training.export", "--checkpoint", str(tmp_path / "nothing.safetensors"),
         "--out", str(tmp_path / "out.safetensors")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1
    assert _one_error_line(result.stderr) == (
        f"error: {tmp_path / 'nothing.safetensors'}: no such file; check the path (or download the weights "
        "first)"
    )
