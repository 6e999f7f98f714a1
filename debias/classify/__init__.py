"""Reading images: CLIP backends (:mod:`.clip_backends`) and the zero-shot classifier with its abstain rule, k-class
attribute classifiers, and which classifiers a run uses (:mod:`.zero_shot`)."""
