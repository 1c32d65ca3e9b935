"""Fetch the official UniID release from the Hugging Face Hub: list, plan, download, verify, move into place.

The release's file names are not assumed: the repository is listed and everything but training state
(optimizer, scheduler, RNG files) and repository metadata is fetched, keeping its folder structure.
Each file is downloaded into a hidden staging folder inside the destination (huggingface_hub resumes
interrupted downloads there), checked against the size and sha256 the Hub lists and, for weights, read
back as weights-only tensors, and only then moved to its final place. A file already in place counts only
when its size and sha256 match the listing (retrained weights often keep the byte count). A file intact as
published that is not weights-only readable (a pickled sampler, say) is left out with a note.
huggingface_hub is imported only when the real Hub is used; tests pass their own ``Hub``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from .errors import CheckpointError
from .release import WEIGHT_SUFFIXES, is_weights_name, read_keys

RELEASE_REPO = "pangly/UniID"
RELEASE_URL = f"https://huggingface.co/{RELEASE_REPO}"
STAGING = ".download"
"""Hidden staging folder inside the destination (skipped by the loaders and the ComfyUI dropdowns)."""
CHUNK = 1 << 20
_TRAINING_STATE_SUFFIXES = (".pkl", ".ckpt")
_OFFLINE_VALUES = {"1", "ON", "YES", "TRUE"}
LOCAL_WRITE_ERRNOS = frozenset(
    code
    for code in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, getattr(errno, "EDQUOT", None))
    if code
)
"""OS errors that mean the destination cannot be written (running again will not help)."""


_GATED = (
    f"{RELEASE_URL} is gated: accept its terms on that page, then log in with `hf auth login` (or set "
    "HF_TOKEN) and run this again"
)


class HubUnavailable(Exception):
    """The Hub cannot be reached (offline mode, no network): the user has to fetch the files by hand."""


NOT_WEIGHTS = "not weights-only readable, so never loaded"
"""The reason a published file that is not weights is left out of the release."""


class NotWeights(CheckpointError):
    """A file intact as published (its sha256 matches) that does not read as weights-only tensors."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of the Hub repository: its path in the repo, size and (for LFS files) sha256."""

    path: str
    size: int | None = None
    sha256: str | None = None


class Hub(Protocol):
    """What the release download needs from a model hub."""

    def list_files(self, repo_id: str, revision: str) -> list[RemoteFile]:
        """Every file of the repository at ``revision``; HubUnavailable when the Hub cannot be reached."""
        ...

    def download(self, repo_id: str, path: str, revision: str, folder: Path) -> Path:
        """Fetch one file to ``folder / path`` (resuming a partial download); returns the local path.

        Raises OSError for an interrupted or failed connection (running again resumes), the OSError of a
        destination that cannot be written as it is, and CheckpointError when the Hub refuses the file.
        """
        ...


class HuggingFaceHub:
    """The real Hugging Face Hub through huggingface_hub (imported on first use)."""

    def list_files(self, repo_id: str, revision: str) -> list[RemoteFile]:
        """List the repository recursively, with LFS sizes and checksums."""
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

        try:
            entries = list(HfApi().list_repo_tree(repo_id, recursive=True, revision=revision))
        except GatedRepoError as exc:
            raise CheckpointError(_GATED) from exc
        except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
            raise CheckpointError(
                f"{repo_id}@{revision} was not found on the Hugging Face Hub ({exc})"
            ) from exc
        except Exception as exc:  # offline mode, DNS, proxy, TLS, HTTP errors: all mean "cannot reach it"
            raise HubUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return [
            RemoteFile(entry.path, entry.size, entry.lfs.sha256 if entry.lfs else None)
            for entry in entries
            if hasattr(entry, "size")
        ]

    def download(self, repo_id: str, path: str, revision: str, folder: Path) -> Path:
        """hf_hub_download into ``folder`` (its .cache keeps partial downloads for the next run).

        Only connection trouble becomes a plain OSError (resumable); a destination that cannot be
        written keeps its own OSError, and a file, revision or repository the Hub refuses is a
        CheckpointError saying what to check.
        """
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        try:
            return Path(hf_hub_download(repo_id, path, revision=revision, local_dir=folder))
        except GatedRepoError as exc:
            raise CheckpointError(_GATED) from exc
        except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
            raise CheckpointError(
                f"{repo_id}@{revision} was not found on the Hugging Face Hub ({exc}); check --repo and "
                "--revision"
            ) from exc
        except LocalEntryNotFoundError as exc:  # the Hub could not be reached and nothing is cached
            raise OSError(f"{type(exc).__name__}: {exc}") from exc
        except EntryNotFoundError as exc:
            raise CheckpointError(
                f"{path} is not in {repo_id} at revision {revision} (the Hub answered: not found); check "
                f"--repo and --revision, or fetch the file by hand from {RELEASE_URL}"
            ) from exc
        except HfHubHTTPError as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status is not None and 400 <= status < 500 and status not in (408, 429):
                raise CheckpointError(
                    f"{path}: the Hugging Face Hub refused the download (HTTP {status}: {exc}); check "
                    "--repo, --revision and your login (`hf auth login` or HF_TOKEN)"
                ) from exc
            raise OSError(f"{type(exc).__name__}: {exc}") from exc
        except OSError as exc:
            if exc.errno in LOCAL_WRITE_ERRNOS:
                raise
            raise OSError(f"{type(exc).__name__}: {exc}") from exc
        except Exception as exc:  # the HTTP client's own connection and protocol errors
            raise OSError(f"{type(exc).__name__}: {exc}") from exc


def offline_by_environment() -> bool:
    """Whether HF_HUB_OFFLINE asks for no Hub access (same truth values as huggingface_hub)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _OFFLINE_VALUES


def manual_hint(dest: Path) -> str:
    """The one line telling a user without Hub access what to do by hand."""
    return (
        f"cannot reach the Hugging Face Hub: download the files of {RELEASE_URL} by hand and put them, "
        f"folders as they are, into {dest}"
    )


@dataclass
class ReleasePlan:
    """Which repository files are fetched, and which are left out with the reason."""

    fetch: list[RemoteFile]
    skipped: list[tuple[RemoteFile, str]]


def _role(path: str, folders_with_config: set[str]) -> str:
    """A short description of what a repository file probably is, from its name and folder."""
    pure = PurePosixPath(path)
    if pure.suffix in (".pth", ".pt", ".onnx"):
        return "weights (face net?)"
    if pure.suffix in WEIGHT_SUFFIXES:
        return "branch checkpoint" if str(pure.parent) in folders_with_config else "weights"
    return "metadata"


def plan_release(files: list[RemoteFile]) -> ReleasePlan:
    """Everything except repo metadata, training state and .bin copies beside a model.safetensors."""
    names = {f.path for f in files}
    fetch, skipped = [], []
    for remote in sorted(files, key=lambda f: f.path):
        pure = PurePosixPath(remote.path)
        if any(part.startswith(".") for part in pure.parts):
            skipped.append((remote, "repository metadata"))
        elif pure.suffix in _TRAINING_STATE_SUFFIXES or (
            pure.suffix in WEIGHT_SUFFIXES and not is_weights_name(pure.name)
        ):
            skipped.append((remote, "training state, not needed to generate"))
        elif pure.name == "pytorch_model.bin" and str(pure.parent / "model.safetensors") in names:
            skipped.append((remote, "the model.safetensors beside it holds the same weights"))
        else:
            fetch.append(remote)
    return ReleasePlan(fetch, skipped)


def describe_plan(plan: ReleasePlan, dest: Path) -> list[str]:
    """Printable lines: each fetched file with its size, role and destination; each skipped one."""
    configs = {
        str(PurePosixPath(f.path).parent) for f in plan.fetch if PurePosixPath(f.path).name == "config.json"
    }
    lines = []
    for remote in plan.fetch:
        size = f"{remote.size / 2**20:9.1f} MiB" if remote.size is not None else "    ? MiB"
        lines.append(f"  {size}  {remote.path}  ({_role(remote.path, configs)}) -> {dest / remote.path}")
    lines += [f"  skipped    {remote.path}  ({why})" for remote, why in plan.skipped]
    return lines


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(remote: RemoteFile, path: Path) -> None:
    """Size and sha256 as the Hub lists them; weights files must read back as weights-only tensors.

    A weights file whose sha256 matches but that does not read as weights raises NotWeights: it is the
    published file, so downloading it again will not help.
    """
    actual = path.stat().st_size
    if remote.size is not None and actual != remote.size:
        raise CheckpointError(f"{remote.path}: expected {remote.size} bytes, got {actual}; download it again")
    if remote.sha256 is not None and sha256_of(path) != remote.sha256:
        raise CheckpointError(f"{remote.path}: sha256 mismatch; the download is corrupt or was altered")
    if path.suffix.lower() in WEIGHT_SUFFIXES:
        try:
            read_keys(path)
        except CheckpointError as exc:
            if remote.sha256 is not None:
                raise NotWeights(f"{remote.path}: not weights-only readable ({exc})") from exc
            raise CheckpointError(
                f"{remote.path}: the download is not readable weights ({exc}); run the command again"
            ) from exc


def present(remote: RemoteFile, dest: Path) -> bool:
    """Whether a file is already in place: the size and, when the Hub lists one, the sha256 match."""
    path = dest / remote.path
    if not path.is_file() or (remote.size is not None and path.stat().st_size != remote.size):
        return False
    return remote.sha256 is None or sha256_of(path) == remote.sha256


def fetch_release(
    hub: Hub,
    plan: ReleasePlan,
    dest: Path,
    repo_id: str = RELEASE_REPO,
    revision: str = "main",
    force: bool = False,
) -> list[Path]:
    """Download, verify and move every planned file into ``dest``; returns the files written now.

    A published file that is not weights-only readable is not moved into place: it joins
    ``plan.skipped`` with the reason.
    """
    staging = dest / STAGING
    written = []
    for remote in list(plan.fetch):
        final = dest / remote.path
        if not force and present(remote, dest):
            print(f"  in place   {remote.path}")
            continue
        changed = " (the file in place differs from the Hub's)" if final.is_file() and not force else ""
        print(f"  fetching   {remote.path}{changed}")
        staged = hub.download(repo_id, remote.path, revision, staging)
        try:
            verify_file(remote, staged)
        except NotWeights as exc:
            staged.unlink(missing_ok=True)
            plan.fetch.remove(remote)
            plan.skipped.append((remote, NOT_WEIGHTS))
            print(f"  skipped    {remote.path}  ({exc})")
            continue
        except CheckpointError:
            staged.unlink(missing_ok=True)
            raise
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, final)
        written.append(final)
    shutil.rmtree(staging, ignore_errors=True)
    return written
