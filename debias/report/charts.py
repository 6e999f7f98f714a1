"""Charts for the HTML report, drawn with matplotlib (Agg) and returned as inline ``data:`` URIs.

The report must open offline from one file, so every chart is a PNG encoded into the page. The
functions take plain numbers (no run folders, no JSON), which keeps them easy to test and reuse.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from debias.stats.binary import wilson_interval  # noqa: E402

BEFORE_COLOR = "#8a8f98"
AFTER_COLOR = "#1f5fbf"
PLANTED_COLOR = "#d9822b"
BAND_COLOR = "#2e9d5b"

_STYLE = {
    "font.size": 8,
    "axes.titlesize": 8.5,
    "axes.labelsize": 8,
    "xtick.labelsize": 7.5,
    "ytick.labelsize": 7.5,
    "legend.fontsize": 7.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.hashsalt": "debias",
}


def figure_to_data_uri(fig: Figure, dpi: int = 150) -> str:
    """Encode a figure as a PNG data URI and close it (figures left open leak memory in long runs)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _num(x) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def share_chart(
    labels: Sequence[str],
    before: Sequence[tuple[float | None, float | None, float | None]],
    after: Sequence[tuple[float | None, float | None, float | None]] | None,
    target: float,
    tolerance: float,
    planted: Sequence[float | None] | None = None,
    before_label: str = "before",
    after_label: str = "after",
) -> str:
    """Share perceived female with its 95% interval per profession, before (grey) and after (blue).

    ``before`` / ``after`` hold ``(share, ci_low, ci_high)`` per label, in display order (top first).
    The target is a line and the tolerance a shaded band, so "inside the band" reads at a glance.
    """
    n = len(labels)
    with plt.rc_context(_STYLE):
        height = 1.05 + 0.24 * max(n, 1)
        fig, ax = plt.subplots(figsize=(6.8, height))
        longest = max((len(_short(label)) for label in labels), default=4)
        fig.subplots_adjust(left=min(0.42, 0.04 + 0.0105 * longest), right=0.97,
                            bottom=0.48 / height, top=1 - 0.42 / height)
        ax.axvspan(target - tolerance, target + tolerance, color=BAND_COLOR, alpha=0.13, lw=0,
                   label=f"target {target:g} ± {tolerance:g}")
        ax.axvline(target, color=BAND_COLOR, lw=1)
        ys = list(range(n))
        if after is None:  # one run: a single, filled series
            series = [(before, AFTER_COLOR, before_label, 0.0, "o", AFTER_COLOR)]
        else:
            series = [(before, BEFORE_COLOR, before_label, -0.17, "o", "white")]
        if after is not None:
            series.append((after, AFTER_COLOR, after_label, 0.17, "o", AFTER_COLOR))
        for values, color, name, dy, marker, face in series:
            xs, y2, lo, hi = [], [], [], []
            for y, (s, l, h) in zip(ys, values):
                s, l, h = _num(s), _num(l), _num(h)
                if s is None:
                    continue
                xs.append(s)
                y2.append(y + dy)
                lo.append(s - l if l is not None else 0.0)
                hi.append(h - s if h is not None else 0.0)
            ax.errorbar(xs, y2, xerr=[lo, hi], fmt=marker, ms=4, color=color, mfc=face, mew=1.1,
                        elinewidth=1.1, capsize=0, label=f"{name} (95% interval)")
        for y, b, a in zip(ys, before, after or [(None, None, None)] * n):
            if _num(b[0]) is None and _num(a[0]) is None:
                ax.text(0.5, y, "no classified images", ha="center", va="center", fontsize=7, color=BEFORE_COLOR,
                        style="italic")
        if planted is not None and any(p is not None for p in planted):
            px = [(p, y) for y, p in zip(ys, planted) if p is not None]
            ax.scatter([p for p, _ in px], [y for _, y in px], marker="x", s=22, color=PLANTED_COLOR,
                       lw=1.2, zorder=5, label="planted share (synthetic world)")
        ax.set_yticks(ys, [_short(label) for label in labels])
        ax.set_ylim(n - 0.5, -0.5)
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of images perceived female")
        ax.grid(axis="x", color="#e5e7eb", lw=0.6)
        ax.set_axisbelow(True)
        ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False,
                  handletextpad=0.3, columnspacing=1.5)
        return figure_to_data_uri(fig)


def search_chart(
    title: str,
    points: Sequence[dict],
    chosen: float | None,
    target: float,
    tolerance: float,
    share_unedited: float | None = None,
    x_label: str = "λ (relative)",
    fitted: tuple[float | None, float | None, float | None] | None = None,
) -> str | None:
    """Share vs λ on a log axis for one profession's search, with the chosen λ_p marked.

    Each point is ``{"x": λ, "n_female": k, "n_male": m}``; its bar is the Wilson interval from the
    counts and its size grows with the number of images, so a reader sees which points carry weight.
    Returns None when there is nothing to draw (no point with a positive λ and a classified image).
    """
    pts = [p for p in points if _num(p.get("x")) and p["x"] > 0 and (p.get("n_female") or 0) + (p.get("n_male") or 0) > 0]
    if not pts:
        return None
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(3.1, 2.05))
        fig.subplots_adjust(left=0.17, right=0.97, bottom=0.21, top=0.88)  # fixed: layout engines cost ~0.3 s a chart
        ax.axhspan(target - tolerance, target + tolerance, color=BAND_COLOR, alpha=0.13, lw=0)
        ax.axhline(target, color=BAND_COLOR, lw=0.8)
        if share_unedited is not None:
            ax.axhline(share_unedited, color=BEFORE_COLOR, lw=0.8, ls=":", label="unedited")
        for p in pts:
            k, m = int(p.get("n_female") or 0), int(p.get("n_male") or 0)
            s = k / (k + m)
            lo, hi = wilson_interval(k, k + m)
            ax.errorbar([p["x"]], [s], yerr=[[s - lo], [hi - s]], fmt="o", color=AFTER_COLOR,
                        ms=2.5 + 1.2 * math.sqrt(k + m) / 4, elinewidth=0.8, alpha=0.85)
        if _num(chosen) and chosen > 0:
            ax.axvline(chosen, color=PLANTED_COLOR, lw=1.1, ls="--", label=rf"$\lambda_p$ = {chosen:.3g}")
            fs, flo, fhi = (_num(v) for v in (fitted or (None, None, None)))
            if fs is not None:
                err = [[fs - flo], [fhi - fs]] if flo is not None and fhi is not None else None
                ax.errorbar([chosen], [fs], yerr=err, fmt="D", ms=4, color=PLANTED_COLOR, elinewidth=1.2,
                            capsize=2, label=r"fit at $\lambda_p$", zorder=6)
        ax.set_xscale("log")
        xs = [p["x"] for p in pts] + ([chosen] if _num(chosen) and chosen > 0 else [])
        if min(xs) == max(xs):  # every round at one strength: a decade either side, not a zero-width axis
            ax.set_xlim(xs[0] / 10, xs[0] * 10)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(x_label)
        ax.set_ylabel("share female")
        ax.set_title(_short(title, 40), loc="left")
        ax.grid(color="#eef0f3", lw=0.5)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", frameon=False, fontsize=6.5)
        return figure_to_data_uri(fig, dpi=130)


def _short(text: str, limit: int = 28) -> str:
    """Shorten a label and escape ``$`` so matplotlib never reads user text as mathtext."""
    text = str(text)
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("$", r"\$")


CLASS_COLORS = ("#1f5fbf", "#d9822b", "#2e9d5b", "#b4418e", "#6b4fbb", "#2a8c8c", "#c2b02e", "#8a8f98")


def class_share_chart(
    labels: Sequence[str],
    classes: Sequence[str],
    sides: Sequence[tuple[str, Sequence[Sequence[float] | None]]],
    targets: Sequence[Sequence[float]],
) -> str:
    """Stacked bars of an attribute's class shares per profession, one bar per side (before above after).

    ``sides`` holds ``(name, shares per label)``; a profession with no classified image on a side (None) gets a
    note instead of a bar. The target distribution is marked by black ticks at its class boundaries, so a bar
    on target has its colour changes on the ticks.
    """
    n, m = len(labels), max(len(sides), 1)
    with plt.rc_context(_STYLE):
        height = 1.15 + 0.22 * max(n, 1) * (1 + 0.6 * (m - 1))
        fig, ax = plt.subplots(figsize=(6.8, height))
        longest = max((len(_short(label)) for label in labels), default=4)
        fig.subplots_adjust(left=min(0.42, 0.06 + 0.0105 * longest), right=0.97, bottom=0.5 / height,
                            top=1 - 0.45 / height)
        bar = 0.8 / m
        for j, (side, values) in enumerate(sides):
            for y, shares in enumerate(values):
                yy = y - 0.4 + bar * (j + 0.5)
                if m > 1:
                    ax.text(-0.01, yy, side[:1], ha="right", va="center", fontsize=6, color=BEFORE_COLOR)
                if shares is None:
                    ax.text(0.5, yy, "no classified images", ha="center", va="center", fontsize=6.5,
                            color=BEFORE_COLOR, style="italic")
                    continue
                left = 0.0
                for c, share in enumerate(shares):
                    ax.barh(yy, share, left=left, height=bar * 0.88, color=CLASS_COLORS[c % len(CLASS_COLORS)],
                            label=_short(classes[c]) if (j, y) == (0, 0) else None)
                    left += share
        for y, target in enumerate(targets):
            bounds = [sum(target[:c + 1]) for c in range(len(target) - 1)]
            ax.vlines(bounds, y - 0.45, y + 0.45, colors="black", lw=1.3, label="target" if y == 0 else None)
        ax.set_yticks(range(n), [_short(label) for label in labels])
        ax.set_ylim(n - 0.5, -0.5)
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of classified images" + (" (per profession: " + ", ".join(
            f"{s[:1]} = {_short(s, 12)}" for s, _ in sides) + ")" if m > 1 else ""))
        ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=min(len(classes) + 1, 6), frameon=False,
                  handletextpad=0.3, columnspacing=1.2)
        return figure_to_data_uri(fig)
