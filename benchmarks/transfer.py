"""How far a fix of the mini world v2 carries from its tuning prompts to each held-out test template, and why.

The mini world's tuning templates are its three photo framings ("a photo of", "an image of", "a picture of"); its
test templates are a portrait, "… at work", a painting and a drawing (a painting has a frame and a drawing a pen
line). Three measurements, from the runs of ``benchmarks/engine.py``:

1. **What the generator draws**: the destination prompts themselves ("a painting of a pilot with dark skin") on
   every test template. Where a destination is drawn on a template, the world allows an edit to get there.
2. **What the edit carries, matrix only**: the reach ⟨(M − I)C, C* − C⟩ / ‖C* − C‖² of an edit tuned on the tuning
   rows, read on each test template's rows, at the strength where the tuning rows' reach is 0.4 (about what a
   profession needs); and the same with rows of other contexts the world's words allow added to the edit.
3. **Judged on the images**: each fixed attribute's mean Δ on the templates grouped by how the edit carries
   (portrait and at work; painting and drawing), 64 images per profession each, against the noise floor there;
   and, with ``--sweep``, the shipped edit scaled, I + s (M − I), audited on the test prompts: whether any
   strength of the same edit brings the mean Δ lower.

Run:  ``python benchmarks/transfer.py --runs runs/engine [--sweep 1.5 2.0] [--threads 2]``
Writes ``RUNS/transfer.json`` (committed as ``benchmarks/results/transfer-mini-v2.json``) and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

PROFESSIONS = ["a librarian", "a pilot", "a nurse"]
DESTINATIONS = ["a librarian with dark skin", "a pilot with dark skin", "a nurse with dark skin",
                "a pilot with medium skin", "an elderly pilot", "a young librarian"]
# contexts the world's words allow that are neither tuning nor test templates
EXTRA_CONTEXTS = ["the {}", "{} with a car", "a photo of the {}", "a person of {}"]
GROUPS = {"portrait, at work": [0, 1], "painting, drawing": [2, 3]}


def noise_floor(k: int, n: int, reps: int = 4000) -> float:
    """Mean Δ a perfectly fair world reads on n images of k classes (sampling noise alone)."""
    from debias.stats import multiclass

    rng, t = np.random.default_rng(0), np.full(k, 1 / k)
    return float(np.mean([multiclass.delta(rng.multinomial(n, t) / n, t) for _ in range(reps)]))


def drawn(out: Path, threads: int | None) -> dict:
    """Per destination prompt and test template, the class shares the classifier reads (64 images)."""
    import debias
    from debias.stats import multiclass

    audit = debias.audit("mini-v2", professions=DESTINATIONS, images_per_profession=64, attributes=["skin", "age"],
                         out=out / "destinations", progress=False, write_report=False, threads=threads)
    table: dict = {}
    for name in ("skin", "age"):
        section = audit.attribute(name)
        for row in section["professions"]:
            table.setdefault(row["phrase"], {})[name] = {
                template: [round(float(x), 3) for x in multiclass.shares(multiclass.count_labels(
                    row["labels"][j::len(audit.templates)], section["classes"])[0])]
                for j, template in enumerate(audit.templates)}
    return table


def carried(pipe) -> dict:
    """Reach on each test template's rows of an edit tuned on the tuning rows (tuning reach 0.4), per edit."""
    from debias.editing import lambda_scale
    from debias.fixing.kclass import combined_matrix, reach, strongest_within
    from debias.fixing.plan import Anchors, anchor_prompts_for, probe_rows, profession_edit_rows
    from debias.mini import world

    tuning, test = list(world.AUGMENTATIONS), list(world.TEST_TEMPLATES)
    anchors = Anchors(probe_rows(pipe, anchor_prompts_for(tuning)), 1.0)

    def template_rows(src: str, dst: str, template: str):
        bare = profession_edit_rows(pipe, src, dst, [])[0].shape[0]
        C, S = profession_edit_rows(pipe, src, dst, [template])
        return C[bare:], S[bare:]

    def at_tuning_reach(C, S, tuning_rows, level=0.4):
        """The edit whose reach on the first tuning template's rows is ``level`` (reach rises with the strength)."""
        scale = lambda_scale(C)

        def matrix(log_w: float):
            return combined_matrix([(C, S, math.exp(log_w))], scale, anchors)

        return matrix(math.log(strongest_within(lambda x: reach(matrix(x), [tuning_rows])[0], -12.0, 6.0, level)))

    pairs = [("a librarian", "a librarian with dark skin"), ("a pilot", "a pilot with dark skin"),
             ("a librarian", "an elderly librarian"), ("a nurse", "a female nurse")]
    rows = {pair: {t: template_rows(*pair, t) for t in tuning + test} for pair in pairs}  # encoded once
    out: dict = {}
    for label, contexts in (("tuning templates", tuning), ("tuning templates + other contexts",
                                                           tuning + EXTRA_CONTEXTS)):
        per_pair = {}
        for src, dst in pairs:
            C, S = profession_edit_rows(pipe, src, dst, contexts)
            M = at_tuning_reach(C, S, rows[src, dst][tuning[0]])
            per_pair[f"{src} → {dst}"] = {t: round(float(reach(M, [r])[0]), 3) for t, r in rows[src, dst].items()}
        out[label] = per_pair
    return out


def judged(run: Path) -> dict:
    """Each fixed attribute's mean Δ on the template groups, before and after, from an engine run's audits."""
    from debias.stats import multiclass

    record = json.loads((run / "fix.json").read_text(encoding="utf-8"))
    fixed = [b["attribute"] for b in record.get("attribute_fixes") or [] if b["fixed"]]
    out: dict = {}
    for side in ("before", "after"):
        audit = json.loads((run / side / "audit.json").read_text(encoding="utf-8"))
        T = len(audit["templates"])
        for name in fixed:
            section = next(s for s in audit["attributes"] if s["attribute"] == name) if name != "gender" else None
            for group, js in GROUPS.items():
                deltas = []
                for p in (section["professions"] if section else audit["professions"]):
                    if section:
                        labels = [lab for j in js for lab in p["labels"][j::T]]
                        counts = multiclass.count_labels(labels, section["classes"])[0]
                        deltas.append(multiclass.delta(multiclass.shares(counts), p["target"]))
                    else:
                        f = sum(p["by_prompt"][j]["n_female"] for j in js)
                        m = sum(p["by_prompt"][j]["n_male"] for j in js)
                        deltas.append(multiclass.delta(multiclass.shares([f, m]), (0.5, 0.5)))
                out.setdefault(name, {}).setdefault(group, {})[side] = round(float(np.mean(deltas)), 3)
    return out


def sweep(run: Path, attribute: str, scales: list[float], out: Path, threads: int | None) -> dict:
    """The shipped edit scaled, I + s (M − I), audited on the test prompts at the after audit's seeds."""
    import debias
    from debias.core.setup import load_model
    from debias.editing.apply import bake_edit
    from debias.editing.files import read_edit
    from debias.stats import multiclass

    M = read_edit(run / "edit.safetensors").matrix.double()
    eye = torch.eye(M.shape[0], dtype=M.dtype)
    model = load_model("mini-v2")
    result = {}
    for s in scales:  # baked into the weights, as a user loads an edit (each scale its own run folder and cache)
        bake_edit(model.pipe, (eye + s * (M - eye)).float())
        audit = debias.audit(model, professions=PROFESSIONS, images_per_profession=128, attributes=[attribute],
                             out=out / f"sweep-{attribute}-{s:g}", progress=False, write_report=False,
                             threads=threads)
        section = audit.attribute(attribute)
        T = len(audit.templates)
        by_template = [float(np.mean([multiclass.delta(multiclass.shares(multiclass.count_labels(
            p["labels"][j::T], section["classes"])[0]), p["target"]) for p in section["professions"]]))
            for j in range(T)]
        result[f"{s:g}"] = {"mean_delta": round(float(np.mean(
            [multiclass.delta(multiclass.shares(p["counts"]), p["target"]) for p in section["professions"]])), 3),
            "by_template": dict(zip(audit.templates, [round(x, 3) for x in by_template]))}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=Path, default=Path("runs/engine"))
    ap.add_argument("--sweep", type=float, nargs="*", default=[])
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    from debias.core.models import load_pipeline
    from debias.core.threads import set_threads

    set_threads(args.threads)
    record = {"kind": "bench-transfer", "noise_floor": {"k3_n64": noise_floor(3, 64), "k3_n128": noise_floor(3, 128),
                                                        "k2_n64": noise_floor(2, 64)},
              "drawn": drawn(args.runs, args.threads), "carried": carried(load_pipeline("mini-v2")),
              "judged": {case: judged(args.runs / case) for case in ("skin", "age", "crossed")
                         if (args.runs / case / "fix.json").is_file()}}
    if args.sweep:
        record["sweep"] = {a: sweep(args.runs / a, a, args.sweep, args.runs, args.threads) for a in ("skin", "age")}
    path = args.runs / "transfer.json"
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print("reach on each template's rows when the tuning rows' reach is 0.4")
    for label, per_pair in record["carried"].items():
        means = np.mean([list(v.values()) for v in per_pair.values()], axis=0)
        print(f"  {label:34} " + " ".join(f"{x:.2f}" for x in means))
    print("mean Δ by template group, before → after (noise floor at 64 images, k = 3: "
          f"{record['noise_floor']['k3_n64']:.3f})")
    for case, attrs in record["judged"].items():
        for name, groups in attrs.items():
            print(f"  {case:8} {name:6} " + "; ".join(f"{g} {v['before']:.3f} → {v['after']:.3f}"
                                                     for g, v in groups.items()))
    for attribute, scales in record.get("sweep", {}).items():
        print(f"  {attribute} scaled edit: " + "; ".join(f"×{s} {v['mean_delta']:.3f}" for s, v in scales.items()))


if __name__ == "__main__":
    main()
