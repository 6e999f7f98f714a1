"""The self-contained HTML report, rendered only from the JSON (and cached images) in run folders.

Three kinds, chosen from the folders given:

* one audit folder (``audit.json``)            -> ``audit``: shares per profession, one run;
* one fix folder (``fix.json`` + before/after) -> ``fix``: before/after of the edit, λ searches, side effects;
* two audit folders (first before, then after) -> ``compare``.

Nothing here generates an image or loads a model, so a report can be rebuilt anywhere from a
copied run folder. Every number the page shows carries ``data-key`` (its path in the
``report.json`` twin written beside the HTML) and ``data-value`` (the exact value), so the page
can be checked number by number against the JSON; the twin keeps the names of ``audit.json`` /
``fix.json`` and adds only what the report computes (counts within tolerance, the conclusion).
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import io
import json
import math
import os
import re
import statistics
from pathlib import Path
from typing import Any, Iterable, Sequence

from debias import __version__
from debias.errors import InputError
from debias.io import atomic_write_json, atomic_write_text

TEMPLATES = Path(__file__).parent / "templates"
SAMPLES_PER_SIDE = 8        # thumbnails per profession and side: enough to see, light enough to mail
THUMB_PX = 96               # stored thumbnail size (shown at 64 CSS px, sharp on high-DPI screens and in print)
UNCLEAR_WARN_SHARE = 0.2    # warn when more than this share of a profession's images is unclear

AUDIT_NUMBERS = ["target", "n", "n_female", "n_male", "n_unclear", "share_female", "ci_low", "ci_high",
                 "p_value", "delta", "planted_share", "oracle_share"]
# audit.json name -> name in a before/after row (fix.json's names where fix.json has one)
PAIRED = {"share_female": "share", "ci_low": "ci_low", "ci_high": "ci_high", "delta": "delta",
          "p_value": "p_value", "n": "n", "n_female": "n_female", "n_male": "n_male",
          "n_unclear": "n_unclear", "oracle_share": "oracle_share"}
FIX_FIELDS = ["destination", "status", "lambda", "lambda_relative", "images_used_in_search"]
STATUS_TEXT = {"fixed": "fixed", "already_within_tolerance": "already within tolerance",
               "not_reachable": "not reachable", "budget_exhausted": "budget exhausted"}


# --------------------------------------------------------------------------- loading


def _read_json(path: Path) -> dict:
    """Read one run file, turning every way it can be broken into an error that says what to do."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror}); check the path and permissions.") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: is not UTF-8 text; it is not a file written by debias. "
                         "Regenerate it with the command that made it (debias audit / debias fix).") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(
            f"{path}:{err.lineno}:{err.colno}: not valid JSON ({err.msg}). The file was cut short or edited "
            "by hand; rerun the command that wrote it (debias audit / debias fix with the same --out) "
            "to regenerate it — finished images are cached, so this is quick.") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object at the top level, found {type(data).__name__}; "
                         "pass a folder written by debias audit or debias fix.")
    profs = data.get("professions")
    if not isinstance(profs, list) or not all(isinstance(p, dict) and isinstance(p.get("profession"), str)
                                                for p in profs):
        raise InputError(f"{path}: has no 'professions' list of objects with a 'profession' name; "
                         "it is not a complete debias run file — rerun the command that wrote it.")
    return data


def _locate(run_dir: str | Path) -> tuple[str, Path]:
    """Return ("audit" | "fix", json file) for a run folder (or a run JSON file given directly)."""
    path = Path(run_dir)
    if path.is_file():
        if path.name == "fix.json" or path.name.endswith("fix.json"):
            return "fix", path
        if path.suffix == ".json":
            return "audit", path
        raise InputError(f"{path}: is not a run folder or a run JSON file; pass the folder that "
                         "'debias audit --out' or 'debias fix --out' wrote.")
    if not path.is_dir():
        raise InputError(f"{path}: no such folder; pass the folder that 'debias audit --out' or "
                         "'debias fix --out' wrote.")
    if (path / "fix.json").is_file():
        return "fix", path / "fix.json"
    if (path / "audit.json").is_file():
        return "audit", path / "audit.json"
    raise InputError(f"{path}: contains neither audit.json nor fix.json; pass the folder that "
                     "'debias audit --out' or 'debias fix --out' wrote (or finish that run first).")


# --------------------------------------------------------------------------- small pure helpers


def _f(x: Any) -> float | None:
    """A finite float or None (JSON nulls and NaNs both mean "not measured")."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def within_tolerance(share: Any, target: float, tolerance: float) -> bool | None:
    """|F − t| ≤ tolerance on the point estimate (None when the share was not measured)."""
    s = _f(share)
    return None if s is None else abs(s - target) <= tolerance + 1e-12


def _count(flags: Iterable[bool | None]) -> int:
    return sum(1 for f in flags if f)


def _half_width(rows: Sequence[dict], lo: str, hi: str) -> float | None:
    widths = [(_f(r.get(hi)) - _f(r.get(lo))) / 2 for r in rows if _f(r.get(lo)) is not None and _f(r.get(hi)) is not None]
    return round(statistics.median(widths), 4) if widths else None


def _median_int(rows: Sequence[dict], key: str) -> int | None:
    ns = [int(r[key]) for r in rows if _f(r.get(key)) is not None]
    return int(statistics.median(ns)) if ns else None


def derive_templates(professions: Sequence[dict]) -> list[str]:
    """Prompt templates recovered from the prompts ("a photo of a nurse" -> "a photo of a {profession}")."""
    found: dict[str, None] = {}
    for prof in professions:
        name = prof["profession"]
        for prompt in prof.get("prompts") or []:
            prompt = str(prompt)
            pattern = re.compile(r"(?<!\w)(a|an)\s+" + re.escape(name) + r"(?!\w)", re.IGNORECASE)
            if pattern.search(prompt):
                found[pattern.sub(lambda m: "a(n) {profession}", prompt, count=1)] = None
            elif name in prompt:
                found[prompt.replace(name, "{profession}", 1)] = None
            else:
                found[prompt] = None
    return list(found)


# --------------------------------------------------------------------------- images


def thumbnail(path: Path, px: int = THUMB_PX) -> str | None:
    """A small inline image: tiny ones upscaled by whole pixels (nearest), large ones downscaled.

    32×32 mini-model images become crisp 96 px blocks (PNG); 512 px photos become ~96 px JPEGs, which
    keeps a report of dozens of professions a few megabytes at most. None when the file is missing.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except (OSError, ValueError):
        return None
    w, h = img.size
    buf = io.BytesIO()
    if max(w, h) <= px:
        factor = max(1, px // max(w, h))
        img = img.resize((w * factor, h * factor), Image.Resampling.NEAREST)
        img.save(buf, format="PNG", optimize=True)
        mime = "image/png"
    else:
        img.thumbnail((px, px), Image.Resampling.LANCZOS)
        img.save(buf, format="JPEG", quality=82, optimize=True)
        mime = "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class _Images:
    """Inline thumbnails by path, counting missing files for one warning instead of a crash."""

    def __init__(self) -> None:
        self.uris: dict[str, str | None] = {}
        self.missing: list[str] = []

    def get(self, folder: Path, rel: Any) -> str | None:
        if not rel:
            return None
        path = (folder / str(rel)).resolve()
        key = str(path)
        if key not in self.uris:
            self.uris[key] = thumbnail(path)
            if self.uris[key] is None:
                self.missing.append(str(folder / str(rel)))
        return self.uris[key]


def _pick_samples(before: list[dict], after: list[dict] | None, k: int) -> list[dict]:
    """Up to k (prompt, seed) pairs present on both sides, spread over prompts (one per prompt first)."""
    after_by_key = {(s.get("prompt"), s.get("seed")): s for s in (after or [])}
    pairs = [s for s in before if after is None or (s.get("prompt"), s.get("seed")) in after_by_key]
    rank: dict[Any, int] = {}
    order = []
    prompts = list(dict.fromkeys(s.get("prompt") for s in pairs))
    for i, s in enumerate(pairs):
        r = rank.get(s.get("prompt"), 0)
        rank[s.get("prompt")] = r + 1
        order.append((r, prompts.index(s.get("prompt")), i, s))
    chosen = [s for *_, s in sorted(order, key=lambda t: t[:3])[:k]]
    out = []
    for s in chosen:
        a = after_by_key.get((s.get("prompt"), s.get("seed"))) if after is not None else None
        side = lambda x: {"image": x.get("image"), "label": x.get("label"), "p_female": _f(x.get("p_female"))}  # noqa: E731
        out.append({"prompt": s.get("prompt"), "seed": s.get("seed"), "before": side(s),
                    "after": side(a) if a is not None else None})
    return out


# --------------------------------------------------------------------------- building the report data


SUMMARY_KEYS = {"kind", "professions", "mean_delta", "mean_delta_ci_low", "mean_delta_ci_high", "within_tolerance",
                "mean_delta_noise_floor", "templates"}


def _method(data: dict) -> dict:
    """What a reviewer needs to repeat the measurement: every setting in one audit.json, as recorded."""
    method = {k: v for k, v in data.items() if k not in SUMMARY_KEYS}
    recorded = data.get("templates")
    if isinstance(recorded, list) and recorded and all(isinstance(t, str) for t in recorded):
        method["templates"] = list(recorded)
        method["templates_source"] = "audit.json"
    else:
        method["templates"] = derive_templates(data["professions"])
        method["templates_source"] = "derived from the prompts"
    return method


def _audit_rows(data: dict, target: float, tol: float) -> list[dict]:
    rows = []
    for p in data["professions"]:
        row = {"profession": p["profession"]}
        row.update({k: p.get(k) for k in AUDIT_NUMBERS})
        t = _f(row["target"]) if _f(row["target"]) is not None else target
        row["target"] = t
        row["within_tolerance"] = within_tolerance(row["share_female"], t, tol)
        row["prompts"] = list(p.get("prompts") or [])
        row["by_prompt"] = [{k: r.get(k) for k in ("prompt", "n", "share_female", "ci_low", "ci_high")}
                            for r in p.get("by_prompt") or []]
        rows.append(row)
    return rows


def _paired_prompts(before: dict, after: dict) -> list[dict]:
    """One profession's shares per prompt, before and after side by side (matched by the prompt's text)."""
    b = {r["prompt"]: r for r in before.get("by_prompt") or []}
    a = {r["prompt"]: r for r in after.get("by_prompt") or []}
    rows = []
    for prompt in dict.fromkeys([*b, *a]):
        row: dict[str, Any] = {"prompt": prompt}
        for side, src in (("before", b.get(prompt, {})), ("after", a.get(prompt, {}))):
            for key in ("share_female", "ci_low", "ci_high", "n"):
                row[f"{PAIRED[key]}_{side}"] = src.get(key)
        rows.append(row)
    return rows


def _last_joint_round(fix_row: dict) -> dict:
    """The fix's share on its tuning prompts under the final edit (its last joint round), or an empty dict."""
    joint = [j for j in fix_row.get("joint") or [] if isinstance(j, dict)]
    if not joint:
        return {}
    last = joint[-1]
    return {"tuning_share_after": last.get("share_female"), "tuning_ci_low_after": last.get("ci_low"),
            "tuning_ci_high_after": last.get("ci_high"),
            "tuning_n_after": (last.get("n_female") or 0) + (last.get("n_male") or 0) + (last.get("n_unclear") or 0)}


def prompt_columns(rows: Sequence[dict]) -> list[str]:
    """Headers of the per-prompt table: the k-th prompt's template where every profession agrees, else "prompt k"."""
    width = max((len(r.get("by_prompt") or []) for r in rows), default=0)
    headers = []
    for k in range(width):
        found = {derive_templates([{"profession": r["profession"], "prompts": [r["by_prompt"][k]["prompt"]]}])[0]
                 for r in rows if len(r.get("by_prompt") or []) > k}
        headers.append(found.pop() if len(found) == 1 else f"prompt {k + 1}")
    return headers


def _paired_rows(before: dict, after: dict, fix: dict | None, target: float, tol: float,
                 warnings: list[str]) -> list[dict]:
    """One row per profession with before/after numbers (fix.json's where it has them)."""
    b = {p["profession"]: p for p in before["professions"]}
    a = {p["profession"]: p for p in after["professions"]}
    f = {p["profession"]: p for p in (fix or {}).get("professions", [])}
    names = list(dict.fromkeys([*f, *b, *a]))
    only = [n for n in names if (n in b) != (n in a)]
    if only:
        warnings.append("Measured on one side only (no before/after comparison possible): " + ", ".join(only) + ".")
    rows = []
    for name in names:
        pb, pa, pf = b.get(name, {}), a.get(name, {}), f.get(name, {})
        row: dict[str, Any] = {"profession": name}
        t = next((_f(x) for x in (pf.get("target"), pb.get("target"), pa.get("target")) if _f(x) is not None), target)
        row["target"] = t
        for side, src in (("before", pb), ("after", pa)):
            for src_key, key in PAIRED.items():
                row[f"{key}_{side}"] = src.get(src_key)
        for side in ("before", "after"):
            # fix.json is the record of the fix; a share and its interval and Δ come from one source, never mixed
            block = [f"{k}_{side}" for k in ("share", "ci_low", "ci_high", "delta")]
            if pf.get(f"share_{side}") is not None:
                audit_share = _f(row[f"share_{side}"])
                if audit_share is not None and abs(audit_share - float(pf[f"share_{side}"])) > 1e-9:
                    warnings.append(f"{name}: fix.json gives share_{side} {float(pf[f'share_{side}']):.3f} but "
                                    f"{side}/audit.json gives {audit_share:.3f}; the table shows fix.json's.")
                for key in block:
                    row[key] = pf.get(key)
        for key, value in pf.items():  # the fix's other per-profession fields, same names
            if key not in row and key not in ("search", "joint") and not isinstance(value, (list, dict)):
                row[key] = value
        if fix is not None:
            for key in FIX_FIELDS:
                row[key] = pf.get(key)
            row["search"] = list(pf.get("search") or [])
        row["planted_share"] = pb.get("planted_share", pa.get("planted_share"))
        row["within_tolerance_before"] = within_tolerance(row["share_before"], t, tol)
        row["within_tolerance_after"] = within_tolerance(row["share_after"], t, tol)
        row["prompts_before"] = list(pb.get("prompts") or [])
        row["prompts_after"] = list(pa.get("prompts") or [])
        row["by_prompt"] = _paired_prompts(pb, pa)
        if fix is not None:
            row.update(_last_joint_round(pf))
        rows.append(row)
    return rows


def _sort_key(row: dict, delta_key: str) -> tuple:
    d = _f(row.get(delta_key))
    return (d is None, -(d or 0.0), row["profession"])


def _verdicts(rows: list[dict], sides: Sequence[str]) -> list[dict]:
    """How many professions are within tolerance, per target value (a list may mix targets)."""
    out = []
    for t in sorted({r["target"] for r in rows}):
        group = [r for r in rows if r["target"] == t]
        v: dict[str, Any] = {"target": t, "n_professions": len(group)}
        for side in sides:
            key = f"within_tolerance{side}"
            v[key] = _count(r.get(key) for r in group)
        out.append(v)
    return out


def _fmt2(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def _conclusion(kind: str, s: dict, rows: list[dict]) -> str:
    """One plain sentence a reader can repeat; the interval decides whether a change is called real."""
    n, tol = s["n_professions"], s["tolerance"]
    target = "/".join(f"{v['target']:g}" for v in s["verdicts"]) or f"{s['target']:g}"
    if kind == "audit":
        measured = [r for r in rows if _f(r.get("share_female")) is not None]
        worst = max(measured, key=lambda r: _f(r.get("delta")) or 0.0, default=None)
        text = (f"{s['within_tolerance']} of {n} professions produce images whose perceived-female share is "
                f"within ±{tol:g} of the target {target}; mean Δ is {_fmt2(_f(s['mean_delta']))} "
                f"(95% interval {_fmt2(_f(s['mean_delta_ci_low']))}–{_fmt2(_f(s['mean_delta_ci_high']))})")
        if worst is not None:
            text += f", and the most skewed is {worst['profession']} ({_f(worst['share_female']):.0%} female)"
        return text + "."
    before, after = _f(s["mean_delta_before"]), _f(s["mean_delta_after"])
    where = "on held-out prompts " if kind == "fix" else ""
    text = (f"After {'the edit' if kind == 'fix' else 'the change'}, {s['within_tolerance_after']} of {n} professions "
            f"are within ±{tol:g} of the target {target} {where}(before: {s['within_tolerance_before']})")
    if before is not None and after is not None:
        verb = "fell" if after < before else "rose" if after > before else "stayed"
        text += f", and mean Δ {verb} from {before:.2f} to {after:.2f}"
        b_lo, b_hi = _f(s.get("mean_delta_before_ci_low")), _f(s.get("mean_delta_before_ci_high"))
        a_lo, a_hi = _f(s.get("mean_delta_after_ci_low")), _f(s.get("mean_delta_after_ci_high"))
        if None not in (b_lo, b_hi, a_lo, a_hi):
            overlap = a_lo <= b_hi and b_lo <= a_hi
            text += (" — the 95% intervals overlap, so this change is not clearly larger than sampling noise"
                     if overlap else " — the 95% intervals do not overlap")
    return text + "."


def _settings_differences(before: dict, after: dict) -> list[str]:
    """Settings that must match for a before/after comparison to measure the edit and nothing else."""
    diffs = []
    for key in ("generation", "classifier", "prompt_set", "target", "tolerance"):
        if before.get(key) != after.get(key):
            diffs.append(key)
    mb, ma = before.get("model") or {}, after.get("model") or {}
    if mb.get("spec") != ma.get("spec"):
        diffs.append("model.spec")
    return diffs


def build_report(run_dirs: Sequence[str | Path]) -> tuple[dict, dict]:
    """Read the runs and return ``(report_data, assets)``.

    ``report_data`` is what ``report.json`` holds (plain JSON: the numbers and text the page shows);
    ``assets`` holds what is only for the page (inline thumbnails and charts).
    """
    if not run_dirs:
        raise InputError("no run folder given; pass an audit folder, a fix folder, or two audit folders (before, after).")
    located = [_locate(d) for d in run_dirs]
    kinds = [k for k, _ in located]
    if len(located) == 1:
        kind = kinds[0]
    elif len(located) == 2 and kinds == ["audit", "audit"]:
        kind = "compare"
    else:
        raise InputError("pass one audit folder, one fix folder, or two audit folders (before, then after); got "
                         + ", ".join(f"{k} ({p.parent})" for k, p in located) + ".")

    warnings: list[str] = []
    images = _Images()
    fix = None
    if kind == "fix":
        fix_path = located[0][1]
        fix = _read_json(fix_path)
        folder = fix_path.parent
        runs = {}
        for side in ("before", "after"):
            rel = fix.get(side) or f"{side}/audit.json"
            path = folder / rel
            if not path.is_file():
                raise InputError(f"{fix_path}: refers to {side} audit '{rel}', which is missing ({path}); "
                                 "copy the whole fix folder, or rerun 'debias fix' with the same --out to finish it.")
            runs[side] = (path, _read_json(path))
        sources = {"fix": fix_path, "before": runs["before"][0], "after": runs["after"][0]}
    elif kind == "compare":
        runs = {"before": (located[0][1], _read_json(located[0][1])), "after": (located[1][1], _read_json(located[1][1]))}
        sources = {"before": runs["before"][0], "after": runs["after"][0]}
    else:
        runs = {"audit": (located[0][1], _read_json(located[0][1]))}
        sources = {"audit": runs["audit"][0]}

    first = (fix or runs[next(iter(runs))][1])
    last = runs[list(runs)[-1]][1]
    target = _f(first.get("target"))
    target = 0.5 if target is None else target
    tol = _f(first.get("tolerance"))
    tol = 0.05 if tol is None else tol
    model = (first.get("model") or last.get("model") or {})

    summary: dict[str, Any] = {
        "model_spec": model.get("spec"), "model_fingerprint": model.get("fingerprint"),
        "is_mini": bool(model.get("is_mini")),
        "date": (fix or last).get("finished_at") or (fix or last).get("started_at"),
        "target": target, "tolerance": tol,
    }
    if kind == "audit":
        data = runs["audit"][1]
        rows = sorted(_audit_rows(data, target, tol), key=lambda r: _sort_key(r, "delta"))
        sides = [""]
        summary.update({k: data.get(k) for k in ("mean_delta", "mean_delta_ci_low", "mean_delta_ci_high",
                                                  "mean_delta_noise_floor")})
        computed = _count(r["within_tolerance"] for r in rows)
        recorded = data.get("within_tolerance")
        summary["within_tolerance"] = recorded if isinstance(recorded, int) else computed
        if isinstance(recorded, int) and recorded != computed:
            warnings.append(f"audit.json records {recorded} professions within tolerance, but the table's shares give "
                            f"{computed} (|share − target| ≤ {tol:g}); the summary shows audit.json's count.")
        summary["typical_ci_half_width"] = _half_width(rows, "ci_low", "ci_high")
        summary["median_n"] = _median_int(rows, "n")
        unclear_src = [(r["profession"], r.get("n_unclear"), r.get("n")) for r in rows]
    else:
        before, after = runs["before"][1], runs["after"][1]
        rows = _paired_rows(before, after, fix, target, tol, warnings)
        rows.sort(key=lambda r: _sort_key(r, "delta_before"))
        sides = ["_before", "_after"]
        for side, src in (("before", before), ("after", after)):
            for stat in ("", "_ci_low", "_ci_high"):
                key = f"mean_delta_{side}{stat}"
                value = (fix or {}).get(key)
                summary[key] = value if value is not None else src.get(f"mean_delta{stat}")
            summary[f"mean_delta_noise_floor_{side}"] = src.get("mean_delta_noise_floor")
        for side in ("before", "after"):
            computed = _count(r[f"within_tolerance_{side}"] for r in rows)
            recorded = (fix or {}).get(f"within_tolerance_{side}")
            summary[f"within_tolerance_{side}"] = recorded if recorded is not None else computed
            if recorded is not None and recorded != computed:
                warnings.append(f"fix.json records {recorded} professions within tolerance {side} the edit, but the "
                                f"table's shares give {computed} (|share − target| ≤ {tol:g}); the summary shows "
                                "fix.json's count. The fix may define 'within' by its interval.")
            summary[f"typical_ci_half_width_{side}"] = _half_width(rows, f"ci_low_{side}", f"ci_high_{side}")
            summary[f"median_n_{side}"] = _median_int(rows, f"n_{side}")
        diffs = _settings_differences(before, after)
        if diffs:
            warnings.append("The two runs differ in " + ", ".join(diffs) + "; a before/after difference may come "
                            "from these settings and not only from the edit. Compare runs made with the same settings.")
        unclear_src = [(r["profession"], r.get(f"n_unclear_{s}"), r.get(f"n_{s}")) for r in rows for s in ("before", "after")]
    agreements = [_f(p.get("agreement")) for p in runs[next(iter(runs))][1]["professions"]]
    agreements = [x for x in agreements if x is not None]
    summary["classifier_oracle_agreement"] = round(statistics.fmean(agreements), 4) if agreements else None
    summary["n_professions"] = len(rows)
    summary["prompt_columns"] = prompt_columns(rows)
    summary["verdicts"] = _verdicts(rows, sides)
    summary["conclusion"] = _conclusion(kind, summary, rows)

    high_unclear = sorted({name for name, u, n in unclear_src
                           if _f(u) is not None and _f(n) and _f(u) / _f(n) > UNCLEAR_WARN_SHARE})
    if high_unclear:
        warnings.append(f"More than {UNCLEAR_WARN_SHARE:.0%} of the images were unclear (no person found or low "
                        "classifier confidence) for: " + ", ".join(high_unclear) + ". Their shares rest on fewer "
                        "images and may be biased by what the classifier abstains on; look at the sample images.")

    # samples (before/after at the same seeds), thumbnails, and charts
    assets: dict[str, Any] = {"thumbs": {}, "side": [], "share_chart": None, "search_charts": {}}
    by_name = {side: {p["profession"]: p for p in d["professions"]} for side, (_, d) in runs.items()}
    for i, row in enumerate(rows):
        if kind == "audit":
            src = by_name["audit"].get(row["profession"], {})
            picked = _pick_samples(list(src.get("samples") or []), None, SAMPLES_PER_SIDE)
            folders = {"before": runs["audit"][0].parent}
        else:
            sb = list(by_name["before"].get(row["profession"], {}).get("samples") or [])
            sa = list(by_name["after"].get(row["profession"], {}).get("samples") or [])
            picked = _pick_samples(sb, sa, SAMPLES_PER_SIDE)
            folders = {"before": runs["before"][0].parent, "after": runs["after"][0].parent}
        row["samples"] = picked
        assets["thumbs"][i] = [{side: images.get(folders[side], s[side]["image"]) if s.get(side) else None
                                for side in folders} for s in picked]

    side_effects = None
    if fix is not None and isinstance(fix.get("side_effects"), dict):
        se = fix["side_effects"]
        side_effects = {k: v for k, v in se.items() if k != "prompts"}
        side_effects["prompts"] = []
        for p in se.get("prompts") or []:
            entry = {k: v for k, v in p.items() if k != "samples"}
            entry["samples"] = list(p.get("samples") or [])[:SAMPLES_PER_SIDE]
            side_effects["prompts"].append(entry)
            assets["side"].append([{side: images.get(sources["fix"].parent, s.get(side)) for side in ("before", "after")}
                                   for s in entry["samples"]])

    if images.missing:
        shown = ", ".join(images.missing[:3]) + (" …" if len(images.missing) > 3 else "")
        warnings.append(f"{len(images.missing)} sample image(s) could not be read and are shown as empty boxes "
                        f"({shown}). Copy the run folder with its images/ (and side/) folders.")

    method: dict[str, Any] = {"runs": {side: _method(d) for side, (_, d) in runs.items()}}
    if fix is not None:
        skip = {"kind", "professions", "side_effects", "before", "after"}
        method["fix"] = {k: v for k, v in fix.items()
                         if k not in skip and not k.startswith(("mean_delta", "within_tolerance"))}

    report = {
        "kind": kind,
        "report_version": 1,
        "debias_version": __version__,
        "generated_at": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "sources": {k: str(Path(v).resolve()) for k, v in sources.items()},
        "summary": summary,
        "professions": rows,
        "side_effects": side_effects,
        "method": method,
        "warnings": warnings,
    }
    _add_charts(report, assets)
    return _clean(report), assets


def _clean(obj: Any) -> Any:
    """NaN/inf (which Python's json reads) become null, so report.json stays strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def _add_charts(report: dict, assets: dict) -> None:
    from debias import charts

    s, rows = report["summary"], report["professions"]
    labels = [r["profession"] for r in rows]
    planted = [_f(r.get("planted_share")) for r in rows] if s["is_mini"] or any(r.get("planted_share") is not None for r in rows) else None
    if report["kind"] == "audit":
        before = [(r["share_female"], r["ci_low"], r["ci_high"]) for r in rows]
        after = None
        names = ("share female", "")
    else:
        before = [(r["share_before"], r["ci_low_before"], r["ci_high_before"]) for r in rows]
        after = [(r["share_after"], r["ci_low_after"], r["ci_high_after"]) for r in rows]
        names = ("before", "after")
    if rows:
        assets["share_chart"] = charts.share_chart(labels, before, after, s["target"], s["tolerance"], planted,
                                                   before_label=names[0], after_label=names[1])
    if report["kind"] != "fix":
        return
    for i, r in enumerate(rows):
        pts = r.get("search") or []
        # relative λ is comparable across models; use it when the search and the choice record it
        relative = _f(r.get("lambda_relative")) is not None or any(_f(p.get("lambda_relative")) for p in pts)
        relative = relative and all(_f(p.get("lambda_relative")) for p in pts if _f(p.get("lambda")))
        xkey = "lambda_relative" if relative else "lambda"
        points = [{"x": _f(p.get(xkey)), "n_female": p.get("n_female"), "n_male": p.get("n_male")} for p in pts]
        # the search runs on the tuning prompts, so its unedited share is the tuning one where recorded
        unedited = _f(r.get("tuning_share_before"))
        unedited = _f(r.get("share_before")) if unedited is None else unedited
        fitted = (r.get("search_share"), r.get("search_ci_low"), r.get("search_ci_high"))
        uri = charts.search_chart(r["profession"], points, _f(r.get(xkey)), r["target"], s["tolerance"],
                                  unedited, x_label="λ (relative)" if relative else "λ (absolute)", fitted=fitted)
        if uri:
            assets["search_charts"][i] = uri


# --------------------------------------------------------------------------- rendering


def _fmt(value: Any, kind: str = "f2") -> str:
    """How a number is shown; the exact value sits in data-value beside it."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    v = float(value)
    if kind == "int":
        return f"{int(round(v))}"
    if kind == "p":
        return f"{v:.1e}" if v < 1e-3 and v != 0 else f"{v:.3f}"
    if kind == "g3":
        return f"{v:.3g}"
    if kind == "f1":
        return f"{v:.1f}"
    if kind == "raw":
        return str(value) if isinstance(value, int) else f"{v:.6g}"
    if kind == "f3":
        return f"{v:.3f}"
    if kind == "pct":
        return f"{v:.0%}"
    return f"{v:.2f}"


def _data_value(value: Any) -> str:
    return json.dumps(value)


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested settings as ("generation.steps", 10) pairs, lists kept whole, for the method table."""
    if isinstance(obj, dict) and obj:
        out = []
        for k, v in obj.items():
            out.extend(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return [(prefix, obj)]


def _method_table(method_runs: dict, prefix: str = "method.runs") -> list[dict]:
    """Rows (setting, value per run), in first-seen order, marking settings that differ between runs."""
    cols = list(method_runs)
    hidden = ("templates", "templates_source")
    flat = {c: dict(_flatten({k: v for k, v in method_runs[c].items() if k not in hidden})) for c in cols}
    keys = list(dict.fromkeys(k for c in cols for k in flat[c]))
    volatile = ("started_at", "finished_at", "wall_seconds", "images_generated", "images_reused", "edit", "model.fingerprint")
    rows = []
    for key in keys:
        values = [flat[c].get(key) for c in cols]
        differs = len(cols) > 1 and any(v != values[0] for v in values) and not key.startswith(volatile)
        rows.append({"key": key, "cells": [{"col": c, "value": v, "data_key": f"{prefix}.{c}.{key}"}
                                           for c, v in zip(cols, values)], "differs": differs})
    return rows


def render_html(report: dict, assets: dict) -> str:
    """Fill the Jinja2 template (autoescape on: every string from a run file is text, never markup)."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = _fmt
    env.filters["dv"] = _data_value
    env.globals["isnum"] = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    template = env.get_template("report.html.j2")
    has_planted = report["summary"]["is_mini"] or any(
        row.get("planted_share") is not None for row in report["professions"])
    fix_table = _method_table({"fix": report["method"]["fix"]}, "method") if "fix" in report["method"] else []
    # settings the fix shares with the measurements are shown once, in the measurement table
    shared = dict(_flatten(report["method"]["runs"].get("before", {})))
    fix_table = [row for row in fix_table if row["key"] not in shared or shared[row["key"]] != row["cells"][0]["value"]]
    return template.render(r=report, a=assets, method_table=_method_table(report["method"]["runs"]), fix_table=fix_table,
                           status_text=STATUS_TEXT, has_planted=has_planted)


def _default_out(kind: str, run_dirs: Sequence[str | Path]) -> Path:
    first = Path(run_dirs[0])
    folder = first.parent if first.is_file() else first
    if kind == "compare":  # keep each audit's own report.html; the comparison lives with the "after" run
        last = Path(run_dirs[-1])
        return (last.parent if last.is_file() else last) / "compare_report.html"
    return folder / "report.html"


def twin_paths(out: Path) -> tuple[Path, Path]:
    """The JSON and CSV twins beside the HTML (never over a run's own audit.json / fix.json)."""
    stem = out.stem if out.suffix else out.name
    if stem in ("audit", "fix"):
        stem += ".report"
    return out.with_name(stem + ".json"), out.with_name(stem + ".csv")


def _csv_text(rows: list[dict]) -> str:
    """One row per profession with the scalar columns of report.json (same names)."""
    keys = list(dict.fromkeys(k for r in rows for k, v in r.items() if not isinstance(v, (list, dict))))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})
    return buf.getvalue()


def render_report(run_dirs: list[Path], out: Path | None = None) -> Path:
    """Render the HTML report for an audit, a fix, or two audits (before, after); return the HTML path.

    Writes, atomically, ``out`` (default ``RUN_DIR/report.html``; for two audits
    ``AFTER_DIR/compare_report.html``) and its twins ``report.json`` / ``report.csv`` beside it.
    """
    run_dirs = [Path(d) for d in run_dirs]
    report, assets = build_report(run_dirs)
    out = Path(out) if out is not None else _default_out(report["kind"], run_dirs)
    if out.is_dir():
        out = out / "report.html"
    json_path, csv_path = twin_paths(out)
    report["twins"] = {"json": json_path.name, "csv": csv_path.name}
    # sources relative to the report, so a copied folder still names its inputs correctly
    report["sources"] = {k: os.path.relpath(v, out.resolve().parent) for k, v in report["sources"].items()}
    html = render_html(report, assets)
    try:
        atomic_write_json(json_path, report)
        atomic_write_text(csv_path, _csv_text(report["professions"]))
        atomic_write_text(out, html)
    except OSError as err:
        raise InputError(f"{err.filename or out}: cannot write the report ({err.strerror}); "
                         "choose a writable place with --out.") from None
    return out
