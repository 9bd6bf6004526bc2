"""Safe output, the bottom layer: atomic files, exclusive atomic folders, one-file checkpoints.

Imports nothing of debiaskit except ``errors``, so ``data/``, ``models/``, ``runs`` and every command
may use it. It holds the registry of folder kinds, not the kinds: each package registers the folders it writes
(its ``_folders.py``), and :func:`folder_kinds` loads every package before the first check needs them.

**The output rule** (one rule for every command that writes a folder):

- A command only ever replaces a folder *of its own kind that it recognises*: the folder's marker file
  (``run.json``, ``audit.json``, ``ffw.json``, ...) names its kind, and everything inside is a file
  that kind writes (or a recognised debiaskit folder, such as a run's ``audit/``). Anything else at
  ``--out`` (a user folder, a plain file, a folder holding runs, the input being read) is refused, with
  or without ``force``. A folder of its own kind is replaced only with ``force``.
- Writes are atomic: the folder is built in a hidden sibling ``.OUT.staging-PID-TOKEN`` and renamed into
  place when complete (an atomic exchange where the OS has one), so an interruption leaves either the old
  folder or the new one.
- Writes are exclusive: an advisory lock on the sibling ``.OUT.lock`` is held from the early check
  (before any compute) to the final rename, and the destination is checked again under the lock; a second
  writer fails at once with :class:`~debiaskit.errors.OutputBusyError`.
- Staging folders of a dead process (SIGKILL) are removed by the next writer of the same ``OUT``, and only
  when they carry debiaskit's marker and hold nothing but what their kind writes; hidden working folders
  (staging, ``.OUT.partial``, the lock) are never followed through a symbolic link: a link in their place is
  refused, its target left untouched.
- Commit identity: the folder ``OUT`` is in, and every input pinned when it was read, must still be the same
  folder at the final rename; one moved or replaced meanwhile is never written into (nothing is published).
- Files get the usual permissions under the umask, and a full disk or a file-size limit is a clear
  :class:`~debiaskit.errors.OutputError`, never a half-written file.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import fnmatch
import hashlib
import importlib
import json
import logging
import math
import os
import pkgutil
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .errors import DamagedError, DataError, OutputBusyError, OutputError, RunExistsError

# torch and safetensors are imported inside the functions that need them: the CLI imports this module to check
# --out before anything else, and `debiaskit --help` must not load torch

log = logging.getLogger("debiaskit")

# -- files ---------------------------------------------------------------------------------------------------------

_WRITE_HINTS = {
    errno.ENOSPC: "the disk is full; free some space or choose another --out",
    errno.EDQUOT: "the disk quota is exhausted; free some space or choose another --out",
    errno.EFBIG: "the file is larger than this file system (or `ulimit -f`) allows; choose another --out",
    errno.EROFS: "the file system is read-only; choose another --out",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "permission denied; choose a folder you can write to",
    errno.ENOTDIR: "a parent of it is a file, not a folder; choose another --out",
}


def file_mode() -> int:
    """Permissions of a new file under the current umask (0644 under umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _write_error(path: Path, exc: BaseException) -> OutputError:
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code is None:  # safetensors wraps the OS error in its own type: find the code in the text
        match = re.search(r"os error (\d+)", text)
        code = int(match.group(1)) if match else None
    fallback = "check the destination and try again"
    hint = _WRITE_HINTS.get(code, fallback) if isinstance(code, int) else fallback
    reason = os.strerror(code) if code else text
    return OutputError(f"cannot write {path}: {reason}; {hint}")


def _is_write_failure(exc: BaseException) -> bool:
    return isinstance(exc, OSError) or type(exc).__name__ == "SafetensorError"


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends it is fsynced and renamed onto ``path``.

    A failure (disk full, file too large, read-only) leaves no file behind and raises :class:`OutputError`.
    """
    path = Path(path)
    name = None
    gone = _vanished(path)
    if gone is not None:
        raise OutputError(
            f"cannot write {path}: {gone} was moved or removed while debiaskit was writing into it; "
            "debiaskit never recreates it, nothing was written there"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)  # no call between here and the try below: no Ctrl-C lands in between
    except BaseException as exc:
        # a Ctrl-C lands between bytecodes: once mkstemp has returned, its file is ours to remove (a test that sends
        # SIGINT during a training run's per-epoch checkpoint found it left behind, raised at os.close)
        if name is not None:
            Path(name).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from exc
        raise
    try:
        yield tmp
        os.chmod(tmp, file_mode())  # mkstemp makes 0600; outputs get the usual permissions
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if _is_write_failure(exc) and not isinstance(exc, OutputError):
            raise _write_error(path, exc) from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _vanished(path: Path) -> Path | None:
    """A folder debiaskit is working in that is gone (moved away mid-command): a staging folder, or the folder a
    staging or partial folder lives in. Recreating it would rebuild the old path, or write into whatever
    replaced it, so :func:`atomic_file` refuses instead."""
    for p in path.parents:
        if fnmatch.fnmatchcase(p.name, ".*.staging-*") and not p.exists():
            return p
        if fnmatch.fnmatchcase(p.name, ".*.partial") and not p.parent.exists():
            return p.parent
    return None


def json_safe(obj: Any) -> Any:
    """JSON-ready copy: NaN/inf become null (any JSON reader loads it), tensors lists, paths strings."""
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "tolist") and callable(obj.tolist):  # torch / numpy values
        return json_safe(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_text(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename); NaN becomes null so any JSON reader can load it."""
    write_text(path, json.dumps(json_safe(obj), indent=2) + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON file debiaskit wrote; a missing file is a :class:`DataError`, a bad one :class:`DamagedError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DamagedError(
            f"{path} is damaged (not valid JSON: {exc}); it was truncated or edited. "
            "Recreate it with the command that wrote it"
        ) from exc


def save_tensors(path: Path, tensors: dict[str, Any], *, metadata: dict[str, str] | None = None) -> str:
    """safetensors file written atomically (no pickle); contiguous CPU copies of ``tensors``. Returns the file's
    SHA-256 (records keep it to recognise the file later).

    Serialised in memory and written through :func:`atomic_file`: safetensors' own ``save_file`` writes a
    ``.tmpXXXXXX`` file of its own next to the target and renames it, which a killed process leaves behind -
    a file no debiaskit cleanup may remove (it cannot tell it from a user's), that kept a killed run's
    checkpoint folder from ever being cleared (tests/test_faults_output.py)."""
    from safetensors.torch import save

    state = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    data = save(state, metadata=metadata)
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


# -- checkpoints: tensors and their metadata in one file -------------------------------------------------------

CHECKPOINT_SCHEMA_VERSION = 1
_CHECKPOINT_KEY = "debiaskit"


def tensors_sha256(tensors: dict[str, Any]) -> str:
    """Digest of names, dtypes, shapes and bytes (sorted by name): detects torn or mixed checkpoints."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(path: Path, tensors: dict[str, Any], meta: dict[str, Any], *, kind: str) -> None:
    """One safetensors file holding ``tensors`` and, in its header, the JSON ``meta``, a kind, a schema
    version and the tensors' sha256; written atomically, so a checkpoint is always one consistent unit.

    Example::

        save_checkpoint(folder / "checkpoint.safetensors", {"w": w}, {"epoch": 3}, kind="train")
        tensors, meta = load_checkpoint(folder / "checkpoint.safetensors", kind="train")
    """
    header = {
        "schema_version": CHECKPOINT_SCHEMA_VERSION,
        "kind": kind,
        "sha256": tensors_sha256(tensors),
        "meta": meta,
    }
    save_tensors(path, tensors, metadata={_CHECKPOINT_KEY: json.dumps(json_safe(header))})


def load_checkpoint(path: Path, *, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a :func:`save_checkpoint` file: (tensors, meta). A truncated, foreign, newer or torn
    checkpoint raises :class:`DamagedError` saying so."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DataError(f"no checkpoint at {path}")
    fix = "start afresh (--force) or restore the file"
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(_CHECKPOINT_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for truncated or invalid files
        raise DamagedError(f"checkpoint {path} is damaged ({exc}); {fix}") from exc
    header = _checkpoint_header(path, raw, fix)
    if header.get("kind") != kind:
        raise DamagedError(f"{path} is a {header.get('kind')!r} checkpoint, expected a {kind!r} one; {fix}")
    version = header.get("schema_version")
    if not isinstance(version, int) or version > CHECKPOINT_SCHEMA_VERSION:
        raise DamagedError(
            f"{path} has checkpoint schema version {version!r}; this debiaskit reads up to "
            f"{CHECKPOINT_SCHEMA_VERSION}: upgrade debiaskit or {fix}"
        )
    if header.get("sha256") != tensors_sha256(tensors):
        raise DamagedError(
            f"checkpoint {path} is damaged: its tensors do not match their recorded checksum "
            f"(torn or mixed write); {fix}"
        )
    meta = header.get("meta")
    if not isinstance(meta, dict):
        raise DamagedError(f"checkpoint {path} is damaged: no metadata; {fix}")
    return tensors, meta


def _checkpoint_header(path: Path, raw: str | None, fix: str) -> dict[str, Any]:
    if raw is None:
        raise DamagedError(
            f"{path} is not a debiaskit checkpoint (no '{_CHECKPOINT_KEY}' metadata; "
            f"written by an older version?); {fix}"
        )
    try:
        header = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DamagedError(f"checkpoint {path} is damaged (metadata is not JSON: {exc}); {fix}") from exc
    if not isinstance(header, dict):
        raise DamagedError(f"checkpoint {path} is damaged (metadata is not an object); {fix}")
    return header


# -- folder kinds: what a command may replace ---------------------------------------------------------------------

_DEBIASKIT_HIDDEN = (".*.tmp", ".*.staging-*", ".*.partial", ".*.lock", ".*.old-*")


@dataclass(frozen=True)
class FolderKind:
    """A kind of output folder: recognised by its ``marker`` file whose ``"kind"`` field is in ``kinds``.

    ``files``: glob patterns of everything such a folder may hold (files or folders, besides recognised
    debiaskit sub-folders); anything else is a user's file and makes the folder irreplaceable. ``legacy``
    recognises markers written before the ``kind`` field existed (debiaskit 0.1.0); ``legacy_by_files``: a
    folder without marker is recognised when it holds only such files (0.1.0's data caches had no marker).
    """

    name: str
    marker: str
    kinds: tuple[str, ...]
    files: tuple[str, ...]
    describe: str
    legacy: Callable[[dict], bool] | None = None
    legacy_by_files: bool = False

    def recognises_folder(self, folder: Path) -> bool:
        if not (folder / self.marker).exists() and self.legacy_by_files:
            # its own files, not only (recognised) sub-folders: a folder of runs is no data cache
            own = any(any(fnmatch.fnmatchcase(e.name, p) for p in self.files) for e in folder.iterdir())
            return own and not foreign_entries(folder, self)
        return self.recognises(_marker(folder, self))

    def recognises(self, meta: Any) -> bool:
        if not isinstance(meta, dict) or meta.get("status", "finished") != "finished":
            return False
        if "kind" in meta:
            return meta["kind"] in self.kinds
        return self.legacy is not None and self.legacy(meta)


FOLDER_KINDS: dict[str, FolderKind] = {}


_Kind = TypeVar("_Kind", bound=FolderKind)


def register_folder_kind(kind: _Kind) -> _Kind:
    """Register a kind of output folder; the package that writes such folders calls it (in its ``_folders.py``)."""
    FOLDER_KINDS[kind.name] = kind
    return kind


_ALL_REGISTERED = False


def folder_kinds() -> list[FolderKind]:
    """Every kind of debiaskit folder, in name order (so the kind found never depends on import order).

    The first call imports every package of debiaskit (bar the CLI), each of which registers the kinds it
    writes: a check never misses a kind whose package the caller did not import (``train --force`` must
    recognise an FFW folder to refuse it, ``ffw`` or not). Only the packages' names are looked up here, never
    their layouts; an existing ``--out`` is the only case that pays for the imports.
    """
    global _ALL_REGISTERED
    if not _ALL_REGISTERED:
        for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
            if not module.name.startswith("_") and module.name != "cli":
                importlib.import_module(f"{__package__}.{module.name}")
        _ALL_REGISTERED = True
    return sorted(FOLDER_KINDS.values(), key=lambda k: k.name)


def folder_kind(name: object) -> FolderKind | None:
    """The registered kind called ``name`` (a marker's ``kind`` field), or None."""
    return next((k for k in folder_kinds() if k.name == name), None)


# -- suite roots: folders a command adds to over many invocations, never replaces -------------------------------


@dataclass(frozen=True)
class RootKind(FolderKind):
    """A folder a command fills over many invocations: a benchmark suite's root (cached cells + reports).

    It is never replaced as a whole: its command adds cells (atomic folders of their own kinds) and
    rewrites its report files (atomic files) in it, and only in a root it created (marked by ``bench.json``
    naming its kind) or, for roots written before the marker existed, one laid out as its command lays
    them out: at the top level only ``files`` (patterns of report files), ``dirs`` (patterns of folders
    holding only debiaskit folders and report files) and, with ``cells_at_top``, finished debiaskit folders.
    """

    dirs: tuple[str, ...] = ()
    cells_at_top: bool = False
    command: str = ""


_REPORT_FILES = ("*.json", "*.md", "*.png")  # what bench roots hold below the top besides debiaskit folders
_ROOT_HIDDEN = (".submitit",)  # submitit's job logs (bench compare --launcher slurm)


def open_root(root: Path, *, kind: RootKind, create: bool = True) -> Path:
    """Check, before any compute, that ``root`` may receive ``kind``'s cells and reports; return it normalised.

    A new or empty folder becomes a ``kind`` root (created with its marker when ``create``); a folder
    marked as ``kind`` or laid out as ``kind`` lays out its roots (written before markers) is accepted
    as it is. Anything else - a file, a user's folder, a run, another suite's root - is refused with
    :class:`~debiaskit.errors.RunExistsError`.
    """
    given, root = root, normalise_out(root)
    if root.exists() and not root.is_dir():
        raise RunExistsError(f"{given} is a file, not a folder; choose another --out")
    if root.is_dir() and any(not _hidden(e.name) for e in root.iterdir()):  # hidden: a cell's partial state, locks
        _check_root(given, root, kind)
        return root
    if create:
        _make_parents(root)
        _mark_root(given, root, kind)
    return root


def _check_root(given: Path, root: Path, kind: RootKind) -> None:
    never = "a bench command writes only into a suite folder it created; choose another --out"
    marker = root / kind.marker
    if marker.exists() or marker.is_symlink():
        meta = _marker(root, kind)
        if not isinstance(meta, dict) or not isinstance(meta.get("kind"), str):
            raise RunExistsError(
                f"{marker} is damaged (expected a JSON object with a 'kind'); if {given} is a "
                f"suite folder of yours, restore it, else {never}"
            )
        if meta["kind"] in kind.kinds:
            return
        other = folder_kind(meta["kind"])
        what = other.describe if other is not None else f"a folder of kind {meta['kind']!r}"
        raise RunExistsError(f"{given} is {what}, not {kind.describe}; {never}")
    found = recognise(root)
    if found is not None:
        raise RunExistsError(f"{given} is {found.describe}, not {kind.describe}; {never}")
    foreign, cells = _root_layout(root, kind)
    if foreign or not (cells or _is_bench_report(root / "results.json")):
        shown = ", ".join(foreign[:5]) + (f" (+{len(foreign) - 5} more)" if len(foreign) > 5 else "")
        why = f"holds files a bench suite does not write ({shown})" if foreign else "holds no benchmark cell"
        raise RunExistsError(
            f"{given} is an existing folder that is not {kind.describe} (no {kind.marker}, and it {why}); {never}"
        )


def _hidden(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in _DEBIASKIT_HIDDEN + _ROOT_HIDDEN)


def _is_bench_report(path: Path) -> bool:
    """A results.json a bench command wrote (it records the command and the machine)."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "command" in meta and "machine" in meta


def _root_layout(root: Path, kind: RootKind) -> tuple[list[str], int]:
    """(entries ``kind``'s command does not write, number of debiaskit folders) of an unmarked ``root``."""
    foreign, cells = [], 0
    for entry in sorted(root.iterdir()):
        name = entry.name
        if _hidden(name):
            continue
        if entry.is_symlink():
            foreign.append(name)
        elif entry.is_dir() and recognise(entry) is not None:
            cells += 1
            if not kind.cells_at_top:
                foreign.append(name)
        elif entry.is_dir() and any(fnmatch.fnmatchcase(name, p) for p in kind.dirs):
            below, n = _only_debiaskit(entry, depth=4)
            foreign += [f"{name}/{x}" for x in below]
            cells += n
        elif not entry.is_file() or not any(fnmatch.fnmatchcase(name, p) for p in kind.files if p not in kind.dirs):
            foreign.append(name)
    return foreign, cells


def _only_debiaskit(folder: Path, *, depth: int) -> tuple[list[str], int]:
    """(entries that are neither debiaskit folders nor report files, number of debiaskit folders) below a root."""
    foreign, cells = [], 0
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if any(fnmatch.fnmatchcase(name, p) for p in _DEBIASKIT_HIDDEN):
            continue
        if entry.is_symlink():
            foreign.append(name)
        elif entry.is_dir() and recognise(entry) is not None:
            cells += 1
        elif entry.is_dir() and depth > 0:
            below, n = _only_debiaskit(entry, depth=depth - 1)
            foreign += [f"{name}/{x}" for x in below]
            cells += n
        elif not entry.is_file() or not any(fnmatch.fnmatchcase(name, p) for p in _REPORT_FILES):
            foreign.append(name)
    return foreign, cells


def _mark_root(given: Path, root: Path, kind: RootKind) -> None:
    """Create ``root``'s marker if absent (no-replace: of two commands creating it at once, one marker wins)."""
    text = json.dumps({"kind": kind.kinds[0], "schema_version": 1, "command": kind.command}, indent=2) + "\n"
    try:
        root.mkdir(exist_ok=True)
        fd, name = tempfile.mkstemp(dir=root, prefix=f".{kind.marker}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(name, file_mode())
            os.link(name, root / kind.marker)  # fails if a marker is there: never replaced
        except FileExistsError:
            pass
        finally:
            os.unlink(name)
    except OSError as exc:
        raise _write_error(root, exc) from exc
    _check_root(given, root, kind)  # the marker there now, ours or a concurrent command's, must be ours


def _marker(folder: Path, kind: FolderKind) -> Any:
    try:
        return json.loads((folder / kind.marker).read_text())
    except (OSError, ValueError):
        return None


def recognise(folder: Path) -> FolderKind | None:
    """The kind of a finished debiaskit folder, or None (not a folder, no valid marker, unfinished)."""
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        return None
    for kind in folder_kinds():
        if kind.recognises_folder(folder):
            return kind
    return None


def foreign_entries(folder: Path, kind: FolderKind) -> list[str]:
    """Entries of ``folder`` that a ``kind`` folder does not write (a user's files), sub-folders included."""
    out = []
    for entry in sorted(Path(folder).iterdir()):
        name = entry.name
        if entry.is_symlink():
            out.append(name)
        elif any(fnmatch.fnmatchcase(name, p) for p in _DEBIASKIT_HIDDEN):
            out += hidden_foreign(entry)  # named like debiaskit's working files: ours only if they hold only ours
        elif any(fnmatch.fnmatchcase(name, p) for p in kind.files):
            continue
        elif entry.is_dir() and (inner := recognise(entry)) is not None:
            out += [f"{name}/{x}" for x in foreign_entries(entry, inner)]
        else:
            out.append(name)
    return out


# -- hidden working folders: staging, partial, old copies (never followed through a link) -------------------------

STAGING_MARKER = ".debiaskit-staging"  # in a staging folder while it is built ({"kind", "pid"}); gone once published
PARTIAL_FILES = ("checkpoint.safetensors", ".checkpoint.safetensors.*.tmp")  # what a .OUT.partial folder holds
_TEMP_FILES = (".*.tmp",)  # atomic_file's temporary names


def _link_error(path: Path, what: str) -> OutputError:
    return OutputError(
        f"{path} is a symbolic link where debiaskit keeps {what}; debiaskit never follows it (its "
        f"target is left untouched). Remove the link (`rm {path}`) and run again"
    )


def real_dir(path: Path, *, what: str) -> bool:
    """True when ``path`` is a real folder, False when it is absent; a symbolic link or a file in its place (a
    folder debiaskit works in: ``what``) is refused with :class:`OutputError`, and never followed."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise _link_error(path, what)
    if not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{path} is a file where debiaskit keeps {what}; move it away and run again")
    return True


def _open_dir(path: Path | str, *, what: str, dir_fd: int | None = None) -> int:
    """A descriptor of the real folder ``path`` (O_NOFOLLOW: a link swapped in is refused, not followed)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _link_error(Path(path), what) from exc
        raise _write_error(Path(path), exc) from exc


def remove_owned(folder: Path, patterns: tuple[str, ...], *, what: str) -> list[str]:
    """Remove the regular files of ``folder`` matching ``patterns`` (the files a command wrote there), then the
    folder itself if that left it empty; return the names left (files the command did not write). Nothing is
    followed through a link: a link at ``folder`` is refused (:func:`real_dir`), links inside it stay."""
    if not real_dir(folder, what=what):
        return []
    fd = _open_dir(folder, what=what)
    left = []
    try:
        for name in os.listdir(fd):
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and any(fnmatch.fnmatchcase(name, p) for p in patterns):
                os.unlink(name, dir_fd=fd)
            else:
                left.append(name)
    finally:
        os.close(fd)
    if not left:
        try:
            os.rmdir(folder)  # a link swapped in meanwhile is not removed (ENOTDIR)
        except OSError:
            pass
    return sorted(left)


def _staging_marker(folder: Path) -> dict | None:
    try:
        fd = os.open(folder / STAGING_MARKER, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _staging_foreign(folder: Path) -> list[str]:
    """Entries of a staging-named real folder that debiaskit did not write: all of them when it lacks debiaskit's
    marker (a user's folder that only looks like ours), else those its kind does not write."""
    names = sorted(os.listdir(folder))
    meta = _staging_marker(folder)
    name = meta.get("kind") if meta else None
    kind = folder_kind(name) if isinstance(name, str) else None
    if kind is None:
        return names
    return [
        n
        for n in names
        if n != STAGING_MARKER
        and (os.path.islink(folder / n) or not any(fnmatch.fnmatchcase(n, p) for p in kind.files + _TEMP_FILES))
    ]


def hidden_foreign(entry: Path) -> list[str]:
    """What an entry named like debiaskit's working files (``.X.staging-*``, ``.X.partial``, ``.X.lock``, ...)
    holds that debiaskit did not write, as paths relative to the entry's folder ([]: all of it is debiaskit's)."""
    name = entry.name
    if entry.is_symlink():
        return [name]
    if fnmatch.fnmatchcase(name, ".*.tmp") or fnmatch.fnmatchcase(name, ".*.lock"):
        return [] if entry.is_file() else [name]
    if not entry.is_dir():
        return [name]
    if fnmatch.fnmatchcase(name, ".*.staging-*"):
        return [f"{name}/{x}" for x in _staging_foreign(entry)]
    if fnmatch.fnmatchcase(name, ".*.partial"):
        return [
            f"{name}/{e.name}"
            for e in sorted(entry.iterdir())
            if e.is_symlink() or not e.is_file() or not any(fnmatch.fnmatchcase(e.name, p) for p in PARTIAL_FILES)
        ]
    kind = recognise(entry)  # .X.old-*: the replaced folder, moved aside
    return [name] if kind is None else [f"{name}/{x}" for x in foreign_entries(entry, kind)]


# -- commit identity: an input read at the start is the one there at the end ------------------------------------


@dataclass(frozen=True)
class FolderIdentity:
    """An input folder as it was read: its path, (st_dev, st_ino) and the sha256 of its record file."""

    path: Path
    marker: str
    dev: int | None
    ino: int | None
    digest: str | None


def folder_identity(folder: Path, marker: str) -> FolderIdentity:
    """Identify ``folder`` (a missing one too: then everything is None) by inode and its ``marker`` file's hash."""
    folder = Path(folder)
    try:
        st = os.stat(folder)
    except OSError:
        return FolderIdentity(folder, marker, None, None, None)
    try:
        digest = hashlib.sha256((folder / marker).read_bytes()).hexdigest()
    except OSError:
        digest = None
    return FolderIdentity(folder, marker, st.st_dev, st.st_ino, digest)


def _moved(out: Path, parent_fd: int, pinned: tuple[FolderIdentity, ...]) -> str | None:
    """Why publishing now would write into the wrong folder (None: it would not)."""
    for ident in pinned:
        if ident.ino is not None and folder_identity(ident.path, ident.marker) != ident:
            return f"{ident.path} was moved or replaced while debiaskit was running; nothing was written"
    try:
        here = os.stat(out.parent)
    except OSError:
        here = None
    there = os.fstat(parent_fd)
    if here is None or (here.st_dev, here.st_ino) != (there.st_dev, there.st_ino):
        return f"{out.parent} (the folder {out.name} goes in) was moved or replaced while debiaskit was running; nothing was written"
    return None


# -- the output rule ------------------------------------------------------------------------------------------------


def normalise_out(out: Path) -> Path:
    """Absolute ``out`` with its parent's symlinks and ``..`` resolved (``a/b/..`` -> ``a``, ``.`` -> cwd)."""
    absolute = Path(os.path.abspath(out))
    if absolute.parent == absolute:
        raise OutputError(f"--out {out} is the file system root; choose a folder")
    return absolute.parent.resolve() / absolute.name


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output(out: Path, *, kind: FolderKind, force: bool = False, inputs: tuple[Path, ...] = ()) -> Path:
    """Apply the output rule to ``out`` before any compute; return the normalised path.

    Refuses (RunExistsError) a file, a symlink, a folder that is not a finished ``kind`` folder or holds
    a user's files, a folder holding ``inputs`` or the working directory, and (without ``force``) a
    finished ``kind`` folder.
    """
    given, out = out, normalise_out(out)
    for inp in inputs:
        if _inside(normalise_out(inp).resolve(), out.resolve() if out.exists() else out):
            raise RunExistsError(
                f"--out {given} is (or holds) the input {inp}; writing there would replace it. Choose another --out"
            )
    if out.exists() and _inside(Path.cwd().resolve(), out.resolve()):
        raise RunExistsError(f"--out {given} is (or holds) the current folder; choose another --out")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        what = "a symbolic link" if out.is_symlink() else "a file, not a folder"
        raise RunExistsError(
            f"{given} is {what}; debiaskit never replaces it (with or without --force). Choose another --out"
        )
    _check_name_length(given, out)
    if not out.exists():
        return out
    _check_replaceable(given, out, kind)
    if not force:
        raise RunExistsError(f"{given} is {kind.describe}; choose another --out or pass --force to replace it")
    return out


# the longest hidden sibling debiaskit makes beside OUT: ".OUT.staging-PID-TOKEN" (a pid of up to 10 digits)
_SIBLING_EXTRA = len(".") + len(".staging-") + 10 + len("-") + 8


def _name_max(folder: Path) -> int:
    """The longest file name (bytes) the file system of ``folder`` (or its nearest existing parent) allows."""
    for p in (folder, *folder.parents):
        try:
            return os.pathconf(p, "PC_NAME_MAX")
        except (OSError, ValueError):
            continue
    return 255


def _check_name_length(given: Path, out: Path) -> None:
    """Before any compute: OUT's hidden siblings (.OUT.staging-..., .OUT.partial, .OUT.lock) must fit NAME_MAX."""
    limit, size = _name_max(out.parent), len(os.fsencode(out.name))
    if size + _SIBLING_EXTRA > limit:
        raise OutputError(
            f"--out {given}: its name is {size} bytes long; debiaskit keeps hidden working folders "
            f"beside it (.NAME.staging-PID-TOKEN, .NAME.partial, .NAME.lock) whose names must fit this "
            f"file system's limit of {limit} bytes: choose a name of at most {limit - _SIBLING_EXTRA} bytes"
        )


def _check_replaceable(given: Path, out: Path, kind: FolderKind) -> None:
    never = "debiaskit never replaces it (with or without --force); choose another --out"
    if not kind.recognises_folder(out):
        found = recognise(out)
        if found is None:
            raise RunExistsError(
                f"{given} is an existing folder that is not {kind.describe} (no finished {kind.marker}); {never}"
            )
        raise RunExistsError(f"{given} is {found.describe}, not {kind.describe}; {never}")
    foreign = foreign_entries(out, kind)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" (+{len(foreign) - 5} more)" if len(foreign) > 5 else "")
        raise RunExistsError(
            f"{given} is {kind.describe} but also holds files debiaskit did not write ({shown}); "
            f"{never}, or move those files out"
        )


def sibling(out: Path, tag: str) -> Path:
    """Hidden sibling of ``out`` (``.NAME.TAG``) where debiaskit keeps staging, locks and partial state."""
    return out.parent / f".{out.name}.{tag}"


@contextmanager
def output_lock(out: Path, *, dir_fd: int | None = None) -> Iterator[None]:
    """Exclusive advisory lock on ``.OUT.lock``; a second holder fails at once with OutputBusyError.

    ``dir_fd``: the folder ``out`` is in, opened: the lock is made and removed there even if that folder is
    moved meanwhile (never in a folder put at its old path). A link at ``.OUT.lock`` is refused, not followed
    (opening it would create or truncate its target)."""
    path = sibling(out, "lock")
    where = path.name if dir_fd is not None else path
    while True:
        fd = _open_lock(path, where, report=out, dir_fd=dir_fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputBusyError(
                f"another process (pid {holder}) is writing {out} right now; wait for it to "
                "finish or choose another --out"
            ) from None
        if _same_file(fd, where, dir_fd=dir_fd):  # not a lock file a finishing holder has just unlinked
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        try:  # unlinked while held: a waiter re-checks the inode and retries
            os.unlink(where, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        os.close(fd)


def _open_lock(path: Path, where: Path | str, *, report: Path, dir_fd: int | None = None) -> int:
    try:
        return os.open(where, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, file_mode(), dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _link_error(path, "a lock file") from exc
        raise _write_error(report, exc) from exc


REPORTS_LOCK = ".reports.lock"


@contextmanager
def report_lock(root: Path) -> Iterator[None]:
    """Serialise the rewrites of a suite root's report files: an exclusive advisory lock on
    ``ROOT/.reports.lock``, waited for (a rewrite takes a moment). A suite reads every finished cell on disk
    and rewrites its reports while holding it, so a cell that finished before a rewrite began is in that
    report and in every later one: two ``debiaskit bench`` processes sharing a root never drop each other's
    cells (each rewrite also stays whole and atomic, :func:`write_text`)."""
    path = Path(root) / REPORTS_LOCK
    while True:
        fd = _open_lock(path, path, report=Path(root))
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _same_file(fd, path):  # not a lock file a finishing holder has just unlinked
            break
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # unlinked while held: a waiter re-checks the inode and retries
        os.close(fd)


def _same_file(fd: int, path: Path | str, *, dir_fd: int | None = None) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path, dir_fd=dir_fd, follow_symlinks=False).st_ino
    except FileNotFoundError:
        return False


_STAGING = re.compile(r"staging-(\d+)-")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(out: Path) -> list[Path]:
    """Under ``out``'s lock: remove staging folders of dead processes (only real folders carrying debiaskit's
    marker and holding only what their kind writes) and old copies of a finished replacement; report (return)
    what must stay. A symbolic link named like one of them is refused, never followed."""
    kept, not_ours = [], []
    for entry in sorted(out.parent.glob(f".{glob_escape(out.name)}.staging-*")):
        real_dir(entry, what="a staging folder")
        match = _STAGING.search(entry.name[len(out.name) + 1 :])
        if not match or _pid_alive(int(match.group(1))):
            kept.append(entry)
        elif not _remove_if_ours(entry, _staging_foreign(entry)):
            not_ours.append(entry)
    for entry in sorted(out.parent.glob(f".{glob_escape(out.name)}.old-*")):
        real_dir(entry, what="the old copy of a replaced folder")
        if not out.exists():  # the replacement did not finish: the old copy may be the only one
            kept.append(entry)
        elif not _remove_if_ours(entry, hidden_foreign(entry)):
            not_ours.append(entry)
    for entry in kept:
        log.warning(
            "%s was left by an interrupted debiaskit command (an older version, or another machine); "
            "remove it, or rename it to %s if it holds the folder you want",
            entry,
            out.name,
        )
    return kept + not_ours


def _remove_if_ours(entry: Path, foreign: list[str]) -> bool:
    """Remove ``entry`` (a real folder) when nothing in it is foreign; else warn, naming what is not ours."""
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" (+{len(foreign) - 5} more)" if len(foreign) > 5 else "")
        log.warning(
            "%s is named like a debiaskit working folder but holds files debiaskit did not write (%s); it "
            "is left as it is: move those files out and remove it",
            entry,
            shown,
        )
        return False
    shutil.rmtree(entry, ignore_errors=True)  # rmtree never follows links (and refuses one at the top)
    return True


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _make_parents(folder: Path) -> list[Path]:
    """Create missing parents of ``folder``; return the ones created (removed again on failure)."""
    created = []
    for p in reversed([folder, *folder.parents]):
        if not p.exists():
            try:
                p.mkdir()
            except FileExistsError:
                continue
            except OSError as exc:
                raise _write_error(p, exc) from exc
            created.append(p)
        elif not p.is_dir():
            raise OutputError(f"cannot write under {folder}: {p} is a file, not a folder; choose another --out")
    return created


def _new_staging(out: Path, *, kind: FolderKind, dir_fd: int) -> Path:
    """A new staging folder beside ``out`` (in the opened folder ``dir_fd``), carrying debiaskit's marker: the proof,
    for a later cleanup, that debiaskit made it (a folder merely named like one is never removed)."""
    name = f".{out.name}.staging-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.mkdir(out.parent / name)  # the umask gives it the usual permissions
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)  # made in the folder held open (not one put in its place)
        fd = os.open(
            f"{name}/{STAGING_MARKER}", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, file_mode(), dir_fd=dir_fd
        )  # also the probe that the folder is writable
        with os.fdopen(fd, "w") as f:
            json.dump({"kind": kind.name, "pid": os.getpid()}, f)
    except OSError as exc:
        shutil.rmtree(name, dir_fd=dir_fd, ignore_errors=True)
        raise _write_error(out.parent, exc) from exc
    return out.parent / name


# renameat2(2) flags: swap two paths atomically, or rename only if the target is absent.
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2


def _renameat2(src: str, dst: str, flags: int, *, dir_fd: int) -> bool:
    """True when done; False when the OS or file system lacks renameat2 (callers fall back)."""
    func = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if func is None:
        return False
    if func(dir_fd, os.fsencode(src), dir_fd, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), dst)


def _publish(name: str, out: Path, *, dir_fd: int) -> None:
    """Move the finished staging folder ``name`` to ``out``, both in the opened folder ``dir_fd``; an old ``out``
    (already checked replaceable) goes away."""
    try:
        os.stat(out.name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        if not _renameat2(name, out.name, _RENAME_NOREPLACE, dir_fd=dir_fd):
            os.rename(name, out.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return
    if _renameat2(name, out.name, _RENAME_EXCHANGE, dir_fd=dir_fd):  # staging now holds the old folder
        shutil.rmtree(name, dir_fd=dir_fd, ignore_errors=True)
        return
    trash = f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
    os.rename(out.name, trash, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    os.rename(name, out.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    shutil.rmtree(trash, dir_fd=dir_fd, ignore_errors=True)


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


@contextmanager
def atomic_folder(
    out: Path,
    *,
    kind: FolderKind,
    force: bool = False,
    inputs: tuple[Path, ...] = (),
    pinned: tuple[FolderIdentity, ...] = (),
) -> Iterator[Path]:
    """Yield an empty staging folder for a new ``kind`` folder at ``out``; publish it atomically on success.

    Open it *before* any compute: the output rule (see the module docstring) is checked at once, the
    lock is held until the final rename, and the destination is checked again under the lock and just
    before the rename. On failure the staging folder (and any parent created for it) is removed and an
    existing ``out`` is left untouched. The folder ``out`` goes in is held open from the start: staging, lock
    and the final rename all happen in it, and if it (or an input in ``pinned``, see :func:`folder_identity`)
    was moved or replaced meanwhile, nothing is published (:class:`OutputError`).

    Example::

        with atomic_folder(Path("runs/r1"), kind=RUN_FOLDER, force=False) as staging:
            write_json(staging / "run.json", {...})
    """
    out = check_output(out, kind=kind, force=force, inputs=inputs)
    created = _make_parents(out.parent)
    try:
        parent = _open_dir(out.parent, what="the folder of --out")
        try:
            with output_lock(out, dir_fd=parent):
                check_output(out, kind=kind, force=force, inputs=inputs)
                clean_stale(out)
                staging = _new_staging(out, kind=kind, dir_fd=parent)
                try:
                    yield staging
                    moved = _moved(out, parent, pinned)
                    if moved:
                        raise OutputError(moved)
                    check_output(out, kind=kind, force=force, inputs=inputs)
                    os.unlink(f"{staging.name}/{STAGING_MARKER}", dir_fd=parent)
                    _publish(staging.name, out, dir_fd=parent)
                except BaseException as exc:
                    shutil.rmtree(staging.name, dir_fd=parent, ignore_errors=True)  # wherever the folder is now
                    _reraise(exc, out, staging, _moved(out, parent, pinned) if isinstance(exc, Exception) else None)
        finally:
            os.close(parent)
    except BaseException:
        for p in reversed(created):
            _rmdir_if_empty(p)
        raise


def _reraise(exc: BaseException, out: Path, staging: Path, moved: str | None) -> None:
    if moved and not (isinstance(exc, OutputError) and str(exc) == moved):
        raise OutputError(moved) from exc  # the write that failed mid-move is a symptom; the move is the cause
    if isinstance(exc, OutputError):  # name the destination the user gave, not our staging folder
        raise type(exc)(str(exc).replace(str(staging), str(out))) from exc
    if _is_write_failure(exc) and getattr(exc, "errno", None) in _FULL:
        raise _write_error(out, exc) from exc
    raise exc


def _rmdir_if_empty(p: Path) -> None:
    try:
        p.rmdir()
    except OSError:
        pass
