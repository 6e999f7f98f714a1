"""Human labels of a run's images: the append-only label file and the random sample to label (a CSV of labels is
imported by :mod:`debias.validity.label_import`).

Layout, inside the audit folder (beside ``audit.json``)::

    labels/labels.jsonl   one JSON object a line: {"key", "label", "labeller", "time", "source"}
    labels/sample.json    the sample being labelled (written atomically; for the record and stable ids)

``label`` is one of :data:`LABELS`. "skip" and "back" are navigation on the label page, never labels. The file
is only ever appended to: each append is one write followed by ``fsync``, so a label the page acknowledged is on
disk, and a process killed mid-write leaves at most a torn last line, which reading ignores (the next append
starts a fresh line). **Relabelling:** the same labeller labelling the same image again does not rewrite
anything; the later line in the file wins. Different labellers' labels are all kept (for Cohen's κ).

Both files are the owner's only (0600: they name people, and the sample maps ids to professions), and neither
they nor ``labels/`` may be a symbolic link: a link would make an append write into a file anywhere. A label
file holds at most :data:`MAX_LABEL_LINES` lines by at most :data:`MAX_LABELLERS` labellers, so that reading it
and comparing every pair of labellers stays quick.

**The sample** is stratified by profession and random within each: a profession's images are ordered by a
seeded hash of their keys (a random order that stays put when an audit later adds images), and the first
``per_profession`` are labelled. The page serves them round-robin over professions (in a seeded order within
each round), so whenever a labeller stops, each profession's labelled images are a uniformly random subset of
its images, which is what prediction-powered inference (:mod:`debias.validity.ppi`) needs.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import stat
import threading
import unicodedata
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

from debias.core.errors import InputError
from debias.core.io import atomic_write_json
from debias.validity.ppi import LABELS_FOR_10

LABELS = ("female", "male", "unclear", "no_person")
NAVIGATION = ("skip", "back")
MAX_LABEL_LINES = 500_000  # a run needs hundreds of labels per profession and labeller, not millions
MAX_LABELLERS = 500        # κ between every pair of labellers: 124,750 pairs at most
FILE_MODE = 0o600          # label files name people: the owner's only
# characters a name must not hold: they are invisible or reorder or break the text around them, so a name
# could display as another ("ann\u202egnp.exe" shows as "annexe.png")
REFUSED_IN_NAMES = {"Cc": "a control character", "Cf": "an invisible format character", "Zl": "a line separator",
                    "Zp": "a paragraph separator", "Cs": "a lone surrogate", "Co": "a private-use character",
                    "Cn": "an unassigned code point"}


# ------------------------------------------------------------------------------------------ run images
@dataclass(frozen=True)
class RunImage:
    """One image of an audit: its cache key, file, profession, prompt and the classifier's label."""

    key: str
    image: str          # as audit.json names it, relative to the audit folder ("images/<key>.png")
    path: Path
    profession: str
    prompt: str
    predicted: str      # the classifier's label: female / male / unclear
    oracle: str | None  # a synthetic world's pixel oracle, when there is one


@dataclass
class RunImages:
    """The images of one audit folder, by key, in the audit's order."""

    run_dir: Path
    professions: list[str]
    images: dict[str, RunImage]

    def of(self, profession: str) -> list[RunImage]:
        return [im for im in self.images.values() if im.profession == profession]

    def lookup(self, ref: str) -> RunImage | None:
        """An image by key, file name (``<key>.png``) or path as audit.json writes it (``images/<key>.png``)."""
        ref = ref.strip()
        if ref in self.images:
            return self.images[ref]
        name = Path(ref.replace("\\", "/")).name
        stem = name[:-4] if name.lower().endswith(".png") else None
        return self.images.get(stem) if stem else None


def load_run(run_dir: str | os.PathLike, audit_record: dict | None = None) -> RunImages:
    """The images of the audit in ``run_dir`` (its ``audit.json``, or ``audit_record`` when given)."""
    run_dir = Path(run_dir)
    if audit_record is None:
        path = run_dir / "audit.json"
        if not path.is_file():
            raise InputError(f"{run_dir}: no audit.json here. Label an audit folder (debias audit --out DIR), "
                             "or a fix folder's before/ or after/.")
        audit_record = json.loads(path.read_text(encoding="utf-8"))
    professions, images = [], {}
    for row in audit_record.get("professions", []):
        name = row.get("profession") or row.get("phrase")
        professions.append(name)
        for s in row.get("samples", []):
            key = Path(s["image"]).stem
            images.setdefault(key, RunImage(key, s["image"], (run_dir / s["image"]).resolve(), name,
                                            s.get("prompt", ""), s.get("label", "unclear"), s.get("oracle")))
    if not images:
        raise InputError(f"{run_dir}/audit.json lists no images: nothing to label.")
    return RunImages(run_dir, professions, images)


# ------------------------------------------------------------------------------------------ label store
@dataclass(frozen=True)
class LabelRecord:
    key: str
    label: str
    labeller: str
    time: str
    source: str = "page"

    def to_dict(self) -> dict:
        return asdict(self)


def check_label(label: str, where: str = "") -> str:
    """``label`` if it is one of :data:`LABELS`, else an error that says what to use."""
    if label in LABELS:
        return label
    if label in NAVIGATION:
        raise InputError(f"{where}{label!r} is navigation on the label page, not a label; "
                         f"use one of {', '.join(LABELS)}")
    raise InputError(f"{where}unknown label {label!r}; use one of {', '.join(LABELS)}")


def check_labeller(name: str, where: str = "") -> str:
    """``name`` without surrounding spaces, if it is 1-200 characters none of which is in
    :data:`REFUSED_IN_NAMES`; else an error that names the character."""
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise InputError(f"{where}a labeller name must be 1-200 characters, got {name!r}")
    for i, c in enumerate(name):
        kind = REFUSED_IN_NAMES.get(unicodedata.category(c))
        if kind:
            raise InputError(f"{where}labeller name {name!r}: character {i + 1} is U+{ord(c):04X} "
                             f"({unicodedata.name(c, 'unnamed')}), {kind}, which can make a name display as "
                             "another; use letters, digits, spaces and punctuation")
    return name


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class LabelStore:
    """The append-only label file of a run folder (see the module docstring)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "labels" / "labels.jsonl"
        self.skipped_lines = 0  # lines that were not a complete label (torn by a kill, or edited by hand)
        self._lock = threading.Lock()

    def add(self, key: str, label: str, labeller: str, source: str = "page") -> LabelRecord:
        record = LabelRecord(key, check_label(label), check_labeller(labeller), now(), source)
        self.append([record])
        return record

    def append(self, records: Sequence[LabelRecord]) -> None:
        """Write ``records`` in one append and fsync: once this returns they survive a crash."""
        if not records:
            return
        data = b"".join(json.dumps(r.to_dict(), ensure_ascii=False).encode() + b"\n" for r in records)
        with self._lock:
            labels_folder(self.run_dir).mkdir(parents=True, exist_ok=True)
            new = not os.path.lexists(self.path)
            with os.fdopen(_open_no_link(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT), "r+b") as fh:
                _owner_only(fh.fileno())
                fh.seek(0, os.SEEK_END)
                if fh.tell() > 0:  # a torn last line has no newline: end it so it stays one bad line
                    fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":
                        data = b"\n" + data
                fh.write(data)  # O_APPEND: at the end, whatever the position
                fh.flush()
                os.fsync(fh.fileno())
            if new:
                _fsync_dir(self.path.parent)

    def records(self) -> list[LabelRecord]:
        """Every complete label line, in file order; other lines are counted in ``skipped_lines``."""
        labels_folder(self.run_dir)
        try:
            fd = _open_no_link(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return []
        with os.fdopen(fd, "rb") as fh:
            lines = fh.read().split(b"\n")
        if len(lines) > MAX_LABEL_LINES + 1:
            raise InputError(f"{self.path}: {len(lines) - 1:,} lines, more than the {MAX_LABEL_LINES:,} debias reads "
                             "(a run needs a few hundred labels per profession and labeller). Keep the labels this "
                             "run's report should use here and move the other lines to another file.")
        out, self.skipped_lines = [], 0
        for line in lines:
            if not line.strip():
                continue
            record = _parse(line)
            if record is None:
                self.skipped_lines += 1
            else:
                out.append(record)
        return out

    def latest(self) -> dict[str, dict[str, str]]:
        """image key → {labeller: label}, the later line winning for the same image and labeller."""
        return latest_labels(self.records())


def latest_labels(records: Iterable[LabelRecord]) -> dict[str, dict[str, str]]:
    """image key → {labeller: label} of ``records``, the later one winning for the same image and labeller."""
    labels: dict[str, dict[str, str]] = {}
    for r in records:
        labels.setdefault(r.key, {})[r.labeller] = r.label
    return labels


def check_labeller_count(path: str | os.PathLike, labellers: int) -> None:
    """An error when a label file holds more labellers than :data:`MAX_LABELLERS`, saying what to do."""
    if labellers > MAX_LABELLERS:
        raise InputError(f"{path}: {labellers} labellers, more than the {MAX_LABELLERS} debias compares (Cohen's κ "
                         f"between every pair). Keep at most {MAX_LABELLERS} labellers' labels in this run's label "
                         "file: move the other labellers' lines to another file, or import fewer.")


def labels_folder(run_dir: str | os.PathLike) -> Path:
    """``run_dir/labels``; an error when it is a symbolic link (labels are kept only inside the run)."""
    folder = Path(run_dir) / "labels"
    if folder.is_symlink():
        raise InputError(f"{folder} is a symbolic link; debias keeps labels only in a real folder inside the run. "
                         "Replace the link by a folder holding the files it points to.")
    return folder


def _open_no_link(path: Path, flags: int) -> int:
    """``os.open`` that refuses a symbolic link at ``path`` (a new file is created 0600)."""
    try:
        return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.EMLINK) or path.is_symlink():
            raise InputError(f"{path} is a symbolic link; debias reads and appends labels only in a real file "
                             "inside the run. Replace the link by the file itself, or remove it.") from None
        raise


def _owner_only(fd: int) -> None:
    """Take away the world's access to a label file an older debias created readable by all."""
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if mode & 0o007 and hasattr(os, "fchmod"):
        try:
            os.fchmod(fd, mode & ~0o007)
        except OSError:
            pass  # not ours to change: leave it as it is


def _parse(line: bytes) -> LabelRecord | None:
    try:
        d = json.loads(line.decode("utf-8"))
        record = LabelRecord(str(d["key"]), str(d["label"]), str(d["labeller"]), str(d.get("time", "")),
                             str(d.get("source", "")))
    except (ValueError, KeyError, TypeError):
        return None
    return record if record.label in LABELS else None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a folder; the file itself is synced
    finally:
        os.close(fd)


def consensus(per_labeller: dict[str, str]) -> str:
    """One label for an image from several labellers: the most common; a tie between different labels is
    "unclear" (people disagree, so the image's gender is not clear)."""
    counts: dict[str, int] = {}
    for label in per_labeller.values():
        counts[label] = counts.get(label, 0) + 1
    best = max(counts.values())
    top = [label for label, c in counts.items() if c == best]
    return top[0] if len(top) == 1 else "unclear"


# ------------------------------------------------------------------------------------------ the sample
@dataclass(frozen=True)
class SampleItem:
    id: str        # opaque: the page and image URLs use this, never the key or the profession
    key: str
    stratum: int   # 1, 2, … in a seeded order unrelated to the audit's profession order


@dataclass
class LabelSample:
    seed: int
    per_profession: int
    items: list[SampleItem]  # in the order the page serves them
    strata: dict[int, str]   # stratum number → profession (kept server-side)

    def by_id(self) -> dict[str, SampleItem]:
        return {item.id: item for item in self.items}

    def sizes(self) -> dict[int, int]:
        sizes = {s: 0 for s in sorted(self.strata)}
        for item in self.items:
            sizes[item.stratum] += 1
        return sizes


def _rank(seed: int, text: str) -> str:
    return hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()


def draw_sample(run: RunImages, per_profession: int = LABELS_FOR_10, seed: int = 0, salt: str = "") -> LabelSample:
    """The stratified random sample to label (see the module docstring); the same for the same seed."""
    if per_profession < 1:
        raise InputError(f"--per-profession must be at least 1, got {per_profession}")
    strata_order = sorted(run.professions, key=lambda p: _rank(seed, "stratum:" + p))
    strata = {i + 1: name for i, name in enumerate(strata_order)}
    number = {name: i for i, name in strata.items()}
    chosen: list[tuple[int, str, SampleItem]] = []
    for name in run.professions:
        present = [im.key for im in run.of(name) if im.path.is_file()]
        for r, key in enumerate(sorted(present, key=lambda k: _rank(seed, k))[:per_profession]):
            item = SampleItem(_rank(seed, f"id:{salt}:{key}")[:16], key, number[name])
            chosen.append((r, _rank(seed, f"order:{key}"), item))
    chosen.sort(key=lambda t: (t[0], t[1]))
    return LabelSample(seed, per_profession, [t[2] for t in chosen], strata)


def sample_for_run(run: RunImages, per_profession: int = LABELS_FOR_10, seed: int = 0) -> LabelSample:
    """:func:`draw_sample` with ids kept stable across restarts (a salt saved in ``labels/sample.json``),
    and the sample written there for the record."""
    path = labels_folder(run.run_dir) / "sample.json"
    salt = ""
    if path.is_file():
        try:
            salt = str(json.loads(path.read_text(encoding="utf-8")).get("salt", ""))
        except (ValueError, AttributeError):
            salt = ""
    salt = salt or secrets.token_hex(8)
    sample = draw_sample(run, per_profession, seed, salt)
    atomic_write_json(path, {"seed": seed, "per_profession": per_profession, "salt": salt,
                             "strata": {str(k): v for k, v in sample.strata.items()},
                             "items": [asdict(item) for item in sample.items]}, mode=FILE_MODE)
    return sample


def labelled_by(store_labels: dict[str, dict[str, str]], labeller: str, keys: Iterable[str]) -> set[str]:
    """The keys among ``keys`` that ``labeller`` has labelled."""
    return {k for k in keys if labeller in store_labels.get(k, {})}
