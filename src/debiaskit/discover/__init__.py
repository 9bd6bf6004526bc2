"""Pseudo-bias discovery without bias labels: attractor geometry at the bottleneck of a trained model.

Example::

    from debiaskit.discover import discover_pseudo_bias, with_pseudo_bias
    found = discover_pseudo_bias(model, train=splits.train, others={"unbiased_val": splits.unbiased_val}, head="fc")
    audit_data = with_pseudo_bias(splits.unbiased_val, found["unbiased_val"].pseudo_bias)

    # a model trained to convergence: read an early layer, where memorisation has not hidden the conflicts
    found = discover_pseudo_bias(model, train=splits.train, layer="auto")
"""

from ._discover import (
    DISCOVER_DIR,
    PSEUDO_FILE,
    WEAK_SCORE,
    Discovery,
    choose_layer,
    discover_from_dynamics,
    discover_pseudo_bias,
    discover_run,
    discovery_quality,
    load_pseudo_bias,
    otsu_threshold,
    scan_layers,
    with_pseudo_bias,
)
from ._dynamics import DYNAMICS_FILE, load_dynamics, save_dynamics
from ._folders import DISCOVER_FOLDER
from ._geometry import Attraction, RunningCentroids, attractor_rule, class_centroids
from ._layers import BOTTLENECK, candidate_layers, collect_layer_features

__all__ = [
    "discover_pseudo_bias",
    "Discovery",
    "discover_run",
    "discover_from_dynamics",
    "discovery_quality",
    "load_pseudo_bias",
    "with_pseudo_bias",
    "scan_layers",
    "choose_layer",
    "candidate_layers",
    "attractor_rule",
    "Attraction",
    "RunningCentroids",
    "class_centroids",
    "load_dynamics",
    "save_dynamics",
]
# Names imported here but not in __all__ are internal: for debiaskit's other packages and its CLI (importable,
# undocumented, may change). tests/test_public_api.py holds the reviewed lists of both.
