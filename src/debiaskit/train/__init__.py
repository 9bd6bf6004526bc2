"""Training: one loop (``fit``) that methods plug into, and run folders (``train_run``)."""

from ..discover import DYNAMICS_FILE, load_dynamics, save_dynamics  # the file's format is discover's
from ._dynamics import DynamicsRecorder
from ._folders import RUN_FOLDER
from ._loop import ConflictFlags, FitResult, TrainConfig, TrainContext, TrainingMethod, fit, make_optimizer
from ._run import partial_dir, train_run
from ._state import flatten_state, unflatten_state

__all__ = [
    "fit",
    "TrainConfig",
    "FitResult",
    "TrainingMethod",
    "TrainContext",
    "ConflictFlags",
    "make_optimizer",
    "train_run",
]
# Names imported here but not in __all__ are internal: for debiaskit's other packages and its CLI (importable,
# undocumented, may change). tests/test_public_api.py holds the reviewed lists of both.
