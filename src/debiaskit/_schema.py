"""The typed, versioned records debiaskit writes: ``run.json`` (:class:`RunRecord`) and ``ffw.json``
(:class:`FFWRecord`), validated field by field on every read.

Every bad field is one clear error naming the file, the field, what was found and what was expected::

    runs/r1/run.json: model.num_classes is "ten", expected a positive integer

Paths inside a folder (``weights``, ``masks``, ``dynamics``) must be relative and stay inside it.

**Versions.** ``schema_version`` is written into every record. Files without it are version 0
(debiaskit 0.1.0, before this schema) and are migrated on read (:func:`migrate`); a file from a newer
version is refused with "upgrade debiaskit".

**How to add a field** (e.g. ``world_size`` for distributed training, or a user model's import path):

1. Add it to the right dataclass *with a default* (``None`` or an empty dict/list), and give it a
   check: ``world_size: int | None = opt(POSITIVE_INT)``. Older files then still load unchanged.
2. Write it where the record is built (the one writer of each kind: ``train_run``,
   ``methods.fmd.write_unlearned_run``, the bench cell writer, ``ffw_run``) and read it from the record.
3. Bump :data:`SCHEMA_VERSION` and add a step to :func:`migrate` only when the meaning of an existing
   field changes or a field becomes required; a new optional field needs neither.

Unknown keys are kept (``other``) so that a file round-trips through an older reader without loss.
Model and data are described by :class:`ModelRecord` / :class:`DataRecord`: a zoo name or a dataset
name today; a user model (``source="import"``, ``name="pkg.mod:factory"``, ``args``, ``sha256`` of its
source file) or a user dataset (``dataset="tensors:PATH"`` + ``sha256``) fit the same records through
their optional fields.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Self

from ._io import json_safe
from .errors import DamagedError

SCHEMA_VERSION = 1
MAX_SEED = 2**53 - 1  # seeds are stored in JSON (a double) and mixed into recipe seeds


class SchemaError(DamagedError):
    """A record field has the wrong type or value."""


# -- checks: (what is expected, predicate) ----------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    expected: str
    ok: Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _is_relative_inside(v: Any) -> bool:
    if not isinstance(v, str) or not v or "\\" in v or "\x00" in v:
        return False
    p = PurePosixPath(v)
    return not p.is_absolute() and ".." not in p.parts and bool(p.parts)  # "." or "./" is the folder itself


TEXT = Check("a non-empty string", lambda v: isinstance(v, str) and bool(v))
ANY_TEXT = Check("a string", lambda v: isinstance(v, str))
BOOL = Check("true or false", lambda v: isinstance(v, bool))
POSITIVE_INT = Check("a positive integer", lambda v: _is_int(v) and v > 0)
COUNT = Check("an integer >= 0", lambda v: _is_int(v) and v >= 0)
SEED = Check(f"an integer in [0, {MAX_SEED}]", lambda v: _is_int(v) and 0 <= v <= MAX_SEED)
NUMBER = Check("a finite number", _is_number)
NON_NEGATIVE = Check("a finite number >= 0", lambda v: _is_number(v) and v >= 0)
POSITIVE = Check("a finite number > 0", lambda v: _is_number(v) and v > 0)
SHAPE = Check(
    "a non-empty list of positive integers",
    lambda v: isinstance(v, list) and bool(v) and all(_is_int(d) and d > 0 for d in v),
)
FRACTIONS = Check(
    "a list of 3 positive numbers summing to 1",
    lambda v: (
        isinstance(v, list) and len(v) == 3 and all(_is_number(x) and x > 0 for x in v) and abs(sum(v) - 1) < 1e-6
    ),
)
OBJECT = Check("an object", lambda v: isinstance(v, dict))
ARRAY = Check("a list", lambda v: isinstance(v, list))
INNER_PATH = Check(
    "a relative path inside the folder (no '..', not absolute, not the folder itself)", _is_relative_inside
)
SHA256 = Check(
    "a SHA-256 (64 lowercase hexadecimal characters)",
    lambda v: isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v),
)
FINISHED = Check('"finished"', lambda v: v == "finished")


def one_of(*values: str) -> Check:
    return Check("one of " + ", ".join(json.dumps(v) for v in values), lambda v: v in values)


def opt(check: Check | type, default: Any = None) -> Any:
    """An optional field: ``None`` (or its default) when absent; ``check`` (or a record type) otherwise."""
    meta = {"schema": check} if isinstance(check, type) else {"check": check, "optional": True}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def req(check: Check | type) -> Any:
    """A required field."""
    return field(metadata={"schema": check} if isinstance(check, type) else {"check": check})


def _show(value: Any) -> str:
    text = json.dumps(value) if _jsonable(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


# -- parsing -------------------------------------------------------------------------------------------------------


class Record:
    """Base of the records: ``from_dict`` validates, ``to_dict`` writes (unknown keys kept in ``other``)."""

    # every record is a dataclass (the subclasses are decorated); declared here so that ``fields`` type-checks
    __dataclass_fields__: ClassVar[dict[str, Any]]
    _given: set[str]  # the keys of the file read (set by from_dict; not a field)

    @classmethod
    def from_dict(cls, obj: Any, *, file: str | Path = "record", prefix: str = "") -> Self:
        where = prefix or "the file"
        if not isinstance(obj, dict):
            raise SchemaError(f"{file}: {where} is {_show(obj)}, expected an object")
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name != "other" and f.name in obj:
                kwargs[f.name] = _parse_field(f, obj[f.name], file=file, key=f"{prefix}.{f.name}".lstrip("."))
            elif f.name != "other" and f.default is MISSING and f.default_factory is MISSING:
                expected = f.metadata["check"].expected if "check" in f.metadata else "an object"
                raise SchemaError(f"{file}: {prefix + '.' if prefix else ''}{f.name} is missing, expected {expected}")
        if "other" in known:
            kwargs["other"] = {k: v for k, v in obj.items() if k not in known}
        record = cls(**kwargs)
        record.check(file=file, prefix=prefix)
        record._given = set(obj)  # a null that was written is written back; an absent field stays absent
        return record

    def check(self, *, file: str | Path, prefix: str) -> None:
        """Rules between fields (override); single fields are checked by their ``Check``."""

    def to_dict(self) -> dict[str, Any]:
        """What is written: every field with a value (``None`` only where the file read had it), then ``other``."""
        given: set[str] = getattr(self, "_given", set())
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "other":
                out.update({k: v for k, v in value.items() if k not in out})
            elif isinstance(value, Record):
                out[f.name] = value.to_dict()
            elif value is not None or f.name in given:
                out[f.name] = value
        return out

    def validate(self, *, file: str | Path = "record") -> Record:
        """Check a record built in code the way a read one is checked (a writer never writes a bad file)."""
        return type(self).from_dict(json.loads(json.dumps(json_safe(self.to_dict()))), file=file)


def _parse_field(f, value: Any, *, file: str | Path, key: str) -> Any:
    if "schema" in f.metadata:
        if value is None and f.default is None:
            return None
        return f.metadata["schema"].from_dict(value, file=file, prefix=key)
    check: Check = f.metadata["check"]
    if value is None and f.metadata.get("optional"):
        return f.default_factory() if f.default_factory is not MISSING else f.default
    if not check.ok(value):
        raise SchemaError(f"{file}: {key} is {_show(value)}, expected {check.expected}")
    return value


# -- records -------------------------------------------------------------------------------------------------------


@dataclass
class ModelRecord(Record):
    """How to rebuild the network (``debiaskit.models.rebuild_model``). ``source="zoo"``: ``name`` is a zoo
    model (``debiaskit models list``) and ``num_classes`` / ``input_shape`` are required; ``"import"``: ``name``
    is the user's ``package.module:factory``, called with ``args`` (``filled_args``: those debiaskit filled
    in), defined in ``source_file`` whose SHA-256 is ``sha256``; ``"python"``: a model given as a Python
    object, which a folder cannot rebuild alone (``note`` says so)."""

    name: str = req(TEXT)
    head: str = req(TEXT)
    num_classes: int | None = opt(POSITIVE_INT)
    input_shape: list | None = opt(SHAPE)
    source: str = opt(one_of("zoo", "import", "python"), "zoo")
    args: dict | None = opt(OBJECT)
    filled_args: list | None = opt(ARRAY)
    source_file: str | None = opt(ANY_TEXT)
    sha256: str | None = opt(ANY_TEXT)
    note: str | None = opt(ANY_TEXT)
    shapes: dict | None = opt(OBJECT)  # layer widths of a physically smaller (structured FFW) export
    eraser: dict | None = opt(OBJECT)  # FFW's linear eraser in front of the head ({"head": original head, "dim", ...})
    other: dict = field(default_factory=dict)

    def check(self, *, file: str | Path, prefix: str) -> None:
        if self.source == "zoo":
            for key, rule in (("num_classes", POSITIVE_INT), ("input_shape", SHAPE)):
                if getattr(self, key) is None:
                    raise SchemaError(
                        f"{file}: {prefix + '.' if prefix else ''}{key} is missing, expected "
                        f"{rule.expected} (a zoo model needs it)"
                    )


@dataclass
class DataRecord(Record):
    """How to rebuild the splits exactly (``debiaskit.data.splits_from_spec``): a dataset name, or the user's
    ``tensors:PATH`` / ``folder:DIR`` (their checksums and layout in ``other``)."""

    dataset: str = req(TEXT)
    params: dict | None = opt(OBJECT)
    seed: int | None = opt(SEED)
    unbiased_size: int | None = opt(POSITIVE_INT)
    train_size: int | None = opt(POSITIVE_INT)
    test_size: int | None = opt(POSITIVE_INT)
    unbiased_fractions: list | None = opt(FRACTIONS)
    other: dict = field(default_factory=dict)  # e.g. celeba's annotations_sha256, a user file's sha256

    def spec(self) -> dict[str, Any]:
        """The ``Splits.spec`` dict the data layer reads (absent optional keys left out)."""
        return {k: v for k, v in self.to_dict().items() if v is not None}


@dataclass
class TrainRecord(Record):
    epochs: int = req(COUNT)
    batch_size: int = req(POSITIVE_INT)
    lr: float = req(NON_NEGATIVE)
    weight_decay: float = opt(NON_NEGATIVE, 0.0)
    optimizer: str = opt(TEXT, "adam")
    seed: int = opt(SEED, 0)
    extra: dict = opt(OBJECT, {})
    selection: str | None = opt(ANY_TEXT)
    selected_epoch: int | None = opt(COUNT)
    amp: str | None = opt(one_of("off", "bf16", "fp16"))  # mixed precision of the training steps
    sync_bn: bool | None = opt(BOOL)  # BatchNorm statistics synchronised across ranks (None: before the flag)
    other: dict = field(default_factory=dict)


@dataclass
class MethodRecord(Record):
    name: str = req(TEXT)
    uses_bias_labels: bool = opt(BOOL, False)
    config: dict = opt(OBJECT, {})
    state: dict = opt(OBJECT, {})
    post_hoc: bool | None = opt(BOOL)
    parent_method: dict | None = opt(OBJECT)
    other: dict = field(default_factory=dict)


RUN_KINDS = ("train", "unlearn", "compare-cell")


@dataclass
class RunRecord(Record):
    """``run.json`` of a run folder: a trained (``train``), unlearned (``unlearn``) or benchmark
    (``compare-cell``) model with everything needed to rebuild model and data exactly."""

    kind: str = req(one_of(*RUN_KINDS))
    model: ModelRecord = req(ModelRecord)
    data: DataRecord = req(DataRecord)
    status: str = opt(FINISHED, "finished")
    schema_version: int = opt(COUNT, SCHEMA_VERSION)
    created: str | None = opt(ANY_TEXT)
    weights: str = opt(INNER_PATH, "model.safetensors")
    weights_sha256: str | None = opt(SHA256)  # of the weights file, checked on load (absent before it was recorded)
    train: TrainRecord | None = opt(TrainRecord)
    method: MethodRecord | None = opt(MethodRecord)
    device: str = opt(TEXT, "cpu")
    wall_time_s: float | None = opt(NON_NEGATIVE)
    versions: dict = opt(OBJECT, {})
    data_summary: dict = opt(OBJECT, {})
    final_train_metrics: dict = opt(OBJECT, {})
    dynamics: str | None = opt(INNER_PATH)
    # data-parallel training (torchrun): processes, their backend (absent on one process), samples per rank and step
    world_size: int | None = opt(POSITIVE_INT)
    backend: str | None = opt(TEXT)
    per_rank_batch: int | None = opt(POSITIVE_INT)
    parent_run: str | None = opt(TEXT)
    # the trained model's own audit headline and probe readings (`debiaskit train`, ffw.vanilla_readings), keyed by
    # what they depend on; `debiaskit ffw` reuses them only from a record signed with this user's key
    readings: dict | None = opt(OBJECT)
    signature: dict | None = opt(OBJECT)  # this user's HMAC of the record (debiaskit._trust); absent: unsigned
    other: dict = field(default_factory=dict)

    @property
    def method_name(self) -> str:
        return self.method.name if self.method is not None else "vanilla"


@dataclass
class FFWRecord(Record):
    """``ffw.json`` of an FFW folder: settings, search history and selection, before/after audit."""

    kind: str = req(one_of("ffw"))
    mode: str = req(one_of("unstructured", "structured"))
    model: ModelRecord = req(ModelRecord)
    data: DataRecord | None = opt(DataRecord)  # absent for a result saved from Python (ffw.save_result)
    status: str = opt(FINISHED, "finished")
    schema_version: int = opt(COUNT, SCHEMA_VERSION)
    created: str | None = opt(ANY_TEXT)
    command: str | None = opt(ANY_TEXT)
    run: str | None = opt(TEXT)
    bias_labels: str = opt(one_of("true", "discovered"), "true")
    weights: str = opt(INNER_PATH, "model.safetensors")
    masks: str = opt(INNER_PATH, "masks.safetensors")
    weights_sha256: str | None = opt(SHA256)  # of the weights / masks files, checked on load (absent: older record)
    masks_sha256: str | None = opt(SHA256)
    search: dict = opt(OBJECT, {})
    history: list = opt(ARRAY, [])
    before: dict = opt(OBJECT, {})
    after: dict = opt(OBJECT, {})
    parameters: dict = opt(OBJECT, {})
    inference: dict = opt(OBJECT, {})
    vanilla_train_time_s: float | None = opt(NON_NEGATIVE)
    search_time_s: float | None = opt(NON_NEGATIVE)
    wall_time_s: float | None = opt(NON_NEGATIVE)
    selection: str | None = opt(ANY_TEXT)
    adversary: str | None = opt(ANY_TEXT)  # what the bias term of the search read
    preset: str | None = opt(TEXT)  # the named FFW settings the search started from (ffw/_presets.py); absent: older
    probes: dict | None = opt(OBJECT)  # bias extractability under stronger probes + verdict
    diagnosis: list = opt(ARRAY, [])  # plain-language findings (e.g. no debiased sub-network)
    bias_labels_note: str | None = opt(ANY_TEXT)
    versions: dict = opt(OBJECT, {})
    signature: dict | None = opt(OBJECT)  # this user's HMAC of the record (debiaskit._trust); absent: unsigned
    other: dict = field(default_factory=dict)


def migrate(obj: Any, *, file: str | Path, default_kind: str) -> Any:
    """Bring a record of any known ``schema_version`` to the current one (0 = debiaskit 0.1.0)."""
    if not isinstance(obj, dict):
        raise SchemaError(f"{file}: the file is {_show(obj)}, expected an object")
    version = obj.get("schema_version", 0)
    if not _is_int(version) or version < 0:
        raise SchemaError(f"{file}: schema_version is {_show(version)}, expected an integer >= 0")
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"{file} was written by a newer debiaskit (schema version {version}; this one reads up "
            f"to {SCHEMA_VERSION}); upgrade debiaskit to read it"
        )
    if version == 0:  # 0.1.0 wrote the same fields without a version (and, very early, without a kind)
        obj = {**obj, "schema_version": SCHEMA_VERSION, "kind": obj.get("kind", default_kind)}
    return obj


__all__ = [
    "SCHEMA_VERSION",
    "MAX_SEED",
    "SchemaError",
    "Check",
    "Record",
    "ModelRecord",
    "DataRecord",
    "TrainRecord",
    "MethodRecord",
    "RunRecord",
    "FFWRecord",
    "RUN_KINDS",
    "migrate",
]
