"""Your own model, named by import path: ``package.module:factory`` (the entry-point syntax of Python tools).

``factory`` is any callable returning an ``nn.Module`` (a function or the class itself). It is called with
the arguments you give (``--model-arg KEY=VALUE`` / ``model_args={...}``) plus, where its signature takes
them and you did not give them, what debiaskit knows about the data: ``num_classes``, ``in_channels``
(images: the channel count), ``in_features`` (the flattened input size) and ``input_shape``. A run records
the import path, every argument and the SHA-256 of the defining source file, so that ``load_run`` rebuilds
the same network; when it cannot, it says why and what to do:

* module not importable: the folder that held it at training time is tried (said so), else the error names
  the module, the file it came from and how to make it importable (PYTHONPATH / pip install);
* source changed since training (another SHA-256): a warning (``source_changed="warn"``, the default) when
  the weights still fit the rebuilt network exactly - the architecture was not changed, only its code -
  and a refusal when they do not, or always with ``source_changed="refuse"``.

Like ``uvicorn``, the current working directory is importable (``debiaskit train --model mynets:net`` finds
``./mynets.py``).

Rebuilding from a record hashes the file Python would import and compares it with the recorded SHA-256 *before*
importing it (found through the import system's finders, which execute nothing, not even parent packages), so
``source_changed="refuse"`` refuses a changed source without running any of it. Whether a record may name code
at all is decided above this module (:mod:`debiaskit._trust`, checked by ``debiaskit.runs.load_run``).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import math
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ConfigError, ModelError

IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
INJECTED = ("num_classes", "in_channels", "in_features", "input_shape")
SPEC_ATTRIBUTE = "debiaskit_model_spec"  # set on models built by debiaskit: how to rebuild them


class SourceChangedWarning(UserWarning):
    """The source file of a user model differs from the one a run was trained with."""


def is_import_path(name: object) -> bool:
    return isinstance(name, str) and bool(IMPORT_PATH.match(name))


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _ensure_cwd_importable() -> None:
    cwd = str(Path.cwd())
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def import_factory(ref: str, *, recorded_file: str | None = None) -> tuple[Callable[..., nn.Module], Path | None]:
    """The callable named by ``pkg.mod:attr`` and the file that defines it."""
    if not is_import_path(ref):
        raise ConfigError(
            f"a model is a zoo name (`debiaskit models list`) or an import path package.module:factory, got {ref!r}"
        )
    module_name, attr = ref.split(":", 1)
    if module_name == "__main__":
        raise ModelError(
            f"{ref} lives in a script (__main__), which cannot be imported again to rebuild the model; "
            "move the factory into a module file and name it module:factory"
        )
    _ensure_cwd_importable()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module_name.startswith(exc.name.split(".")[0]):
            raise ModelError(f"importing {module_name} (for {ref}) failed: {exc}; install what it needs") from exc
        module = _import_from_recorded(module_name, recorded_file, ref, exc)
    except Exception as exc:  # an error inside the user's module: report it, it is theirs to fix
        raise ModelError(f"importing {module_name} (for {ref}) raised {type(exc).__name__}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
            raise ModelError(f"{module_name} has no {attr!r} (for {ref}); callables in it: {', '.join(names[:20])}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelError(f"{ref} is a {type(obj).__name__}, not a callable that returns an nn.Module")
    file = getattr(module, "__file__", None)
    return obj, Path(file) if file else None


def _import_from_recorded(module_name: str, recorded_file: str | None, ref: str, exc: Exception):
    """A module that is not importable here: try the folder it was imported from at training time."""
    hint = (
        f"make it importable: run from the folder that holds it, set PYTHONPATH=<that folder>, or "
        f"pip install the package that provides {module_name}"
    )
    if recorded_file:
        root = Path(recorded_file)
        for _ in module_name.split("."):
            root = root.parent
        if Path(recorded_file).is_file() and root.is_dir():
            warnings.warn(
                f"{module_name} is not importable from here; importing it from {root}, where it was at training time",
                stacklevel=3,
            )
            sys.path.insert(0, str(root))
            try:
                return importlib.import_module(module_name)
            except Exception as again:  # noqa: BLE001
                raise ModelError(
                    f"cannot import {module_name} (for {ref}), not even from {root}: {again}; {hint}"
                ) from again
        hint = f"it was {recorded_file} at training time, which is gone; " + hint
    raise ModelError(f"cannot import module {module_name} (for {ref}): {exc}; {hint}") from exc


def _flat(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def factory_arguments(
    factory: Callable, given: Mapping[str, Any] | None, *, num_classes: int | None, input_shape: tuple[int, ...] | None
) -> tuple[dict[str, Any], list[str]]:
    """``given`` plus the data's num_classes / in_channels / in_features / input_shape where the factory
    takes them (and they were not given); returns (arguments, names that were filled in)."""
    args = dict(given or {})
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return args, []
    known = {
        "num_classes": num_classes,
        "in_channels": int(input_shape[0]) if input_shape and len(input_shape) >= 2 else None,
        "in_features": _flat(input_shape) if input_shape else None,
        "input_shape": list(input_shape) if input_shape else None,
    }
    filled = []
    for name in INJECTED:
        if name in params and name not in args and known[name] is not None:
            args[name] = known[name]
            filled.append(name)
    accepts_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    unknown = [k for k in args if k not in params]
    if unknown and not accepts_any:
        raise ConfigError(
            f"{getattr(factory, '__qualname__', factory)} takes no argument(s) {', '.join(unknown)}; "
            f"its parameters: {', '.join(params) or 'none'}"
        )
    missing = [
        n
        for n, p in params.items()
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in args
    ]
    if missing:
        raise ConfigError(
            f"{getattr(factory, '__qualname__', factory)} needs argument(s) {', '.join(missing)}: give "
            f"them with --model-arg {missing[0]}=VALUE (Python: model_args={{...}})"
        )
    return args, filled


def build_user_model(
    ref: str,
    *,
    args: Mapping[str, Any] | None = None,
    num_classes: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    recorded_file: str | None = None,
) -> nn.Module:
    """Import ``pkg.mod:factory``, call it and check that it returned an ``nn.Module``; the module carries
    how to rebuild it (``model.debiaskit_model_spec``: import path, arguments, source file and its SHA-256)."""
    factory, file = import_factory(ref, recorded_file=recorded_file)
    full, filled = factory_arguments(factory, args, num_classes=num_classes, input_shape=input_shape)
    try:
        model = factory(**full)
    except Exception as exc:
        raise ModelError(
            f"{ref}({', '.join(f'{k}={v!r}' for k, v in full.items())}) raised {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"{ref} returned a {type(model).__name__}, expected a torch.nn.Module")
    spec = {
        "source": "import",
        "name": ref,
        "args": full,
        "filled_args": filled,
        "num_classes": num_classes,
        "input_shape": list(input_shape) if input_shape else None,
        "source_file": str(file.resolve()) if file else None,
        "sha256": _file_sha256(file) if file and file.is_file() else None,
    }
    setattr(model, SPEC_ATTRIBUTE, spec)
    return model


def import_path_reference(ref: str, *, args: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """How to rebuild the model ``pkg.mod:factory(**args)`` later: its import path, arguments, source file and the
    file's SHA-256 (what a result records when it is given the factory's name, not a model debiaskit built)."""
    _, file = import_factory(ref)
    return {
        "source": "import",
        "name": ref,
        "args": dict(args or {}),
        "source_file": str(file.resolve()) if file else None,
        "sha256": _file_sha256(file) if file and file.is_file() else None,
    }


def model_reference(model: nn.Module | Callable) -> dict[str, Any]:
    """How a model given in Python can be rebuilt later: the spec of a debiaskit-built model, else the
    import path of its class / factory (called without arguments at rebuild time); ``source="python"``
    when it is not importable (a lambda, a local class, a class defined in a script)."""
    spec = getattr(model, SPEC_ATTRIBUTE, None)
    if spec is not None:
        return dict(spec)
    target = model if not isinstance(model, nn.Module) else type(model)
    module, qual = getattr(target, "__module__", None), getattr(target, "__qualname__", "")
    if not module or module == "__main__" or "<" in qual:
        return {
            "source": "python",
            "name": f"{module}:{qual}",
            "args": {},
            "note": "defined in a script or a function: a run folder cannot rebuild it; pass model= to load_run",
        }
    file = getattr(sys.modules.get(module), "__file__", None)
    return {
        "source": "import",
        "name": f"{module}:{qual}",
        "args": {},
        "filled_args": [],
        "source_file": str(Path(file).resolve()) if file else None,
        "sha256": _file_sha256(Path(file)) if file and Path(file).is_file() else None,
        "note": "given as an instance in Python: rebuilt by calling the class without arguments",
    }


def _find_spec_quietly(module_name: str):
    """The spec Python's import system would load ``module_name`` from, found without executing any module (the
    finders are asked with the parent's search path; ``importlib.util.find_spec`` would import the parents)."""
    path, spec = None, None
    parts = module_name.split(".")
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        module = sys.modules.get(name)
        if module is not None:
            spec = getattr(module, "__spec__", None)
        else:
            spec = None
            for finder in sys.meta_path:
                find = getattr(finder, "find_spec", None)
                spec = find(name, path, None) if find is not None else None
                if spec is not None:
                    break
        if spec is None:
            return None
        path = spec.submodule_search_locations
        if path is None and i < len(parts) - 1:
            return None  # a module, not a package: it has no sub-modules
    return spec


def source_to_import(ref: str, *, recorded_file: str | None = None) -> tuple[Path | None, str]:
    """(the file importing ``ref`` would execute, how it is found), without importing anything: the module
    Python finds here, else the recorded file (the folder it was in at training time is tried then)."""
    _ensure_cwd_importable()
    module_name = ref.split(":", 1)[0]
    spec = _find_spec_quietly(module_name)
    if spec is not None:
        origin = spec.origin if getattr(spec, "has_location", False) else None
        origin = origin or getattr(sys.modules.get(module_name), "__file__", None)  # frozen modules keep their file
        return (Path(origin), "importable here") if origin else (None, "importable here: a built-in or frozen module")
    if recorded_file and Path(recorded_file).is_file():
        return Path(recorded_file), "not importable here: the recorded file's folder would be put on sys.path"
    return None, "not importable here, and the recorded file is gone"


def _shown(text: Any) -> str:
    """Text from a record as it is: quoted with escapes when it holds control characters (which could hide or
    rewrite what a terminal shows)."""
    text = str(text)
    return text if text.isprintable() else repr(text)


def describe_import(spec: Mapping[str, Any]) -> list[str]:
    """What rebuilding ``spec`` would run, in lines: the call, the recorded source file and its SHA-256, and the
    file Python would import now (found and hashed without importing it)."""
    ref, args = spec.get("name"), dict(spec.get("args") or {})
    recorded, source = spec.get("sha256"), spec.get("source_file")
    call = f"{_shown(ref)}({', '.join(f'{_shown(k)}={v!r}' for k, v in args.items())})"
    lines = [
        f"import {_shown(str(ref).split(':', 1)[0])} and call {call}",
        f"source file recorded: {_shown(source) if source else '(none)'}",
        "its recorded SHA-256: "
        + (_shown(recorded) if recorded else "(none: the code cannot be checked against the record)"),
    ]
    if not is_import_path(ref):
        return lines
    file, how = source_to_import(ref, recorded_file=source)
    if file is None or not file.is_file():
        return lines + [f"file Python would import now: none ({how})"]
    try:
        now = _file_sha256(file)
    except OSError as exc:
        return lines + [f"file Python would import now: {file} ({how}), which cannot be read: {exc.strerror}"]
    same = (
        "nothing recorded to compare it with"
        if not recorded
        else "the recorded one"
        if now == recorded
        else "DIFFERENT from the recorded one"
    )
    return lines + [f"file Python would import now: {_shown(file)} ({how}); SHA-256 {now}, {same}"]


def _source_change_before_import(ref: str, spec: Mapping[str, Any], source_changed: str) -> str | None:
    """Hash the file about to be imported and compare it with the record, before importing it."""
    recorded = spec.get("sha256")
    file, _ = source_to_import(ref, recorded_file=spec.get("source_file"))
    if not recorded or file is None or not file.is_file():
        return None
    try:
        now = _file_sha256(file)
    except OSError as exc:
        raise ModelError(
            f"cannot read {file}, the source of {ref}, to check it against the record: {exc.strerror}"
        ) from exc
    if now == recorded:
        return None
    changed = (
        f"the source of {ref} ({file}) changed since training (SHA-256 {now[:12]}... != recorded {recorded[:12]}...)"
    )
    if source_changed == "refuse":
        raise ModelError(
            f"{changed}; refusing to rebuild (source_changed='refuse'), nothing of it was imported: restore "
            "the source file the run was trained with, or load with source_changed='warn'"
        )
    return changed


def rebuild_user_model(spec: Mapping[str, Any], *, source_changed: str = "warn") -> tuple[nn.Module, str | None]:
    """Rebuild the recorded network; returns (model, message about a changed source or None).

    The source file is compared with the recorded SHA-256 before it is imported. The caller loads the weights
    and, when they do not fit and the source changed, turns the message into the refusal (see the module
    docstring)."""
    if source_changed not in ("warn", "refuse"):
        raise ConfigError(f"source_changed must be 'warn' or 'refuse', got {source_changed!r}")
    ref = spec["name"]
    if spec.get("source") == "python":
        raise ModelError(
            f"this run's model ({ref}) was given in Python and cannot be rebuilt from the folder "
            "alone; pass it: load_run(folder, model=...) - or train with an importable "
            "package.module:factory"
        )
    if not is_import_path(ref):
        raise ModelError(f"the recorded model {ref!r} is not an import path package.module:factory")
    changed = _source_change_before_import(ref, spec, source_changed)
    factory, file = import_factory(ref, recorded_file=spec.get("source_file"))
    recorded = spec.get("sha256")
    if not changed and recorded and file is not None and file.is_file() and _file_sha256(file) != recorded:
        # the import found another file than the finders said (a path hook, a race): judged as before
        changed = f"the source of {ref} ({file}) changed since training (its SHA-256 differs from the recorded one)"
        if source_changed == "refuse":
            raise ModelError(
                f"{changed}; refusing to rebuild (source_changed='refuse'): restore the source "
                "file the run was trained with, or load with source_changed='warn'"
            )
    args = dict(spec.get("args") or {})
    try:
        model = factory(**args)
    except Exception as exc:
        why = f" ({changed})" if changed else ""
        raise ModelError(
            f"{ref}({', '.join(f'{k}={v!r}' for k, v in args.items())}) raised {type(exc).__name__}: "
            f"{exc}{why}; the recorded arguments no longer fit the factory"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"{ref} returned a {type(model).__name__}, expected a torch.nn.Module")
    setattr(
        model,
        SPEC_ATTRIBUTE,
        {
            k: v
            for k, v in spec.items()
            if k in ("source", "name", "args", "filled_args", "source_file", "sha256", "num_classes", "input_shape")
        },
    )
    return model, changed


def infer_head(model: nn.Module, *, num_classes: int) -> str:
    """The classifier head when it is unambiguous: ``model.head_name``, else the only ``nn.Linear`` with
    ``num_classes`` outputs; an error naming the candidates otherwise."""
    name = getattr(model, "head_name", None)
    if name:
        return name
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if len(linear) == 1:
        return linear[0]
    names = ", ".join(n for n, _ in model.named_modules() if n)
    what = (
        f"{len(linear)} nn.Linear modules with {num_classes} outputs ({', '.join(linear)})"
        if linear
        else f"no nn.Linear with {num_classes} outputs"
    )
    raise ModelError(f"name the classifier head (--head NAME / head=...): the model has {what}; its modules: {names}")


def parse_model_args(items: list[str] | None) -> dict[str, Any]:
    """``--model-arg KEY=VALUE`` -> {KEY: value}; values are Python literals (numbers, True/False/None,
    lists, quoted strings) or else text."""
    import ast

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--model-arg takes KEY=VALUE, got {item!r}")
        key, value = (s.strip() for s in item.split("=", 1))
        if not key.isidentifier():
            raise ConfigError(f"--model-arg: {key!r} is not a Python argument name")
        if not value:
            raise ConfigError(f"--model-arg {key}: the value is empty (a text value is quoted: {key}='')")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            out[key] = {"true": True, "false": False, "none": None}.get(value.lower(), value)
        if _non_finite(out[key]):
            raise ConfigError(f"--model-arg {key}: {value!r} is not a finite number")
    return out


def _non_finite(value: Any) -> bool:
    """nan / inf as a number (1e999 reads as inf) or as text (float() reads 'nan', 'inf', 'Infinity')."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, str):
        try:
            return not math.isfinite(float(value))
        except ValueError:
            return False
    return False
