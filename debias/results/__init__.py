"""The results as typed objects that own their files (:mod:`.records`), their printed summaries (:mod:`.summaries`),
the release gate on them (:mod:`.gate`) and the validity block refreshed from labels (:mod:`.validity`)."""

from debias.results.records import AuditResult, FixResult

__all__ = ["AuditResult", "FixResult"]
