"""Safe output, the bottom layer: atomic files, exclusive atomic folders, one-file checkpoints.

Imports nothing of debiaskit except ``errors``, so ``data/``, ``models/``, ``runs`` and every command
may use it.

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
- Staging folders of a dead process (SIGKILL) are removed by the next writer of the same ``OUT``.
- Files get the usual permissions under the umask, and a full disk or a file-size limit is a clear
  :class:`~debiaskit.errors.OutputError`, never a half-written file.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import fnmatch
import hashlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

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
    hint = _WRITE_HINTS.get(code, "check the destination and try again")
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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)   # no call between here and the try below: no Ctrl-C lands in between
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
        raise DamagedError(f"{path} is damaged (not valid JSON: {exc}); it was truncated or edited. "
                           "Recreate it with the command that wrote it") from exc


def save_tensors(path: Path, tensors: dict[str, Any], *, metadata: dict[str, str] | None = None) -> None:
    """safetensors file written atomically (no pickle); contiguous CPU copies of ``tensors``.

    Serialised in memory and written through :func:`atomic_file`: safetensors' own ``save_file`` writes a
    ``.tmpXXXXXX`` file of its own next to the target and renames it, which a killed process leaves behind -
    a file no debiaskit cleanup may remove (it cannot tell it from a user's), that kept a killed run's
    checkpoint folder from ever being cleared (tests/test_faults_output.py)."""
    from safetensors.torch import save
    state = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    data = save(state, metadata=metadata)
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


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
    header = {"schema_version": CHECKPOINT_SCHEMA_VERSION, "kind": kind, "sha256": tensors_sha256(tensors),
              "meta": meta}
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
        raise DamagedError(f"{path} has checkpoint schema version {version!r}; this debiaskit reads up to "
                           f"{CHECKPOINT_SCHEMA_VERSION}: upgrade debiaskit or {fix}")
    if header.get("sha256") != tensors_sha256(tensors):
        raise DamagedError(f"checkpoint {path} is damaged: its tensors do not match their recorded checksum "
                           f"(torn or mixed write); {fix}")
    meta = header.get("meta")
    if not isinstance(meta, dict):
        raise DamagedError(f"checkpoint {path} is damaged: no metadata; {fix}")
    return tensors, meta


def _checkpoint_header(path: Path, raw: str | None, fix: str) -> dict[str, Any]:
    if raw is None:
        raise DamagedError(f"{path} is not a debiaskit checkpoint (no '{_CHECKPOINT_KEY}' metadata; "
                           f"written by an older version?); {fix}")
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


def register_folder_kind(kind: FolderKind) -> FolderKind:
    FOLDER_KINDS[kind.name] = kind
    return kind


RUN_FOLDER = register_folder_kind(FolderKind(
    "run", "run.json", ("train", "unlearn", "compare-cell"), describe="a finished run",
    files=("run.json", "model.safetensors", "train_log.jsonl", "dynamics.safetensors", "result.json",
           "checkpoint*.safetensors"),
    legacy=lambda m: m.get("status") == "finished" and "model" in m))
AUDIT_FOLDER = register_folder_kind(FolderKind(
    "audit", "audit.json", ("audit",), describe="an audit report folder",
    files=("audit.json", "report.md", "*.png"), legacy=lambda m: "attributes" in m and "task_accuracy" in m))
FFW_FOLDER = register_folder_kind(FolderKind(
    "ffw", "ffw.json", ("ffw",), describe="a finished FFW folder",
    files=("ffw.json", "report.md", "model.safetensors", "masks.safetensors")))
DISCOVER_FOLDER = register_folder_kind(FolderKind(
    "discover", "report.json", ("discover",), describe="a discover folder",
    files=("pseudo_bias.safetensors", "report.json", "report.md"),
    legacy=lambda m: "rule" in m and "quality" in m))
DATA_CACHE = register_folder_kind(FolderKind(
    "data-cache", "source.json", ("data-cache", "debiaskit-adult-files"), describe="a debiaskit data cache",
    files=("source.json", "*-ubyte", "*-ubyte.gz", "cifar-10-batches-bin", "adult.data", "adult.test", "adult.names"),
    legacy_by_files=True))   # "debiaskit-adult-files": the Adult caches of earlier versions, still ours
BENCH_CELL = register_folder_kind(FolderKind(
    "bench-cell", "result.json", ("bench-cell",), describe="a benchmark cell",
    files=("result.json", "run.json", "model.safetensors", "*.png", "test_predictions.safetensors"),
    # harness cells (method_state), unsup cells (cell), fairlearn rows of bench adult (suite/method/seed only)
    legacy=lambda m: "method_state" in m or "cell" in m or {"suite", "method", "seed"} <= m.keys()))



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


def _bench_root(command: str, files: tuple[str, ...], dirs: tuple[str, ...] = (), cells_at_top: bool = False) -> RootKind:
    return register_folder_kind(RootKind(
        f"bench-{command}", "bench.json", (f"bench-{command}",), files=("bench.json", *files) + dirs,
        describe=f"a `debiaskit bench {command}` suite folder", dirs=dirs, cells_at_top=cells_at_top,
        command=f"debiaskit bench {command}"))


BENCH_VANILLA_ROOT = _bench_root("vanilla", ("results.md", "results.json"), cells_at_top=True)
BENCH_COMPARE_ROOT = _bench_root("compare", (), dirs=("*",))   # `bench adult` shares it (the compare suite `adult`)
BENCH_UNSUP_ROOT = _bench_root("unsup", ("summary.md", "results.json", "discovery_over_time.png"), dirs=("*",))
BENCH_FFW_ROOT = _bench_root("ffw", ("results.md", "results.json"), dirs=("cells", "ffw", "vanilla-short", "vanilla-other"))
BENCH_DEV_ROOT = _bench_root("dev", (), dirs=("*",))   # BUDGET/results.md + BUDGET/CELL/seedS records
_REPORT_FILES = ("*.json", "*.md", "*.png")   # what bench roots hold below the top besides debiaskit folders
_ROOT_HIDDEN = (".submitit",)   # submitit's job logs (bench compare --launcher slurm)


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
    if root.is_dir() and any(not _hidden(e.name) for e in root.iterdir()):   # hidden: a cell's partial state, locks
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
            raise RunExistsError(f"{marker} is damaged (expected a JSON object with a 'kind'); if {given} is a "
                                 f"suite folder of yours, restore it, else {never}")
        if meta["kind"] in kind.kinds:
            return
        other = FOLDER_KINDS.get(meta["kind"])
        what = other.describe if other is not None else f"a folder of kind {meta['kind']!r}"
        raise RunExistsError(f"{given} is {what}, not {kind.describe}; {never}")
    found = recognise(root)
    if found is not None:
        raise RunExistsError(f"{given} is {found.describe}, not {kind.describe}; {never}")
    foreign, cells = _root_layout(root, kind)
    if foreign or not (cells or _is_bench_report(root / "results.json")):
        shown = ", ".join(foreign[:5]) + (f" (+{len(foreign) - 5} more)" if len(foreign) > 5 else "")
        why = f"holds files a bench suite does not write ({shown})" if foreign else "holds no benchmark cell"
        raise RunExistsError(f"{given} is an existing folder that is not {kind.describe} (no {kind.marker}, and it "
                             f"{why}); {never}")


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
            os.link(name, root / kind.marker)   # fails if a marker is there: never replaced
        except FileExistsError:
            pass
        finally:
            os.unlink(name)
    except OSError as exc:
        raise _write_error(root, exc) from exc
    _check_root(given, root, kind)   # the marker there now, ours or a concurrent command's, must be ours


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
    for kind in FOLDER_KINDS.values():
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
        elif any(fnmatch.fnmatchcase(name, p) for p in _DEBIASKIT_HIDDEN + kind.files):
            continue
        elif entry.is_dir() and recognise(entry) is not None:
            out += [f"{name}/{x}" for x in foreign_entries(entry, recognise(entry))]
        else:
            out.append(name)
    return out


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
            raise RunExistsError(f"--out {given} is (or holds) the input {inp}; writing there would replace it. "
                                 "Choose another --out")
    if out.exists() and _inside(Path.cwd().resolve(), out.resolve()):
        raise RunExistsError(f"--out {given} is (or holds) the current folder; choose another --out")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        what = "a symbolic link" if out.is_symlink() else "a file, not a folder"
        raise RunExistsError(f"{given} is {what}; debiaskit never replaces it (with or without --force). "
                             "Choose another --out")
    if not out.exists():
        return out
    _check_replaceable(given, out, kind)
    if not force:
        raise RunExistsError(f"{given} is {kind.describe}; choose another --out or pass --force to replace it")
    return out


def _check_replaceable(given: Path, out: Path, kind: FolderKind) -> None:
    never = "debiaskit never replaces it (with or without --force); choose another --out"
    if not kind.recognises_folder(out):
        found = recognise(out)
        if found is None:
            raise RunExistsError(f"{given} is an existing folder that is not {kind.describe} (no finished "
                                 f"{kind.marker}); {never}")
        raise RunExistsError(f"{given} is {found.describe}, not {kind.describe}; {never}")
    foreign = foreign_entries(out, kind)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" (+{len(foreign) - 5} more)" if len(foreign) > 5 else "")
        raise RunExistsError(f"{given} is {kind.describe} but also holds files debiaskit did not write ({shown}); "
                             f"{never}, or move those files out")


def sibling(out: Path, tag: str) -> Path:
    """Hidden sibling of ``out`` (``.NAME.TAG``) where debiaskit keeps staging, locks and partial state."""
    return out.parent / f".{out.name}.{tag}"


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``.OUT.lock``; a second holder fails at once with OutputBusyError."""
    path = sibling(out, "lock")
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())
        except OSError as exc:
            raise _write_error(out, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputBusyError(f"another process (pid {holder}) is writing {out} right now; wait for it to "
                                  "finish or choose another --out") from None
        if _same_file(fd, path):  # not a lock file a finishing holder has just unlinked
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # unlinked while held: a waiter re-checks the inode and retries
        os.close(fd)


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
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())
        except OSError as exc:
            raise _write_error(Path(root), exc) from exc
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _same_file(fd, path):  # not a lock file a finishing holder has just unlinked
            break
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # unlinked while held: a waiter re-checks the inode and retries
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
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
    """Under ``out``'s lock: remove staging folders of dead processes; report (return) what must stay."""
    kept = []
    for entry in out.parent.glob(f".{glob_escape(out.name)}.staging-*"):
        match = _STAGING.search(entry.name[len(out.name) + 1:])
        if match and not _pid_alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
        else:
            kept.append(entry)
    for entry in out.parent.glob(f".{glob_escape(out.name)}.old-*"):
        if out.exists():  # the replacement finished; the old copy was meant to go
            shutil.rmtree(entry, ignore_errors=True)
        else:
            kept.append(entry)
    for entry in kept:
        log.warning("%s was left by an interrupted debiaskit command (an older version, or another machine); "
                    "remove it, or rename it to %s if it holds the folder you want", entry, out.name)
    return kept


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


def _new_staging(out: Path) -> Path:
    staging = sibling(out, f"staging-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        staging.mkdir()  # the umask gives it the usual permissions
        probe = staging / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise _write_error(out.parent, exc) from exc
    return staging


# renameat2(2) flags: swap two paths atomically, or rename only if the target is absent.
_RENAME_NOREPLACE, _RENAME_EXCHANGE, _AT_FDCWD = 1, 2, -100


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """True when done; False when the OS or file system lacks renameat2 (callers fall back)."""
    func = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if func is None:
        return False
    if func(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(dst))


def _publish(staging: Path, out: Path) -> None:
    """Move the finished ``staging`` to ``out``; an old ``out`` (already checked replaceable) goes away."""
    if not out.exists():
        if not _renameat2(staging, out, _RENAME_NOREPLACE):
            os.rename(staging, out)
        return
    if _renameat2(staging, out, _RENAME_EXCHANGE):  # staging now holds the old folder
        shutil.rmtree(staging, ignore_errors=True)
        return
    trash = sibling(out, f"old-{os.getpid()}-{secrets.token_hex(4)}")
    os.rename(out, trash)
    os.rename(staging, out)
    shutil.rmtree(trash, ignore_errors=True)


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


@contextmanager
def atomic_folder(out: Path, *, kind: FolderKind, force: bool = False,
                  inputs: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Yield an empty staging folder for a new ``kind`` folder at ``out``; publish it atomically on success.

    Open it *before* any compute: the output rule (see the module docstring) is checked at once, the
    lock is held until the final rename, and the destination is checked again under the lock and just
    before the rename. On failure the staging folder (and any parent created for it) is removed and an
    existing ``out`` is left untouched.

    Example::

        with atomic_folder(Path("runs/r1"), kind=RUN_FOLDER, force=False) as staging:
            write_json(staging / "run.json", {...})
    """
    out = check_output(out, kind=kind, force=force, inputs=inputs)
    created = _make_parents(out.parent)
    try:
        with output_lock(out):
            check_output(out, kind=kind, force=force, inputs=inputs)
            clean_stale(out)
            staging = _new_staging(out)
            try:
                yield staging
                check_output(out, kind=kind, force=force, inputs=inputs)
                _publish(staging, out)
            except BaseException as exc:
                shutil.rmtree(staging, ignore_errors=True)
                if isinstance(exc, OutputError):  # name the destination the user gave, not our staging folder
                    raise type(exc)(str(exc).replace(str(staging), str(out))) from exc
                if _is_write_failure(exc) and getattr(exc, "errno", None) in _FULL:
                    raise _write_error(out, exc) from exc
                raise
    except BaseException:
        for p in reversed(created):
            _rmdir_if_empty(p)
        raise


def _rmdir_if_empty(p: Path) -> None:
    try:
        p.rmdir()
    except OSError:
        pass
