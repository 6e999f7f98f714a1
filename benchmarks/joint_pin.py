"""How strongly should the joint edit pin each profession? A leave-one-context-out check, no test prompts.

The joint edit (``debias.editing.solver.joint_from_pins``) holds each profession's edit rows, the bare prompt and its
augmentations ("a photo of …", "an image of …", "a picture of …"), at what its own tuned edit gives them. What
matters for the held-out test prompts is how the joint edit behaves on contexts it did *not* pin. This script
measures exactly that with the edit's own contexts: for each context in turn it pins the other three, calibrates
each profession's strength so the joint edit moves the pinned rows as far as its single edit does (what the joint
rounds do with images), and compares the joint edit with the single edits on the left-out context.

The move of a row block c under M is measured along the edit's own direction: ⟨(M − I)c, c* − c⟩ / ‖c* − c‖²
(1 = all the way to the destination). The error is |joint − single| on the left-out block, averaged over
professions and folds, also relative to the single edit's move.

Run:  ``python benchmarks/joint_pin.py [--fix runs/demo/fix.json] [--pins 0.01 0.03 0.1 0.3 1 3]`` (after ``make demo``)
(matrices only, no images: about 8 seconds on 2 cores for the mini model).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from types import SimpleNamespace

import torch

from debias.core.setup import load_model
from debias.editing.solver import joint_from_pins
from debias.core.attributes import GENDER
from debias.fixing.kclass import ClassEdit, class_matrix, encode_class_rows, reach
from debias.fixing.plan import Anchors, encode_preserve_rows, kept_rows, probe_rows
from debias.core.threads import set_threads

CALIBRATION_STEPS = 8


def along_edit(M: torch.Tensor, C: torch.Tensor, C_star: torch.Tensor) -> float:
    """How far M moves rows C towards C*, in units of the whole way (the fix's reach of one block of rows)."""
    return float(reach(M, [(C, C_star)])[0])


def load_professions(pipe, fix_record: dict, augmentations) -> list[ClassEdit]:
    """The edited professions of a fix run, with the rows and final strengths their joint edit used."""
    profs = []
    for rec in fix_record["professions"]:
        if rec.get("lambda_relative") is None or not rec.get("destination"):
            continue
        p = ClassEdit(GENDER, SimpleNamespace(name=rec["profession"], phrase=rec["phrase"]), (0.5, 0.5), (0, 0))
        encode_class_rows(pipe, p, augmentations)
        p.strengths[GENDER.class_names.index(rec["destination"].split()[1])] = 1.0 / rec["lambda_relative"]
        profs.append(p)
    return profs


def single(p: ClassEdit, shift: float, anchors) -> torch.Tensor:
    """``p``'s own edit with its strengths scaled by e^−shift (a shift of log λ_rel)."""
    return class_matrix(p, [w * math.exp(-shift) for w in p.strengths], anchors)


def split_contexts(p: ClassEdit, contexts: int, held_out: int) -> tuple[tuple, tuple]:
    """``p``'s (C, C*) rows of its edited class as (pinned contexts, held-out context); each context holds the same
    padded length."""
    C, C_star = next(rows for rows, w in zip(p.rows, p.strengths) if w > 0)
    if C.shape[0] % contexts:
        raise ValueError(f"{p.entry.name}: {C.shape[0]} edit rows do not split into {contexts} equal contexts")
    size = C.shape[0] // contexts
    held = slice(held_out * size, (held_out + 1) * size)
    keep = torch.ones(C.shape[0], dtype=torch.bool)
    keep[held] = False
    return (C[keep], C_star[keep]), (C[held], C_star[held])


def fold_error(profs, singles, kept, anchors, pin: float, held_out: int, contexts: int) -> list[tuple[float, float]]:
    """(|joint − single|, |single|) on the held-out context per profession, after calibrating on the pinned ones."""
    parts = [split_contexts(p, contexts, held_out) for p in profs]
    goal = [along_edit(M_p, *pinned) for M_p, (pinned, _) in zip(singles, parts)]
    shift = [0.0] * len(profs)  # calibration: log λ_rel offset per profession

    def joint() -> torch.Tensor:
        pins = [(C, C @ single(p, dx, anchors).T, pin * p.scale)
                for p, dx, ((C, _), _) in zip(profs, shift, parts)]
        return joint_from_pins(pins, kept)

    for _ in range(CALIBRATION_STEPS):
        M = joint()
        for i, (pinned, _) in enumerate(parts):  # a stronger edit (smaller λ) moves further: scale λ by the shortfall
            ratio = min(max(along_edit(M, *pinned) / goal[i], 1 / 3), 3.0) if goal[i] else 1.0
            shift[i] += 1.5 * math.log(ratio)
    M = joint()
    return [(abs(along_edit(M, *held) - along_edit(M_p, *held)), abs(along_edit(M_p, *held)))
            for M_p, (_, held) in zip(singles, parts)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fix", default="runs/demo/fix.json", help="a fix run's fix.json: its destinations and λs")
    ap.add_argument("--pins", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3, 1.0, 3.0])
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    set_threads(args.threads)

    path = Path(args.fix)
    if not path.is_file():
        raise SystemExit(f"{path} not found: run `make demo` first (it writes runs/demo/fix.json) or pass --fix.")
    record = json.loads(path.read_text(encoding="utf-8"))
    pipe = load_model(record["model"]["spec"]).pipe
    augmentations = tuple(record["augmentations"])
    # as in the fix: the anchors, and the preserve prompts (unedited professions among them), stay in place
    anchor_prompts, preserve = record["anchors"]["prompts"], record["preserve"]
    anchors = Anchors(probe_rows(pipe, anchor_prompts), record["anchors"]["strength"]) if anchor_prompts else None
    preserve_rows = encode_preserve_rows(pipe, preserve["prompts"], augmentations) if preserve["prompts"] else None
    kept = kept_rows(preserve_rows, preserve["strength"], anchors)
    profs = load_professions(pipe, record, augmentations)
    contexts = 1 + len(augmentations)
    singles = [single(p, 0.0, anchors) for p in profs]  # what each profession's own edit gives it
    print(f"{len(profs)} edited professions from {args.fix}; {contexts} edit contexts, each left out in turn")
    print(f"{'pin λ_rel':>10} {'mean |joint − single|':>21} {'relative':>9} {'worst':>7}")
    for pin in args.pins:
        errors = [e for h in range(contexts) for e in fold_error(profs, singles, kept, anchors, pin, h, contexts)]
        mean = sum(e for e, _ in errors) / len(errors)
        relative = sum(e for e, _ in errors) / sum(s for _, s in errors)
        print(f"{pin:>10g} {mean:>21.4f} {relative:>9.3f} {max(e for e, _ in errors):>7.4f}", flush=True)


if __name__ == "__main__":
    main()
