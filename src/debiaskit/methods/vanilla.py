"""ERM: plain cross-entropy on the biased training set."""
from ..train import TrainingMethod
from ._registry import MethodInfo, register_method

register_method(MethodInfo(name="vanilla", description="ERM (plain cross-entropy)", factory=lambda: TrainingMethod()))
