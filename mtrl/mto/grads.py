"""Per-task losses and gradients, and writing a combiner's direction back into ``.grad``.

A loss is given as ``loss_rows(params, inputs) -> [N]``: one loss per batch row, computed with
``torch.func.functional_call`` from a dict of parameters, so the same function serves three paths:

- loss space (``Mean``, FAMO, ...): one backward of ``sum_k w_k L_k``;
- gradient space, stratified batch (rows grouped by task, ``[K, m]``): ``vmap(grad(mean of one task's rows))`` over
  the task axis, about the cost of one backward, since each task's loss only touches its own rows;
- gradient space, uniform batch (unequal rows per task): K ``autograd.grad`` calls on one shared forward.

With a uniform (not stratified) batch the per-task losses are the means over each task's rows, as mtrl's MTO
agents compute them; the unitary combiners (``mean``, ``sum``: ``row_weighted``) then weight the rows instead, so that
``mean`` is the plain batch mean, as mtrl's unitary baseline.

Only the **shared** parameters go through the combiner; task-specific parameters (multi-head output heads) get
``mean_k grad L_k``, which is their own task's gradient at the ``mean`` combiner's scale.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.func import grad, vmap

from mtrl.mto.base import Combiner, Weighting

LossRows = Callable[[dict[str, Tensor], Any], Tensor]


def task_counts(task: Tensor, num_tasks: int, dtype: torch.dtype) -> Tensor:
    """Rows per task ``[K]`` as ``dtype``. Not ``torch.bincount``, which syncs with the host on a GPU (it reads the
    largest index first). Counted in float32 at least (sums of ones exact up to 2^24 rows), then converted."""
    count = torch.float64 if dtype == torch.float64 else torch.float32
    ones = torch.ones_like(task, dtype=count)
    return torch.zeros(num_tasks, dtype=count, device=task.device).index_add_(0, task, ones).to(dtype)


def task_mean(rows: Tensor, task: Tensor, num_tasks: int) -> Tensor:
    """Mean of the per-row values ``rows [N]`` within each task: ``[K]`` (0 for a task without rows)."""
    sums = torch.zeros(num_tasks, dtype=rows.dtype, device=rows.device).index_add_(0, task, rows)
    return sums / task_counts(task, num_tasks, rows.dtype).clamp(min=1)


def _chunk(x: Any, k: int) -> Any:
    if isinstance(x, Tensor):
        return x.reshape(k, x.shape[0] // k, *x.shape[1:])
    return type(x)(_chunk(v, k) for v in x)


def per_task_grads(
    loss_rows: LossRows, params: dict[str, Tensor], inputs: Any, task: Tensor, num_tasks: int, stratified: bool
) -> tuple[dict[str, Tensor], Tensor]:
    """Per-task gradients ``{name: [K, *shape]}`` and per-task losses ``[K]``.

    :param stratified: rows are task-major with equal counts (row ``i`` belongs to task ``i // (N / K)``); enables
        the single vmapped pass.
    """
    if stratified:
        detached = {n: p.detach() for n, p in params.items()}

        def one_task(p: dict[str, Tensor], chunk: Any) -> tuple[Tensor, Tensor]:
            loss = loss_rows(p, chunk).mean()
            return loss, loss.detach()

        grads, losses = vmap(grad(one_task, has_aux=True), in_dims=(None, 0), randomness="different")(
            detached, _chunk(inputs, num_tasks)
        )
        return grads, losses
    losses = task_mean(loss_rows(params, inputs), task, num_tasks)
    names, plist = list(params), list(params.values())
    rows: list[list[Tensor]] = []
    for k in range(num_tasks):
        row = torch.autograd.grad(losses[k], plist, retain_graph=k < num_tasks - 1, allow_unused=True)
        rows.append([g if g is not None else torch.zeros_like(p) for g, p in zip(row, plist)])
    grads = {n: torch.stack([row[i] for row in rows]) for i, n in enumerate(names)}
    return grads, losses.detach()


def combine_backward(
    loss_rows: LossRows,
    params: dict[str, Tensor],
    inputs: Any,
    task: Tensor,
    combiner: Combiner,
    task_specific: set[str] = frozenset(),  # type: ignore[assignment]
    stratified: bool = True,
    rows: Tensor | None = None,
) -> Tensor:
    """Fill ``p.grad`` of every parameter with the combined direction; return the per-task losses ``[K]``.

    :param rows: ``loss_rows(params, inputs)`` when the caller already has it (with its autograd graph); only the
        loss-space path can use it, gradient-space combiners recompute the loss per task under ``vmap``.
    """
    k = combiner.num_tasks
    plist = list(params.values())
    if not combiner.requires_grads:
        rows = loss_rows(params, inputs) if rows is None else rows  # [N]
        losses = task_mean(rows, task, k)  # [K]
        weighting = combiner(None, losses.detach())
        assert isinstance(weighting, Weighting)
        weights = weighting.weights.detach()
        if not stratified and getattr(combiner, "row_weighted", False):
            # unequal rows per task (uniform replay): task k's weight times K n_k / N, so that mean is the batch
            # mean over rows (mtrl's unitary loss), not the mean of per-task means
            weights = weights * task_counts(task, k, weights.dtype) * (k / task.numel())
        total = (weights * losses).sum()
        for p, g in zip(plist, torch.autograd.grad(total, plist, allow_unused=True)):
            p.grad = g if g is not None else torch.zeros_like(p)
        return losses.detach()

    grads, losses = per_task_grads(loss_rows, params, inputs, task, k, stratified)
    shared = [n for n in params if n not in task_specific]
    blocks = [grads[n].reshape(k, -1) for n in shared]  # [K, P_n] views
    if combiner.accepts_blocks:  # no copy of G into one [K, P] matrix
        parts = combiner(blocks, losses)
        assert isinstance(parts, list)
        for n, part in zip(shared, parts):
            params[n].grad = part.view_as(params[n])
    else:
        direction = combiner(torch.cat(blocks, dim=1), losses)  # [K, P] in, [P] out
        assert isinstance(direction, Tensor)
        for n, part in zip(shared, direction.split([params[n].numel() for n in shared])):
            params[n].grad = part.view_as(params[n]).clone()
    for n in task_specific:
        params[n].grad = grads[n].mean(0)
    return losses
