"""Training: one loop (``fit``) that methods plug into, and run folders (``train_run``)."""
from ._loop import ConflictFlags, FitResult, TrainConfig, TrainContext, TrainingMethod, fit, make_optimizer
from ._run import partial_dir, train_run
from ._dynamics import DynamicsRecorder
from ..discover import DYNAMICS_FILE, load_dynamics, save_dynamics   # the file's format is discover's
from ._state import flatten_state, unflatten_state

__all__ = ["ConflictFlags", "FitResult", "TrainConfig", "TrainContext", "TrainingMethod", "fit", "make_optimizer", "partial_dir", "train_run",
           "DYNAMICS_FILE", "DynamicsRecorder", "load_dynamics", "save_dynamics", "flatten_state", "unflatten_state"]
