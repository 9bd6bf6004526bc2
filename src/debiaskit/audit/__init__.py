"""Bias audit: group metrics, privacy-head probe, mutual information, counterfactual bias, reports.

Example::

    from debiaskit.audit import audit_model, write_report
    report = audit_model(model, test=splits.test, unbiased_train=splits.unbiased_train,
                         unbiased_val=splits.unbiased_val, head="fc")
    write_report(report, "audit/")
"""

from ._audit import AttributeAudit, AuditReport, audit_model, below_majority_text, counterfactual_bias
from ._folders import AUDIT_FOLDER
from ._metrics import CHANCE_MARGIN, GroupMetrics, chance_floor, group_metrics, normalized_mutual_information
from ._probe import PROBES, ProbeResult, logits_accuracy, probe_bias, probe_suite, readable, train_privacy_head
from ._report import (
    CONVENTIONS,
    render_table,
    render_where,
    summary_rows,
    to_markdown,
    write_report,
    write_report_files,
)
from ._run import audit_into, audit_run
from ._where import (
    WHERE_MARGIN,
    ClassProbe,
    PerClassProbe,
    PointProbe,
    bottleneck_of,
    most_read,
    per_class_sentences,
    point_key,
    point_label,
    readable_upstream,
    where_sentences,
    within_class_text,
)

__all__ = [
    "audit_model",
    "PointProbe",
    "PerClassProbe",
    "ClassProbe",
    "audit_run",
    "AuditReport",
    "AttributeAudit",
    "GroupMetrics",
    "ProbeResult",
    "group_metrics",
    "counterfactual_bias",
    "normalized_mutual_information",
    "probe_bias",
    "probe_suite",
    "PROBES",
    "readable",
    "train_privacy_head",
    "write_report",
    "to_markdown",
]
# Names imported here but not in __all__ are internal: for debiaskit's other packages and its CLI (importable,
# undocumented, may change). tests/test_public_api.py holds the reviewed lists of both.
