"""Run folders: safetensors weights and a typed ``run.json`` that rebuilds model and data exactly.

A finished run folder holds ``run.json`` (a :class:`~debiaskit._schema.RunRecord`, validated on every
read) and ``model.safetensors``. It is written through :func:`debiaskit._io.atomic_folder` (atomic,
exclusive, never replacing anything but a finished run, and that only with ``force``) by
:func:`save_run`, the one writer of run folders.

A folder is data, never code: loading a record whose model must be imported (``source="import"``) is refused
before anything is imported unless the record is signed with this user's key (every record debiaskit writes is;
:mod:`debiaskit._trust`) or the caller trusts it (``trust_code=True``, ``debiaskit trust FOLDER`` or :func:`trust_folder`). The weights
file must be a regular file inside the folder whose SHA-256 matches the one the record holds (records written
before the field existed hold none and load unchecked).

Example::

    run = load_run("runs/r1")
    run.record.model.num_classes, run.head, run.splits().test
    report = trust_folder("runs/r1", sign=False)   # what loading it would import (sign=True: sign it, as `debiaskit trust`)
"""

from __future__ import annotations

import hashlib
import platform
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy
import safetensors
import torch
from safetensors.torch import load as load_safetensors
from torch import nn

from . import __version__, _trust
from ._io import FolderIdentity, folder_identity, json_safe, read_json, save_tensors, write_json
from ._io import atomic_folder as atomic_folder  # re-exported (internal), see below
from ._io import write_text as write_text
from ._schema import (
    SCHEMA_VERSION,
    DataRecord,
    FFWRecord,
    MethodRecord,
    ModelRecord,
    Record,
    RunRecord,
    SchemaError,
    TrainRecord,
    migrate,
)
from .data import splits_from_spec
from .errors import DamagedError, DataError, DebiaskitWarning, ModelError, UntrustedCodeError
from .models import describe_import, rebuild_model

RUN_FILE = "run.json"
WEIGHTS_FILE = "model.safetensors"
FFW_FILE = "ffw.json"  # an FFW folder's record (its folder kind's marker: ffw/_folders.py)

__all__ = [
    "RUN_FILE",
    "WEIGHTS_FILE",
    "SCHEMA_VERSION",
    "Run",
    "RunRecord",
    "ModelRecord",
    "DataRecord",
    "TrainRecord",
    "MethodRecord",
    "FFWRecord",
    "SchemaError",
    "is_finished",
    "load_run",
    "load_weights",
    "read_run_record",
    "save_run",
    "save_weights",
    "trust_folder",
    "TrustReport",
]
# also importable, internal (for debiaskit's packages): atomic_folder, check_finite, check_signing_key, inner_path,
# load_state, package_versions, read_json, read_record, read_trusted_record, read_weights, rebuild_from_record,
# weights_file, write_json, write_record, write_text


def package_versions() -> dict[str, str]:
    return {
        "debiaskit": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "safetensors": safetensors.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


# -- weights -------------------------------------------------------------------------------------------------------


def check_finite(model: nn.Module, *, what: str = "model") -> None:
    for name, tensor in list(model.state_dict().items()):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelError(f"{what} has NaN/inf values in {name!r}; the weights are unusable (training diverged?)")


def save_weights(model: nn.Module, path: Path) -> str:
    """safetensors weights (no pickle), written atomically; NaN weights are refused. Returns the file's SHA-256."""
    check_finite(model)
    return save_tensors(path, model.state_dict())


def read_weights(path: Path, *, sha256: str | None = None, record: Path | None = None) -> tuple[dict, str]:
    """(tensors, SHA-256) of a safetensors file, read once (the bytes hashed are the bytes parsed); a file whose
    SHA-256 is not ``sha256`` (what ``record`` holds) is refused before anything uses it."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} is missing")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256:
        raise DamagedError(
            f"{path} is not the weights file {record or 'its record'} was written with: its SHA-256 is "
            f"{digest}, the record holds {sha256}. It was replaced or changed afterwards (another run's "
            "weights, an edit, damage); restore the folder from where it came, or retrain - debiaskit "
            "does not use weights it cannot identify"
        )
    try:
        return load_safetensors(data), digest
    except Exception as exc:  # safetensors raises its own error types
        raise ModelError(f"cannot read {path}: {exc}; the file is damaged or not a safetensors file") from exc


def load_weights(model: nn.Module, path: Path, *, sha256: str | None = None) -> nn.Module:
    """Load safetensors weights (no pickle) strictly into ``model``; NaN weights are an error, and so is a file
    whose SHA-256 is not ``sha256`` (when given)."""
    state, _ = read_weights(path, sha256=sha256)
    return load_state(model, state, Path(path))


def load_state(model: nn.Module, state: dict, path: Path) -> nn.Module:
    """Load tensors read from ``path`` (:func:`read_weights`) strictly into ``model``; NaN weights are an error."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches are raised even with strict=False
        raise ModelError(f"{path} does not match the model: {exc}") from exc
    if missing or unexpected:
        raise ModelError(f"{path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    check_finite(model, what=str(path))
    return model


# -- records -------------------------------------------------------------------------------------------------------


def inner_path(folder: Path, relative: str, *, file: Path, key: str) -> Path:
    """``folder / relative``, refused when it leaves ``folder`` (``..``, absolute, or through a symlink)."""
    folder = Path(folder)
    path = folder / relative
    if not path.resolve().is_relative_to(folder.resolve()):
        raise SchemaError(f"{file}: {key} is {relative!r}, expected a path inside {folder} (it leads outside)")
    return path


def weights_file(folder: Path, relative: str, *, file: Path, key: str = "weights") -> Path:
    """The weights file a record names: a regular file inside ``folder`` (not the folder, not a sub-folder)."""
    path = inner_path(folder, relative, file=file, key=key)
    if path.exists() and not path.is_file():
        raise SchemaError(
            f"{file}: {key} is {relative!r}, which is not a file (a folder or a special file); expected "
            f"the safetensors file inside {folder} that holds the weights"
        )
    return path


def _read_record(path: Path, cls: type[Record], default_kind: str) -> tuple[Record, dict]:
    """(validated record, the JSON object as read): a signature is checked on what was read, not on a rewrite."""
    raw = read_json(path)
    obj = migrate(raw, file=path, default_kind=default_kind)
    if obj.get("status", "finished") != "finished":
        raise DataError(
            f"{path.parent} is not a finished debiaskit folder ({path.name} says status "
            f"{obj.get('status')!r}); rerun the command that writes it"
        )
    return cls.from_dict(obj, file=path), raw


_R = TypeVar("_R", bound=Record)  # read_record returns the record class it is given


def read_record(path: Path, cls: type[_R], *, default_kind: str) -> _R:
    """Read, migrate and validate one record file (``run.json``, ``ffw.json``)."""
    return _read_record(path, cls, default_kind)[0]


def check_signing_key() -> None:
    """Refuse a bad signing key (wrong mode, not a key, a symlink) before any compute, not when the record that
    needs it is written at the end (creates the key on first use)."""
    _trust.user_key()


def write_record(path: Path, record: Record) -> None:
    """Validate ``record`` exactly as a reader will, sign it with this user's key, then write it atomically."""
    obj = json_safe(record.validate(file=path).to_dict())
    obj.pop(_trust.SIGNATURE, None)
    obj[_trust.SIGNATURE] = _trust.sign(obj)
    write_json(path, obj)


# -- trust: a record may name code only when this user signed it or trusts it ------------------------------------

_UNTRUSTED_WHY = {
    "unsigned": "it carries no signature of yours: you did not write it (or an older debiaskit did, before records "
    "were signed)",
    "other-key": "it is signed with another key than yours (another user's, or a key you had before)",
    "changed": "it carries your signature, but it was changed after it was signed",
}


def require_trusted(
    file: Path, raw: dict, model: ModelRecord, *, trust_code: bool = False, model_given: bool = False
) -> str:
    """Refuse (:class:`UntrustedCodeError`, before anything is imported) a record whose model would be imported
    unless it is signed with this user's key or ``trust_code``; returns how it is trusted: ``"not-needed"`` (a zoo
    model, or the caller gave the model), ``"signed"`` or ``"explicit"`` (``trust_code``; the source file must
    then match the recorded SHA-256, and a record without one is refused: nothing pins what would run)."""
    if model_given or model.source != "import":
        return "not-needed"
    state = _trust.signature_state(raw)
    if state == "signed":
        if not model.sha256:
            warnings.warn(
                f"{file} holds no SHA-256 of the source of {model.name}: the code imported cannot be checked "
                "against the record (you signed or trusted the record, so it is imported)",
                DebiaskitWarning,
                stacklevel=3,
            )
        return "signed"
    what = "\n".join(f"  - {line}" for line in describe_import(model.to_dict()))
    if trust_code and model.sha256:
        return "explicit"
    if trust_code:
        raise UntrustedCodeError(
            f"{file} names code to import and holds no SHA-256 of its source, so --trust-code "
            f"(trust_code=True) cannot pin what would run:\n{what}\nNothing was imported. Review "
            f"that code; if you trust it, sign the record: `debiaskit trust {file.parent}`"
        )
    raise UntrustedCodeError(
        f"{file} names code that loading it would run, and the record is not trusted ({_UNTRUSTED_WHY[state]}):\n"
        f"{what}\nNothing was imported. Review that code; if you trust it, sign the record with your key: "
        f"`debiaskit trust {file.parent}` - or load it once with --trust-code (Python: trust_code=True)"
    )


def read_trusted_record(
    path: Path, cls: type[Record], *, default_kind: str, trust_code: bool = False, model_given: bool = False
) -> tuple[Record, str]:
    """:func:`read_record` + :func:`require_trusted` on the same bytes: (record, how it is trusted)."""
    record, raw = _read_record(path, cls, default_kind)
    return record, require_trusted(path, raw, record.model, trust_code=trust_code, model_given=model_given)


def rebuild_from_record(
    record: Record, *, trust: str, load, source_changed: str = "warn", model: nn.Module | None = None
) -> nn.Module:
    """``rebuild_model`` of a record :func:`read_trusted_record` let through: trusted by ``trust_code`` alone, the
    file imported must be the recorded one (the code reviewed is the code that runs)."""
    if trust == "explicit":
        source_changed = "refuse"
    return rebuild_model(record.model, load=load, source_changed=source_changed, model=model)


def read_run_record(folder: Path) -> RunRecord:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"run folder {folder} does not exist")
    if not (folder / RUN_FILE).is_file():
        raise DataError(f"{folder} is not a finished debiaskit run (no {RUN_FILE}); train one with `debiaskit train`")
    return read_record(folder / RUN_FILE, RunRecord, default_kind="train")


def is_finished(folder: Path) -> bool:
    """True for a folder holding a finished run (a damaged ``run.json`` is not finished)."""
    try:
        read_run_record(folder)
    except (DataError, DamagedError):
        return False
    return True


def save_run(staging: Path, *, model: nn.Module, record: RunRecord) -> None:
    """The one writer of run folders: weights + validated ``run.json`` into ``staging`` (an atomic_folder)."""
    record.schema_version = SCHEMA_VERSION
    record.versions = record.versions or package_versions()
    record.weights_sha256 = save_weights(
        model, inner_path(staging, record.weights, file=staging / RUN_FILE, key="weights")
    )
    write_record(Path(staging) / RUN_FILE, record)


@dataclass
class Run:
    """A loaded run: its folder, typed record and (rebuilt) model."""

    folder: Path
    record: RunRecord
    model: nn.Module
    given_splits: Any = None  # the splits passed to load_run (a run trained on data given in Python)
    identity: FolderIdentity | None = None  # the folder as read: a command writing from it re-checks it at commit
    weights_sha256: str | None = None  # of the weights file loaded (what an FFW checkpoint is tied to)
    # run.json as read carries this user's valid signature; checked only for a record holding readings, the one
    # thing a command reuses from it instead of recomputing (ffw's vanilla audit and probes)
    signed: bool = False

    @property
    def meta(self) -> dict[str, Any]:
        """``run.json`` as a plain dict (the validated, migrated record)."""
        return self.record.to_dict()

    @property
    def head(self) -> str:
        return self.record.model.head

    def splits(self):
        """The run's splits: rebuilt from its record, or the ones given to :func:`load_run`."""
        if self.given_splits is not None:
            return self.given_splits
        return splits_from_spec(self.record.data.spec())


def load_run(
    folder: Path,
    *,
    model: nn.Module | None = None,
    splits: Any = None,
    source_changed: str = "warn",
    trust_code: bool = False,
) -> Run:
    """Rebuild the model of a finished run folder and load its weights (``run.json`` validated first).

    A user model (``package.module:factory``) is re-imported (see :func:`debiaskit.models.rebuild_model`:
    ``source_changed`` = "warn" or "refuse" when its source file changed since training) - only when ``run.json``
    is signed with your key (runs you wrote are) or ``trust_code=True`` (then its source must match the recorded
    SHA-256); otherwise :class:`~debiaskit.errors.UntrustedCodeError` says what would run, before anything is
    imported. ``model``: your own instance (or factory) for a run whose model was given in Python; ``splits``: the
    splits of a run whose data was given in Python (``debiaskit.data.user_splits``), which the folder cannot rebuild.
    """
    folder = Path(folder)
    identity = folder_identity(folder, RUN_FILE)
    read_run_record(folder)  # the folder's own errors first (missing, not a run, unfinished)
    record, raw = _read_record(folder / RUN_FILE, RunRecord, "train")
    trust = require_trusted(folder / RUN_FILE, raw, record.model, trust_code=trust_code, model_given=model is not None)
    weights = weights_file(folder, record.weights, file=folder / RUN_FILE)
    state, digest = read_weights(weights, sha256=record.weights_sha256, record=folder / RUN_FILE)
    net = rebuild_from_record(
        record, trust=trust, load=lambda m: load_state(m, state, weights), source_changed=source_changed, model=model
    )
    net.eval()
    if folder_identity(folder, RUN_FILE) != identity:
        raise DataError(f"{folder} was moved or replaced while debiaskit was reading it; run the command again")
    # only recorded readings need the signature checked (it reads, and on first use creates, the user's key)
    signed = record.readings is not None and _trust.signature_state(raw) == "signed"
    return Run(
        folder=folder,
        record=record,
        model=net,
        given_splits=splits,
        identity=identity,
        weights_sha256=digest,
        signed=signed,
    )


# -- debiaskit trust FOLDER ------------------------------------------------------------------------------------------


@dataclass
class TrustReport:
    """What :func:`trust_folder` found (and did): the record, its signature before, what loading it would run."""

    file: Path
    before: str  # "signed", "changed", "other-key" or "unsigned" (see debiaskit._trust.signature_state)
    needs_code: bool  # its model is imported (source="import"); a zoo model runs nothing from the folder
    lines: list[str]  # what loading it runs, and its weights
    signed: bool  # the record was (re-)signed with this user's key


def trust_folder(folder: Path, *, sign: bool = True) -> TrustReport:
    """Show what loading a run / FFW folder would run and, with ``sign``, sign its record with your key (an atomic
    rewrite; a record without the SHA-256 of its weights gets the one of the file there now). A damaged record or
    weights that do not match their recorded SHA-256 are refused, not signed."""
    folder = Path(folder)
    found = [
        (n, c, k)
        for n, c, k in ((RUN_FILE, RunRecord, "train"), (FFW_FILE, FFWRecord, "ffw"))
        if (folder / n).is_file()
    ]
    if not found:
        raise DataError(f"{folder} holds no {RUN_FILE} or {FFW_FILE}: not a run or FFW folder, nothing to trust")
    name, cls, kind = found[0]
    path = folder / name
    record, raw = _read_record(path, cls, kind)
    weights = weights_file(folder, record.weights, file=path)
    digest = read_weights(weights, sha256=record.weights_sha256, record=path)[1]
    model = record.model
    lines = (
        describe_import(model.to_dict())
        if model.source == "import"
        else [
            f"model: {model.name} ({'debiaskit zoo' if model.source == 'zoo' else 'given in Python'}): no code "
            "named by the folder runs"
        ]
    )
    lines.append(
        f"weights: {weights} (SHA-256 {digest}"
        + (", as recorded)" if record.weights_sha256 else ", not recorded before: recorded now)" if sign else ")")
    )
    report = TrustReport(
        file=path, before=_trust.signature_state(raw), needs_code=model.source == "import", lines=lines, signed=False
    )
    if sign:
        new = {k: v for k, v in raw.items() if k != _trust.SIGNATURE}
        new.setdefault("weights_sha256", digest)
        new[_trust.SIGNATURE] = _trust.sign(new)
        write_json(path, new)
        report.signed = True
    return report
