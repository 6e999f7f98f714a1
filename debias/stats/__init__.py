"""Pure statistics: shares, Wilson intervals, Δ and the band (:mod:`.binary`); k-class shares with simultaneous
intervals (:mod:`.multiclass`). No pipeline, no files."""
