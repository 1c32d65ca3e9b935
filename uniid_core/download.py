"""Fetch the model files UniID uses into a ComfyUI models folder, verified and written atomically.

The official UniID release comes from the Hugging Face Hub (``pangly/UniID``, see uniid_core.hub_release);
the insightface detector packs and SDXL base from their public URLs. Run by hand only
(`python -m uniid_core.download --comfyui PATH`); nothing imports or calls it implicitly.
"""

from __future__ import annotations

import errno
import http.client
import os
import shutil
import sys
import tempfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from uniid_core.cli import argument_parser, run_cli
from uniid_core.errors import CheckpointError
from uniid_core.hub_release import (
    CHUNK,
    LOCAL_WRITE_ERRNOS,
    NOT_WEIGHTS,
    RELEASE_REPO,
    RELEASE_URL,
    Hub,
    HubUnavailable,
    HuggingFaceHub,
    describe_plan,
    fetch_release,
    manual_hint,
    offline_by_environment,
    plan_release,
    sha256_of,
)
from uniid_core.release import KIND_FACE_NET, holds_uniid, scan_release

INSIGHTFACE_RELEASES = (
    "https://github.com/deepinsight/insightface/releases/download/v0.7/",
    "https://github.com/deepinsight/insightface/releases/download/model-zoo/",
)
ARCFACE_MODEL_ZOO = "https://github.com/deepinsight/insightface/tree/master/recognition/arcface_torch"
RELEASE_FOLDER = "UniID"
URL_SCHEMES = ("http", "https", "file")
"""What ``--url`` accepts (urllib opens these); a plain path of an existing file becomes a file:// URL."""


@dataclass(frozen=True)
class ModelFile:
    """One entry of the manifest: what it is, where it goes under ComfyUI/models, and where it comes from."""

    name: str
    description: str
    folder: str
    target: str
    kind: str = "file"
    """"file", "zip_dir" (an archive unpacked into a folder) or "hf_repo" (the Hub release folder)."""
    urls: tuple[str, ...] = ()
    sha256: str | None = None
    size: int | None = None
    members: tuple[str, ...] = field(default_factory=tuple)
    manual: str = ""
    default: bool = True

    def destination(self, models_dir: Path) -> Path:
        """The final file (kind "file") or folder (kinds "zip_dir", "hf_repo") under models_dir."""
        return models_dir / self.folder / self.target


MANIFEST: tuple[ModelFile, ...] = (
    ModelFile(
        name="uniid",
        description=f"official UniID release (text branch, adapter branch, face net) from {RELEASE_URL}",
        folder="uniid",
        target=RELEASE_FOLDER,
        kind="hf_repo",
    ),
    ModelFile(
        name="face_net",
        description="face recognition net: Partial-FC IResNet-100 trained on Glint360K (backbone.pth)",
        folder="uniid",
        target="glint360k_r100.pth",
        manual=(
            "The UniID release provides it: it lands in the release folder and the loaders find it there. "
            f"Without it, download the Glint360K r100 `backbone.pth` from the insightface arcface_torch "
            f"model zoo ({ARCFACE_MODEL_ZOO}, links are on OneDrive/Baidu) and save it as "
            "ComfyUI/models/uniid/glint360k_r100.pth (or pass `--url face_net=URL`)."
        ),
    ),
    ModelFile(
        name="buffalo_l",
        description="insightface detector pack buffalo_l (only for the 'insightface' detector backend)",
        folder="insightface/models",
        target="buffalo_l",
        kind="zip_dir",
        urls=tuple(base + "buffalo_l.zip" for base in INSIGHTFACE_RELEASES),
        members=("det_10g.onnx", "genderage.onnx", "w600k_r50.onnx", "1k3d68.onnx", "2d106det.onnx"),
    ),
    ModelFile(
        name="antelopev2",
        description="insightface detector pack antelopev2 (optional alternative to buffalo_l)",
        folder="insightface/models",
        target="antelopev2",
        kind="zip_dir",
        urls=tuple(base + "antelopev2.zip" for base in INSIGHTFACE_RELEASES),
        members=("scrfd_10g_bnkps.onnx", "genderage.onnx", "glintr100.onnx", "1k3d68.onnx", "2d106det.onnx"),
        default=False,
    ),
    ModelFile(
        name="sdxl_base",
        description="SDXL base 1.0 checkpoint (any SDXL checkpoint works; skip if you have one)",
        folder="checkpoints",
        target="sd_xl_base_1.0.safetensors",
        urls=(
            "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/"
            "sd_xl_base_1.0.safetensors",
        ),
        default=False,
    ),
)

Fetcher = Callable[[str, Path], None]


def fetch_url(url: str, dest: Path) -> None:
    """Stream url into dest (the network step; tests replace it); OSError when fewer bytes arrive than
    the server announced or the connection breaks."""
    request = urllib.request.Request(url, headers={"User-Agent": "comfyui-uniid-download"})
    total = done = 0
    try:
        with urllib.request.urlopen(request, timeout=60) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            while chunk := response.read(CHUNK):
                out.write(chunk)
                done += len(chunk)
                if total:
                    print(f"\r  {done / 2**20:8.1f} / {total / 2**20:.1f} MiB", end="", flush=True)
    except http.client.HTTPException as exc:
        raise OSError(f"the connection broke after {done} bytes ({type(exc).__name__}: {exc})") from exc
    finally:
        print()
    if total and done != total:
        raise OSError(f"received {done} of the {total} bytes announced: the connection dropped; try again")


def verify_download(entry: ModelFile, path: Path) -> None:
    """Check size, checksum and that the file opens as what it should be; raise CheckpointError if not."""
    actual = path.stat().st_size
    if actual == 0:
        raise CheckpointError(f"{entry.name}: the download is empty ({path}); try again later")
    if entry.size is not None and actual != entry.size:
        raise CheckpointError(f"{entry.name}: expected {entry.size} bytes, got {actual}; download it again")
    if entry.sha256 is not None and sha256_of(path) != entry.sha256:
        raise CheckpointError(f"{entry.name}: sha256 mismatch for {path}; the download is corrupt or altered")
    if entry.kind == "zip_dir":
        _verify_zip(entry, path)
    elif entry.target.endswith(".pth"):
        _verify_torch(entry, path)
    elif entry.target.endswith(".safetensors"):
        _verify_safetensors(entry, path)


def _verify_zip(entry: ModelFile, path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except zipfile.BadZipFile as exc:
        raise CheckpointError(f"{entry.name}: {path.name} is not a valid archive ({exc})") from exc
    if bad is not None:
        raise CheckpointError(f"{entry.name}: member {bad} of {path.name} is corrupt; download it again")


def _verify_safetensors(entry: ModelFile, path: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            if not list(handle.keys()):
                raise CheckpointError(f"{entry.name}: {path.name} holds no tensors")
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{entry.name}: {path.name} is not a valid safetensors file ({exc})") from exc


def _verify_torch(entry: ModelFile, path: Path) -> None:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{entry.name}: {path.name} is not a loadable state dict ({exc})") from exc
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{entry.name}: {path.name} holds no tensors; expected a state dict")


def _extract_pack(entry: ModelFile, archive: Path, dest: Path) -> None:
    """Unzip into a temp folder, lift a single wrapping folder, check members, then move into place."""
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.target}.", dir=dest.parent))
    try:
        with zipfile.ZipFile(archive) as handle:
            handle.extractall(staging)
        root = staging
        entries = [p for p in staging.iterdir() if not p.name.startswith("__MACOSX")]
        if len(entries) == 1 and entries[0].is_dir():
            root = entries[0]
        missing = [name for name in entry.members if not (root / name).is_file()]
        if missing:
            raise CheckpointError(
                f"{entry.name}: the archive lacks {', '.join(missing)}; expected them directly in {dest}"
            )
        _swap_into_place(root, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap_into_place(new: Path, dest: Path) -> None:
    """Move folder ``new`` to ``dest``; an old ``dest`` is set aside first and put back if that fails."""
    if not dest.exists():
        os.replace(new, dest)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.previous.", dir=dest.parent))
    try:
        os.replace(dest, aside / dest.name)
        try:
            os.replace(new, dest)
        except BaseException:
            os.replace(aside / dest.name, dest)
            raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def _release_face_nets(release: Path | None) -> list[Path]:
    """Face nets inside the release folder (recognised by their keys)."""
    return scan_release(release).of(KIND_FACE_NET) if release is not None and release.is_dir() else []


def is_present(entry: ModelFile, models_dir: Path) -> bool:
    """Whether the entry's file or folder (with its expected members) is already in place."""
    dest = entry.destination(models_dir)
    if entry.kind == "zip_dir":
        return dest.is_dir() and all((dest / name).is_file() for name in entry.members)
    return dest.is_file() and dest.stat().st_size > 0


def install_model_file(
    entry: ModelFile, models_dir: Path, urls: Sequence[str], fetch: Fetcher | None = None
) -> Path:
    """Download entry from the first working url, verify it and move it into place atomically."""
    fetch = fetch or fetch_url
    dest = entry.destination(models_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.parent / (dest.name + (".zip" if entry.kind == "zip_dir" else "") + ".part")
    errors = []
    for url in urls:
        print(f"{entry.name}: downloading {url}\n  -> {dest}")
        try:
            fetch(url, part)
            verify_download(entry, part)
            if entry.kind == "zip_dir":
                _extract_pack(entry, part, dest)
            else:
                os.replace(part, dest)
            return dest
        except (OSError, CheckpointError) as exc:
            errors.append(f"{url}: {exc}")
        finally:
            part.unlink(missing_ok=True)
    raise CheckpointError(
        f"{entry.name}: every source failed:\n  " + "\n  ".join(errors) + f"\nPut the file at {dest} by hand."
    )


def _parse_overrides(pairs: Sequence[str]) -> dict[str, str]:
    """``--url NAME=URL`` pairs as a dict; an existing local file becomes a file:// URL."""
    known = {entry.name for entry in MANIFEST if entry.kind != "hf_repo"}
    out = {}
    for pair in pairs:
        name, sep, url = pair.partition("=")
        if not sep or name not in known or not url:
            raise SystemExit(f"--url expects NAME=URL with NAME one of {sorted(known)}, got {pair!r}")
        if urllib.parse.urlsplit(url).scheme.lower() not in URL_SCHEMES:
            local = Path(url).expanduser()
            if not local.is_file():
                raise SystemExit(
                    f"--url {pair}: {url!r} is neither an {', '.join(s + '://' for s in URL_SCHEMES)} URL "
                    "nor an existing file; give a URL or the path of the file"
                )
            url = local.resolve().as_uri()
        out[name] = url
    return out


@dataclass
class ReleaseSource:
    """Where the UniID release comes from and goes to."""

    hub: Hub
    repo: str = RELEASE_REPO
    revision: str = "main"
    dest: Path | None = None


def install_release(entry: ModelFile, dest: Path, source: ReleaseSource, dry_run: bool, force: bool) -> bool:
    """List, plan, fetch and verify the Hub release into dest; False when the Hub is out of reach.

    Out of reach with a release already in dest, that release is reported and kept (True).
    """
    try:
        if offline_by_environment():
            raise HubUnavailable("HF_HUB_OFFLINE is set")
        plan = plan_release(source.hub.list_files(source.repo, source.revision))
    except HubUnavailable as exc:
        if dest.is_dir() and holds_uniid(dest):
            print(f"{entry.name}: in place at {dest} (not compared with the Hub: {exc})")
            return True
        print(f"{entry.name}: {manual_hint(dest)} ({exc})")
        return False
    if not plan.fetch:
        raise CheckpointError(f"{source.repo}@{source.revision} lists no files to fetch")
    print(f"{entry.name}: {entry.description}\n  {len(plan.fetch)} files -> {dest}")
    if dry_run:
        print("\n".join(describe_plan(plan, dest)))
        return True
    try:
        fetch_release(source.hub, plan, dest, source.repo, source.revision, force)
    except OSError as exc:
        raise CheckpointError(_download_failure(entry, dest, exc)) from exc
    contents = scan_release(dest)
    unusable = [remote.path for remote, why in plan.skipped if why == NOT_WEIGHTS]
    if unusable and contents.missing_branches():
        raise CheckpointError(
            f"{entry.name}: the {' and '.join(contents.missing_branches())} branch is not in {dest}: "
            f"{', '.join(unusable)} (intact, its sha256 matches the Hub's) is not weights-only readable "
            "(it holds Python objects or no weights), so it is never loaded; ask the release's authors for "
            f"a weights-only file ({RELEASE_URL})"
        )
    contents.branch_files()
    print(f"{entry.name}: OK, verified at {dest}\n  found {contents.listing()}")
    return True


def _download_failure(entry: ModelFile, dest: Path, exc: OSError) -> str:
    """What a failed release download means: a folder that cannot be written, or an interruption."""
    if exc.errno not in LOCAL_WRITE_ERRNOS:
        return f"{entry.name}: download interrupted ({exc}); run the same command again to resume"
    if exc.errno == errno.EROFS:
        advice = "the disk is read-only: choose another folder with --dest"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        advice = "choose a folder you can write with --dest, or fix its permissions"
    else:
        advice = "free some disk space (or choose another folder with --dest) and run the same command again"
    return f"{entry.name}: cannot write {exc.filename or dest} ({exc.strerror or exc}); {advice}"


def run(
    comfyui: Path | None,
    only: Sequence[str] = (),
    overrides: dict[str, str] | None = None,
    force: bool = False,
    fetch: Fetcher | None = None,
    dry_run: bool = False,
    release: ReleaseSource | None = None,
) -> int:
    """Fetch the selected entries into comfyui/models; print what is where; 0 when all are in place.

    ``release`` says where the Hub release comes from and (its ``dest``) where it goes; without a
    ComfyUI folder only the release is fetched, to ``release.dest``.
    """
    overrides = overrides or {}
    release = release or ReleaseSource(hub=HuggingFaceHub())
    models_dir = comfyui / "models" if comfyui is not None else None
    if models_dir is not None and not models_dir.is_dir():
        raise SystemExit(f"{models_dir} does not exist: --comfyui must point at your ComfyUI folder")
    selected = [e for e in MANIFEST if (e.name in only if only else e.default or e.name in overrides)]
    if models_dir is None:
        selected = [e for e in selected if e.kind == "hf_repo"]
    release_entry = next(e for e in MANIFEST if e.kind == "hf_repo")
    release_dest = release.dest or (release_entry.destination(models_dir) if models_dir is not None else None)
    missing = 0
    for entry in selected:
        if entry.kind == "hf_repo":
            dest = release_dest
            try:
                missing += not install_release(entry, dest, release, dry_run, force)
            except CheckpointError as exc:
                print(f"ERROR {exc}", file=sys.stderr)
                missing += 1
            continue
        dest = entry.destination(models_dir)
        inside = _release_face_nets(release_dest) if entry.name == "face_net" else []
        if inside:
            print(f"{entry.name}: provided by the release, at {inside[0]}")
            continue
        if is_present(entry, models_dir) and not force:
            print(f"{entry.name}: already in place at {dest}")
            continue
        urls = (overrides[entry.name],) if entry.name in overrides else entry.urls
        if not urls:
            print(f"{entry.name}: {entry.description}\n  cannot be downloaded automatically; it goes to "
                  f"{dest}\n  {entry.manual}")
            missing += 1
            continue
        if dry_run:
            print(f"{entry.name}: would download {urls[0]}\n  -> {dest}")
            continue
        try:
            install_model_file(entry, models_dir, urls, fetch)
            print(f"{entry.name}: OK, verified at {dest}")
        except CheckpointError as exc:
            print(f"ERROR {exc}", file=sys.stderr)
            missing += 1
    return 0 if missing == 0 else 1


def describe_layout(models_dir: str = "ComfyUI/models") -> str:
    """The model layout as text: one line per manifest entry saying which file goes where."""
    lines = []
    for entry in MANIFEST:
        folder_like = entry.kind in ("zip_dir", "hf_repo")
        place = f"{models_dir}/{entry.folder}/{entry.target}" + ("/" if folder_like else "")
        optional = "" if entry.default else ", optional"
        lines.append(f"{entry.name:11s} {place}  ({entry.description}{optional})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, hub: Hub | None = None) -> int:
    """Command line entry point (``hub`` replaces the Hugging Face Hub, for tests)."""
    parser = argument_parser("python -m uniid_core.download", __doc__)
    parser.add_argument("--comfyui", type=Path, help="your ComfyUI folder (the one holding models/)")
    parser.add_argument(
        "--dest", type=Path, default=None,
        help=f"folder for the UniID release (default: COMFYUI/models/uniid/{RELEASE_FOLDER}); "
        "without --comfyui only the release is fetched",
    )
    parser.add_argument("--only", nargs="+", default=(), choices=[e.name for e in MANIFEST],
                        help="fetch only these entries (default: every non-optional one)")
    parser.add_argument("--url", action="append", default=[], metavar="NAME=URL",
                        help="download NAME from URL (http://, https://, file:// or a local file's path) "
                        "instead of the manifest's sources")
    parser.add_argument("--repo", default=RELEASE_REPO, help="Hugging Face repository of the release")
    parser.add_argument("--revision", default="main", help="branch, tag or commit of the release repository")
    parser.add_argument("--force", action="store_true", help="download again even if already in place")
    parser.add_argument("--dry-run", action="store_true", help="print what would be fetched and where")
    parser.add_argument("--list", action="store_true", help="print the model layout and exit")
    args = parser.parse_args(argv)
    if args.list:
        print(describe_layout())
        return 0
    if args.comfyui is None and args.dest is None:
        parser.error("--comfyui PATH (or --dest DIR for the release alone) is required, or use --list")
    hub = hub or HuggingFaceHub()
    release = ReleaseSource(hub=hub, repo=args.repo, revision=args.revision, dest=args.dest)
    return run(args.comfyui, args.only, _parse_overrides(args.url), args.force, dry_run=args.dry_run,
               release=release)


if __name__ == "__main__":
    sys.exit(run_cli(main))
