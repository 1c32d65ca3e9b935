"""The shared runner of every command-line tool: a user's mistake ends in one clear line, not a traceback.

Each tool builds its options with ``argument_parser`` (help shows every default, plus ``--debug``) and
ends in ``sys.exit(run_cli(main))``. ``--debug`` or ``UNIID_DEBUG=1`` shows the full traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence

from .errors import UniIDError

DEBUG_FLAG = "--debug"
DEBUG_ENV = "UNIID_DEBUG"
INTERRUPTED = 130
_OS_HINTS = {
    errno.ENOENT: "check the path",
    errno.EISDIR: "give a file, not a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EACCES: "check the permissions",
    errno.EPERM: "check the permissions",
    errno.ENOSPC: "free some disk space and run it again",
    errno.EROFS: "choose a writable folder",
}
_QUIET_LOGGERS = ("transformers.utils.import_utils",)
"""Loggers whose warnings say nothing about our runs (transformers asks for torchvision we never use)."""


class HelpFormatter(argparse.HelpFormatter):
    """argparse help that appends each option's default, unless it is None, False or empty or the help
    text already speaks of its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        hidden = default is None or default is False or default is argparse.SUPPRESS
        if hidden or "default" in text or (isinstance(default, list | tuple) and not default):
            return text
        return f"{text} (default: %(default)s)"


def argument_parser(prog: str, description: str | None, **options: object) -> argparse.ArgumentParser:
    """An ArgumentParser whose help shows defaults, with the shared ``--debug`` option."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=HelpFormatter, **options
    )
    parser.add_argument(
        DEBUG_FLAG, action="store_true", help=f"show the full traceback of an error (or set {DEBUG_ENV}=1)"
    )
    return parser


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def quiet_irrelevant_warnings() -> None:
    """Silence third-party log lines that do not concern our runs; only the named loggers are touched."""
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean a wrong input or environment (YAML's only when YAML was used)."""
    kinds: list[type[BaseException]] = [UniIDError, OSError, json.JSONDecodeError]
    yaml = sys.modules.get("yaml")
    if yaml is not None:
        kinds.append(yaml.YAMLError)
    return tuple(kinds)


def describe_error(exc: BaseException) -> str:
    """One line saying what went wrong: the file and what to do for OS errors, else the message."""
    if isinstance(exc, OSError) and exc.filename is not None:
        target = f"{exc.filename} -> {exc.filename2}" if exc.filename2 else str(exc.filename)
        hint = _OS_HINTS.get(exc.errno or 0)
        text = f"{target}: {exc.strerror or exc}" + (f"; {hint}" if hint else "")
    elif isinstance(exc, json.JSONDecodeError):
        text = f"not valid JSON ({exc}); fix the file"
    elif isinstance(exc, UniIDError | OSError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


def debug_requested(argv: Sequence[str]) -> bool:
    """Whether ``--debug`` is among the arguments or UNIID_DEBUG is set to something other than 0."""
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def run_cli(main: Callable[[list[str]], object], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)`` and return its exit status; a user mistake prints ``error: ...`` and gives 1."""
    args = list(sys.argv[1:] if argv is None else argv)
    quiet_irrelevant_warnings()
    try:
        result = main(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    except _user_errors() as exc:
        if debug_requested(args):
            raise
        print(f"error: {describe_error(exc)}", file=sys.stderr)
        return 1
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def path_problem(
    option: str, path: str | os.PathLike, kind: str = "any", marker: str | None = None, what: str = ""
) -> str | None:
    """What is wrong with an option's path, or None; only looks at the file system, so it runs first.

    ``kind`` is "file", "folder" or "any"; ``marker`` a file the folder must hold; ``what`` names the
    expected thing for the message (e.g. "a diffusers SDXL folder").
    """
    where = f"{option} {path}"
    expected = f": give {what}" if what else ""
    if not os.path.exists(path):
        return f"{where}: no such file or folder; check the path"
    if kind == "file" and os.path.isdir(path):
        return f"{where} is a folder{expected or '; give the file itself'}"
    if kind == "folder" and not os.path.isdir(path):
        return f"{where} is a file{expected or '; give the folder'}"
    if marker and not os.path.exists(os.path.join(path, marker)):
        return f"{where} holds no {marker}{expected}"
    return None


def require_paths(*problems: str | None) -> None:
    """Raise one UniIDError listing every problem ``path_problem`` found (none: return quietly)."""
    found = [p for p in problems if p]
    if found:
        raise UniIDError("; ".join(found))
