"""The printed summaries of the results: a rich table per verb, with the headline and the interval note."""

from __future__ import annotations

from typing import Optional, TextIO

from rich.console import Console
from rich.table import Table

from debias.validity.record import commands_for


def fmt(x: Optional[float], digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _interval(share, low, high) -> str:
    return f"{fmt(share)} [{fmt(low)}, {fmt(high)}]"


def print_audit(result, file: TextIO, run_dir: str = "RUN_DIR") -> None:
    """The audit per profession (share, interval, p, Δ; planted and oracle shares for a synthetic world), what human
    labels in ``run_dir`` say, and other classifiers' readings."""
    console = Console(file=file, width=None if file.isatty() else 110)
    oracle = result.has_oracle
    labelled = bool(result.validity and result.validity["has_labels"])
    ppi = {v["profession"]: v["ppi_share"] for v in (result.validity or {}).get("professions", [])}
    table = Table(title=f"Audit of {result.model.get('spec')} ({result.prompt_set} prompts)")
    for col in ("profession", "n", "unclear", "share female", "95% CI", "p", "Δ") + (("planted", "oracle") * oracle) \
            + (("prediction-powered [95% CI]",) * labelled):
        table.add_column(col, justify="left" if col == "profession" else "right")
    for r in result.professions:
        cells = [r.phrase, str(r.n), str(r.n_unclear), fmt(r.share_female), f"[{fmt(r.ci_low)}, {fmt(r.ci_high)}]",
                 f"{r.p_value:.2g}", fmt(r.delta)]
        cells += [fmt(r.planted_share), fmt(r.oracle_share)] if oracle else []
        share = ppi.get(r.profession)
        if labelled:
            cells.append(_interval(share["estimate"], share["ci_low"], share["ci_high"]) if share else "—")
        table.add_row(*cells)
    console.print(table)
    console.print(f"mean Δ = {fmt(result.mean_delta)} [{fmt(result.mean_delta_ci_low)}, {fmt(result.mean_delta_ci_high)}] "
                  f"(target {result.target}; 0 = on target, 1 = all one gender; an unbiased model would read "
                  f"{fmt(result.mean_delta_noise_floor)} on as many images)")
    console.print(result.ci_note)
    _print_validity(console, result.validity, str(run_dir))
    for other in result.classifiers or []:
        agree = other["agreement"]
        console.print(f"classifier {other['model']}: mean Δ = {fmt(other['mean_delta'])} "
                      f"[{fmt(other['mean_delta_ci_low'])}, {fmt(other['mean_delta_ci_high'])}], agreement with the "
                      f"primary {fmt(agree['rate'])} [{fmt(agree['ci_low'])}, {fmt(agree['ci_high'])}]; disagrees on: "
                      f"{', '.join(other['disagreeing']) or 'none'}")
    for section in result.attributes or []:
        _print_attribute(console, section)
    for section in result.intersections or []:
        _print_intersection(console, section)
    console.print(f"images generated {result.images_generated}, reused from cache {result.images_reused}; "
                  f"{result.wall_seconds:.1f} s")


def _print_attribute(console: Console, section: dict) -> None:
    """One attribute: per profession its class shares (target in parentheses), Δ, p and the band."""
    classes = section["classes"]
    table = Table(title=f"{section['attribute']}: share per class (target) — simultaneous 95% intervals in "
                        f"audit_attributes.csv")
    for col in ("profession", "n", "unclear", *classes, "Δ", "p", "within"):
        table.add_column(col, justify="left" if col == "profession" else "right")
    for r in section["professions"]:
        shares = r["shares"] or [None] * len(classes)
        table.add_row(r["phrase"], str(r["n"]), str(r["n_unclear"]),
                      *(f"{fmt(s)} ({fmt(t)})" for s, t in zip(shares, r["target"])), fmt(r["delta"]),
                      f"{r['p_value']:.2g}", "yes" if r["within_band"] else "no")
    console.print(table)
    console.print(f"{section['attribute']}: mean Δ = {fmt(section['mean_delta'])} [{fmt(section['mean_delta_ci_low'])}, "
                  f"{fmt(section['mean_delta_ci_high'])}]; within ±{section['tolerance']:g} of target: "
                  f"{section['within_tolerance']} of {len(section['professions'])}")


def _print_intersection(console: Console, section: dict) -> None:
    """An intersection in one line per profession: readable cells, and how many were too thin or empty."""
    a, b = section["attributes"]
    console.print(f"{a} × {b} (cells expected to hold < {section['min_expected']:g} images are not read):")
    for r in section["professions"]:
        cells = ", ".join(f"{c['row']}/{c['col']} {fmt(c['share'])}" for c in r["cells"] if c["flag"] != "tiny")
        console.print(f"  {r['phrase']}: n={r['n']}; {cells or 'no readable cell'}; tiny {r['tiny_cells']}, "
                      f"empty {r['empty_cells']}")


def _print_validity(console: Console, v: Optional[dict], run_dir: str) -> None:
    """The human labels' verdict on the shares, or how to get one."""
    if not v:
        return
    if not v["has_labels"]:
        console.print(f"shares are classifier readings: add human labels with `{commands_for(v, run_dir)['label']}` "
                      f"({v['labels_needed']['0.05']} per profession bound the classifier's error rate to ±0.05, "
                      f"{v['labels_needed']['0.1']} to ±0.10)")
        return
    overall = v["overall"]["agreement"]
    console.print(f"human labels: {v['n_labels']} by {', '.join(v['labellers'])}; classifier agreement "
                  f"{fmt(overall['rate'])} [{fmt(overall['ci_low'])}, {fmt(overall['ci_high'])}]; flagged: "
                  f"{', '.join(v['overall']['flagged']) or 'none'}")
    if v["mean_delta"] is not None:
        console.print(f"mean Δ (prediction-powered, {v['mean_delta_professions']} professions) = "
                      f"{fmt(v['mean_delta'])} [{fmt(v['mean_delta_ci_low'])}, {fmt(v['mean_delta_ci_high'])}]")


def _shares(values) -> str:
    return "—" if values is None else " / ".join(f"{x:.2f}" for x in values)


def _print_attribute_fix(console: Console, block) -> None:
    """One attribute of an attribute fix: class shares before → after per profession, or how far a held one moved."""
    classes = " / ".join(block.classes)
    if not block.fixed:
        console.print(f"{block.attribute} (not fixed, measured): {block.moved} of {len(block.professions)} "
                      f"professions moved beyond noise; mean largest class-share change "
                      f"{fmt(block.mean_largest_change)}")
        return
    table = Table(title=f"{block.attribute} ({classes}), held-out test prompts, within ± {block.tolerance}")
    for col in ("profession", "target", "before", "after", "λ_rel per class", "status"):
        table.add_column(col, justify="left" if col in ("profession", "status") else "right")
    for r in block.professions:
        lams = " / ".join("—" if x is None else f"{x:.3g}" for x in r.lambda_relative)
        table.add_row(r.profession, _shares(r.target), _shares(r.before.shares), _shares(r.after.shares), lams,
                      r.status)
    console.print(table)
    n = len(block.professions)
    console.print(f"{block.attribute}: mean Δ before {_interval(block.mean_delta_before, block.mean_delta_before_ci_low, block.mean_delta_before_ci_high)}"
                  f" → after {_interval(block.mean_delta_after, block.mean_delta_after_ci_low, block.mean_delta_after_ci_high)}; "
                  f"within tolerance {block.within_tolerance_before} → {block.within_tolerance_after} of {n}")


def print_fix(result, file: TextIO) -> None:
    """The fix per profession (before → after with intervals, λ, status), the headline Δ, side effects, images."""
    console = Console(file=file)
    if result.attribute_fixes:
        for block in result.attribute_fixes:
            _print_attribute_fix(console, block)
    else:
        _print_gender_fix(console, result)
    _print_run(console, result)


def _print_gender_fix(console: Console, result) -> None:
    n = len(result.professions)
    table = Table(title=f"Fix of {result.model.get('spec')} (held-out test prompts, target {result.target} "
                        f"± {result.tolerance})")
    for col in ("profession", "destination", "before", "after", "λ_rel", "round images", "status"):
        table.add_column(col, justify="left" if col in ("profession", "destination", "status") else "right")
    for r in result.professions:
        table.add_row(r.profession, r.destination or "—", _interval(r.share_before, r.ci_low_before, r.ci_high_before),
                      _interval(r.share_after, r.ci_low_after, r.ci_high_after), fmt(r.lambda_relative, 3),
                      str(r.images_used_in_search), r.status)
    console.print(table)
    console.print(f"mean Δ before {_interval(result.mean_delta_before, result.mean_delta_before_ci_low, result.mean_delta_before_ci_high)}"
                  f" → after {_interval(result.mean_delta_after, result.mean_delta_after_ci_low, result.mean_delta_after_ci_high)} "
                  f"(a perfect edit would read {fmt(result.mean_delta_noise_floor_after)} on as many images); within "
                  f"tolerance {result.within_tolerance_before} → {result.within_tolerance_after} of {n}; after "
                  f"intervals reaching the band {result.after_intervals_overlapping_band} of {n}")
    if result.mean_spread_after is not None:
        console.print(f"spread across held-out prompts (SD of a profession's share, mean over professions): "
                      f"{fmt(result.mean_spread_before)} → {fmt(result.mean_spread_after)}; sampling alone gives "
                      f"{fmt(result.mean_spread_noise_after)} on these images per prompt")
    if result.mean_delta_by_template:
        by_template = result.mean_delta_by_template
        floors = [d["noise_floor_after"] for d in by_template.values() if d.get("noise_floor_after") is not None]
        floor = f" (a perfect model would read about {fmt(max(floors))} on one template's images)" if floors else ""
        console.print("mean Δ per held-out template, before → after: " + "; ".join(
            f"{t} {fmt(d.get('before'))} → {fmt(d.get('after'))}" for t, d in by_template.items()) + floor)


def _print_run(console: Console, result) -> None:
    side = result.side_effects or {}
    if side.get("mean_abs_pixel_change") is not None:
        console.print(f"side effect on unrelated prompts: mean absolute pixel change "
                      f"{side['mean_abs_pixel_change']:.4f} (0–1 scale, same seeds)")
    console.print(result.ci_note)
    if result.edit_note:
        console.print(f"{result.edit_note}; no edit file was written and the model is unchanged")
    images = result.images
    made = ", ".join(f"{stage} {v['generated']}" for stage, v in images["by_stage"].items() if v["generated"])
    console.print(f"{result.wall_seconds:.0f} s; {images['generated']} images generated ({made or 'none'}), "
                  f"{images['in_cache']} in the run folder's cache")
