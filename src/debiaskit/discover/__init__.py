"""Pseudo-bias discovery without bias labels: attractor geometry at the bottleneck of a trained model.

Example::

    from debiaskit.discover import discover_pseudo_bias, with_pseudo_bias
    found = discover_pseudo_bias(model, train=splits.train, others={"unbiased_val": splits.unbiased_val}, head="fc")
    audit_data = with_pseudo_bias(splits.unbiased_val, found["unbiased_val"].pseudo_bias)
"""
from ._geometry import Attraction, RunningCentroids, attractor_rule, class_centroids
from ._discover import (DISCOVER_DIR, PSEUDO_FILE, Discovery, discover_pseudo_bias, discover_run, discovery_quality,
                        load_pseudo_bias, with_pseudo_bias)

__all__ = ["Attraction", "DISCOVER_DIR", "Discovery", "PSEUDO_FILE", "RunningCentroids", "attractor_rule",
           "class_centroids", "discover_pseudo_bias", "discover_run", "discovery_quality", "load_pseudo_bias",
           "with_pseudo_bias"]
