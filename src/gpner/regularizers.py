"""Training objectives: plain cross-entropy, R-Drop and VAT for GlobalPointer span logits.

Shape letters: B batch, C entity types, L tokens, H hidden size, D head size, N gold spans,
W maximum span width.

An *objective* is called once per training step as ``loss, parts = objective(model, batch)``:
``loss`` is a scalar tensor for the trainer to ``backward()``; ``parts`` holds floats for logging
(``{"ce": ..., "reg": ...}``, fetched with a single device sync). Objectives never call
``.backward()`` themselves, leave no ``.grad`` on any parameter, never switch train/eval mode, and
consume no global randomness beyond what the model's own forward passes consume (see
:class:`~gpner.rng.RNGState`).

The model interface they rely on:

* ``model.embed(input_ids)`` -> (B, L, H) input (word) embeddings, the place VAT perturbs;
* ``model.span_factors(input_ids=None, attention_mask=None, inputs_embeds=None)`` ->
  :class:`~gpner.functional.SpanFactors`, the span logits in factored form (q, k (B, C or 1, L, D)
  and optional biases, carrying the attention mask and the head's ``max_width``).

Training never materialises the (B, C, L, L) logits: the cross-entropy and the GlobalPointer
divergence are the fused losses of :mod:`gpner.functional`, which compute the logits block by
block over the valid triangle (or band) and recompute them in backward. Only the baseline
divergence "softmax_kl" needs the whole logits of an (example, type) at once (its softmax), so it
materialises them with :func:`gpner.functional.factors_to_logits`, for itself alone. Heads built
with ``max_width`` work throughout: the factors carry ``max_width`` and every loss reads the band.

A batch has ``input_ids`` (B, L) long, ``attention_mask`` (B, L) bool and ``spans`` (N, 4) long
rows ``[b, c, i, j]``. Every loss and divergence is masked by the attention mask the factors carry
(the batch's) and uses ``reduction="mean"`` (the sum over the valid (L, L) cells, or band
(L, W) cells, of each (example, type), averaged over (B, C); see :mod:`gpner.functional`), so
``alpha`` weighs the regulariser against the cross-entropy on the same per-(example, type) scale.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from gpner import functional as F
from gpner.registry import Registry
from gpner.rng import RNGState, private_generator

# The default weight of the divergence term. gp_kl sums a binary KL over every valid (i, j) cell
# of an (example, type), so it grows with L^2 while the cross-entropy stays O(1) per pair: a weight
# near 1 costs accuracy, and this small default is the choice the accuracy grid's searches support
# (the measurements: benchmarks/accuracy/REPORT.md). Tune it per data set and maximum length;
# softmax_kl, one KL per (example, type), tolerates larger weights.
DEFAULT_ALPHA = 1 / 64

__all__ = [
    "DIVERGENCES",
    "REGULARIZERS",
    "Divergence",
    "factored_softmax_kl",
    "factored_softmax_kl_all",
    "RNGState",
    "Objective",
    "Plain",
    "RDrop",
    "VAT",
    "build_objective",
    "cross_entropy",
    "rdrop_loss",
    "vat_direction",
    "vat_penalty",
]

Divergence = Callable[[F.SpanFactors, F.SpanFactors, str], Tensor]
"""``divergence(f, g, reduction) -> Tensor`` of two factored logits, over ``f``'s valid cells.

``f`` is the reference side (VAT's clean pass, passed detached); both must come from the same head
on the same batch shape.
"""


Forward = Callable[[nn.Module, Tensor, Tensor], Any]
"""``forward(model, inputs_embeds, attention_mask)`` -> what the divergence and the
cross-entropy read (VAT's passes on the embeddings). The default, :func:`span_factors_forward`,
gives :class:`~gpner.functional.SpanFactors`; any output with a ``detach()`` works with a
divergence and a cross-entropy made for it (e.g. materialised logits, as the speed benchmark's
baseline does)."""


def span_factors_forward(model: nn.Module, inputs_embeds: Tensor, attention_mask: Tensor):
    """The default :data:`Forward`: ``model.span_factors`` of the embeddings."""
    return model.span_factors(inputs_embeds=inputs_embeds, attention_mask=attention_mask)


def factored_softmax_kl(f: F.SpanFactors, g: F.SpanFactors, reduction: str = "mean") -> Tensor:
    """:func:`gpner.functional.softmax_kl` of two factored logits, over ``f``'s valid cells.

    The softmax normalises over all valid cells of an (example, type), so unlike the GlobalPointer
    divergence it cannot be summed block by block from the factors: both logits are materialised
    here, (B, C, L, L), or band (B, C, L, W) with ``f.max_width`` (the baseline pays that memory;
    the cross-entropy next to it stays fused).
    """
    s, t = _both_logits(f, g)
    return F.softmax_kl(s, t, mask=f.attention_mask, reduction=reduction, max_width=f.max_width)


def factored_softmax_kl_all(f: F.SpanFactors, g: F.SpanFactors, reduction: str = "mean") -> Tensor:
    """:func:`gpner.functional.softmax_kl_all` of two factored logits, over ``f``'s valid cells:
    one softmax per example over all types' cells. Materialises both logits, as
    :func:`factored_softmax_kl` does; "mean" averages over examples."""
    s, t = _both_logits(f, g)
    return F.softmax_kl_all(s, t, mask=f.attention_mask, reduction=reduction, max_width=f.max_width)


def _both_logits(f: F.SpanFactors, g: F.SpanFactors) -> tuple[Tensor, Tensor]:
    """The materialised logits (B, C, L, L or W) of two factor sets from the same head."""
    if f.num_types != g.num_types or f.max_width != g.max_width:
        raise ValueError("the two factor sets differ in types or max_width")
    s, t = F.factors_to_logits(f), F.factors_to_logits(g)
    if s.shape != t.shape:
        raise ValueError(f"the two logits differ in shape: {tuple(s.shape)} vs {tuple(t.shape)}")
    return s, t


DIVERGENCES: Registry[Divergence] = Registry("divergence")
DIVERGENCES.register(
    "gp_kl", F.fused_global_pointer_kl, help="sum of per-cell symmetric binary KLs (fused)"
)
DIVERGENCES.register(
    "softmax_kl", factored_softmax_kl, help="symmetric KL of each type's cell softmax (baseline)"
)
DIVERGENCES.register(
    "softmax_kl_all",
    factored_softmax_kl_all,
    help="symmetric KL of one softmax per example over all types' cells",
)

# Divergences with a one-sweep R-Drop kernel: ``(f, g, spans, reduction) -> (ce_f, ce_g, d)``,
# both cross-entropies and the divergence from each block of logits computed once.
_RDROP_SWEEPS: dict[Divergence, Callable[..., tuple[Tensor, Tensor, Tensor]]] = {
    F.fused_global_pointer_kl: F.fused_rdrop_losses,
}


def _parts(**values: Tensor | float) -> dict[str, float]:
    """Scalar tensors (all on one device) and floats -> floats, with one device sync in all."""
    names = [k for k, v in values.items() if isinstance(v, Tensor)]
    stacked = torch.stack([values[k].detach().double().reshape(()) for k in names]).tolist()
    fetched = dict(zip(names, stacked))
    return {k: fetched[k] if k in fetched else float(v) for k, v in values.items()}


def cross_entropy(factors: F.SpanFactors, batch: Any) -> Tensor:
    """Sparse multi-label CE of factored logits against ``batch.spans`` (N, 4), mean, fused.

    Masked by ``factors.attention_mask``; band logits (``factors.max_width``) take the spans in
    ``[b, c, i, j]`` coordinates too.
    """
    return F.fused_crossentropy(factors, batch.spans, reduction="mean")


# ------------------------------------------------------------------------------- functional parts


def rdrop_loss(
    model: nn.Module, batch: Any, alpha: float, divergence: Divergence = F.fused_global_pointer_kl
) -> tuple[Tensor, Tensor, Tensor]:
    """R-Drop: two dropout passes of the batch in one forward call.

    ``input_ids`` and ``attention_mask`` (B, L) are concatenated along the batch to (2B, L), so one
    ``model.span_factors`` call gives both passes' factors with independent dropout masks; they are
    cut into the halves f1, f2 (views, no copy). With "gp_kl" one blocked sweep
    (:func:`gpner.functional.fused_rdrop_losses`) computes both cross-entropies and the
    divergence, each block of logits once; any other divergence is computed on its own next to
    one fused cross-entropy over the 2B rows.

    With ``alpha == 0`` (the two-pass control: two dropout passes, CE averaged, no divergence)
    the divergence is not computed at all: ``reg`` is a zero scalar and the loss is the fused
    cross-entropy of the 2B rows alone.

    Returns:
        ``(loss, ce, reg)`` scalars with ``ce = (CE(f1) + CE(f2)) / 2``, ``reg = D(f1, f2)``
        (both mean-reduced, masked by the attention mask) and ``loss = ce + alpha * reg``.
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    ids, am = batch.input_ids, batch.attention_mask
    batch_size = ids.shape[0]
    both = model.span_factors(input_ids=torch.cat([ids, ids]), attention_mask=torch.cat([am, am]))
    f1, f2 = both.batch_slice(0, batch_size), both.batch_slice(batch_size, 2 * batch_size)
    sweep = _RDROP_SWEEPS.get(divergence)
    if alpha == 0:
        ce = _doubled_cross_entropy(both, batch.spans, batch_size)
        return ce, ce, torch.zeros((), dtype=ce.dtype, device=ce.device)
    if sweep is not None:
        ce1, ce2, reg = sweep(f1, f2, batch.spans, "mean")
        ce = (ce1 + ce2) / 2
    else:
        ce = _doubled_cross_entropy(both, batch.spans, batch_size)
        reg = divergence(f1, f2, "mean")
    return ce + alpha * reg, ce, reg


def _doubled_cross_entropy(both: F.SpanFactors, spans: Tensor, batch_size: int) -> Tensor:
    """The mean CE of both halves of a doubled batch in one fused call.

    The spans (N, 4) are repeated for the second copy (rows shifted by B): the mean over (2B, C)
    is the mean of the two halves' means.
    """
    shift = spans.new_tensor([batch_size, 0, 0, 0])
    return F.fused_crossentropy(both, torch.cat([spans, spans + shift]), reduction="mean")


def _per_example_normalize(x: Tensor, attention_mask: Tensor) -> Tensor:
    """Zero padding positions of x (B, L, H), then scale each example to unit norm over (L, H).

    Dividing by the max-abs value first keeps the squares inside the floating-point range for the
    tiny gradients of the power iteration. An all-zero example stays zero.
    """
    x = x.masked_fill(~attention_mask[..., None], 0.0)
    tiny = torch.finfo(x.dtype).tiny
    x = x / x.abs().amax(dim=(1, 2), keepdim=True).clamp_min(tiny)
    return x / x.norm(dim=(1, 2), keepdim=True).clamp_min(tiny)


def vat_direction(
    model: nn.Module,
    embeds: Tensor,
    attention_mask: Tensor,
    clean: F.SpanFactors,
    *,
    xi: float = 1e-3,
    power_iterations: int = 1,
    divergence: Divergence = F.fused_global_pointer_kl,
    rng_state: RNGState | None = None,
    forward: Forward = span_factors_forward,
) -> Tensor:
    """The adversarial unit direction of VAT, by power iteration; no parameter gradients.

    Starts from a random direction d (unit norm over (L, H) per example, zero on padding) and
    repeats ``power_iterations`` times: ``g = grad_d D(clean, s(x + xi * |x_b| * d))``,
    ``d = normalize(g)``. ``torch.autograd.grad(..., inputs=[d])`` differentiates with respect to
    d only, so no ``.grad`` is written anywhere; the embeddings and the clean factors are
    detached inside (the fused divergence then does no gradient work for the clean side).

    ``xi`` is relative: the probe for example b has norm ``xi * |x_b|``, the norm of its real
    tokens' embeddings. It is a finite-difference step, so it should sit in the model's linear
    regime yet well above rounding: float32 rounds at about 1e-7 relative, so a relative step
    of 1e-3 is far above it and, for embeddings, still a small step (an absolute 1e-6, the
    classic choice, is ~1e-7 relative for BERT-sized embeddings: rounding noise). Hence a
    relative 1e-3, the same compromise for any embedding scale. Under bf16/fp16 autocast
    rounding is ~1e-3 relative, so prefer xi >= 1e-2.
    ``power_iterations=0`` returns the random direction (an ablation).

    An example whose divergence does not depend on its embeddings gets a zero direction: one
    without real tokens, or, with softmax_kl, a one-token example (a single valid cell per type
    has softmax probability 1 whatever its logit).

    Args:
        model: the interface of this module's docstring.
        embeds: (B, L, H) the clean input embeddings (detached here).
        attention_mask: (B, L) bool.
        clean: the clean pass's :class:`~gpner.functional.SpanFactors` (detached here).
        divergence: a :data:`Divergence`, e.g. ``DIVERGENCES["gp_kl"]``.
        rng_state: replayed for each perturbed pass (the clean pass's dropout masks); ``None``
            runs them as ordinary forwards, with fresh dropout masks from the global RNG.
    Returns:
        (B, L, H) detached, unit norm per example (zero for an example without real tokens).
    """
    if power_iterations < 0:
        raise ValueError(f"power_iterations must be >= 0, got {power_iterations}")
    x = embeds.detach()
    target = clean.detach()
    generator = private_generator(x.device)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    d = _per_example_normalize(noise, attention_mask)  # (B, L, H)
    valid = attention_mask[..., None]
    step = xi * x.masked_fill(~valid, 0.0).norm(dim=(1, 2), keepdim=True)  # (B, 1, 1)
    replay = rng_state.replay if rng_state is not None else contextlib.nullcontext
    for _ in range(power_iterations):
        d.requires_grad_(True)
        with torch.enable_grad():
            with replay():
                perturbed = forward(model, x + step * d, attention_mask)
            # Sum, not mean: the direction is normalised anyway and the sum keeps it far from
            # underflow. Examples are independent, so each g_b is example b's own gradient.
            distance = divergence(target, perturbed, "sum")
            (grad,) = torch.autograd.grad(distance, inputs=[d], allow_unused=True)
        if grad is None:  # the logits do not depend on the embeddings
            grad = torch.zeros_like(x)
        d = _per_example_normalize(grad, attention_mask)
    return d.detach()


def vat_penalty(
    model: nn.Module,
    embeds: Tensor,
    attention_mask: Tensor,
    r_adv: Tensor,
    target: F.SpanFactors,
    *,
    divergence: Divergence = F.fused_global_pointer_kl,
    rng_state: RNGState | None = None,
    forward: Forward = span_factors_forward,
) -> Tensor:
    """VAT's penalty ``D(target, s(embeds + r_adv))``, mean-reduced, for a given perturbation.

    Gradients flow into ``model`` and ``embeds`` (hence the embedding table), not into ``target``
    or ``r_adv``, which is how VAT treats them; with both held fixed this is an ordinary
    differentiable function of the parameters (what ``gradcheck`` verifies).

    Args:
        embeds: (B, L, H) clean input embeddings, not detached.
        attention_mask: (B, L) bool.
        r_adv: (B, L, H) the perturbation (detached here).
        target: the clean pass's :class:`~gpner.functional.SpanFactors` (detached here).
        divergence: a :data:`Divergence`.
        rng_state: replayed for this pass (the clean pass's dropout masks); ``None`` = fresh.
    Returns:
        scalar.
    """
    replay = rng_state.replay if rng_state is not None else contextlib.nullcontext
    with replay():
        perturbed = forward(model, embeds + r_adv.detach(), attention_mask)
    return divergence(target.detach(), perturbed, "mean")


# ------------------------------------------------------------------------------------ objectives


class Objective:
    """``objective(model, batch) -> (loss, {"ce": float, "reg": float})``."""

    def __call__(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError


class Plain(Objective):
    """Sparse multi-label cross-entropy only (fused, from the factors); ``reg`` is reported as 0."""

    def __call__(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]:
        factors = model.span_factors(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        ce = cross_entropy(factors, batch)
        return ce, _parts(ce=ce, reg=0.0)

    def __repr__(self) -> str:
        return "Plain()"


class RDrop(Objective):
    """R-Drop (Liang et al., 2021) with a GlobalPointer divergence: see :func:`rdrop_loss`.

    One forward call on the doubled batch (2B, L) and, with "gp_kl", one fused sweep for both
    cross-entropies and the divergence (its cost against a plain step is measured in
    benchmarks/speed/RESULTS.md). With dropout off
    the two halves are the same computation: ``reg`` is exactly 0 (bit-identical halves in float32
    on CPU). ``alpha = 0`` is the two-pass control: the divergence is not computed at all.
    """

    def __init__(self, alpha: float = DEFAULT_ALPHA, divergence: str = "gp_kl"):
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = alpha
        self.divergence = divergence
        self._divergence = DIVERGENCES[divergence]

    def __call__(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]:
        loss, ce, reg = rdrop_loss(model, batch, self.alpha, self._divergence)
        return loss, _parts(ce=ce, reg=reg)

    def __repr__(self) -> str:
        return f"RDrop(alpha={self.alpha}, divergence={self.divergence!r})"


class VAT(Objective):
    """Virtual adversarial training (Miyato et al.) on the input embeddings.

    ``loss = CE(s) + alpha * D(s.detach(), s(x + r_adv))`` with ``s`` the clean logits (in
    factored form: CE and "gp_kl" fused, see the module docstring),
    ``x = model.embed(input_ids)`` (B, L, H) and ``r_adv = epsilon * vat_direction(...)``, i.e.
    norm ``epsilon`` per example over its real tokens (padding never perturbed).

    Cost: the embedding and the clean forward run once and are reused (the trainer's backward
    goes through them); then ``power_iterations`` perturbed forwards each with a backward to the
    input only, and one adversarial forward whose backward the trainer does (measured against a
    plain step in benchmarks/speed/RESULTS.md).

    Dropout: the clean, power-iteration and adversarial passes share one set of dropout masks
    (:class:`RNGState`), so D measures the perturbation and not dropout noise, and the global RNG
    ends where a plain step would leave it.

    Args:
        alpha: weight of the penalty.
        epsilon: norm of r_adv per example, in embedding units.
        xi: the power iteration's probe size, relative to each example's embedding norm (see
            :func:`vat_direction` for why 1e-3).
        power_iterations: 1 is the usual choice; 0 gives a random perturbation (an ablation).
        divergence: a name in :data:`DIVERGENCES`, or a :data:`Divergence` of ``forward``'s
            outputs.
        forward: how a pass over the (perturbed) embeddings is computed (:data:`Forward`);
            ``cross_entropy(output, batch)`` scores the clean pass. The defaults are the fused
            path (span factors); the speed benchmark passes materialised logits instead.
    """

    def __init__(
        self,
        alpha: float = DEFAULT_ALPHA,
        epsilon: float = 1.0,
        xi: float = 1e-3,
        power_iterations: int = 1,
        divergence: str | Divergence = "gp_kl",
        *,
        forward: Forward = span_factors_forward,
        cross_entropy: Callable[[Any, Any], Tensor] = cross_entropy,
    ):
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if epsilon <= 0 or xi <= 0:
            raise ValueError(f"epsilon and xi must be > 0, got epsilon={epsilon}, xi={xi}")
        if power_iterations < 0:
            raise ValueError(f"power_iterations must be >= 0, got {power_iterations}")
        self.alpha = alpha
        self.epsilon = epsilon
        self.xi = xi
        self.power_iterations = power_iterations
        self.divergence = divergence
        self._divergence = divergence if callable(divergence) else DIVERGENCES[divergence]
        self.forward = forward
        self.cross_entropy = cross_entropy

    def __call__(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]:
        am = batch.attention_mask
        embeds = model.embed(batch.input_ids)  # (B, L, H)
        rng_state = RNGState.capture(embeds.device)
        clean = self.forward(model, embeds, am)
        ce = self.cross_entropy(clean, batch)
        direction = vat_direction(
            model,
            embeds,
            am,
            clean,
            xi=self.xi,
            power_iterations=self.power_iterations,
            divergence=self._divergence,
            rng_state=rng_state,
            forward=self.forward,
        )
        reg = vat_penalty(
            model,
            embeds,
            am,
            self.epsilon * direction,
            clean,
            divergence=self._divergence,
            rng_state=rng_state,
            forward=self.forward,
        )
        loss = ce + self.alpha * reg
        return loss, _parts(ce=ce, reg=reg)

    def __repr__(self) -> str:
        return (
            f"VAT(alpha={self.alpha}, epsilon={self.epsilon}, xi={self.xi}, "
            f"power_iterations={self.power_iterations}, divergence={self.divergence!r})"
        )


# Objectives by ``regularizer.kind``; each factory takes every regulariser option by keyword and
# uses the ones its kind needs.
REGULARIZERS: Registry[Callable[..., Objective]] = Registry("regularizer")
REGULARIZERS.register("none", lambda **options: Plain(), help="cross-entropy only")
REGULARIZERS.register(
    "rdrop",
    lambda alpha, divergence, **options: RDrop(alpha, divergence),
    help="two dropout passes, alpha * divergence between them",
)
REGULARIZERS.register(
    "vat",
    lambda alpha, divergence, epsilon, xi, power_iterations: VAT(
        alpha, epsilon, xi, power_iterations, divergence
    ),
    help="alpha * divergence at the adversarial embedding perturbation",
)


def build_objective(
    kind: str = "none",
    alpha: float = DEFAULT_ALPHA,
    divergence: str = "gp_kl",
    epsilon: float = 1.0,
    xi: float = 1e-3,
    power_iterations: int = 1,
) -> Objective:
    """The objective registered in :data:`REGULARIZERS` as ``kind`` ("none", "rdrop", "vat").

    Arguments a kind does not use are ignored (``none`` uses none of them; ``rdrop`` uses
    ``alpha`` and ``divergence``), but ``divergence`` is validated for every kind.
    """
    DIVERGENCES[divergence]
    return REGULARIZERS[kind](
        alpha=alpha,
        divergence=divergence,
        epsilon=epsilon,
        xi=xi,
        power_iterations=power_iterations,
    )
