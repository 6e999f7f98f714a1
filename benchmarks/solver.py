"""Time and accuracy of the TIME edit: the reference per-layer algorithm against one shared solve.

Shapes are those of Stable Diffusion 1.4: 16 cross-attention layers (output widths 320×5, 640×5,
1280×6), each with ``to_k`` and ``to_v`` (32 matrices), conditioning width d = 768, and 4 prompts
× 77 tokens of context rows. Weights and rows are random (seeded).

* reference: TIME's algorithm written from its formula: for every layer, sum outer products
  ``W c*_i c_iᵀ`` and ``c_i c_iᵀ`` prompt by prompt, then ``mat1 @ torch.inverse(mat2)`` in float32;
* debias: ``M = edit_matrix(C, C*, λ)`` (one float64 ``torch.linalg.solve``), then ``W @ M`` per layer;
* truth: the per-layer closed form in float64 (``torch.linalg.solve``), used for both errors.

Run:  ``python benchmarks/solver.py [--threads N] [--lam 0.1] [--seed 0]``
"""

from __future__ import annotations

import argparse
import time

import torch

from debias.editing import edit_matrix
from debias.core.threads import set_threads

OUT_WIDTHS = [320] * 5 + [640] * 5 + [1280] * 6  # SD 1.4's 16 cross-attention layers
D = 768
PROMPTS, TOKENS = 4, 77


def make_problem(seed: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    weights = []
    for width in OUT_WIDTHS:
        for _ in ("to_k", "to_v"):
            weights.append(torch.randn(width, D, generator=g) / D**0.5)
    C = torch.randn(PROMPTS * TOKENS, D, generator=g)
    C_star = C + 0.3 * torch.randn(PROMPTS * TOKENS, D, generator=g)
    return weights, C, C_star


def reference_time(weights: list[torch.Tensor], C: torch.Tensor, C_star: torch.Tensor, lam: float) -> list[torch.Tensor]:
    """Per layer: outer-product sums prompt by prompt, then a float32 ``torch.inverse``."""
    out = []
    for W in weights:
        mat1 = lam * W.clone()
        mat2 = lam * torch.eye(D)
        for p in range(PROMPTS):
            context = C[p * TOKENS:(p + 1) * TOKENS]                # [77, d]
            values = C_star[p * TOKENS:(p + 1) * TOKENS] @ W.T      # W c*_i, [77, out]
            # Σ_i (W c*_i) c_iᵀ and Σ_i c_i c_iᵀ as batched outer products, summed over tokens
            mat1 += (values[:, :, None] @ context[:, None, :]).sum(dim=0)
            mat2 += (context[:, :, None] @ context[:, None, :]).sum(dim=0)
        out.append(mat1 @ torch.inverse(mat2))
    return out


def shared_solve(weights: list[torch.Tensor], C: torch.Tensor, C_star: torch.Tensor, lam: float) -> list[torch.Tensor]:
    """One float64 solve for M, then W @ M for every layer (in the weights' float32)."""
    M = edit_matrix(C, C_star, lam).to(torch.float32)
    return [W @ M for W in weights]


def truth(weights: list[torch.Tensor], C: torch.Tensor, C_star: torch.Tensor, lam: float) -> list[torch.Tensor]:
    C64, S64 = C.double(), C_star.double()
    den = lam * torch.eye(D, dtype=torch.float64) + C64.T @ C64
    out = []
    for W in weights:
        W64 = W.double()
        num = lam * W64 + (S64 @ W64.T).T @ C64
        out.append(torch.linalg.solve(den, num.T).T)  # num @ den⁻¹ (den is symmetric)
    return out


def relative_error(result: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    num = sum(float((r.double() - t).pow(2).sum()) for r, t in zip(result, reference))
    den = sum(float(t.pow(2).sum()) for t in reference)
    return (num / den) ** 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: DEBIAS_NUM_THREADS or all cores)")
    parser.add_argument("--lam", type=float, default=0.1, help="λ (TIME's default is 0.1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    threads = set_threads(args.threads)

    weights, C, C_star = make_problem(args.seed)
    print(f"SD 1.4 shapes: {len(weights)} K/V matrices (out widths {sorted(set(OUT_WIDTHS))}), d={D}, "
          f"{PROMPTS}x{TOKENS} context rows, lambda={args.lam}, torch {torch.__version__}, {threads} thread(s)")

    # load the linear-algebra libraries before timing either method
    torch.inverse(torch.eye(4) * 2)
    torch.linalg.solve(torch.eye(4, dtype=torch.float64) * 2, torch.ones(4, 1, dtype=torch.float64))

    start, cpu = time.perf_counter(), time.process_time()
    ref = reference_time(weights, C, C_star, args.lam)
    t_ref, c_ref = time.perf_counter() - start, time.process_time() - cpu

    start, cpu = time.perf_counter(), time.process_time()
    ours = shared_solve(weights, C, C_star, args.lam)
    t_ours, c_ours = time.perf_counter() - start, time.process_time() - cpu

    exact = truth(weights, C, C_star, args.lam)
    moved = relative_error(weights, exact)
    e_ref, e_ours = relative_error(ref, exact), relative_error(ours, exact)

    print(f"{'method':<44}{'wall s':>10}{'CPU s':>10}{'rel. error vs float64':>24}")
    print(f"{'reference (per-layer sums, fp32 inverse)':<44}{t_ref:>10.3f}{c_ref:>10.3f}{e_ref:>24.2e}")
    print(f"{'debias (one fp64 solve, W @ M)':<44}{t_ours:>10.3f}{c_ours:>10.3f}{e_ours:>24.2e}")
    print(f"speed-up: {t_ref / t_ours:.1f}x wall, {c_ref / c_ours:.1f}x CPU   accuracy gain: "
          f"{e_ref / max(e_ours, 1e-300):.0f}x   (size of the edit itself: {moved:.2e})")


if __name__ == "__main__":
    main()
