"""Labels made outside ``debias label`` (a spreadsheet, another tool): a CSV ``image,label,labeller`` checked against
the run's images, all or nothing, and appended to the run's label file (:mod:`debias.validity.labels`).
"""

from __future__ import annotations

import codecs
import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

from debias.core.errors import InputError
from debias.validity import labels
from debias.validity.labels import (
    LabelRecord, LabelStore, RunImages, check_label, check_labeller, check_labeller_count, latest_labels, load_run, now,
)

CSV_HEADER = ["image", "label", "labeller"]
MAX_ERRORS_SHOWN = 20


def read_labels_csv(path: str | os.PathLike, run: RunImages) -> list[LabelRecord]:
    """Label records from a CSV with the header ``image,label,labeller`` (exactly), all or nothing.

    ``image`` is an image's key or file name. Every problem is reported with its line number (unknown image,
    unknown label, the same image and labeller twice, a wrong header or row), up to the first 20. A file that is
    not UTF-8, or not CSV a reader can split (a value over 128 KiB), is one error at its line.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--import {path}: no such file.")
    errors: list[str] = []
    records: list[LabelRecord] = []
    first_seen: dict[tuple[str, str], int] = {}
    stamp = now()
    reader = csv.reader(io.StringIO(_csv_text(path), newline=""))
    try:
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != CSV_HEADER:
            got = ",".join(header) if header else "an empty file"
            raise InputError(f"{path}:1: the header must be exactly '{','.join(CSV_HEADER)}', got '{got}'.")
        for row in reader:
            line = reader.line_num
            if line > labels.MAX_LABEL_LINES + 1:
                raise InputError(f"{path}: more than {labels.MAX_LABEL_LINES:,} rows, more than a run's label file "
                                 "holds; split the file and import the labels this run needs.")
            if not any(cell.strip() for cell in row):
                continue
            record = _csv_row(row, line, run, first_seen, errors, stamp, path.name)
            if record is not None:
                records.append(record)
    except csv.Error as err:
        raise InputError(f"{path}:{reader.line_num}: not a readable CSV row ({err}); a label CSV holds short "
                         "values, one row a line: check this is the right file, saved as plain CSV.") from None
    if errors:
        shown = "\n  ".join(f"{path}:{e}" for e in errors[:MAX_ERRORS_SHOWN])
        more = f"\n  … and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise InputError(f"{path}: {len(errors)} problem(s), nothing imported:\n  {shown}{more}")
    return records


def _csv_text(path: Path) -> str:
    """The CSV's text (UTF-8, with or without a byte-order mark); an error naming the line that is not UTF-8."""
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise InputError(f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x}); save the CSV as UTF-8 "
                         "(in a spreadsheet: 'CSV UTF-8') and import it again.") from None


def _csv_row(row: list[str], line: int, run: RunImages, first_seen: dict, errors: list[str], stamp: str,
             source: str) -> LabelRecord | None:
    if len(row) != len(CSV_HEADER):
        errors.append(f"{line}: expected 3 values (image,label,labeller), got {len(row)}")
        return None
    ref, label, labeller = (cell.strip() for cell in row)
    image = run.lookup(ref)
    problems = []
    if image is None:
        problems.append(f"unknown image {ref!r}: not an image of {run.run_dir}/audit.json (give its key or its "
                        "file name, e.g. images/<key>.png)")
    try:
        check_label(label)
    except InputError as err:
        problems.append(str(err))
    try:
        labeller = check_labeller(labeller)
    except InputError as err:
        problems.append(str(err))
    if image is not None and not problems:
        seen = first_seen.setdefault((image.key, labeller), line)
        if seen != line:
            problems.append(f"duplicate: image {ref!r} is labelled by {labeller!r} again (first on line {seen}); "
                            "keep one row per image and labeller")
    errors.extend(f"{line}: {p}" for p in problems)
    return None if problems else LabelRecord(image.key, label, labeller, stamp, f"csv:{source}")


@dataclass
class LabelImport:
    """What an import did: the labels it appended, and how many rows were skipped as already recorded."""

    added: list[LabelRecord]
    skipped: int


def import_labels_csv(path: str | os.PathLike, run_dir: str | os.PathLike) -> LabelImport:
    """Check a label CSV against the run's images and append its labels to the run's label file.

    A row whose label is already its labeller's current label for that image is skipped: it would change
    nothing, and re-importing the same CSV must not count its labels twice.
    """
    run = load_run(run_dir)
    records = read_labels_csv(path, run)
    store = LabelStore(run_dir)
    existing = store.records()
    current = latest_labels(existing)
    fresh = [r for r in records if current.get(r.key, {}).get(r.labeller) != r.label]
    if len(existing) + len(fresh) > labels.MAX_LABEL_LINES:
        raise InputError(f"{path}: importing {len(fresh):,} labels would take {store.path} past the "
                         f"{labels.MAX_LABEL_LINES:,} lines debias reads; import only the labels this run needs.")
    check_labeller_count(store.path, len({r.labeller for r in existing} | {r.labeller for r in fresh}))
    store.append(fresh)
    return LabelImport(fresh, len(records) - len(fresh))
