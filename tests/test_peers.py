"""The UCE update of ``benchmarks/peers.py`` on tiny problems: closed form, value targets, ratio step."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "peers.py"
_spec = importlib.util.spec_from_file_location("bench_peers", _PATH)
peers = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = peers  # dataclasses look their module up while the file runs
_spec.loader.exec_module(peers)


def _problem(seed: int = 0, n: int = 12, m: int = 5, d: int = 8, out: int = 6):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, d, generator=g, dtype=torch.float64)
    C = torch.randn(n, d, generator=g, dtype=torch.float64)
    V = torch.randn(n, out, generator=g, dtype=torch.float64)
    P = torch.randn(m, d, generator=g, dtype=torch.float64)
    return W, C, V, P


def test_uce_update_is_the_least_squares_solution() -> None:
    W, C, V, P = _problem()
    lam, s_e, s_p = 0.5, 1.0, 0.1
    got = peers.uce_update(W, C, V, P, lam, s_e, s_p)
    # the same objective as one stacked least-squares problem in W′ᵀ
    A = torch.cat([s_e ** 0.5 * C, s_p ** 0.5 * P, lam ** 0.5 * torch.eye(W.shape[1], dtype=torch.float64)])
    B = torch.cat([s_e ** 0.5 * V, s_p ** 0.5 * P @ W.T, lam ** 0.5 * W.T])
    want = torch.linalg.lstsq(A, B).solution.T
    assert float((got - want).abs().max()) < 1e-10


def test_uce_update_matches_the_scripts_formula() -> None:
    W, C, V, P = _problem(1)
    lam, s_e, s_p = 0.5, 1.0, 0.1
    mat1 = lam * W + s_e * V.T @ C + s_p * (W @ P.T) @ P
    mat2 = lam * torch.eye(W.shape[1], dtype=torch.float64) + s_e * C.T @ C + s_p * P.T @ P
    assert float((peers.uce_update(W, C, V, P, lam, s_e, s_p) - mat1 @ torch.inverse(mat2)).abs().max()) < 1e-10


def test_targets_at_current_outputs_leave_the_weights_alone() -> None:
    W, C, _, P = _problem(2)
    unchanged = peers.uce_update(W, C, C @ W.T, P, 0.5)
    assert float((unchanged - W).abs().max()) < 1e-10


def test_value_targets_move_along_the_attribute_by_a_fraction_of_the_norm() -> None:
    W, C, _, _ = _problem(3)
    A_man, A_woman = C + 0.3, C - 0.3
    v, u = C @ W.T, A_man @ W.T
    got = peers.value_targets(W, C, [A_man, A_woman], [0.05, 0.0])
    assert float(((got - v) - 0.05 * v.norm() * u / u.norm()).abs().max()) < 1e-12
    assert float((got - v).norm() / v.norm()) == pytest.approx(0.05, abs=1e-12)


def test_ratio_step_pushes_away_from_the_overrepresented_attribute() -> None:
    weights, gap = peers.ratio_step([0.2, 0.8], [0.5, 0.5], 0.1, 0.05)  # (male, female): a nurse read 80% female
    assert gap == pytest.approx(0.3)
    assert weights == pytest.approx([0.03, -0.03])
    assert peers.ratio_step([0.48, 0.52], [0.5, 0.5], 0.1, 0.05) == ([0.0, 0.0], pytest.approx(0.02))


def test_a_positive_weight_moves_the_edited_rows_towards_the_attribute() -> None:
    W, C, _, P = _problem(4)
    A = torch.randn(C.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    before_u = A @ W.T
    direction = before_u / before_u.norm()
    W_new = peers.uce_update(W, C, peers.value_targets(W, C, [A], [0.1]), P, 0.5)
    moved = float(((C @ W_new.T - C @ W.T) * direction).sum())
    assert moved > 0.0


def test_last_word_rows_align_prompts_of_different_lengths() -> None:
    # "a photo of a nurse" (last word at 5) against a longer attribute prompt (last word at 6), 16 rows
    assert peers.last_word_rows(5, 6, 16) == slice(5, 15)
    assert peers.last_word_rows(6, 6, 16) == slice(6, 16)
    assert len(range(16)[peers.last_word_rows(5, 6, 16)]) == len(range(16)[peers.last_word_rows(6, 6, 16)])
