"""The mini world's tokenizer: a deterministic BPE in which every word of the world is one token, as a CLIPTokenizer.

One token per word keeps prompts short (at most ``MAX_LENGTH`` tokens) and makes a TIME edit's token alignment
trivial to read ("a nurse" ↔ "a male nurse" differ by one token). :class:`CaptionIds` caches the ids of the few
hundred captions the world has, for the training loops.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..core.io import atomic_write_text
from . import world

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 16


def bpe_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair merges (CLIP's "</w>" word end) until every word is one symbol, deterministically.

    Plain BPE: repeatedly merge the most frequent adjacent pair, ties broken by the pair's text
    (the ``tokenizers`` trainer breaks ties in hash order, so its ids change from run to run).
    """
    from collections import Counter

    pieces = [list(w[:-1]) + [w[-1] + "</w>"] for w in words]
    merges: list[tuple[str, str]] = []
    while any(len(p) > 1 for p in pieces):
        counts = Counter(pair for p in pieces for pair in zip(p, p[1:]))
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        for k, p in enumerate(pieces):
            out, i = [], 0
            while i < len(p):
                if i + 1 < len(p) and (p[i], p[i + 1]) == best:
                    out.append(p[i] + p[i + 1])
                    i += 2
                else:
                    out.append(p[i])
                    i += 1
            pieces[k] = out
    return merges


def build_tokenizer(folder: Path, words: list[str] | None = None):
    """A BPE tokenizer in which every mini-world word is exactly one token, as a CLIPTokenizer.

    ``words`` default to the first world's vocabulary; a word may also be a lone symbol ("-", which CLIP's
    pre-tokenizer splits off "middle-aged"), added after the letters so the first world's ids stay put.

    The merges come from :func:`bpe_merges`; vocab.json and merges.txt are written by hand because
    newer transformers saves only tokenizer.json, and classic CLIP loaders expect the two files.
    """
    from transformers import CLIPTokenizer

    words = list(words) if words is not None else world.vocabulary()
    pairs = bpe_merges(words)
    merges = [f"{a} {b}" for a, b in pairs]
    letters = "abcdefghijklmnopqrstuvwxyz"
    symbols = sorted({c for w in words for c in w} - set(letters))
    alphabet = list(letters) + [c + "</w>" for c in letters] + symbols + [c + "</w>" for c in symbols]
    products = [a + b for a, b in pairs]
    vocab = {tok: i for i, tok in enumerate([BOS, EOS] + alphabet + [p for p in products if p not in alphabet])}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    atomic_write_text(folder / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    clip_tok = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges],
                             model_max_length=MAX_LENGTH, pad_token=EOS, unk_token=EOS,
                             bos_token=BOS, eos_token=EOS)
    save_tokenizer(clip_tok, folder)
    clip_tok = CLIPTokenizer.from_pretrained(folder)
    for w in words:
        ids = clip_tok(w, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise RuntimeError(f"tokenizer splits {w!r} into {ids}")
    return clip_tok


def save_tokenizer(tok, folder: Path) -> None:
    """save_pretrained plus the classic vocab.json / merges.txt next to tokenizer.json."""
    folder = Path(folder)
    vocab = (folder / "vocab.json").read_text() if (folder / "vocab.json").exists() else None
    merges = (folder / "merges.txt").read_text() if (folder / "merges.txt").exists() else None
    tok.save_pretrained(folder)
    if vocab is not None and not (folder / "vocab.json").exists():
        atomic_write_text(folder / "vocab.json", vocab)
    if merges is not None and not (folder / "merges.txt").exists():
        atomic_write_text(folder / "merges.txt", merges)


def copy_tokenizer_files(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        shutil.copy2(f, dst / f.name)


class CaptionIds:
    """Caches token ids per caption (the world has only a few hundred distinct captions)."""

    def __init__(self, tokenizer):
        self.tok, self.cache = tokenizer, {}

    def __call__(self, captions):
        import torch

        missing = sorted({c for c in captions if c not in self.cache})
        if missing:
            ids = self.tok(missing, padding="max_length", max_length=MAX_LENGTH, truncation=True,
                           return_tensors="pt").input_ids
            self.cache.update(zip(missing, ids))
        return torch.stack([self.cache[c] for c in captions])
