"""Pseudo-bias discovery without bias labels: attractor geometry at the bottleneck of a trained model.

Example::

    from debiaskit.discover import discover_pseudo_bias, with_pseudo_bias
    found = discover_pseudo_bias(model, train=splits.train, others={"unbiased_val": splits.unbiased_val}, head="fc")
    audit_data = with_pseudo_bias(splits.unbiased_val, found["unbiased_val"].pseudo_bias)

    # a model trained to convergence: read an early layer, where memorisation has not hidden the conflicts
    found = discover_pseudo_bias(model, train=splits.train, layer="auto")
"""
from ._dynamics import DYNAMICS_FILE, load_dynamics, save_dynamics
from ._geometry import Attraction, RunningCentroids, attractor_rule, class_centroids
from ._discover import (DISCOVER_DIR, PSEUDO_FILE, WEAK_SCORE, Discovery, choose_layer, discover_from_dynamics, discover_pseudo_bias,
                        discover_run, discovery_quality, load_pseudo_bias, otsu_threshold, scan_layers,
                        with_pseudo_bias)
from ._layers import BOTTLENECK, candidate_layers, collect_layer_features

__all__ = ["Attraction", "BOTTLENECK", "DISCOVER_DIR", "DYNAMICS_FILE", "Discovery", "PSEUDO_FILE", "RunningCentroids", "attractor_rule",
           "candidate_layers", "choose_layer", "class_centroids", "collect_layer_features", "discover_from_dynamics",
           "discover_pseudo_bias", "discover_run", "discovery_quality", "load_dynamics", "load_pseudo_bias", "otsu_threshold", "save_dynamics",
           "scan_layers", "WEAK_SCORE", "with_pseudo_bias"]
