"""Sample images for the page: which ones to show, and each as a small inline thumbnail.

The page must open offline from one file, so images are embedded as ``data:`` URIs; a few per profession and
side keep a report of dozens of professions a few megabytes at most. A fix's before and after images are picked
at the same (prompt, seed), so a column of thumbnails differs only by the edit.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from debias.report.runs import Runs

SAMPLES_PER_SIDE = 8  # thumbnails per profession and side: enough to see, light enough to mail
THUMB_PX = 96  # stored thumbnail size (shown at 64 CSS px, sharp on high-DPI screens and in print)


def thumbnail(path: Path, px: int = THUMB_PX) -> str | None:
    """A small inline image: tiny ones upscaled by whole pixels (nearest), large ones downscaled.

    32×32 mini-model images become crisp 96 px blocks (PNG); 512 px photos become ~96 px JPEGs. None when the
    file is missing or not an image.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except (OSError, ValueError):
        return None
    w, h = img.size
    buf = io.BytesIO()
    if max(w, h) <= px:
        factor = max(1, px // max(w, h))
        img = img.resize((w * factor, h * factor), Image.Resampling.NEAREST)
        img.save(buf, format="PNG", optimize=True)
        mime = "image/png"
    else:
        img.thumbnail((px, px), Image.Resampling.LANCZOS)
        img.save(buf, format="JPEG", quality=82, optimize=True)
        mime = "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class Thumbnails:
    """Inline thumbnails by path, each read once; missing files are collected for one warning, not a crash."""

    def __init__(self) -> None:
        self.uris: dict[str, str | None] = {}
        self.missing: list[str] = []

    def get(self, folder: Path, rel: str | None) -> str | None:
        if not rel:
            return None
        key = str((folder / rel).resolve())
        if key not in self.uris:
            self.uris[key] = thumbnail(Path(key))
            if self.uris[key] is None:
                self.missing.append(str(folder / rel))
        return self.uris[key]

    def warning(self) -> str | None:
        if not self.missing:
            return None
        shown = ", ".join(self.missing[:3]) + (" …" if len(self.missing) > 3 else "")
        return (f"{len(self.missing)} sample image(s) could not be read and are shown as empty boxes ({shown}). "
                "Copy the run folder with its images/ (and side/) folders.")


def pick_samples(before: list[dict], after: list[dict] | None, k: int = SAMPLES_PER_SIDE) -> list[dict]:
    """Up to k (prompt, seed) pairs present on both sides, spread over prompts (one per prompt first)."""
    after_by_key = {(s["prompt"], s["seed"]): s for s in after or []}
    pairs = [s for s in before if after is None or (s["prompt"], s["seed"]) in after_by_key]
    prompts = list(dict.fromkeys(s["prompt"] for s in pairs))
    seen: dict[str, int] = {}
    order = []
    for i, s in enumerate(pairs):
        rank = seen.get(s["prompt"], 0)  # the how-many-th image of its prompt
        seen[s["prompt"]] = rank + 1
        order.append((rank, prompts.index(s["prompt"]), i))
    chosen = [pairs[i] for *_, i in sorted(order)[:k]]
    return [{"prompt": s["prompt"], "seed": s["seed"], "before": _side(s),
             "after": _side(after_by_key[(s["prompt"], s["seed"])]) if after is not None else None}
            for s in chosen]


def _side(sample: dict) -> dict:
    return {"image": sample.get("image"), "label": sample.get("label"), "p_female": sample.get("p_female")}


def attach_samples(runs: Runs, rows: list[dict], thumbs: Thumbnails) -> dict[int, list[dict]]:
    """Put each row's picked samples into it; return their thumbnails by row index (only the page needs those)."""
    samples = {side: {p.profession: p.samples for p in audit.professions} for side, audit in runs.audits.items()}
    page_sides = {"before": runs.sides[0], **({"after": "after"} if runs.paired else {})}
    out = {}
    for i, row in enumerate(rows):
        before = samples[runs.sides[0]].get(row["profession"], [])
        after = samples["after"].get(row["profession"], []) if runs.paired else None
        row["samples"] = pick_samples(list(before), None if after is None else list(after))
        out[i] = [{shown: thumbs.get(runs.folder(side), s[shown]["image"]) if s[shown] else None
                   for shown, side in page_sides.items()} for s in row["samples"]]
    return out


def side_effects(runs: Runs, thumbs: Thumbnails) -> tuple[dict | None, list[list[dict]]]:
    """The fix's side-effect section (its prompts with a few before/after samples each) and their thumbnails."""
    if runs.fix is None or not runs.fix.side_effects:
        return None, []
    recorded = runs.fix.side_effects
    section: dict[str, Any] = {k: v for k, v in recorded.items() if k != "prompts"}
    section["prompts"] = []
    images = []
    for prompt in recorded.get("prompts") or []:
        entry = {k: v for k, v in prompt.items() if k != "samples"}
        entry["samples"] = list(prompt.get("samples") or [])[:SAMPLES_PER_SIDE]
        section["prompts"].append(entry)
        images.append([{side: thumbs.get(runs.folder("fix"), s.get(side)) for side in ("before", "after")}
                       for s in entry["samples"]])
    return section, images
