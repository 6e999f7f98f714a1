"""The fix engine on the built-in worlds: gender on ``mini``, skin, age and gender × skin crossed on ``mini-v2``.

Each run is the README's command for that case (128 held-out test images per profession, the default budget of
(k − 1) × 320 tuning images per profession unless named), and the record keeps what a reviewer asks of it: mean Δ
before and after per attribute with intervals, professions within ±0.05, the side effect, images by stage and CPU
seconds (this process, all its threads). Runs are cached in ``OUT/<case>``, so a rerun only re-reads them.

Run:  ``python benchmarks/engine.py --out runs/engine [--cases gender skin age crossed] [--threads 2]``
Writes ``OUT/engine.json`` (committed as ``benchmarks/results/engine-mini.json``) and a table on stdout. The case
``precise`` is the docs' precise run (budget 1,280, 1,024 test images per profession; about an hour on 2 cores):
``--cases precise --out runs/precise-bench`` (committed as ``benchmarks/results/precise-mini.json``); with
``--from-runs`` a finished run folder in ``OUT/<case>`` is summarised without running the fix again. The case
``photo-only-512`` tunes on "a photo of …" alone and judges on 512 test images (committed as
``benchmarks/results/photo-only-mini.json``), beside ``benchmarks/peers.py``'s judge of the default fix there.
The cases ``style-painting-512`` and ``style-drawing-512`` move one style from the test templates into the tuning
templates (and so into the edit's rows) and judge the other style, held out, on 512 test images (committed as
``benchmarks/results/style-mini.json``): whether tuning on a style carries to another.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


V2_PROFESSIONS = ["a librarian", "a pilot", "a nurse"]
PHOTOS = ["a photo of {}", "an image of {}", "a picture of {}"]  # the mini world's tuning templates
CASES = {
    "gender": dict(model="mini", professions="professions/mini.txt", attributes=None),
    "skin": dict(model="mini-v2", professions=V2_PROFESSIONS, attributes=["skin"]),
    "age": dict(model="mini-v2", professions=V2_PROFESSIONS, attributes=["age"]),
    "crossed": dict(model="mini-v2", professions=V2_PROFESSIONS, attributes=["gender", "skin"]),
    # the docs' precise run: more tuning images, 1,024 held-out test images per profession
    "precise": dict(model="mini", professions="professions/mini.txt", attributes=None, budget=1280, test_images=1024),
    # the demo tuned on "a photo of …" alone, judged at 512 test images: the prompts' spread against several templates
    "photo-only-512": dict(model="mini", professions="professions/mini.txt", attributes=None, test_images=512,
                           tuning_templates=["a photo of {}"]),
    # a style among the tuning templates (and so the edit's rows), another style held out: does tuning on one carry?
    "style-painting-512": dict(model="mini", professions="professions/mini.txt", attributes=None, test_images=512,
                               tuning_templates=[*PHOTOS, "a painting of {}"],
                               templates=["a portrait of {}", "{} at work", "a drawing of {}"]),
    "style-drawing-512": dict(model="mini", professions="professions/mini.txt", attributes=None, test_images=512,
                              tuning_templates=[*PHOTOS, "a drawing of {}"],
                              templates=["a portrait of {}", "{} at work", "a painting of {}"]),
}
DEFAULT_CASES = ["gender", "skin", "age", "crossed"]


def summary(record: dict) -> dict:
    """The headline numbers of one fix.json: per fixed attribute, mean Δ before → after and the band counts."""
    attributes = {"gender": {
        "mean_delta_before": record["mean_delta_before"], "mean_delta_after": record["mean_delta_after"],
        "mean_delta_after_ci": [record["mean_delta_after_ci_low"], record["mean_delta_after_ci_high"]],
        "noise_floor_after": record["mean_delta_noise_floor_after"],
        "within_before": record["within_tolerance_before"], "within_after": record["within_tolerance_after"],
        "shares_after": {p["profession"]: p["share_after"] for p in record["professions"]}}}
    for block in record.get("attribute_fixes") or []:
        if block["fixed"]:
            attributes[block["attribute"]] = {
                "mean_delta_before": block["mean_delta_before"], "mean_delta_after": block["mean_delta_after"],
                "mean_delta_after_ci": [block["mean_delta_after_ci_low"], block["mean_delta_after_ci_high"]],
                "within_before": block["within_tolerance_before"], "within_after": block["within_tolerance_after"],
                "shares_after": {p["profession"]: p["after"]["shares"] for p in block["professions"]}}
        else:
            attributes[block["attribute"]] = {"held": True, "moved": block["moved"],
                                              "mean_largest_change": block["mean_largest_change"]}
    by_stage = record["images"]["by_stage"]
    professions = len(record["professions"])
    tuning = by_stage["tuning"]["generated"] + by_stage["joint"]["generated"]
    return {"attributes": attributes, "side_effect": record["side_effects"]["mean_abs_pixel_change"],
            "budget": record["budget"], "images_by_stage": by_stage, "tuning_images": tuning,
            "tuning_images_per_profession": tuning / professions, "wall_seconds": record["wall_seconds"]}


def by_template(run_dir: Path, record: dict) -> dict:
    """Mean Δ over professions per held-out test template, before and after, for every fixed attribute: where an
    edit carries and where it does not (the fix's own ``template_deltas``, recomputed from the run's audits so that
    run folders written before fix.json recorded them read the same)."""
    from debias.core.attributes import builtin_attributes
    from debias.fixing.kclass_record import template_deltas
    from debias.results.records import AuditResult

    before, after = (AuditResult.from_json(run_dir / side / "audit.json") for side in ("before", "after"))
    blocks = [b for b in record.get("attribute_fixes") or [] if b["fixed"]]
    fixed = {b["attribute"]: [(p["phrase"], p["target"]) for p in b["professions"]] for b in blocks} or {
        "gender": [(p["phrase"], (p["target"], 1 - p["target"])) for p in record["professions"]]}
    out: dict = {}
    for name, targets in fixed.items():
        deltas = template_deltas(builtin_attributes()[name], targets, before, after)
        out[name] = {side: {t: d[side] for t, d in deltas.items()} for side in ("before", "after")}
    return out


def run_case(name: str, out: Path, threads: int | None) -> dict:
    import debias

    case = CASES[name]
    started = time.process_time()
    result = debias.fix(case["model"], professions=case["professions"], attributes=case["attributes"],
                        out=out / name, test_images=case.get("test_images", 128), budget=case.get("budget"),
                        tuning_templates=case.get("tuning_templates"), templates=case.get("templates"),
                        threads=threads, progress=False)
    cpu = round(time.process_time() - started, 1)
    return recorded(name, out / name, result.to_dict(), cpu)


def recorded(name: str, run_dir: Path, record: dict, cpu: float | None) -> dict:
    """One case's entry: its headline numbers, mean Δ per template, the prompts' spread, and the CPU seconds."""
    spread = {key: record.get(key) for key in ("mean_spread_before", "mean_spread_after", "mean_spread_noise_after")}
    return {"case": name, **CASES[name], **summary(record), "mean_delta_by_template": by_template(run_dir, record),
            "spread": spread, "cpu_seconds": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/engine"))
    ap.add_argument("--cases", nargs="+", choices=sorted(CASES), default=DEFAULT_CASES)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--from-runs", action="store_true",
                    help="summarise each case's finished run folder in OUT without running a fix (CPU seconds are "
                         "then not measured: null; time the run itself, e.g. with /usr/bin/time)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "engine.json"
    runs = json.loads(path.read_text(encoding="utf-8"))["runs"] if path.is_file() else {}
    for name in args.cases:
        if args.from_runs:
            record = json.loads((args.out / name / "fix.json").read_text(encoding="utf-8"))
            runs[name] = recorded(name, args.out / name, record, None)
        else:
            runs[name] = run_case(name, args.out, args.threads)
        path.write_text(json.dumps({"kind": "bench-engine", "runs": runs}, indent=2) + "\n", encoding="utf-8")
    print(f"{'case':8} {'attribute':9} {'mean Δ before':>13} {'after [95%]':>22} {'in band':>9} {'tuning/prof':>11} "
          f"{'CPU s':>7} {'side':>7}")
    for name, r in runs.items():
        for attribute, a in r["attributes"].items():
            if a.get("held"):
                continue
            lo, hi = a["mean_delta_after_ci"]
            print(f"{name:8} {attribute:9} {a['mean_delta_before']:>13.3f} {a['mean_delta_after']:>8.3f} "
                  f"[{lo:.3f}, {hi:.3f}] {a['within_before']:>3} → {a['within_after']:<3} "
                  f"{r['tuning_images_per_profession']:>11.0f} {r['cpu_seconds'] or float('nan'):>7.0f} "
                  f"{r['side_effect']:>7.4f}")
    print("\nmean Δ per held-out test template, before → after")
    for name, r in runs.items():
        for attribute, sides in r.get("mean_delta_by_template", {}).items():
            cells = [f"{t.replace('{}', '…')} {sides['before'][t]:.2f} → {sides['after'][t]:.2f}" for t in sides["after"]]
            print(f"{name:8} {attribute:9} " + "; ".join(cells))


if __name__ == "__main__":
    main()
