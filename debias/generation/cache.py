"""The run folder's image cache: what identifies an image (its key) and where it and its label are kept.

A key hashes everything an image depends on: the model's K/V fingerprint (plus its current K/V weights if an
edit is baked in), the edit applied on the fly (hash of ``M``, or none), the sampler settings, the prompt and
the seed. PNGs are written atomically, then one line is appended to a per-process index, so a record never
points at nothing and a run killed mid-write loses at most its last line (which is ignored).

Layout of a cache folder::

    images/<key>.png          one 8-bit RGB PNG per work item
    index/rank<r>.jsonl       {"type": "image", "key", "prompt", "seed", "image", "oracle"?}
                              {"type": "label", "key", "classifier", "label", "p_female"}
                              {"type": "label", "key", "classifier", "attribute", "label"}   (other attributes)

A label is keyed by image and classifier id. An attribute's classifier has its own id (a hash of its attribute,
class prompts, "none" prompts, model and rule: :attr:`debias.classify.zero_shot.AttributeClassifier.cache_id`), so skin and
age labels of one image never mix, and an attribute file whose prompts change is read again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from debias.core.edit_state import edit_state
from debias.core.io import atomic_write
from debias.core.models import find_cross_attention, fingerprint

CACHE_VERSION = 1


def _sha256(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def edit_id(M: torch.Tensor | None) -> str | None:
    """``"sha256:…"`` of an edit matrix (float64 bytes and shape), or None for no edit."""
    if M is None:
        return None
    t = M.detach().to("cpu", torch.float64).contiguous()
    digest = hashlib.sha256(f"{tuple(t.shape)}|".encode())
    digest.update(t.numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def model_key(pipe) -> str:
    """What identifies the model's weights for the cache: its fingerprint, plus the current K/V
    weights when an edit has been baked in (the fingerprint names the *original* weights)."""
    state = edit_state(pipe)
    baked = state.originals is not None
    if state.fingerprint is None:
        state.fingerprint = fingerprint(pipe)
    key = state.fingerprint
    if baked:
        digest = hashlib.sha256()
        for proj in find_cross_attention(pipe):
            w = proj.module.weight.detach().to("cpu").contiguous()
            digest.update(proj.name.encode())
            digest.update(w.reshape(-1).view(torch.uint8).numpy().tobytes())
        return f"{key}+baked:{digest.hexdigest()}"
    return key


def item_key(model: str, edit: str | None, settings: Any, prompt: str, seed: int) -> str:
    """The cache key of one image (hex, 32 characters)."""
    return _sha256({"v": CACHE_VERSION, "model": model, "edit": edit, "sampler": settings.to_dict(),
                    "prompt": prompt, "seed": int(seed)})[:32]


# --------------------------------------------------------------------------------------------- cache
class ImageCache:
    """PNG files plus append-only JSON-lines index files (one per process) under ``root``."""

    def __init__(self, root: str | os.PathLike, rank: int = 0):
        self.root = Path(root)
        self.rank = rank
        self.images: dict[str, dict] = {}  # key -> image record
        self.labels: dict[tuple[str, str], dict] = {}  # (key, classifier id) -> label record
        self._read_upto: dict[Path, int] = {}  # bytes of each index file already read
        self.load()

    @property
    def index_path(self) -> Path:
        return self.root / "index" / f"rank{self.rank}.jsonl"

    def image_path(self, key: str) -> Path:
        return self.root / "images" / f"{key}.png"

    def load(self) -> None:
        """Read what is new in every index file (other processes append to theirs).

        Only complete lines are read; a torn line (kill -9 mid-write) is skipped once the next
        append has ended it. Records whose PNG is missing are ignored.
        """
        for path in sorted((self.root / "index").glob("*.jsonl")):
            start = self._read_upto.get(path, 0)
            with open(path, "rb") as fh:
                fh.seek(start)
                data = fh.read()
            end = data.rfind(b"\n") + 1  # stop after the last complete line
            self._read_upto[path] = start + end
            for line in data[:end].decode("utf-8", errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by kill -9
                if not isinstance(rec, dict) or "key" not in rec:
                    continue
                if rec.get("type") == "image":
                    if self.image_path(rec["key"]).is_file():
                        self.images[rec["key"]] = rec
                elif rec.get("type") == "label":
                    self.labels[(rec["key"], rec.get("classifier", ""))] = rec

    def _append(self, records: Sequence[dict]) -> None:
        path = self.index_path
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() > 0:  # after a torn write the last line has no newline: start a fresh one
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    fh.write(b"\n")
            fh.write(b"".join(json.dumps(r, allow_nan=False).encode() + b"\n" for r in records))
            fh.flush()

    def put_images(self, records: Sequence[dict], images: np.ndarray) -> None:
        """Write PNGs atomically, then their index records (so a record never points at nothing)."""
        from PIL import Image

        for rec, img in zip(records, images):
            atomic_write(self.image_path(rec["key"]), lambda p, img=img: Image.fromarray(img).save(p, format="PNG"))
        records = [{"type": "image", **r} for r in records]
        self._append(records)
        for r in records:
            self.images[r["key"]] = r

    def put_labels(self, records: Sequence[dict]) -> None:
        records = [{"type": "label", **r} for r in records]
        self._append(records)
        for r in records:
            self.labels[(r["key"], r["classifier"])] = r

    def read_images(self, keys: Sequence[str]) -> np.ndarray:
        from PIL import Image

        return np.stack([np.asarray(Image.open(self.image_path(k)).convert("RGB")) for k in keys])


