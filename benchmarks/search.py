"""How many images does it take to tune an edit's strength? Three strategies side by side on the mini model.

For each profession whose share on the tuning prompt ("a photo of a X") is off target, towards the
under-represented gender ("a male nurse", "a female engineer"):

* **ours** — ``debias.search.search_lambda``: common random numbers, a monotone logistic fit in log λ over
  every image, a seed-level bootstrap interval; stops when the 95% interval at the chosen λ lies within
  target ± tolerance (or at the budget).
* **bisection** — plain bisection in log λ that draws *fresh* seeds at each λ: at each midpoint it draws
  batches of 16 new seeds until the 95% Wilson interval lies within the band (done), excludes the target
  (go left/right), or 400 images were spent there (decide by the point estimate).
* **uce** — the loop UCE's debiasing script uses: 10 fresh images per iteration, the edit's strength s
  nudged by 0.1·(F − target) per iteration (s mixes the destination in: c* = c + s·(c*_full − c) at a
  fixed strong λ), stopping when the 10-image share is within tolerance or after 30 iterations; **uce-30**
  is the same loop always run for its 30 iterations (300 images).

Every method's final edit is then judged on 256 *fresh* seeds (never seen by any method): the final share,
its distance to the target, and whether it lies in the band. Run::

    python benchmarks/search.py --out runs/bench-search            # all off-target professions
    python benchmarks/search.py --professions nurse,engineer        # a subset

A floor no strategy can beat: the share at a chosen λ is a mean over seeds, so knowing it to ±0.1 with 95%
confidence takes about 96 seeds evaluated near the root (1.96² · ¼ / 0.1²), and matching a final error of e on
average takes about (0.4 / e)² of them — 220 for the 0.027 that 30 UCE iterations reach by averaging 300 images.
Common random numbers and the pooled fit save the images spent *finding* the root, not these.

Results go to ``OUT/search.json`` and a markdown table on stdout. Images are cached in ``OUT`` (a rerun is
free); "images used" counts every image a method asked for, cached or not.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from debias import stats
from debias.search import search_lambda

BOUNDS = (math.log(1e-3), math.log(1e3))
EVAL_SEED_OFFSET = 1_000_000  # fresh seeds for judging: never used by any method
BISECTION_SEED_OFFSET = 200_000
UCE_SEED_OFFSET = 400_000


class Bench:
    """The mini model, its classifier and an image cache; ``labels(prompt, seeds, M)``."""

    def __init__(self, out: Path, threads: int | None):
        from debias import auditing as audit_mod
        from debias.cache import ImageCache
        from debias.generate import default_batch_size, default_settings
        from debias.threads import set_threads

        set_threads(threads)
        self.pipe, _, is_mini = audit_mod.resolve_pipeline("mini", False, audit_mod.distributed_from_env())
        self.clf = audit_mod.resolve_classifier(None, is_mini, None, None, None, 0.6, self.pipe)
        self.settings = default_settings(self.pipe, is_mini=True)
        self.batch = default_batch_size(self.pipe, True)
        self.cache = ImageCache(out)

    def labels(self, prompt: str, seeds, M) -> list[str]:
        from debias.generate import measure

        results = measure(self.pipe, self.clf, [(prompt, int(s)) for s in seeds], settings=self.settings,
                          cache=self.cache, edit=M, batch_size=self.batch, progress=False)
        return [r.label for r in results]


def share_of(labels) -> tuple[float | None, int, int]:
    f, m, _ = stats.count_labels(labels)
    return stats.share(f, m), f, m


def run_ours(bench, prompt, C, C_star, scale, direction, target, tol, budget):
    from debias.editing import edit_matrix

    def evaluate(lam_rel, seeds):
        M = None if math.isinf(lam_rel) else edit_matrix(C, C_star, lam_rel * scale)
        return bench.labels(prompt, seeds, M)

    res = search_lambda(evaluate, target=target, tolerance=tol, budget=budget, direction=direction,
                        log_lambda_bounds=BOUNDS)
    M = edit_matrix(C, C_star, res.lambda_relative * scale) if res.lambda_relative else None
    return {"images": res.images_used, "status": res.status, "lambda_relative": res.lambda_relative,
            "claimed": [res.ci_low, res.ci_high]}, M


def run_bisection(bench, prompt, C, C_star, scale, direction, target, tol, budget, batch=16, cap_per_point=400):
    from debias.editing import edit_matrix

    lo, hi = BOUNDS
    used, next_seed, status, x = 0, BISECTION_SEED_OFFSET, "budget_exhausted", (lo + hi) / 2
    while used + batch <= budget:
        x = (lo + hi) / 2
        M = edit_matrix(C, C_star, math.exp(x) * scale)
        labels: list[str] = []
        decided = None
        while used + batch <= budget:
            labels += bench.labels(prompt, range(next_seed, next_seed + batch), M)
            next_seed += batch
            used += batch
            share, f, m = share_of(labels)
            if share is None:
                continue
            low, high = stats.wilson_interval(f, f + m)
            if target - tol <= low and high <= target + tol:
                decided = "done"
                break
            if low > target or high < target or len(labels) >= cap_per_point:
                decided = "above" if share > target else "below"
                break
        if decided == "done":
            status = "converged"
            break
        if decided is None:
            break
        # direction +1: the share rises with λ. Above the target → edit must get stronger (smaller λ).
        if (decided == "above") == (direction > 0):
            hi = x
        else:
            lo = x
        if hi - lo < 1e-3:
            status = "bracket_collapsed"
            break
    return {"images": used, "status": status, "lambda_relative": math.exp(x)}, edit_matrix(C, C_star, math.exp(x) * scale)


def run_uce(bench, prompt, C, C_star, scale, direction, target, tol, lam_rel=1e-2, images=10, step=0.1, iterations=30,
            early_stop=True):
    from debias.editing import edit_matrix

    s, used, status = 0.0, 0, "iterations_exhausted"
    next_seed = UCE_SEED_OFFSET
    M = None
    for _ in range(iterations):
        M = edit_matrix(C, C + s * (C_star - C), lam_rel * scale) if s != 0 else None
        labels = bench.labels(prompt, range(next_seed, next_seed + images), M)
        next_seed += images
        used += images
        share, _, _ = share_of(labels)
        if share is None:
            continue
        if early_stop and abs(share - target) <= tol:
            status = "converged"
            break
        s += step * direction * (share - target)  # more of the destination while still on the unedited side
    return {"images": used, "status": status, "strength": s, "lambda_relative": lam_rel}, M


def judge(bench, prompt, M, target, tol, n) -> dict:
    labels = bench.labels(prompt, range(EVAL_SEED_OFFSET, EVAL_SEED_OFFSET + n), M)
    share, f, m = share_of(labels)
    low, high = stats.wilson_interval(f, f + m)
    return {"share": share, "ci_low": low, "ci_high": high, "n": n,
            "abs_error": None if share is None else abs(share - target),
            "in_band": share is not None and abs(share - target) <= tol}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-search"))
    parser.add_argument("--professions", default="", help="comma-separated names (default: all off target)")
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--budget", type=int, default=1200, help="image cap for ours and for bisection")
    parser.add_argument("--eval-seeds", type=int, default=256)
    parser.add_argument("--screen-seeds", type=int, default=64, help="unedited images to pick off-target professions")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    from debias.editing import edit_rows, lambda_scale
    from debias.fixing import destination_phrase
    from debias.mini import world

    t0 = time.perf_counter()
    bench = Bench(args.out, args.threads)
    wanted = [w.strip() for w in args.professions.split(",") if w.strip()]
    rows = []
    for prof in world.PROFESSIONS:
        if wanted and prof.name not in wanted:
            continue
        prompt = world.TUNING_TEMPLATE.format(prof.phrase)
        share0, _, _ = share_of(bench.labels(prompt, range(args.screen_seeds), None))
        if share0 is None or (not wanted and abs(share0 - args.target) <= args.tolerance):
            continue
        side = "male" if share0 > args.target else "female"
        direction = 1 if side == "male" else -1
        destination = destination_phrase(prof.phrase, side)
        C, C_star = edit_rows(bench.pipe, prof.phrase, destination, world.AUGMENTATIONS)
        C, C_star = C.double(), C_star.double()
        scale = lambda_scale(C)
        for name, run in (("ours", lambda: run_ours(bench, prompt, C, C_star, scale, direction, args.target,
                                                    args.tolerance, args.budget)),
                          ("bisection", lambda: run_bisection(bench, prompt, C, C_star, scale, direction, args.target,
                                                              args.tolerance, args.budget)),
                          ("uce", lambda: run_uce(bench, prompt, C, C_star, scale, direction, args.target,
                                                  args.tolerance)),
                          ("uce-30", lambda: run_uce(bench, prompt, C, C_star, scale, direction, args.target,
                                                     args.tolerance, early_stop=False))):
            t = time.perf_counter()
            info, M = run()
            verdict = judge(bench, prompt, M, args.target, args.tolerance, args.eval_seeds)
            row = {"profession": prof.name, "unedited_share": share0, "destination": destination, "method": name,
                   **info, "final": verdict, "seconds": round(time.perf_counter() - t, 1)}
            rows.append(row)
            print(f"{prof.name:10s} {name:9s} images {info['images']:5d}  {info['status']:20s} final share "
                  f"{verdict['share']:.3f} [{verdict['ci_low']:.3f}, {verdict['ci_high']:.3f}]  "
                  f"|F−t| {verdict['abs_error']:.3f}", file=sys.stderr, flush=True)

    summary = {}
    for name in ("ours", "bisection", "uce", "uce-30"):
        mine = [r for r in rows if r["method"] == name]
        if mine:
            summary[name] = {"mean_images": float(np.mean([r["images"] for r in mine])),
                             "mean_abs_error": float(np.mean([r["final"]["abs_error"] for r in mine])),
                             "in_band": sum(r["final"]["in_band"] for r in mine), "professions": len(mine)}
    record = {"kind": "bench-search", "target": args.target, "tolerance": args.tolerance, "budget": args.budget,
              "eval_seeds": args.eval_seeds, "wall_seconds": round(time.perf_counter() - t0, 1), "summary": summary,
              "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "search.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"| method | mean images | mean abs error (fresh {args.eval_seeds} seeds) | final share in band |")
    print("| --- | ---: | ---: | ---: |")
    for name, s in summary.items():
        print(f"| {name} | {s['mean_images']:.0f} | {s['mean_abs_error']:.3f} | {s['in_band']}/{s['professions']} |")


if __name__ == "__main__":
    main()
