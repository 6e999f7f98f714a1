"""How strongly should the joint edit pin each profession? A leave-one-context-out check, no test prompts.

The joint edit (``debias.fix.joint_from_pins``) holds each profession's edit rows, the bare prompt and its
augmentations ("a photo of …", "an image of …", "a picture of …"), at what its own tuned edit gives them. What
matters for the held-out test prompts is how the joint edit behaves on contexts it did *not* pin. This script
measures exactly that with the edit's own contexts: for each context in turn it pins the other three, calibrates
each profession's strength so the joint edit moves the pinned rows as far as its single edit does (what the joint
rounds do with images), and compares the joint edit with the single edits on the left-out context.

The move of a row block c under M is measured along the edit's own direction: ⟨(M − I)c, c* − c⟩ / ‖c* − c‖²
(1 = all the way to the destination). The error is |joint − single| on the left-out block, averaged over
professions and folds, also relative to the single edit's move.

Run:  ``python benchmarks/joint_pin.py [--fix runs/demo/fix.json] [--pins 0.01 0.03 0.1 0.3 1 3]`` (after ``make demo``)
(matrices only, no images: under a minute on 2 cores for the mini model).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from types import SimpleNamespace

import torch

from debias.fix import (_Anchors, _Profession, _edit_rows, _preserve_rows, _probe_rows, anchor_prompts_for,
                        joint_from_pins, single_matrix)
from debias.editing import lambda_scale
from debias.threads import set_threads

CALIBRATION_STEPS = 8


def along_edit(M: torch.Tensor, C: torch.Tensor, C_star: torch.Tensor) -> float:
    """How far M moves rows C towards C*, in units of the whole way (0 = not at all, 1 = onto C*)."""
    want = C_star - C
    return float(((C @ M.T - C) * want).sum() / (want * want).sum().clamp_min(1e-30))


def blocks(rows: torch.Tensor, n: int) -> list[torch.Tensor]:
    size = rows.shape[0] // n
    return [rows[i * size:(i + 1) * size] for i in range(n)]


def load_professions(pipe, fix_record: dict, augmentations) -> list[_Profession]:
    profs = []
    for rec in fix_record["professions"]:
        if rec.get("lambda_relative") is None or not rec.get("destination"):
            continue
        entry = SimpleNamespace(name=rec["profession"], phrase=rec["phrase"])
        p = _Profession(entry=entry, target=rec["target"], before={}, tuning_before={},
                        side=rec["destination"].split()[1], destination=rec["destination"])
        p.rows = _edit_rows(pipe, entry.phrase, p.destination, augmentations)
        p.scale, p.log_lambda = lambda_scale(p.rows[0]), math.log(rec["lambda_relative"])
        profs.append(p)
    return profs


def fold_error(profs, kept, anchors, pin: float, held_out: int, contexts: int) -> list[tuple[float, float]]:
    """(|joint − single|, |single|) on the held-out context per profession, after calibrating on the pinned ones."""
    singles = {id(p): single_matrix(p, p.log_lambda, anchors) for p in profs}
    keep = [i for i in range(contexts) if i != held_out]

    def pinned(p):
        return torch.cat([b for i, b in enumerate(blocks(p.rows[0], contexts)) if i in keep])

    def pinned_star(p):
        return torch.cat([b for i, b in enumerate(blocks(p.rows[1], contexts)) if i in keep])

    goal = {id(p): along_edit(singles[id(p)], pinned(p), pinned_star(p)) for p in profs}
    shift = {id(p): 0.0 for p in profs}  # calibration: log λ_rel offset per profession

    def joint():
        pins = []
        for p in profs:
            M_p = single_matrix(p, p.log_lambda + shift[id(p)], anchors)
            pins.append((pinned(p), pinned(p) @ M_p.T, pin * p.scale))
        return joint_from_pins(pins, kept)

    for _ in range(CALIBRATION_STEPS):
        M = joint()
        for p in profs:  # a stronger edit (smaller λ) moves further: scale λ by the shortfall
            got = along_edit(M, pinned(p), pinned_star(p))
            ratio = min(max(got / goal[id(p)], 1 / 3), 3.0) if goal[id(p)] else 1.0
            shift[id(p)] += 1.5 * math.log(ratio)
    M = joint()
    out = []
    for p in profs:
        C, C_star = blocks(p.rows[0], contexts)[held_out], blocks(p.rows[1], contexts)[held_out]
        single = along_edit(singles[id(p)], C, C_star)
        out.append((abs(along_edit(M, C, C_star) - single), abs(single)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fix", default="runs/demo/fix.json", help="a fix run's fix.json: its destinations and λs")
    ap.add_argument("--pins", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3, 1.0, 3.0])
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    set_threads(args.threads)

    from debias import audit as audit_mod
    from debias.fix import _augmentations

    path = Path(args.fix)
    if not path.is_file():
        raise SystemExit(f"{path} not found: run `make demo` first (it writes runs/demo/fix.json) or pass --fix.")
    record = json.loads(path.read_text(encoding="utf-8"))
    pipe, _, is_mini = audit_mod.resolve_pipeline(record["model"]["spec"], False, audit_mod.distributed_from_env())
    augmentations = tuple(record.get("augmentations") or _augmentations(is_mini))
    anchors = _Anchors(_probe_rows(pipe, anchor_prompts_for(augmentations)), record["anchors"]["strength"])
    profs = load_professions(pipe, record, augmentations)
    # as in the fix: the preserve prompts (unedited professions among them) and the anchors stay in place
    preserve = record["preserve"]
    kept = [(_preserve_rows(pipe, preserve["prompts"], augmentations) if preserve["prompts"] else None,
             preserve["strength"]), (anchors.rows, anchors.strength)]
    contexts = 1 + len(augmentations)
    print(f"{len(profs)} edited professions from {args.fix}; {contexts} edit contexts, each left out in turn")
    print(f"{'pin λ_rel':>10} {'mean |joint − single|':>21} {'relative':>9} {'worst':>7}")
    for pin in args.pins:
        errors = [e for h in range(contexts) for e in fold_error(profs, kept, anchors, pin, h, contexts)]
        mean = sum(e for e, _ in errors) / len(errors)
        relative = sum(e for e, _ in errors) / sum(s for _, s in errors)
        print(f"{pin:>10g} {mean:>21.4f} {relative:>9.3f} {max(e for e, _ in errors):>7.4f}", flush=True)


if __name__ == "__main__":
    main()
