"""Bias audit: group metrics, privacy-head probe, mutual information, counterfactual bias, reports.

Example::

    from debiaskit.audit import audit_model, write_report
    report = audit_model(model, test=splits.test, unbiased_train=splits.unbiased_train,
                         unbiased_val=splits.unbiased_val, head="fc")
    write_report(report, "audit/")
"""
from ._audit import AttributeAudit, AuditReport, audit_model, below_majority_text, counterfactual_bias
from ._metrics import CHANCE_MARGIN, GroupMetrics, chance_floor, group_metrics, normalized_mutual_information
from ._probe import PROBES, ProbeResult, logits_accuracy, probe_bias, probe_suite, readable, train_privacy_head
from ._run import audit_run
from ._report import CONVENTIONS, render_table, summary_rows, to_markdown, write_report, write_report_files

__all__ = ["audit_run", "AttributeAudit", "AuditReport", "below_majority_text", "CONVENTIONS", "GroupMetrics", "ProbeResult", "audit_model",
           "counterfactual_bias", "group_metrics", "logits_accuracy", "normalized_mutual_information", "PROBES", "probe_bias", "probe_suite", "readable", "render_table",
           "summary_rows", "to_markdown", "train_privacy_head", "write_report", "write_report_files"]
