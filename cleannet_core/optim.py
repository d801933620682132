"""The one full-batch L-BFGS loop the small convex fits share (calibrators, the noise model's temperature)."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def lbfgs(params: Sequence[torch.Tensor], loss_fn: Callable[[], torch.Tensor], *, lr: float = 1.0,
          max_iter: int = 500, tolerance_grad: float = 1e-10, tolerance_change: float = 1e-14) -> float:
    """Minimise loss_fn() over `params` (leaf tensors with requires_grad) in place, strong-Wolfe line search;
    returns the final loss."""
    opt = torch.optim.LBFGS(list(params), lr=lr, max_iter=max_iter, tolerance_grad=tolerance_grad,
                            tolerance_change=tolerance_change, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(loss_fn())
