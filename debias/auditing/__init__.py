"""The audit stage both verbs run (:mod:`.stage`: generate, classify, count into an ``AuditResult``) and the
attributes beyond gender it reads on the same images (:mod:`.attributes`)."""
