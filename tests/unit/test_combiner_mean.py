"""mean: the gradient of the mean task loss (the baseline every combiner is measured against)."""

from __future__ import annotations

import torch
from combiner_helpers import F64, build, run


def test_mean_and_sum_are_gradients_of_mean_and_sum_loss() -> None:
    g = torch.Generator().manual_seed(0)
    k, n = 5, 7
    a = torch.randn(k, 3, n, generator=g, dtype=F64)
    b = torch.randn(k, 3, generator=g, dtype=F64)
    x = torch.randn(n, dtype=F64, requires_grad=True)
    losses = ((a @ x - b) ** 2).mean(1)  # [K]
    jac = torch.stack([torch.autograd.grad(losses[i], x, retain_graph=True)[0] for i in range(k)])
    (grad_mean,) = torch.autograd.grad(losses.mean(), x, retain_graph=True)
    (grad_sum,) = torch.autograd.grad(losses.sum(), x)
    torch.testing.assert_close(run(build("mean", k), jac, losses.detach()), grad_mean)
    torch.testing.assert_close(run(build("sum", k), jac, losses.detach()), grad_sum)
    torch.testing.assert_close(run(build("fixed", k), jac, losses.detach()), grad_mean)
