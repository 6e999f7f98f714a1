"""The TIME solver, token alignment, and applying edits to tiny pipelines."""

from __future__ import annotations

import pytest
import torch

from debias.editing import align_tokens, edit_matrix, joint_edit_matrix, lambda_scale
from debias.errors import EditError


def _time_reference(W: torch.Tensor, C: torch.Tensor, C_star: torch.Tensor, lam: float) -> torch.Tensor:
    """TIME's per-layer closed form, written from the formula with outer-product sums (float64)."""
    W, C, C_star = W.double(), C.double(), C_star.double()
    d = C.shape[1]
    mat1 = lam * W.clone()
    mat2 = lam * torch.eye(d, dtype=torch.float64)
    for c, c_star in zip(C, C_star):
        mat1 += torch.outer(W @ c_star, c)
        mat2 += torch.outer(c, c)
    return mat1 @ torch.inverse(mat2)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("n", [30, 80])  # fewer rows than d (the usual case) and more
@pytest.mark.parametrize("rank_deficient", [False, True])
def test_edit_matrix_equals_time_closed_form(rank_deficient: bool, n: int) -> None:
    g = torch.Generator().manual_seed(0)
    d = 48
    if rank_deficient:
        # 30 rows spanning only 5 directions (like padding tokens that repeat), n < d as in practice
        basis = torch.randn(5, d, generator=g, dtype=torch.float64)
        C = torch.randn(n, 5, generator=g, dtype=torch.float64) @ basis
    else:
        C = torch.randn(n, d, generator=g, dtype=torch.float64)
    C_star = C + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    lam = 0.3
    M = edit_matrix(C, C_star, lam)
    assert M.shape == (d, d) and M.dtype == torch.float64
    for out_features in (16, 40):
        W = torch.randn(out_features, d, generator=g, dtype=torch.float64)
        ref = _time_reference(W, C, C_star, lam)
        assert _rel(W @ M, ref) <= 1e-5
        # and the edit really moved the weights
        assert _rel(ref, W) > 1e-2


def test_edit_matrix_returns_caller_dtype() -> None:
    C = torch.randn(8, 6)
    M = edit_matrix(C, C + 1, 1.0)
    assert M.dtype == torch.float32
    M16 = edit_matrix(C.half(), (C + 1).half(), 1.0)
    assert M16.dtype == torch.float16


def test_large_lambda_gives_identity() -> None:
    C = torch.randn(10, 12, dtype=torch.float64)
    C_star = torch.randn(10, 12, dtype=torch.float64)
    eye = torch.eye(12, dtype=torch.float64)
    errors = [float((edit_matrix(C, C_star, lam) - eye).abs().max()) for lam in (1e2, 1e4, 1e8)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-6


def test_identity_when_destination_equals_source() -> None:
    C = torch.randn(10, 12, dtype=torch.float64)
    assert torch.allclose(edit_matrix(C, C, 0.01), torch.eye(12, dtype=torch.float64), atol=1e-10)


def test_small_lambda_maps_source_onto_destination() -> None:
    # n <= d with independent rows: as λ → 0, M c_i → c*_i exactly
    C = torch.randn(5, 12, dtype=torch.float64)
    C_star = torch.randn(5, 12, dtype=torch.float64)
    M = edit_matrix(C, C_star, 1e-9)
    assert torch.allclose(C @ M.T, C_star, atol=1e-6)


def test_row_weight_equals_scaled_lambda() -> None:
    g = torch.Generator().manual_seed(1)
    C = torch.randn(20, 16, generator=g, dtype=torch.float64)
    C_star = torch.randn(20, 16, generator=g, dtype=torch.float64)
    lam, w = 2.0, 4.0
    weighted = edit_matrix(C, C_star, lam, weights=torch.full((20,), w))
    assert _rel(weighted, edit_matrix(C, C_star, lam / w)) <= 1e-10
    assert _rel(weighted, edit_matrix(C, C_star, lam)) > 1e-3


def test_joint_edit_matrix_matches_separate_lambdas() -> None:
    g = torch.Generator().manual_seed(2)
    d = 16
    C1, C2 = torch.randn(6, d, generator=g, dtype=torch.float64), torch.randn(9, d, generator=g, dtype=torch.float64)
    S1, S2 = C1 + torch.randn(6, d, generator=g, dtype=torch.float64), C2 + torch.randn(9, d, generator=g, dtype=torch.float64)
    lam1, lam2 = 0.5, 3.0
    P = torch.randn(4, d, generator=g, dtype=torch.float64)
    beta = 0.7
    M = joint_edit_matrix([(C1, S1, lam1), (C2, S2, lam2)], preserve=P, preserve_weight=beta)
    eye = torch.eye(d, dtype=torch.float64)
    num = eye + S1.T @ C1 / lam1 + S2.T @ C2 / lam2 + beta * P.T @ P
    den = eye + C1.T @ C1 / lam1 + C2.T @ C2 / lam2 + beta * P.T @ P
    assert _rel(M, num @ torch.inverse(den)) <= 1e-10
    # one edit without preserve rows is edit_matrix itself
    assert _rel(joint_edit_matrix([(C1, S1, lam1)]), edit_matrix(C1, S1, lam1)) <= 1e-10


def test_preserve_rows_stay_put() -> None:
    g = torch.Generator().manual_seed(3)
    C = torch.randn(4, 10, generator=g, dtype=torch.float64)
    C_star = torch.randn(4, 10, generator=g, dtype=torch.float64)
    P = torch.randn(3, 10, generator=g, dtype=torch.float64)
    loose = edit_matrix(C, C_star, 0.1)
    kept = edit_matrix(C, C_star, 0.1, preserve=P, preserve_weight=1e4)
    drift_loose = float((P @ loose.T - P).norm())
    drift_kept = float((P @ kept.T - P).norm())
    assert drift_kept < 1e-2 * drift_loose


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lam=0.0), "positive"),
        (dict(lam=-1.0), "positive"),
        (dict(lam=float("nan")), "positive"),
        (dict(lam=1.0, weights=[1.0, -1.0, 1.0]), "non-negative"),
        (dict(lam=1.0, weights=[1.0, 1.0]), "weights has 2"),
    ],
)
def test_edit_matrix_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    C = torch.randn(3, 4)
    with pytest.raises(EditError, match=message):
        edit_matrix(C, C + 1, **kwargs)


def test_edit_matrix_rejects_bad_rows() -> None:
    C = torch.randn(3, 4)
    with pytest.raises(EditError, match="width 5"):
        edit_matrix(C, torch.randn(3, 5), 1.0)
    with pytest.raises(EditError, match="3 rows but destinations has 2"):
        edit_matrix(C, torch.randn(2, 4), 1.0)
    bad = C.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(EditError, match="NaN or Inf"):
        edit_matrix(bad, C, 1.0)
    with pytest.raises(EditError, match=r"shape \[n, d\]"):
        edit_matrix(torch.randn(2, 3, 4), torch.randn(2, 3, 4), 1.0)
    with pytest.raises(EditError, match="preserve"):
        edit_matrix(C, C, 1.0, preserve=torch.randn(2, 7))


def test_lambda_scale_is_mean_squared_norm() -> None:
    C = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    assert lambda_scale(C) == pytest.approx((25.0 + 1.0) / 2)


# ---- token alignment ----------------------------------------------------------------------------

END = "<|endoftext|>"
START = "<|startoftext|>"


def test_align_inserted_attribute_word() -> None:
    src = [START, "a</w>", "nurse</w>", END, END, END]
    dst = [START, "a</w>", "male</w>", "nurse</w>", END, END]
    assert align_tokens(src, dst) == [0, 1, 3, 4, 5]


def test_align_changed_article_and_multi_token_word() -> None:
    src = [START, "an</w>", "atten", "dant</w>", END, END, END, END]
    dst = [START, "a</w>", "female</w>", "atten", "dant</w>", END, END, END]
    assert align_tokens(src, dst) == [0, 1, 3, 4, 5, 6, 7]


def test_align_in_template_and_sentencepiece_tokens() -> None:
    src = ["▁A", "▁photo", "▁of", "▁a", "▁nurse", "</s>", "<pad>", "<pad>"]
    dst = ["▁A", "▁photo", "▁of", "▁a", "▁male", "▁nurse", "</s>", "<pad>"]
    assert align_tokens(src, dst) == [0, 1, 2, 3, 5, 6, 7]


def test_align_rejects_destination_without_source_words() -> None:
    src = [START, "a</w>", "nurse</w>", END]
    dst = [START, "a</w>", "male</w>", "doctor</w>", END]
    with pytest.raises(EditError) as info:
        align_tokens(src, dst)
    text = str(info.value)
    assert "nurse</w>" in text and "doctor</w>" in text and "source tokens" in text
