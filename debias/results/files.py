"""The file format every result shares: a dataclass written as JSON (``to_json``), read back with errors that name
the file and the field (``from_json``), byte-identical on a round trip; and the CSV writer every table uses.

:mod:`debias.results.records` defines the results themselves on top of :class:`JsonFile`.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any, Sequence

from debias.core.errors import InputError
from debias.core.io import atomic_write_text


def csv_table(columns: Sequence[str], rows: list[dict]) -> str:
    """CSV text of ``rows`` under ``columns`` (None as an empty cell), as every CSV debias writes."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buf.getvalue()


_KEY = {"lambda_": "lambda"}  # field name -> key in the file, where a keyword cannot be a field name
_FIELD = {v: k for k, v in _KEY.items()}


def row_dict(row) -> dict[str, Any]:
    return {_KEY.get(f.name, f.name): getattr(row, f.name) for f in fields(row)}


def typed_from_dict(cls, data: dict, where: str):
    """``cls(**data)``, with an error naming the file and the keys it does not know or misses."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: not a {cls.__name__} object; re-run the command that wrote it.")
    names = [f.name for f in fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise InputError(f"{where}: unknown field(s) {unknown[:3]} for {cls.__name__}; it was written by another "
                         "version of debias. Re-run the command that wrote it with this version.")
    try:
        return cls(**data)
    except TypeError as err:
        raise InputError(f"{where}: not a complete {cls.__name__} ({err}); re-run the command that wrote it.") from None


def _plain(value: Any) -> dict[str, Any]:
    """A nested typed block (an attribute fix's, say) as the plain dict its file holds, fields in order."""
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    raise TypeError(f"{type(value).__name__} is not something a result file holds")


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number a result may hold")


class JsonFile:
    """``to_dict`` / ``to_json`` / ``from_json`` for a dataclass whose ``professions`` are row dataclasses."""

    ROW: type = dict
    FILE = ""

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["professions"] = [row_dict(row) for row in self.professions]
        return json.loads(json.dumps(data, default=_plain))  # a deep copy, in plain JSON types

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict, where: str = "<dict>"):
        if not isinstance(data, dict) or data.get("kind") != cls.FILE.split(".")[0] \
                or not isinstance(data.get("professions"), list):
            raise InputError(f"{where}: not a {cls.FILE} (it needs \"kind\": \"{cls.FILE.split('.')[0]}\" and a "
                             "\"professions\" list); re-run the command that writes it.")
        rows = [typed_from_dict(cls.ROW, {_FIELD.get(k, k): v for k, v in row.items()},
                                f"{where}: professions[{i}]") for i, row in enumerate(data["professions"])]
        return typed_from_dict(cls, {**data, "professions": rows}, where)

    @classmethod
    def from_json(cls, path: str | os.PathLike):
        """Read ``path`` (a file, or a run folder holding the result's file)."""
        path = Path(path)
        if path.is_dir():
            path = path / cls.FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
        except FileNotFoundError:
            raise InputError(f"{path} does not exist; run the command that writes it first.") from None
        except (OSError, ValueError) as err:
            raise InputError(f"{path} is not readable JSON ({err}).") from None
        return cls.from_dict(data, str(path))

    def save(self, out: str | os.PathLike) -> Path:
        """Write the result's file into the run folder ``out``, atomically."""
        return atomic_write_text(Path(out) / self.FILE, self.to_json())
