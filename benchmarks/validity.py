"""Do prediction-powered shares cover the truth when the classifier errs? Coverage on the built-in mini model.

The mini world's pixel oracle reads every image's drawn gender exactly, so it plays the human labeller. The
classifier is made *deliberately miscalibrated*: the mini CLIP's label of each image is passed through
:func:`miscalibrated`, which, per profession, turns "female" into "male" with probability ``p_fm``, "male" into
"female" with probability ``p_mf`` (rates in :data:`FLIPS`), and then any label into "unclear" with
probability 0.05. The coins are a hash of the image key, so the classifier is a fixed function of the image,
as a real one is. Rates differ by profession and direction, so the classifier's share is biased by
profession: down for nurse, librarian, doctor, up for baker and pilot; singer's flips are symmetric at a
share of ½ and leave it unbiased (a control).

**Pool.** ``--pool-size`` images per profession (default 320) are generated once by ``debias.audit`` on the
test prompts into ``--pool`` (a cached run folder; a rerun generates nothing). The truth is the pool's oracle
share per profession.

**Draws.** Each of ``--draws`` repetitions (default 1000) resamples, per profession, ``--images`` images with
replacement from the pool (the audit; default 400) and picks ``--labels`` of them at random for human labels
(default 100), the rest unlabelled. Then:

* PPI++ (:func:`debias.validity.ppi_share`, power-tuned λ) and plain PPI (λ = 1): 95% interval from the
  classifier on all images and the oracle labels on the labelled ones;
* classifier-only: the 95% Wilson interval of the miscalibrated classifier's share on all images (what an
  audit without labels reports);
* human-only: the 95% Wilson interval from the same labels alone.

Coverage is the share of draws whose interval contains the pool's oracle share (Monte Carlo standard error
about 0.7 points at 1000 draws); widths are means over draws. Run (one torch thread, a few minutes the first
time, about half a minute after)::

    python benchmarks/validity.py [--pool runs/validity-pool] [--draws 1000]

Prints a table and writes ``benchmarks/results/validity.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
PROFESSIONS = ROOT / "professions" / "mini.txt"
ABSTAIN = 0.05
# profession: (P(female → male), P(male → female)) applied to the mini CLIP's label
FLIPS = {"nurse": (0.30, 0.00), "librarian": (0.15, 0.05), "teacher": (0.05, 0.05), "baker": (0.00, 0.20),
         "singer": (0.10, 0.10), "doctor": (0.20, 0.00), "pilot": (0.00, 0.25), "engineer": (0.40, 0.10)}


def _coin(key: str, salt: str) -> float:
    """A uniform number in [0, 1) fixed by the image key (the classifier is a function of the image)."""
    return int(hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()[:12], 16) / 16 ** 12


def miscalibrated(profession: str, key: str, clip_label: str) -> str:
    """The mini CLIP's label, flipped at the profession's rates, then abstaining 5% of the time."""
    p_fm, p_mf = FLIPS.get(profession, (0.0, 0.0))
    label = clip_label
    if label == "female" and _coin(key, "flip") < p_fm:
        label = "male"
    elif label == "male" and _coin(key, "flip") < p_mf:
        label = "female"
    return "unclear" if _coin(key, "abstain") < ABSTAIN else label


def ensure_pool(pool: Path, size: int) -> dict:
    """The pool's audit record; generated (one torch thread) when missing or too small."""
    path = pool / "audit.json"
    if path.is_file():
        record = json.loads(path.read_text(encoding="utf-8"))
        if min(len(r["samples"]) for r in record["professions"]) >= size:
            return record
    import torch

    import debias

    torch.set_num_threads(1)
    print(f"generating the pool: {size} images per profession into {pool} (once; cached)", file=sys.stderr)
    debias.audit("mini", professions=PROFESSIONS, images_per_profession=size, out=pool, threads=1,
                 write_report=False, progress=True)
    return json.loads(path.read_text(encoding="utf-8"))


def pool_arrays(record: dict, size: int) -> dict[str, dict]:
    """Per profession: oracle labels, the miscalibrated classifier's labels, truth and the classifier's bias."""
    out = {}
    for row in record["professions"]:
        name = row["profession"]
        samples = row["samples"][:size]
        keys = [Path(s["image"]).stem for s in samples]
        oracle = np.array([s["oracle"] for s in samples])
        clf = np.array([miscalibrated(name, k, s["label"]) for k, s in zip(keys, samples)])
        f, m = np.sum(oracle == "female"), np.sum(oracle == "male")
        cf, cm = np.sum(clf == "female"), np.sum(clf == "male")
        clip_agree = np.mean([s["label"] == s["oracle"] for s in samples if s["oracle"] in ("female", "male")])
        out[name] = {"oracle": oracle, "classifier": clf, "truth": float(f / (f + m)),
                     "classifier_pool_share": float(cf / (cf + cm)), "planted": row.get("planted_share"),
                     "mini_clip_agreement": float(clip_agree)}
    return out


def one_profession(data: dict, draws: int, images: int, labels: int, rng: np.random.Generator) -> dict:
    """Coverage and widths of the four intervals over ``draws`` resampled audits of one profession."""
    from debias.validity import classifier_share, human_share, ppi_share

    truth, oracle, clf = data["truth"], data["oracle"], data["classifier"]
    names = ("ppi++", "ppi++_wald", "ppi", "classifier_wilson", "human_wilson")
    hits = {k: 0 for k in names}
    widths = {k: [] for k in names}
    lams = []
    for _ in range(draws):
        idx = rng.integers(0, len(oracle), size=images)
        lab, unl = idx[:labels], idx[labels:]      # i.i.d. draws: the first `labels` are a random subset
        results = {"ppi++": ppi_share(oracle[lab], clf[lab], clf[unl]),
                   "ppi++_wald": ppi_share(oracle[lab], clf[lab], clf[unl], interval="wald"),
                   "ppi": ppi_share(oracle[lab], clf[lab], clf[unl], lam=1.0),
                   "classifier_wilson": classifier_share(clf[idx]),
                   "human_wilson": human_share(oracle[lab])}
        lams.append(results["ppi++"].lam)
        for k, r in results.items():
            hits[k] += r.covers(truth)
            widths[k].append(r.width)
    row = {f"coverage_{k}": hits[k] / draws for k in names}
    row.update({f"width_{k}": float(np.mean(widths[k])) for k in names})
    row["mean_lambda"] = float(np.mean(lams))
    row["width_ratio_ppi++_vs_human"] = row["width_ppi++"] / row["width_human_wilson"]
    return row


def run(pool: Path, size: int, draws: int, images: int, labels: int, seed: int) -> dict:
    record = ensure_pool(pool, size)
    data = pool_arrays(record, size)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    rows = []
    for name, d in data.items():
        p_fm, p_mf = FLIPS.get(name, (0.0, 0.0))
        rows.append({"profession": name, "planted_share": d["planted"], "pool_oracle_share": d["truth"],
                     "classifier_pool_share": d["classifier_pool_share"], "p_female_to_male": p_fm,
                     "p_male_to_female": p_mf, "mini_clip_agreement": d["mini_clip_agreement"],
                     **one_profession(d, draws, images, labels, rng)})
    keys = [k for k in rows[0] if k.startswith(("coverage_", "width_"))]
    overall = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    shown = os.path.relpath(pool.resolve(), ROOT) if pool.resolve().is_relative_to(ROOT) else str(pool)
    return {"kind": "validity-benchmark", "model": "mini", "pool": shown, "pool_size": size, "draws": draws,
            "images_per_audit": images, "labels_per_profession": labels, "seed": seed, "abstain": ABSTAIN,
            "level": 0.95, "monte_carlo_se": float(np.sqrt(0.95 * 0.05 / draws)),
            "note": __doc__.split("\n\n")[1].replace("\n", " "), "seconds_resampling": time.perf_counter() - t0,
            "professions": rows, "overall": overall}


def print_table(result: dict) -> None:
    print(f"\nmini model, {result['draws']} draws, {result['images_per_audit']} images and "
          f"{result['labels_per_profession']} oracle labels per profession, pool {result['pool_size']}/profession")
    print("| profession | truth | clf share | flips f→m/m→f | PPI++ cov | PPI++ Wald cov | PPI λ=1 cov | clf Wilson cov "
          "| human Wilson cov | PPI++ width | human width | ratio | mean λ |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in result["professions"] + [{"profession": "mean", **result["overall"]}]:
        flips = f"{r['p_female_to_male']:.2f}/{r['p_male_to_female']:.2f}" if "p_female_to_male" in r else ""
        shares = (f"{r['pool_oracle_share']:.3f} | {r['classifier_pool_share']:.3f}" if "pool_oracle_share" in r
                  else " | ")
        ratio = r["width_ppi++"] / r["width_human_wilson"]
        lam = f"{r['mean_lambda']:.2f}" if "mean_lambda" in r else ""
        print(f"| {r['profession']} | {shares} | {flips} | {r['coverage_ppi++']:.3f} | {r['coverage_ppi++_wald']:.3f} | "
              f"{r['coverage_ppi']:.3f} | "
              f"{r['coverage_classifier_wilson']:.3f} | {r['coverage_human_wilson']:.3f} | {r['width_ppi++']:.3f} | "
              f"{r['width_human_wilson']:.3f} | {ratio:.2f} | {lam} |")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=Path, default=ROOT / "runs" / "validity-pool", help="cached pool run folder")
    parser.add_argument("--pool-size", type=int, default=320, help="pool images per profession")
    parser.add_argument("--draws", type=int, default=1000, help="resampled audits (at least 200)")
    parser.add_argument("--images", type=int, default=400, help="images per profession in each resampled audit")
    parser.add_argument("--labels", type=int, default=100, help="oracle labels per profession in each draw")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "validity.json")
    args = parser.parse_args(argv)
    if args.draws < 200 or not 2 <= args.labels < args.images:
        parser.error("need --draws >= 200 and 2 <= --labels < --images")
    os.environ.setdefault("DEBIAS_NUM_THREADS", "1")
    from debias.core.io import atomic_write_json

    result = run(args.pool, args.pool_size, args.draws, args.images, args.labels, args.seed)
    print_table(result)
    atomic_write_json(args.json, result)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
