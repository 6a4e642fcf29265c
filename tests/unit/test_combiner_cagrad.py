"""cagrad: exact dual (primal optimality against SLSQP) and the MTRL 20-step solver (line-by-line transcription)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from combiner_helpers import F64, build, cos, degenerate, normal, run
from torch import Tensor

from mtrl.mto.cagrad import cagrad_sgd20_weights


def slsqp_cagrad_dual(gram: np.ndarray, c: float) -> float:
    minimize = pytest.importorskip("scipy.optimize", reason="scipy (test extra) is not installed").minimize

    k = gram.shape[0]
    b = gram.mean(1)
    phi = c * math.sqrt(max(gram.mean(), 0.0))
    best = math.inf
    for x0 in [np.ones(k) / k, *np.eye(k)[:2]]:
        res = minimize(
            lambda w: w @ b + phi * math.sqrt(max(w @ gram @ w, 0.0)),
            x0,
            bounds=[(0, 1)] * k,
            constraints={"type": "eq", "fun": lambda w: w.sum() - 1},
            method="SLSQP",
            options={"ftol": 1e-15, "maxiter": 300},
        )
        best = min(best, float(res.fun))
    return best


def test_cagrad_c0_is_mean() -> None:
    for case, jac in degenerate(5).items():
        torch.testing.assert_close(run(build("cagrad", 5, c=0.0), jac), jac.mean(0), rtol=1e-12, atol=1e-15, msg=case)


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("c", [0.2, 1.0, 3.0])
def test_cagrad_exact_is_primal_optimal(k: int, c: float) -> None:
    """Strong duality: d' = (1+c^2) d is in the ball and reaches the (SLSQP) dual value; holds on degenerate J."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for case, jac in {**degenerate(k, 8), "normal": normal(k, 8, seed=k)}.items():
            gram = jac @ jac.T
            scale = float(gram.diagonal().max())
            if scale == 0:
                continue
            d = run(build("cagrad", k, c=c), jac) * (1 + c * c)
            g0 = jac.mean(0)
            assert float((d - g0).norm()) <= c * float(g0.norm()) * (1 + 1e-9) + 1e-12, case
            primal = float((jac @ d).min())
            assert (slsqp_cagrad_dual(gram.numpy(), c) - primal) / scale < 1e-7, case


@pytest.mark.parametrize("c", [1.0, 2.0])
def test_cagrad_large_c_is_non_conflicting(c: float) -> None:
    for seed in range(4):
        jac = normal(6, 10, seed=seed, shift=0.0)
        d = run(build("cagrad", 6, c=c), jac)
        assert float((jac @ d).min()) >= -1e-10 * float((jac @ jac.T).diagonal().max())


def mtrl_cagrad_transcription(grads: Tensor, cagrad_c: float) -> Tensor:
    """Cranial-XIX/CAGrad mtrl/mtrl_files/cagrad.py::cagrad, line by line (float64, autograd + torch.optim.SGD)."""
    num_tasks = grads.shape[0]
    gg_mat = grads.mm(grads.t()).cpu()
    scale = (torch.diag(gg_mat) + 1e-4).sqrt().mean()
    gg_mat = gg_mat / scale.pow(2)
    gg_vec = gg_mat.mean(1, keepdims=True)
    gg = gg_vec.mean(0, keepdims=True)
    w = torch.zeros(num_tasks, 1, requires_grad=True, dtype=F64)
    w_opt = torch.optim.SGD([w], lr=50 if num_tasks == 50 else 25, momentum=0.5)
    c = (gg + 1e-4).sqrt() * cagrad_c
    w_best, obj_best = None, np.inf
    for i in range(21):
        w_opt.zero_grad()
        ww = torch.softmax(w, 0)
        obj = ww.t().mm(gg_vec) + c * (ww.t().mm(gg_mat).mm(ww) + 1e-4).sqrt()
        if obj.item() < obj_best:
            obj_best = obj.item()
            w_best = w.clone()
        if i < 20:
            obj.backward()
            w_opt.step()
    ww = torch.softmax(w_best, 0)
    gw_norm = (ww.t().mm(gg_mat).mm(ww) + 1e-4).sqrt()
    lmbda = c.view(-1) / (gw_norm + 1e-4)
    return ((1 / num_tasks + ww * lmbda).view(-1, 1) * grads).sum(0) / (1 + cagrad_c**2)


@pytest.mark.parametrize("k", [3, 10, 50])
def test_cagrad_sgd20_is_the_mtrl_solver(k: int) -> None:
    for seed in range(2):
        jac = normal(k, 60, seed=seed)
        expected = mtrl_cagrad_transcription(jac, 0.5).detach()
        torch.testing.assert_close(run(build("cagrad", k, c=0.5, solver="sgd20"), jac), expected, rtol=1e-9, atol=0)


def test_cagrad_sgd20_close_to_exact_at_k10() -> None:
    jac = normal(10, 200, seed=5)
    exact = run(build("cagrad", 10, c=0.5), jac)
    sgd = run(build("cagrad", 10, c=0.5, solver="sgd20"), jac)
    assert cos(exact, sgd) > 0.99


def test_cagrad_sgd20_weights_direct() -> None:
    gram = torch.eye(3, dtype=F64)
    alpha = cagrad_sgd20_weights(gram, 0.0)
    torch.testing.assert_close(alpha, torch.full((3,), 1 / 3, dtype=F64))
