"""Per-task losses and gradients, and writing a combiner's direction back into ``.grad``, for a group of seeds.

Parameters carry a leading seed axis ``S`` (:mod:`mtrl.nets`), and so do the batches: a loss is given as
``loss_rows(params, inputs) -> [S, N]``, one loss per seed and batch row, computed with
``torch.func.functional_call`` from a dict of parameters. The seeds never mix: seed ``s``'s slice of every gradient
comes from seed ``s``'s losses only, and each seed has its own combiner instance. The same function serves three
paths:

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

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.func import grad, vmap

from mtrl.mto.base import Combiner, Weighting

LossRows = Callable[[dict[str, Tensor], Any], Tensor]
"""``loss_rows(params, inputs) -> [S, N]``: one loss per seed and batch row."""


def task_counts(task: Tensor, num_tasks: int, dtype: torch.dtype) -> Tensor:
    """Rows per task ``[S, K]`` of task ids ``[S, N]`` (``[K]`` of ``[N]``) as ``dtype``. Not ``torch.bincount``,
    which syncs with the host on a GPU (it reads the largest index first). Counted in float32 at least (sums of ones
    exact up to 2^24 rows), then converted."""
    count = torch.float64 if dtype == torch.float64 else torch.float32
    return _per_task_sum(torch.ones_like(task, dtype=count), task, num_tasks).to(dtype)


def _per_task_sum(rows: Tensor, task: Tensor, num_tasks: int) -> Tensor:
    """Sum of ``rows`` within each (seed and) task: ``[S, K]`` for ``[S, N]`` inputs, ``[K]`` for ``[N]``."""
    flat = rows.dim() == 1
    rows, task = (rows[None], task[None]) if flat else (rows, task)
    seeds = rows.shape[0]
    index = task + num_tasks * torch.arange(seeds, device=task.device)[:, None]  # [S, N] into S * K cells
    sums = torch.zeros(seeds * num_tasks, dtype=rows.dtype, device=rows.device)
    sums = sums.index_add_(0, index.reshape(-1), rows.reshape(-1)).view(seeds, num_tasks)
    return sums[0] if flat else sums


def task_mean(rows: Tensor, task: Tensor, num_tasks: int) -> Tensor:
    """Mean of the per-row values ``rows [S, N]`` within each seed and task: ``[S, K]`` (0 for a task without
    rows); flat ``[N]`` rows give ``[K]``."""
    return _per_task_sum(rows, task, num_tasks) / task_counts(task, num_tasks, rows.dtype).clamp(min=1)


def _chunk(x: Any, k: int) -> Any:
    """Split the row axis (axis 1, after the seed axis) into ``[k, N / k]``."""
    if x is None:
        return None
    if isinstance(x, Tensor):
        return x.reshape(x.shape[0], k, x.shape[1] // k, *x.shape[2:])
    return type(x)(_chunk(v, k) for v in x)


def per_task_grads(
    loss_rows: LossRows, params: dict[str, Tensor], inputs: Any, task: Tensor, num_tasks: int, stratified: bool
) -> tuple[dict[str, Tensor], Tensor]:
    """Per-seed, per-task gradients ``{name: [S, K, *shape]}`` and losses ``[S, K]``.

    :param stratified: rows are task-major with equal counts (row ``i`` belongs to task ``i // (N / K)`` in every
        seed); enables the single vmapped pass.
    """
    if stratified:
        detached = {n: p.detach() for n, p in params.items()}

        def one_task(p: dict[str, Tensor], chunk: Any) -> tuple[Tensor, Tensor]:
            loss = loss_rows(p, chunk).mean(dim=-1)  # [S]: the seeds' parameters are disjoint slices
            return loss.sum(), loss.detach()

        grads, losses = vmap(grad(one_task, has_aux=True), in_dims=(None, 1), out_dims=1, randomness="different")(
            detached, _chunk(inputs, num_tasks)
        )
        return grads, losses
    losses = task_mean(loss_rows(params, inputs), task, num_tasks)  # [S, K]
    names, plist = list(params), list(params.values())
    rows: list[list[Tensor]] = []
    for k in range(num_tasks):
        row = torch.autograd.grad(losses[:, k].sum(), plist, retain_graph=k < num_tasks - 1, allow_unused=True)
        rows.append([g if g is not None else torch.zeros_like(p) for g, p in zip(row, plist)])
    grads = {n: torch.stack([row[i] for row in rows], dim=1) for i, n in enumerate(names)}
    return grads, losses.detach()


def combine_backward(
    loss_rows: LossRows,
    params: dict[str, Tensor],
    inputs: Any,
    task: Tensor,
    combiners: Sequence[Combiner],
    task_specific: set[str] = frozenset(),  # type: ignore[assignment]
    stratified: bool = True,
    rows: Tensor | None = None,
) -> Tensor:
    """Fill ``p.grad`` of every parameter with each seed's combined direction; return the losses ``[S, K]``.

    :param combiners: one per seed (axis 0 of the parameters), all of one kind.
    :param rows: ``loss_rows(params, inputs)`` when the caller already has it (with its autograd graph); only the
        loss-space path can use it, gradient-space combiners recompute the loss per task under ``vmap``.
    """
    k = combiners[0].num_tasks
    plist = list(params.values())
    if not combiners[0].requires_grads:
        rows = loss_rows(params, inputs) if rows is None else rows  # [S, N]
        losses = task_mean(rows, task, k)  # [S, K]
        per_seed = []
        for s, combiner in enumerate(combiners):
            weighting = combiner(None, losses[s].detach())
            assert isinstance(weighting, Weighting)
            per_seed.append(weighting.weights.detach())
        weights = torch.stack(per_seed)  # [S, K]
        if not stratified and getattr(combiners[0], "row_weighted", False):
            # unequal rows per task (uniform replay): task k's weight times K n_k / N, so that mean is the batch
            # mean over rows (mtrl's unitary loss), not the mean of per-task means
            weights = weights * task_counts(task, k, weights.dtype) * (k / task.shape[-1])
        total = (weights * losses).sum()  # seeds are disjoint: one backward gives each seed its own gradient
        for p, g in zip(plist, torch.autograd.grad(total, plist, allow_unused=True)):
            p.grad = g if g is not None else torch.zeros_like(p)
        return losses.detach()

    grads, losses = per_task_grads(loss_rows, params, inputs, task, k, stratified)  # {n: [S, K, ...]}, [S, K]
    shared = [n for n in params if n not in task_specific]
    out = {n: torch.empty_like(params[n]) for n in shared}  # each seed's slice written below
    # no shared parameter (a per-task temperature): every parameter takes its own task's gradient, nothing to combine
    for s, combiner in enumerate(combiners if shared else []):  # the small K x K solves, one seed at a time
        blocks = [grads[n][s].reshape(k, -1) for n in shared]  # [K, P_n] views
        if combiner.accepts_blocks:  # no copy of G into one [K, P] matrix
            result = combiner(blocks, losses[s])
            assert isinstance(result, list)
            parts = result
        else:
            direction = combiner(torch.cat(blocks, dim=1), losses[s])  # [K, P] in, [P] out
            assert isinstance(direction, Tensor)
            parts = list(direction.split([b.shape[1] for b in blocks]))
        for n, part in zip(shared, parts):
            out[n][s] = part.view_as(params[n][s])
    for n in shared:
        params[n].grad = out[n]
    for n in task_specific:
        params[n].grad = grads[n].mean(1)
    return losses
