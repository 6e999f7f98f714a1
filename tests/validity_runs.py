"""A small audit folder written from code, the way ``debias audit`` lays one out, for the validity tests.

Images are 32×32 PNGs (visible blocks, so a screenshot of the label page is not blank); each sample has the
classifier's label and an oracle label, as the mini model's audits do.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

TEMPLATES = ("a portrait of {}", "{} at work")


def key_of(profession: str, i: int) -> str:
    return hashlib.sha256(f"{profession}:{i}".encode()).hexdigest()[:32]


def _png(path: Path, seed: int, label: str) -> None:
    rng = np.random.default_rng(seed)
    img = np.full((32, 32, 3), 235, np.uint8)
    colour = {"female": (190, 60, 140), "male": (40, 120, 170)}.get(label, (120, 120, 120))
    for _ in range(6):
        r, c = rng.integers(0, 24, size=2)
        img[r:r + 8, c:c + 8] = colour
    img[12:20, 12:20] = (30, 30, 30)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def make_run(folder: Path, professions: dict[str, list[tuple[str, str]]]) -> Path:
    """Write ``folder/audit.json`` and ``folder/images``; ``professions``: name → [(oracle, classifier label)]."""
    rows = []
    for p, (name, pairs) in enumerate(professions.items()):
        samples = []
        for i, (oracle, predicted) in enumerate(pairs):
            key = key_of(name, i)
            image = f"images/{key}.png"
            _png(folder / image, 1000 * p + i, oracle)
            samples.append({"prompt": TEMPLATES[i % 2].format(f"a {name}"), "seed": i, "image": image,
                            "label": predicted, "p_female": 0.9 if predicted == "female" else 0.1,
                            "oracle": oracle})
        rows.append({"profession": name, "phrase": f"a {name}", "prompts": [t.format(f"a {name}") for t in TEMPLATES],
                     "n": len(pairs), "samples": samples})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "audit.json").write_text(json.dumps({"kind": "audit", "professions": rows}), encoding="utf-8")
    return folder


def balanced(n: int, errors: int = 0) -> list[tuple[str, str]]:
    """``n`` images alternating female/male; the classifier gets the first ``errors`` of them wrong."""
    out = []
    for i in range(n):
        truth = "female" if i % 2 == 0 else "male"
        wrong = "male" if truth == "female" else "female"
        out.append((truth, wrong if i < errors else truth))
    return out
