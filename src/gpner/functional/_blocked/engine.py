"""The autograd driver: cross-entropies and the divergence of one or two sources, block by block.

Forward walks the blocks once, keeping per (example, type) an online log-sum-exp of the
negatives and the divergence's running sum; it saves only its inputs and (B, C) / (N,)
statistics. Backward recomputes every block and hands its gradient to the sources.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import NamedTuple

import torch
from torch import Tensor

from ..cells import gp_kl_cell, gp_kl_cell_grad, gp_kl_cell_parts
from . import kernels
from .layout import BlockLayout, GoldCells
from .sources import DenseSource, FactorSource

NEG_INF = -math.inf


class Inputs(str, Enum):
    """What a source is given as (a ``str``, so it compares equal to its value)."""

    DENSE = "dense"  # one logits tensor per source
    FACTORS = "factors"  # (q, k, start bias, end bias) per source


class Job(NamedTuple):
    """What one call of :class:`SpanLosses` computes (everything but the tensors).

    Built with :meth:`cross_entropy`, :meth:`divergence` or :meth:`rdrop`, which name the three
    things the engine computes.
    """

    layout: BlockLayout
    kind: Inputs
    sources: int  # 1 or 2
    positives: GoldCells | None  # gold cells, shared by every source's cross-entropy
    ce: tuple[bool, bool]  # cross-entropy of source 0 / 1
    kl: bool  # the GlobalPointer divergence between sources 0 and 1

    @classmethod
    def cross_entropy(cls, layout: BlockLayout, kind: Inputs, positives: GoldCells) -> Job:
        """One source's cross-entropy (outputs ``(ce, -, -)``)."""
        return cls(layout, kind, sources=1, positives=positives, ce=(True, False), kl=False)

    @classmethod
    def divergence(cls, layout: BlockLayout, kind: Inputs) -> Job:
        """The divergence of two sources (outputs ``(-, -, kl)``)."""
        return cls(layout, kind, sources=2, positives=None, ce=(False, False), kl=True)

    @classmethod
    def rdrop(cls, layout: BlockLayout, kind: Inputs, positives: GoldCells) -> Job:
        """Both sources' cross-entropies and their divergence (outputs ``(ce_0, ce_1, kl)``)."""
        return cls(layout, kind, sources=2, positives=positives, ce=(True, True), kl=True)


def _make_sources(job: Job, tensors: tuple) -> list:
    if job.kind == "dense":
        return [DenseSource(job.layout, t) for t in tensors[: job.sources]]
    return [FactorSource(job.layout, *tensors[4 * s : 4 * s + 4]) for s in range(job.sources)]


def shifted_log1p(m: Tensor, shifted_sum: Tensor) -> Tensor:
    """``log(1 + sum exp(x))`` from ``m = max(0, max x)`` and ``shifted_sum = sum exp(x - m)``.

    Where ``m == 0`` the answer is ``log1p(shifted_sum)``, which keeps its precision for a
    confident model's tiny losses (``log(1 + 1e-12)`` is 0 in float32); elsewhere
    ``shifted_sum >= 1`` and the plain form is exact. Both branches are finite, so ``where``
    is safe.
    """
    return torch.where(m > 0, m + torch.log(torch.exp(-m) + shifted_sum), torch.log1p(shifted_sum))


def _positive_term(x_pos: Tensor, group: Tensor, groups: int) -> Tensor:
    """``log(1 + sum_pos exp(-s))`` per group (B * C,) from the gold logits ``x_pos`` (N,)."""
    x = -x_pos
    m = x.new_zeros(groups).scatter_reduce(0, group, x, reduce="amax", include_self=True)
    shifted = x.new_zeros(groups).index_add_(0, group, torch.exp(x - m[group]))
    return shifted_log1p(m, shifted)


def _exp_floor(dtype: torch.dtype) -> float:
    """The smallest exp argument with a normal result: lower clamp for fast, exact-enough exp."""
    return math.log(torch.finfo(dtype).tiny) + 1.0


class _BlockMasks(NamedTuple):
    keep: Tensor | None  # 0/1 float, broadcastable to the block: multiplies sums and gradients
    bias: Tensor | None  # 0 on valid cells, ``fill`` on invalid ones: added before a maximum


def _block_masks(invalid: Tensor | None, dtype: torch.dtype, for_kernels: bool) -> _BlockMasks:
    """``fill`` is -inf for the kernels (which test for it) and the dtype's lowest finite value
    for the eager code: ``x + finfo.min`` is exactly ``finfo.min`` for any logit of sane size
    (|x| far below the spacing of floats near finfo.min), so after the bias two sources agree
    exactly on every invalid cell and their divergence there is exactly ``(0 - 0) * 0 = 0`` with
    no mask, where -inf would give ``0 * nan``."""
    if invalid is None:
        return _BlockMasks(None, None)
    fill = NEG_INF if for_kernels else torch.finfo(dtype).min
    keep = (~invalid).to(dtype)
    bias = torch.zeros(invalid.shape, dtype=dtype, device=invalid.device)
    return _BlockMasks(keep, bias.masked_fill_(invalid, fill))


def _uniform_positive(w: Tensor) -> float | None:
    """The value of a gradient that is one positive number everywhere (mean/sum), else None."""
    lo, hi = torch.aminmax(w)
    lo, hi = float(lo), float(hi)
    return lo if lo == hi and lo > 0 else None


class SpanLosses(torch.autograd.Function):
    """Cross-entropies (per source) and the GlobalPointer divergence, block by block.

    Outputs ``(ce0, ce1, kl)``, each (B, C) in the accumulation dtype (zeros where not asked for).
    Saves only its inputs and (B, C) / (N,) statistics; backward recomputes each block.
    The kernel session active at forward time serves backward too.
    """

    @staticmethod
    def forward(ctx, job: Job, *tensors):
        ctx.set_materialize_grads(False)
        ctx.job = job
        ctx.session = session = kernels.current()
        layout = job.layout
        sources = _make_sources(job, tensors)
        acc = sources[0].acc
        floor = _exp_floor(acc)
        batch, types = layout.batch, layout.types
        device = layout.device
        # The first row band visits every batch group first (see BlockLayout._plan): it assigns
        # the (B, C) running values, later bands update them.
        fresh = torch.empty if layout.blocks else torch.zeros  # no cells at all: zeros
        kl = (fresh if job.kl else torch.zeros)(batch, types, dtype=acc, device=device)
        passes = [p for p in range(job.sources) if job.ce[p]]
        # Online log-sum-exp of the negatives per (b, c): shift m >= 0 and sum of exp(x - m).
        shift = {p: fresh(batch, types, dtype=acc, device=device) for p in passes}
        total = {p: fresh(batch, types, dtype=acc, device=device) for p in passes}
        gold: dict[int, list[Tensor]] = {p: [] for p in passes}
        per = 1 if job.kind == "dense" else 4
        wants = [any(ctx.needs_input_grad[1 + per * s : 1 + per * (s + 1)]) for s in range(2)]
        kept = [] if session is None and _keeps(job, wants) else None
        for index, (b0, b1, r0, r1, c0) in enumerate(layout.blocks):
            xs = [src.cells(b0, b1, r0, r1, c0) for src in sources]
            invalid = layout.invalid_block(b0, b1, r0, r1, c0)
            masks = _block_masks(invalid, acc, session is not None)
            flat = job.positives.flat[index] if job.positives is not None else None
            for p in passes:
                gold[p].append(xs[p].view(-1)[flat])
            if kept is not None:
                stats, block_kept = _forward_block_keeping(job, xs, masks, flat, floor, wants)
                kept.append(block_kept)
            elif session is not None:
                stats = _forward_block_kernel(session, job, xs, masks, flat, floor)
                if job.kl and passes:  # gold cells were left out of the kernel's divergence
                    extra = gp_kl_cell(gold[0][-1], gold[1][-1])
                    group = job.positives.groups[index] - b0 * types
                    stats[0].view(-1).index_add_(0, group, extra)
            else:
                stats = _forward_block_eager(job, xs, masks, flat, floor)
            if job.kl:
                if r0 == 0:
                    kl[b0:b1] = stats[0]
                else:
                    kl[b0:b1] += stats[0]
            for p in passes:
                m, s = stats[1 + 2 * p], stats[2 + 2 * p]
                if r0 == 0:  # the shift starts at 0: the 1 of log(1 + sum e^x)
                    new_m = m.clamp_min(0.0)
                    total[p][b0:b1] = s * torch.exp(m - new_m)
                else:
                    old_m, old_s = shift[p][b0:b1], total[p][b0:b1]
                    new_m = torch.maximum(old_m, m)
                    total[p][b0:b1] = old_s * torch.exp(old_m - new_m) + s * torch.exp(m - new_m)
                shift[p][b0:b1] = new_m
        outputs, saved = [], {}
        for p in range(2):
            if p not in passes:
                outputs.append(torch.zeros(batch, types, dtype=acc, device=device))
                continue
            neg = shifted_log1p(shift[p], total[p])  # log(1 + sum_neg e^s), (B, C)
            x_pos = torch.cat(gold[p])
            pos = _positive_term(x_pos, job.positives.group, batch * types)
            saved[p] = (neg, x_pos, pos)
            outputs.append(neg + pos.view(batch, types))
        ctx.stats = saved
        # What forward kept goes with the inputs: autograd frees both after backward (unless
        # the graph is retained, for which backward leaves them unchanged).
        ctx.keeps = kept is not None
        ctx.save_for_backward(*tensors, *(t for block in kept or [] for t in block))
        outputs.append(kl)
        return tuple(outputs)

    @staticmethod
    def backward(ctx, g_ce0, g_ce1, g_kl):
        job: Job = ctx.job
        session = ctx.session
        layout = job.layout
        saved = ctx.saved_tensors
        tensors = saved[: job.sources * (1 if job.kind == "dense" else 4)]
        sources = _make_sources(job, tensors)
        acc = sources[0].acc
        per = 1 if job.kind == "dense" else 4
        needs = ctx.needs_input_grad[1:]
        source_needs = [tuple(needs[per * s : per * s + per]) for s in range(job.sources)]
        wants = [any(n) for n in source_needs]
        g_ce = [g_ce0, g_ce1]
        ce_passes = [
            p for p in range(job.sources) if job.ce[p] and g_ce[p] is not None and wants[p]
        ]
        do_kl = job.kl and g_kl is not None and any(wants)
        for s, src in enumerate(sources):
            src.start_backward(source_needs[s])
        plan = _BackwardPlan(job, ctx.stats, acc, wants, ce_passes, g_ce, g_kl if do_kl else None)
        computed = set(ce_passes) | ({0, 1} if do_kl else set())
        kept = saved[len(tensors) :] if ctx.keeps else None
        for index, (b0, b1, r0, r1, c0) in enumerate(layout.blocks):
            block = (index, b0, b1)
            if kept is not None:
                grads = _backward_block_kept(plan, kept[6 * index : 6 * index + 6], block)
                for s, src in enumerate(sources):
                    if grads[s] is not None:
                        src.load(b0, b1, r0, r1, c0)  # the q rows and k columns of the block
            else:
                xs = [
                    src.cells(b0, b1, r0, r1, c0) if s in computed else None
                    for s, src in enumerate(sources)
                ]
                invalid = layout.invalid_block(b0, b1, r0, r1, c0)
                masks = _block_masks(invalid, acc, session is not None)
                if session is not None:
                    grads = _backward_block_kernel(session, plan, xs, masks, block)
                else:
                    grads = _backward_block_eager(plan, xs, masks, block)
            for s, src in enumerate(sources):
                if grads[s] is not None:
                    src.backward_cells(b0, b1, r0, r1, c0, grads[s])
        out: list[Tensor | None] = [None]
        for s, src in enumerate(sources):
            contributes = (s in ce_passes) or do_kl
            out.extend(src.finish_backward() if wants[s] and contributes else [None] * per)
        return tuple(out)


def _block_dot(a: Tensor, b: Tensor) -> Tensor:
    """``(a * b).sum((-2, -1))`` for contiguous (Bg, C, r, n) blocks, as one batched dot
    product (one read of each, no product temporary)."""
    lead = a.shape[:-2]
    flat_a = a.reshape(-1, 1, a.shape[-2] * a.shape[-1])
    flat_b = b.reshape(-1, b.shape[-2] * b.shape[-1], 1)
    return torch.bmm(flat_a, flat_b).view(lead)


def _forward_block_eager(
    job: Job, xs: list[Tensor], masks: _BlockMasks, flat, floor: float, kl: Tensor | None = None
):
    """``(kl, m0, s0, m1, s1)`` of one block (None where not asked for), using ``xs`` in place.

    ``masks.bias`` holds finfo.min (not -inf) on invalid cells: see :func:`_block_masks`.
    ``kl``: the block's divergence, computed by the caller (who then also added the bias to
    both sources where this function would have).
    """
    stats: list[Tensor | None] = [None] * 5
    passes = [p for p in range(job.sources) if job.ce[p]]
    biased = masks.bias is not None and len(passes) == job.sources
    if biased and kl is None:  # both sources need the bias for their maxima: add it first,
        for x in xs:  # the divergence then needs no mask (invalid cells agree exactly)
            x.add_(masks.bias)
    if kl is not None:
        stats[0] = kl
    elif job.kl:
        diff, d, _, _ = gp_kl_cell_parts(xs[0], xs[1], (False, False))
        if masks.keep is not None and not biased:
            diff.mul_(masks.keep)
        stats[0] = _block_dot(diff, d)
    for p in passes:
        x = xs[p]  # used in place from here on
        if masks.bias is not None and not biased:
            x.add_(masks.bias)
        x.view(-1).index_fill_(0, flat, NEG_INF)
        # (Bg, C): -inf or finfo.min where the block has no negatives (nan_to_num keeps the
        # latter: x - m is then 0 on invalid cells, which the mask below zeroes anyway).
        m = x.amax(dim=(-2, -1))
        x.sub_(m.nan_to_num(neginf=0.0)[..., None, None]).clamp_min_(floor).exp_()
        # The clamp gave excluded cells tiny values; the mask makes them exactly 0.
        if masks.keep is not None:
            x.mul_(masks.keep)
        x.view(-1).index_fill_(0, flat, 0.0)
        stats[1 + 2 * p], stats[2 + 2 * p] = m, x.sum(dim=(-2, -1))
    return stats


# Small problems keep, from forward to backward, what the cells' gradients are made of (the
# cross-entropies' softmax numerators and the divergence's raw derivatives, already masked), so
# that backward neither recomputes the blocks nor repeats their elementwise passes: it only
# weights them and turns them into dq/dk. Above this many kept cells (4 bytes each in float32)
# backward recomputes instead, and memory stays O(one block).
KEEP_CELLS = 1 << 24


def _keeps(job: Job, wants: list[bool]) -> bool:
    """Whether forward keeps the gradients' parts for backward (see KEEP_CELLS)."""
    if not any(wants):
        return False
    layout = job.layout
    per_cell = sum(job.ce[p] and wants[p] for p in range(job.sources))
    if job.kl:
        per_cell += sum(wants[: job.sources])
    cells = 0
    for b0, b1, r0, r1, c0 in layout.blocks:
        cols = layout.cols - c0 if layout.kind != "band" else layout.cols
        cells += (b1 - b0) * layout.types * (r1 - r0) * cols
    return cells * per_cell <= KEEP_CELLS


def _forward_block_keeping(job: Job, xs, masks: _BlockMasks, flat, floor: float, wants):
    """:func:`_forward_block_eager`, also returning the block's gradient parts for backward.

    ``kept = (e0, m0, e1, m1, k0, k1)``: per cross-entropy pass the masked ``exp(x - m)`` with
    gold cells 0 and its shift ``m`` (Bg, C); per wanted side the divergence's derivative
    ``dD/dx`` (0 on invalid cells). Backward's gradient is then ``w e exp(m - neg) + w_kl k``
    with the gold cells written in, as the recomputing backward makes it.
    """
    kl_raw: list[Tensor | None] = [None, None]
    if job.kl:
        passes = [p for p in range(job.sources) if job.ce[p]]
        biased = masks.bias is not None and len(passes) == job.sources
        if biased:  # as in _forward_block_eager; invalid cells then get exactly 0 derivatives
            for x in xs:
                x.add_(masks.bias)
        diff, d, *kl_raw = gp_kl_cell_parts(xs[0], xs[1], (wants[0], wants[1]))
        if masks.keep is not None and not biased:
            for k in (diff, *kl_raw):
                if k is not None:
                    k.mul_(masks.keep)
        kl = _block_dot(diff, d)
        stats = _forward_block_eager(job, xs, masks, flat, floor, kl=kl)
    else:
        stats = _forward_block_eager(job, xs, masks, flat, floor)
    kept = [None] * 6
    for p in range(job.sources):
        if job.ce[p] and wants[p]:
            # _forward_block_eager left exp(x - m) (masked, gold 0) in xs[p].
            kept[2 * p], kept[2 * p + 1] = xs[p], stats[1 + 2 * p].nan_to_num(neginf=0.0)
    kept[4], kept[5] = kl_raw
    return stats, kept


def _backward_block_kept(plan: _BackwardPlan, kept: list, block) -> list:
    """A block's gradients from what forward kept (see :func:`_forward_block_keeping`)."""
    index, b0, b1 = block
    job, wants = plan.job, plan.wants
    grads: list[Tensor | None] = [None, None]
    for s in range(job.sources):
        if not wants[s]:
            continue
        g = None
        if s in plan.ce_passes:
            e, m = kept[2 * s], kept[2 * s + 1]
            # exp(x - neg) = exp(x - m) exp(m - neg): one (Bg, C) factor per block.
            factor = plan.ce_w[s][b0:b1] * torch.exp(m - plan.neg[s][b0:b1])
            g = e * factor[..., None, None]  # kept tensors stay as they are (retain_graph)
        k = kept[4 + s]
        if plan.w_kl is not None and k is not None:
            if plan.w_kl_scalar is not None:
                w = plan.w_kl_scalar
                g = k * w if g is None else g.add_(k, alpha=w)
            else:
                w = plan.w_kl[b0:b1, :, None, None]
                g = k * w if g is None else g.addcmul_(k, w)
        if g is None:
            continue
        if s in plan.ce_passes:  # gold cells: e held 0 there; add their cross-entropy gradient
            g.view(-1).index_add_(0, job.positives.flat[index], plan.gold_grad[s][index])
        grads[s] = g
    return grads


def _forward_block_kernel(session, job: Job, xs: list[Tensor], masks: _BlockMasks, flat, floor):
    if flat is not None and flat.numel():
        for x in xs:  # gold cells: excluded like invalid ones (their values were gathered)
            x.view(-1).index_fill_(0, flat, NEG_INF)
    x1 = xs[1] if job.sources > 1 else None
    kl, m0, s0, m1, s1 = kernels.run(session, "fwd", xs[0], x1, masks.bias, floor, any(job.ce))
    return [kl, m0, s0, m1, s1]


class _BackwardPlan:
    """Everything the backward blocks share: weights, log-normalisers, gold-cell gradients."""

    def __init__(self, job: Job, stats: dict, acc, wants, ce_passes, g_ce, g_kl):
        self.job, self.wants, self.ce_passes = job, wants, ce_passes
        self.floor = _exp_floor(acc)
        self.neg = {p: stats[p][0] for p in ce_passes}
        self.gold_values = {p: list(stats[p][1].split(job.positives.sizes)) for p in stats}
        # Per pass: the incoming weight (also as a python float when uniform, as after "mean" or
        # "sum") and the gradient at each gold cell: -w e^(-s - log(1 + sum e^-s)).
        self.ce_w, self.ce_w_scalar, self.gold_grad = {}, {}, {}
        for p in ce_passes:
            _, x_pos, pos = stats[p]
            self.ce_w[p] = g_ce[p].to(acc)
            self.ce_w_scalar[p] = _uniform_positive(self.ce_w[p])
            group = job.positives.group
            wg = self.ce_w[p].reshape(-1)[group]
            gold = -wg * torch.exp(-x_pos - pos[group])
            self.gold_grad[p] = list(gold.split(job.positives.sizes))
        self.w_kl = None if g_kl is None else g_kl.to(acc)
        self.w_kl_scalar = None if g_kl is None else _uniform_positive(self.w_kl)


def _backward_block_eager(plan: _BackwardPlan, xs, masks: _BlockMasks, block) -> list:
    index, b0, b1 = block
    job, wants = plan.job, plan.wants
    grads: list[Tensor | None] = [None, None]
    kl_grads: tuple[Tensor | None, Tensor | None] = (None, None)  # unweighted, unmasked
    merged = [False, False]  # the divergence's gradient is folded into the cross-entropy's
    if plan.w_kl is not None:
        kl_grads = gp_kl_cell_grad(xs[0], xs[1], (wants[0], wants[1]))
        for s in (0, 1):
            # With uniform weights (as after "mean"/"sum") the divergence term is added to the
            # cross-entropy's before the shared weight-and-mask pass: fewer passes.
            merged[s] = (
                kl_grads[s] is not None
                and s in plan.ce_passes
                and plan.w_kl_scalar is not None
                and plan.ce_w_scalar[s] is not None
            )
        if plan.w_kl_scalar is not None:
            w = plan.w_kl_scalar
            scales = [masks.keep * w if masks.keep is not None else w]
        else:
            scales = [plan.w_kl[b0:b1, :, None, None]]
            if masks.keep is not None:
                scales.append(masks.keep)
        for s in (0, 1):
            if kl_grads[s] is None or merged[s]:
                continue
            grads[s] = kl_grads[s]
            for scale in scales:
                grads[s].mul_(scale)
    for p in plan.ce_passes:
        x = xs[p]  # used in place: the softmax weights of the negatives
        flat = job.positives.flat[index]
        gold = plan.gold_grad[p][index]
        # x - L <= 0 on every valid negative (L = log(1 + sum e^x)); clamping above at 0 keeps
        # invalid cells finite, so the 0 of the mask makes them exactly 0.
        x.sub_(plan.neg[p][b0:b1, :, None, None]).clamp_(plan.floor, 0.0).exp_()
        w = plan.ce_w_scalar[p]
        if merged[p]:
            gold = gold + plan.w_kl_scalar * kl_grads[p].view(-1)[flat]
            x.add_(kl_grads[p], alpha=plan.w_kl_scalar / w)
        if w is not None:
            x.mul_(w if masks.keep is None else masks.keep * w)
        else:
            x.mul_(plan.ce_w[p][b0:b1, :, None, None])
            if masks.keep is not None:
                x.mul_(masks.keep)
        x.view(-1).index_copy_(0, flat, gold)
        grads[p] = x if grads[p] is None else grads[p].add_(x)
    return grads


def _backward_block_kernel(session, plan: _BackwardPlan, xs, masks: _BlockMasks, block) -> list:
    index, b0, b1 = block
    job, wants = plan.job, plan.wants

    def weight(w: Tensor | None) -> Tensor | None:
        return None if w is None else w[b0:b1, :, None, None]

    xs = list(xs) + [None] * (2 - len(xs))
    wants = list(wants) + [False] * (2 - len(wants))
    ce = [p in plan.ce_passes for p in range(2)]
    w_kl = weight(plan.w_kl)
    want = [wants[s] and xs[s] is not None and (ce[s] or w_kl is not None) for s in range(2)]
    grads = list(
        kernels.run(
            session,
            "bwd",
            xs[0],
            xs[1],
            masks.bias,
            weight(plan.neg.get(0)),
            weight(plan.neg.get(1)),
            weight(plan.ce_w.get(0)),
            weight(plan.ce_w.get(1)),
            w_kl,
            want[0],
            want[1],
            plan.floor,
        )
    )
    if job.positives is None or not job.positives.flat[index].numel():
        return grads
    # Gold cells: the exact gradient (their cross-entropy term plus the divergence).
    flat = job.positives.flat[index]
    group = job.positives.groups[index]
    kl_grads = None
    if w_kl is not None:
        g0p, g1p = plan.gold_values[0][index], plan.gold_values[1][index]
        kl_grads = gp_kl_cell_grad(g0p, g1p)
        w = plan.w_kl.reshape(-1)[group]
    for s, g in enumerate(grads):
        if g is None:
            continue
        value = torch.zeros(flat.shape, dtype=g.dtype, device=g.device)
        if ce[s]:
            value += plan.gold_grad[s][index]
        if kl_grads is not None:
            value += w * kl_grads[s]
        g.view(-1).index_copy_(0, flat, value)
    return grads
