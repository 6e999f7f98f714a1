"""Tiny model folders for the audit tests: an SD 1.x pipeline and a CLIP classifier, built from configs.

Both are random (no download) and written once per test process as folders that load offline, so
the same folders serve in-process tests, CLI subprocesses and ``accelerate launch`` runs.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import torch

from tiny_models import clip_tokenizer, save_tiny, tiny_sd1


@functools.lru_cache(maxsize=1)
def tiny_folders() -> tuple[Path, Path]:
    """(pipeline folder, classifier folder), built once per process."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    root = Path(tempfile.mkdtemp(prefix="debias-audit-models-"))
    save_tiny(tiny_sd1(seed=0), root / "sd1")
    torch.manual_seed(0)
    text = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=49408,
                max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    vision = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=16,
                  patch_size=4)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    # a larger temperature spreads the random model's probabilities, so both labels occur
    with torch.no_grad():
        model.logit_scale.fill_(float(np.log(400.0)))
    model.save_pretrained(root / "clip")
    clip_tokenizer().save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(root / "clip")
    return root / "sd1", root / "clip"


def load_tiny():
    """(pipeline, classifier) loaded through the package's own loaders."""
    from debias.classify.zero_shot import load_classifier
    from debias.core.options import ClassifierOptions
    from debias.core.models import load_pipeline

    sd, clip = tiny_folders()
    return load_pipeline(str(sd)), load_classifier(str(clip), ClassifierOptions(labels_none=(), min_confidence=0.5))


class HalfClassifier:
    """A deterministic stand-in classifier with the ``ZeroShotClassifier`` interface for plumbing tests.

    A random tiny CLIP reads every random tiny image the same way; this one reads "female" when the left
    half of an image is brighter than the right, so labels vary from seed to seed, and "unclear" when the
    halves are nearly equal. (The CLIP classifiers themselves are tested in test_classify.py.)
    """

    cache_id = "half-v1"

    def describe(self) -> dict:
        return {"backend": "test-half", "model": "left vs right brightness", "labels": {},
                "abstain": {"rule": "unclear if |p_female - 0.5| < 0.05", "min_confidence": 0.55}}

    def classify(self, images):
        x = torch.as_tensor(np.asarray(images)).float()
        w = x.shape[2] // 2
        diff = x[:, :, :w].mean(dim=(1, 2, 3)) - x[:, :, w:].mean(dim=(1, 2, 3))
        p = torch.sigmoid(diff / 4.0)
        labels = ["unclear" if abs(v - 0.5) < 0.05 else ("female" if v > 0.5 else "male") for v in p.tolist()]
        return labels, p


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``debias ARGV`` in this process: (exit code, stdout, stderr), as a user would see them."""
    from debias.cli import main

    try:
        main(argv)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
