"""Images from prompts: seeded generation with batching and resume (:mod:`.generate`, which tries an edit through
:func:`debias.editing.apply.conditioning_transform`), and the run folder's image cache (:mod:`.cache`)."""
