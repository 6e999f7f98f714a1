"""Edit files (safetensors that plain diffusers loads with ``load_state_dict(strict=False)``) and saved pipelines."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from debias import __version__
from debias.core.errors import EditError
from debias.core.io import atomic_write_bytes, atomic_write_json
from debias.core.models import compare_weights, denoiser, fingerprint, model_family, weights_summary
from debias.editing.apply import check_matrix, edited_weights, set_kv_weights

MATRIX_KEY = "debias.edit_matrix"
"""Key of the compact d×d matrix inside an edit file (ignored by ``load_state_dict(strict=False)``)."""


@dataclass
class LoadedEdit:
    """An edit file read back: the compact matrix, its metadata (JSON fields decoded) and its path."""

    matrix: torch.Tensor
    metadata: dict[str, Any]
    path: Path
    weights: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)


def _encode_metadata(metadata: dict[str, Any]) -> dict[str, str]:
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}


def _decode_metadata(raw: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            out[key] = json.loads(value)
        except (json.JSONDecodeError, TypeError):
            out[key] = value
    return out


def save_edit(path: str | Path, pipe, M: torch.Tensor, *, metadata: dict[str, Any] | None = None,
              spec: str | None = None, revision: str | None = None) -> Path:
    """Write an edit file (safetensors), atomically.

    Keys are the full module names of the edited weights relative to the denoiser
    (``…attn2.to_k.weight``; ``context_embedder.weight`` for SD3 and FLUX), so
    ``pipe.unet.load_state_dict(sd, strict=False)`` (``pipe.transformer…`` for transformers) applies it as
    UCE's files do; the compact ``M`` is stored under ``"debias.edit_matrix"``. The safetensors
    metadata (strings; structures JSON-encoded) records the method, the model ``family``
    (:func:`debias.core.models.model_family`), the base model ``spec``, ``revision`` and fingerprint of the original
    weights, their dtype-independent description (``base_weights``,
    :func:`debias.core.models.weights_summary`, which :func:`load_edit` checks), the debias version, and
    whatever the caller passes (λ per edit, prompts, ...). The weights are ``W @ M`` rounded once to
    the model's dtype (:func:`baked_weight`).
    """


    tensors = {f"{name}.weight": w.detach().to("cpu").contiguous() for name, w in edited_weights(pipe, M).items()}
    tensors[MATRIX_KEY] = M.detach().to("cpu").contiguous()
    net = denoiser(pipe)
    meta: dict[str, Any] = {
        "format": "debias-edit",
        "format_version": 1,
        "method": "TIME",
        "family": model_family(pipe),
        "base_model": spec,
        "revision": revision,
        "fingerprint": fingerprint(pipe),
        "base_weights": weights_summary(pipe),
        "denoiser": "unet" if getattr(pipe, "unet", None) is net else "transformer",
        "conditioning_width": int(M.shape[0]),
        "debias_version": __version__,
    }
    meta.update(metadata or {})
    encoded = _encode_metadata(meta)
    return atomic_write_bytes(path, _stable_safetensors(tensors, encoded))


def _stable_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """safetensors bytes whose header lists the metadata in sorted order.

    safetensors writes ``__metadata__`` from a hash map, so the same edit saved twice gets different bytes
    and a different file hash; a report cites that hash, so it must depend on the edit alone. Reordering
    keys of the compact JSON header keeps its length, so the tensor offsets stay valid.
    """
    from safetensors.torch import save

    raw = save(tensors, metadata=metadata)
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    ordered = {"__metadata__": header.pop("__metadata__"), **dict(sorted(header.items()))}
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > n:  # cannot happen for a reordering of the same compact JSON; keep the library's bytes
        return raw
    return raw[:8] + text.ljust(n, b" ") + raw[8 + n :]


def read_edit(path: str | Path) -> LoadedEdit:
    """Read an edit file without a pipeline (matrix, metadata and the edited weights)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise EditError(f"edit file {path} does not exist; write one with `debias edit --out {path.name}`.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise EditError(f"{path} is not a readable safetensors edit file ({err}).") from err
    if MATRIX_KEY not in tensors or raw.get("format") != "debias-edit":
        raise EditError(f"{path} is not a debias edit file (no {MATRIX_KEY!r} tensor or format metadata).")
    matrix = tensors.pop(MATRIX_KEY)
    return LoadedEdit(matrix=matrix, metadata=_decode_metadata(raw), path=path, weights=tensors)


def load_edit(pipe, path: str | Path, *, bake: bool = True, check_fingerprint: bool = True,
              spec: str | None = None, revision: str | None = None) -> LoadedEdit:
    """Read an edit file, check it was made for this model, and (by default) bake it into ``pipe``.

    An edit of one model is meaningless on another, but the same model in float16 or bfloat16 is the
    same model: the file's ``base_weights`` (:func:`debias.core.models.weights_summary`) must match this
    pipe's original K/V weights in names, shapes and values up to
    :data:`debias.core.models.WEIGHTS_TOLERANCE`, whatever either dtype. Files without that description must
    match the exact fingerprint. A refusal says what differs.

    On the very weights the file was made from (same fingerprint) the stored edited weights are copied
    in bit for bit; otherwise (another dtype, or the check skipped with ``check_fingerprint=False``)
    ``W @ M`` is baked from this pipe's own weights (:func:`baked_weight`), exactly as :func:`bake_edit`
    would. :func:`revert_edit` undoes either. ``spec`` and ``revision`` name this pipe in a refusal.

    Raises:
        EditError: missing or foreign file, or a different base model.
    """
    edit = read_edit(path)
    exact = edit.metadata.get("fingerprint") == fingerprint(pipe)
    if check_fingerprint and not exact:
        _check_base_weights(pipe, edit, {"family": model_family(pipe), "base_model": spec, "revision": revision})
    projections = check_matrix(pipe, edit.matrix)
    names = {f"{p.name}.weight" for p in projections}
    if set(edit.weights) != names:
        missing = sorted(names - set(edit.weights))[:3]
        raise EditError(f"{edit.path} does not hold the same edited layers as this model (e.g. missing {missing}).")
    if bake:
        if exact:
            new = {p.name: edit.weights[f"{p.name}.weight"].to(p.module.weight.device) for p in projections}
        else:
            new = edited_weights(pipe, edit.matrix)
        set_kv_weights(pipe, projections, new, edit.matrix)
    return edit


def _check_base_weights(pipe, edit: LoadedEdit, ours: dict[str, Any]) -> None:
    """Refuse an edit whose base weights are not this pipe's (in any dtype), naming what differs."""
    meta = edit.metadata
    summary = meta.get("base_weights")
    if isinstance(summary, dict):
        differences = compare_weights(summary, weights_summary(pipe))
        if not differences:
            return
        more = len(differences) - 1
        what = differences[0] + (f", and {more} other K/V modules differ too" if more else "")
        advice = "load the model it was made for (any dtype), or re-run `debias edit` on this one"
    else:
        what = ("its fingerprint (a hash of the exact K/V weights, dtype included) is not this model's, and it has no "
                "dtype-independent description of its base weights to compare instead")
        advice = ("load the model it was made for in the dtype it was made in, or re-run `debias edit` on this one "
                  "(new edit files load in any dtype)")
    raise EditError(f"{edit.path} was made for a different base model{_spec_difference(meta, ours)}: {what}; {advice}.")


def _spec_difference(meta: dict[str, Any], this: dict[str, Any]) -> str:
    """`` (family 'SD3', this one 'FLUX.1'; base model 'a', this one 'b')`` for what differs between the file's
    family, spec and revision and this model's (files from before families were recorded name none), else ``""``."""
    parts = []
    for key in ("family", "base_model", "revision"):
        theirs, ours = meta.get(key), this.get(key)
        if theirs != ours and not (key == "family" and theirs is None):
            parts.append(f"{key.replace('_', ' ')} {theirs!r}, this one {ours!r}")
    return f" ({'; '.join(parts)})" if parts else ""


def save_pipeline(pipe, folder: str | Path, *, metadata: dict[str, Any] | None = None,
                  card: Callable[[Path], Any] | None = None) -> Path:
    """Write the (edited) pipeline as a diffusers folder (safetensors) that ``from_pretrained`` loads.

    The folder is written next to its destination and moved into place, so a crash leaves either the
    old folder or the new one. ``debias_edit.json`` in it records how it was made. ``card(folder)`` writes its
    model card before it moves (the verbs pass :func:`debias.report.card.write_model_card`; this library knows
    nothing of reports).
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not (folder / "model_index.json").is_file():
        raise EditError(f"--save-pipeline {folder}: the folder exists and is not a diffusers pipeline; "
                        "choose a new or empty folder.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if metadata is not None:
            atomic_write_json(tmp / "debias_edit.json", metadata)
        if card is not None:
            card(tmp)  # README.md for a hub; a fix's report adds its bias section later
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder

