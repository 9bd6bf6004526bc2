"""Debiasing methods behind one registry (DomainBed style): every public module of this package
registers its method on import.

Example::

    from debiaskit.methods import METHODS, build_method, method_defaults
    method, config = build_method("vanilla", dataset="biased-mnist")

    method_defaults("lff", "colored-mnist")   # {name: Default(value, source)}: where each default comes from
"""

import importlib
import pkgutil

from ._folders import UNLEARN_FOLDER
from ._registry import (
    METHODS,
    PROTOCOLS,
    REFERENCE_METHOD,
    SELECTION_RULES,
    Default,
    DefaultsWarning,
    MethodInfo,
    build_method,
    dataset_family,
    defaults_note,
    get_method,
    method_config,
    method_defaults,
    register_method,
)

for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = [
    "METHODS",
    "PROTOCOLS",
    "SELECTION_RULES",
    "Default",
    "MethodInfo",
    "build_method",
    "get_method",
    "method_config",
    "method_defaults",
    "register_method",
    "DefaultsWarning",
]
# Names imported here but not in __all__ are internal: for debiaskit's other packages and its CLI (importable,
# undocumented, may change). tests/test_public_api.py holds the reviewed lists of both.
