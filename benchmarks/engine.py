"""The fix engine on the built-in worlds: gender on ``mini``, skin, age and gender × skin crossed on ``mini-v2``.

Each run is the README's command for that case (128 held-out test images per profession, the default budget of
(k − 1) × 320 tuning images per profession unless named), and the record keeps what a reviewer asks of it: mean Δ
before and after per attribute with intervals, professions within ±0.05, the side effect, images by stage and CPU
seconds (this process, all its threads). Runs are cached in ``OUT/<case>``, so a rerun only re-reads them.

Run:  ``python benchmarks/engine.py --out runs/engine [--cases gender skin age crossed] [--threads 2]``
Writes ``OUT/engine.json`` (committed as ``benchmarks/results/engine-mini.json``) and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

V2_PROFESSIONS = ["a librarian", "a pilot", "a nurse"]
CASES = {
    "gender": dict(model="mini", professions="professions/mini.txt", attributes=None),
    "skin": dict(model="mini-v2", professions=V2_PROFESSIONS, attributes=["skin"]),
    "age": dict(model="mini-v2", professions=V2_PROFESSIONS, attributes=["age"]),
    "crossed": dict(model="mini-v2", professions=V2_PROFESSIONS, attributes=["gender", "skin"]),
}


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


def run_case(name: str, out: Path, threads: int | None) -> dict:
    import debias

    case = CASES[name]
    started = time.process_time()
    result = debias.fix(case["model"], professions=case["professions"], attributes=case["attributes"],
                        out=out / name, test_images=128, threads=threads, progress=False)
    return {"case": name, **{k: v for k, v in case.items()}, **summary(result.to_dict()),
            "cpu_seconds": round(time.process_time() - started, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/engine"))
    ap.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "engine.json"
    runs = json.loads(path.read_text(encoding="utf-8"))["runs"] if path.is_file() else {}
    for name in args.cases:
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
                  f"{r['tuning_images_per_profession']:>11.0f} {r['cpu_seconds']:>7.0f} {r['side_effect']:>7.4f}")


if __name__ == "__main__":
    main()
