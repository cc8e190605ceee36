"""Objectives: plain CE, R-Drop and VAT, against a tiny stand-in model with the real interface."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from gpner import functional as F
from gpner.heads import EfficientGlobalPointer, GlobalPointer
from gpner.regularizers import (
    DIVERGENCES,
    VAT,
    Plain,
    RDrop,
    RNGState,
    _per_example_normalize,
    build_objective,
    cross_entropy,
    factored_softmax_kl,
    rdrop_loss,
    vat_direction,
    vat_penalty,
)
from gpner.rng import private_generator


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny: intra-op threads only add overhead, and on a busy 2-core
    machine OpenMP threads contending with other processes made this module 8x slower
    (25 s against 3 s). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------ stand-in model


HEADS = {"gp": GlobalPointer, "egp": EfficientGlobalPointer}


class TinyModel(nn.Module):
    """Embedding + positions + one masked self-attention block with dropout + a span head.

    ``embed(input_ids) -> (B, L, H)``; ``span_factors(input_ids, attention_mask, inputs_embeds)``
    -> the head's SpanFactors, the interface the objectives are written against;
    ``forward(...)`` -> the head's materialised logits (B, C, L, L), or band (B, C, L, W) with
    ``max_width``, for the by-hand references. ``calls["passes"]`` counts encoder passes (either
    entry point).
    """

    def __init__(
        self,
        vocab=11,
        hidden=8,
        num_types=2,
        head_size=4,
        max_len=16,
        p=0.1,
        head="gp",
        max_width=None,
    ):
        super().__init__()
        self.word = nn.Embedding(vocab, hidden)
        self.position = nn.Embedding(max_len, hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.ff = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(p)
        self.head = HEADS[head](hidden, num_types, head_size, max_width=max_width)
        self.calls = {"embed": 0, "passes": 0}
        self.seen: list[Tensor] = []  # every inputs_embeds received, detached

    def embed(self, input_ids: Tensor) -> Tensor:
        self.calls["embed"] += 1
        return self.word(input_ids)

    def span_factors(self, input_ids=None, attention_mask=None, inputs_embeds=None):
        return self.head.factors(
            self.encode(input_ids, inputs_embeds, attention_mask), attention_mask
        )

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None) -> Tensor:
        return self.head(self.encode(input_ids, inputs_embeds, attention_mask), attention_mask)

    def encode(self, input_ids, inputs_embeds, attention_mask) -> Tensor:
        """-> hidden (B, L, H)."""
        self.calls["passes"] += 1
        if inputs_embeds is not None:
            self.seen.append(inputs_embeds.detach().clone())
        x = self.word(input_ids) if inputs_embeds is None else inputs_embeds  # (B, L, H)
        length = x.shape[1]
        x = self.dropout(x + self.position.weight[:length])
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(x.shape[-1])  # (B, L, L)
        if attention_mask is not None:
            scores = scores.masked_fill(~attention_mask[:, None, :], torch.finfo(x.dtype).min)
        return x + self.dropout(torch.tanh(self.ff(self.dropout(scores.softmax(-1)) @ v)))


@dataclass
class Batch:
    input_ids: Tensor  # (B, L)
    attention_mask: Tensor  # (B, L) bool
    spans: Tensor  # (N, 4)


def make_batch(lengths=(6, 4, 1), length=6, vocab=11, num_types=2, seed=0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (len(lengths), length), generator=g)
    am = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    ids = ids.masked_fill(~am, 0)
    spans = [[0, 0, 0, 1], [0, 1, 2, 4], [0, 1, 2, 2], [1, 0, 1, 3], [2, 1, 0, 0]]
    spans = [s for s in spans if s[0] < len(lengths) and s[3] < lengths[s[0]]]
    return Batch(ids, am, torch.tensor(spans))


def make_model(seed=0, dtype=torch.float32, **kwargs) -> TinyModel:
    torch.manual_seed(seed)
    return TinyModel(**kwargs).to(dtype)


def unit_directions(shape, attention_mask: Tensor, generator=None) -> Tensor:
    """Random (B, L, H) directions, zero on padding, unit norm per example over (L, H)."""
    d = torch.randn(shape, generator=generator).masked_fill(~attention_mask[..., None], 0.0)
    return d / d.norm(dim=(1, 2), keepdim=True).clamp_min(1e-30)


# ------------------------------------------------------------------- plain-loop float64 references


def _cells(attention_mask: Tensor, b: int):
    n = int(attention_mask[b].sum())
    return [(i, j) for i in range(n) for j in range(i, n)]


def ref_cross_entropy(logits: Tensor, spans: Tensor, attention_mask: Tensor) -> float:
    """log(1 + sum_neg e^s) + log(1 + sum_pos e^-s) per (b, c), averaged over (B, C)."""
    s = logits.double().tolist()
    gold = {tuple(r) for r in spans.tolist()}
    batch, types = logits.shape[:2]
    total = 0.0
    for b in range(batch):
        for c in range(types):
            neg = pos = 0.0
            for i, j in _cells(attention_mask, b):
                if (b, c, i, j) in gold:
                    pos += math.exp(-s[b][c][i][j])
                else:
                    neg += math.exp(s[b][c][i][j])
            total += math.log1p(neg) + math.log1p(pos)
    return total / (batch * types)


def ref_gp_kl(s: Tensor, t: Tensor, attention_mask: Tensor) -> float:
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    s, t, (batch, types) = s.double().tolist(), t.double().tolist(), s.shape[:2]
    total = 0.0
    for b in range(batch):
        for c in range(types):
            for i, j in _cells(attention_mask, b):
                x, y = s[b][c][i][j], t[b][c][i][j]
                total += (sig(x) - sig(y)) * (x - y)
    return total / (batch * types)


def ref_softmax_kl(s: Tensor, t: Tensor, attention_mask: Tensor) -> float:
    s, t, (batch, types) = s.double().tolist(), t.double().tolist(), s.shape[:2]
    total = 0.0
    for b in range(batch):
        for c in range(types):
            cells = _cells(attention_mask, b)
            if not cells:
                continue
            xs = [s[b][c][i][j] for i, j in cells]
            ys = [t[b][c][i][j] for i, j in cells]
            zx = sum(math.exp(x - max(xs)) for x in xs)
            zy = sum(math.exp(y - max(ys)) for y in ys)
            for x, y in zip(xs, ys):
                p, q = math.exp(x - max(xs)) / zx, math.exp(y - max(ys)) / zy
                total += (p - q) * (x - y)
    return total / (batch * types)


REFERENCES = {"gp_kl": ref_gp_kl, "softmax_kl": ref_softmax_kl}


def module_modes(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


# ------------------------------------------------------------------------------------- registry


def test_divergence_and_objective_names():
    assert DIVERGENCES["gp_kl"] is F.fused_global_pointer_kl
    assert DIVERGENCES["softmax_kl"] is factored_softmax_kl
    with pytest.raises(ValueError, match=r"gp_kl.*softmax_kl"):
        DIVERGENCES["kl"]
    with pytest.raises(ValueError, match=r"gp_kl.*softmax_kl"):
        RDrop(1.0, divergence="js")
    with pytest.raises(ValueError, match=r"gp_kl.*softmax_kl"):
        build_objective("vat", divergence="js")
    with pytest.raises(ValueError, match=r"none.*rdrop.*vat"):
        build_objective("adversarial")
    assert isinstance(build_objective("none"), Plain)
    rdrop = build_objective("rdrop", alpha=2.0, divergence="softmax_kl")
    assert isinstance(rdrop, RDrop) and (rdrop.alpha, rdrop.divergence) == (2.0, "softmax_kl")
    vat = build_objective("vat", alpha=0.5, epsilon=2.0, xi=1e-4, power_iterations=3)
    assert isinstance(vat, VAT)
    assert (vat.alpha, vat.epsilon, vat.xi, vat.power_iterations) == (0.5, 2.0, 1e-4, 3)
    with pytest.raises(ValueError, match="epsilon"):
        VAT(1.0, epsilon=0.0)
    with pytest.raises(ValueError, match="power_iterations"):
        VAT(1.0, power_iterations=-1)


def test_plain_is_the_sparse_cross_entropy():
    model, batch = make_model(), make_batch()
    torch.manual_seed(3)
    loss, parts = Plain()(model, batch)
    torch.manual_seed(3)
    factors = model.span_factors(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    assert torch.equal(loss, cross_entropy(factors, batch))
    assert parts == {"ce": loss.item(), "reg": 0.0}
    logits = F.factors_to_logits(factors)  # (B, C, L, L)
    assert ref_cross_entropy(logits, batch.spans, batch.attention_mask) == pytest.approx(
        loss.item(), rel=1e-5
    )


# --------------------------------------------------------------------------------------- R-Drop


@pytest.mark.parametrize("divergence", ["gp_kl", "softmax_kl"])
@pytest.mark.parametrize("dropout_off", ["p=0", "eval"])
def test_rdrop_term_is_exactly_zero_without_dropout(divergence, dropout_off):
    # Measured: on CPU the two halves of the doubled batch are bit-identical in float32, so the
    # term is exactly 0, not merely small.
    model = make_model(p=0.0) if dropout_off == "p=0" else make_model(p=0.3).eval()
    batch = make_batch()
    loss, parts = RDrop(1.0, divergence)(model, batch)
    plain, _ = Plain()(model, batch)
    assert parts["reg"] == 0.0
    assert loss.item() == pytest.approx(plain.item(), rel=1e-6)


@pytest.mark.parametrize("divergence", ["gp_kl", "softmax_kl"])
def test_rdrop_is_mean_ce_plus_alpha_divergence_by_hand(divergence):
    model, batch = make_model(p=0.3, dtype=torch.float64), make_batch()
    ids, am = batch.input_ids, batch.attention_mask
    alpha = 0.7
    torch.manual_seed(11)
    loss, parts = RDrop(alpha, divergence)(model, batch)
    assert model.calls["passes"] == 1  # both passes in one call on the doubled batch
    # By hand: the same seeded call on the doubled batch (a 2B-row call draws other dropout masks
    # than two B-row calls, so it cannot be replayed as two calls), then plain-loop arithmetic.
    torch.manual_seed(11)
    logits = model(input_ids=torch.cat([ids, ids]), attention_mask=torch.cat([am, am]))
    s1, s2 = logits[:3], logits[3:]
    assert not torch.equal(s1, s2)  # two different dropout passes
    ce = (ref_cross_entropy(s1, batch.spans, am) + ref_cross_entropy(s2, batch.spans, am)) / 2
    reg = REFERENCES[divergence](s1, s2, am)
    assert reg > 1e-4
    assert parts["ce"] == pytest.approx(ce, rel=1e-10)
    assert parts["reg"] == pytest.approx(reg, rel=1e-10)
    assert loss.item() == pytest.approx(ce + alpha * reg, rel=1e-10)


@pytest.mark.parametrize("divergence", ["gp_kl", "softmax_kl"])
def test_rdrop_with_alpha_zero_is_the_averaged_ce_of_two_passes_without_a_divergence(divergence):
    """The two-pass control ("rdrop-none" in the accuracy grid): two dropout passes, the CE
    averaged, and the divergence never computed."""
    model, batch = make_model(p=0.3, dtype=torch.float64), make_batch()
    ids, am = batch.input_ids, batch.attention_mask

    def never(*args):
        raise AssertionError("the divergence was computed at alpha 0")

    torch.manual_seed(11)
    loss, ce, reg = rdrop_loss(model, batch, 0.0, never)
    assert model.calls["passes"] == 1
    assert reg.item() == 0.0 and torch.equal(loss, ce)
    torch.manual_seed(11)
    logits = model(input_ids=torch.cat([ids, ids]), attention_mask=torch.cat([am, am]))
    s1, s2 = logits[:3], logits[3:]
    assert not torch.equal(s1, s2)  # two different dropout passes
    want = (ref_cross_entropy(s1, batch.spans, am) + ref_cross_entropy(s2, batch.spans, am)) / 2
    assert loss.item() == pytest.approx(want, rel=1e-10)
    # The same dropout masks and CE as R-Drop with a divergence: only the divergence term goes.
    torch.manual_seed(11)
    _, parts = RDrop(0.5, divergence)(model, batch)
    assert parts["ce"] == pytest.approx(loss.item(), rel=1e-12) and parts["reg"] > 0
    torch.manual_seed(11)
    loss0, parts0 = RDrop(0.0, divergence)(model, batch)
    assert parts0 == {"ce": loss.item(), "reg": 0.0} and loss0.item() == loss.item()
    # It trains: the gradient reaches the encoder, and a negative weight is refused.
    loss.backward()
    assert model.qkv.weight.grad is not None and model.qkv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="alpha"):
        rdrop_loss(model, batch, -1.0)


# ------------------------------------------------------------------------------------------ VAT


def clean_pass(model: TinyModel, batch: Batch):
    """What VAT does before the power iteration: (embeds, rng_state, clean factors)."""
    embeds = model.embed(batch.input_ids)
    rng_state = RNGState.capture(embeds.device)
    factors = model.span_factors(inputs_embeds=embeds, attention_mask=batch.attention_mask)
    return embeds, rng_state, factors


@pytest.mark.parametrize("divergence", ["gp_kl", "softmax_kl"])
@pytest.mark.parametrize("train", [False, True])
def test_vat_direction_increases_divergence_more_than_random(divergence, train):
    model, batch = make_model(p=0.1), make_batch()
    model.train(train)
    am, div = batch.attention_mask, DIVERGENCES[divergence]
    adversarial = random = 0.0
    for seed in range(6):
        torch.manual_seed(seed)
        embeds, rng_state, clean = clean_pass(model, batch)
        d = vat_direction(model, embeds, am, clean, divergence=div, rng_state=rng_state)
        # Unit norm per example; with softmax_kl a one-token example has a single valid cell per
        # type, whose softmax is 1 whatever the input: no gradient, so no direction (zero).
        norms = d.norm(dim=(1, 2))
        expected = am.sum(1) > (1 if divergence == "softmax_kl" else 0)
        assert torch.allclose(norms, expected.float(), atol=1e-5)
        assert (d[~am] == 0).all()
        r = unit_directions(d.shape, am, torch.Generator().manual_seed(100 + seed))
        kw = {"divergence": div, "rng_state": rng_state}
        adversarial += vat_penalty(model, embeds, am, d, clean, **kw).item()
        random += vat_penalty(model, embeds, am, r, clean, **kw).item()
    assert adversarial > 2 * random  # measured about 4x (gp_kl) and 10x (softmax_kl)


def test_vat_replays_the_clean_pass_dropout_masks():
    model, batch = make_model(p=0.5), make_batch()
    am = batch.attention_mask
    torch.manual_seed(0)
    embeds, rng_state, clean = clean_pass(model, batch)
    zero = torch.zeros_like(embeds)
    # Same masks: an unperturbed pass reproduces the clean logits bit for bit.
    assert vat_penalty(model, embeds, am, zero, clean, rng_state=rng_state).item() == 0.0
    # Fresh masks would make D measure dropout noise instead.
    assert vat_penalty(model, embeds, am, zero, clean).item() > 1e-3


def test_vat_is_ce_plus_alpha_penalty_at_the_power_iteration_direction():
    model, batch = make_model(p=0.2), make_batch()
    am = batch.attention_mask
    objective = VAT(alpha=0.7, epsilon=0.5, xi=1e-3, power_iterations=2)
    torch.manual_seed(4)
    loss, parts = objective(model, batch)
    assert model.calls == {"embed": 1, "passes": 1 + 2 + 1}
    grads = torch.autograd.grad(loss, list(model.parameters()))

    torch.manual_seed(4)
    embeds, rng_state, clean = clean_pass(model, batch)
    d = vat_direction(model, embeds, am, clean, power_iterations=2, rng_state=rng_state)
    penalty = vat_penalty(model, embeds, am, 0.5 * d, clean, rng_state=rng_state)
    expected = cross_entropy(clean, batch) + 0.7 * penalty
    assert torch.equal(loss, expected)
    assert parts == pytest.approx({"ce": cross_entropy(clean, batch).item(), "reg": penalty.item()})
    by_hand = torch.autograd.grad(expected, list(model.parameters()), retain_graph=True)
    for g, h in zip(grads, by_hand):
        assert torch.equal(g, h)
    # The penalty's gradient reaches the embedding table through the adversarial pass too.
    (table_grad,) = torch.autograd.grad(penalty, [model.word.weight])
    assert table_grad[batch.input_ids[am]].abs().sum() > 0


def test_vat_probe_and_perturbation_sizes():
    # The probe has norm xi * |x_b| (relative), r_adv has norm epsilon (absolute), per example
    # over its real tokens; padding is never perturbed; an empty example is left alone.
    model, batch = make_model(p=0.0), make_batch(lengths=(6, 4, 1, 0))
    am = batch.attention_mask
    with torch.no_grad():
        model.word.weight.mul_(3.0)
    VAT(alpha=1.0, epsilon=0.25, xi=1e-2)(model, batch)
    clean, probe, adversarial = model.seen
    size = lambda x: x.norm(dim=(1, 2)).double()  # noqa: E731
    real = clean.masked_fill(~am[..., None], 0.0)
    assert torch.allclose(size(probe - clean), 1e-2 * size(real), rtol=1e-4)
    assert torch.allclose(size(adversarial - clean), 0.25 * (am.sum(1) > 0).double(), rtol=1e-4)
    assert ((probe - clean)[~am] == 0).all() and ((adversarial - clean)[~am] == 0).all()


@pytest.mark.parametrize("power_iterations", [0, 1, 3])
def test_vat_forward_count(power_iterations):
    model, batch = make_model(), make_batch()
    VAT(1.0, power_iterations=power_iterations)(model, batch)
    assert model.calls == {"embed": 1, "passes": power_iterations + 2}


@pytest.mark.parametrize("train", [False, True])
def test_objectives_have_no_side_effects(train):
    model, batch = make_model(p=0.2), make_batch()
    model.train(train)
    model.head.train(not train)  # mixed modes must survive too
    modes = module_modes(model)
    model.qkv.weight.grad = torch.full_like(model.qkv.weight, 0.25)  # an accumulated gradient
    model.ff.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]

    torch.manual_seed(8)
    before = torch.get_rng_state()
    plain, _ = Plain()(model, batch)
    after_plain = torch.get_rng_state()
    torch.set_rng_state(before)
    loss, parts = VAT(1.0, power_iterations=2)(model, batch)

    # Nothing beyond the clean forward touched the global RNG: same state as a plain step
    # (unchanged when no dropout is active) and the same dropout masks, hence the same CE.
    assert torch.equal(torch.get_rng_state(), after_plain)
    if not train:
        assert torch.equal(after_plain, before)
    assert parts["ce"] == plain.item()
    assert module_modes(model) == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    for name, p in model.named_parameters():
        if name == "qkv.weight":
            assert torch.equal(p.grad, torch.full_like(p, 0.25))
        else:
            assert p.grad is None, name
    assert loss.requires_grad


def test_vat_under_no_grad_still_computes_the_penalty():
    model, batch = make_model(), make_batch()
    with torch.no_grad():
        loss, parts = VAT(1.0)(model, batch)
    assert not loss.requires_grad and parts["reg"] > 0


# ----------------------------------------------------- fused objectives vs materialised logits


def objective_by_hand(kind, divergence, model, batch, seed, **kw):
    """The objective on materialised logits with the plain drop-in losses: ``(loss, ce, reg)``.

    Written out step by step as the objectives were before the fused path: the model's
    ``forward`` logits (B, C, L, L), or band (B, C, L, W) with ``max_width``, then
    ``F.sparse_multilabel_categorical_crossentropy``, ``F.global_pointer_kl`` / ``F.softmax_kl``.
    Same seeds, same forward calls in the same order, so the same dropout masks.
    """
    width = model.head.max_width
    ids, am = batch.input_ids, batch.attention_mask
    size = ids.shape[0]
    div_fn = {"gp_kl": F.global_pointer_kl, "softmax_kl": F.softmax_kl}[divergence]

    def ce(logits: Tensor) -> Tensor:
        return F.sparse_multilabel_categorical_crossentropy(
            logits, batch.spans, am, "mean", max_width=width
        )

    def div(s: Tensor, t: Tensor, reduction: str) -> Tensor:
        return div_fn(s, t, am, reduction, max_width=width)

    torch.manual_seed(seed)
    if kind == "none":
        loss = ce(model(input_ids=ids, attention_mask=am))
        return loss, loss, torch.zeros(())
    if kind == "rdrop":
        logits = model(input_ids=torch.cat([ids, ids]), attention_mask=torch.cat([am, am]))
        s1, s2 = logits[:size], logits[size:]  # (B, C, L, L or W) each
        c, r = (ce(s1) + ce(s2)) / 2, div(s1, s2, "mean")
        return c + kw["alpha"] * r, c, r
    embeds = model.embed(ids)  # (B, L, H)
    rng_state = RNGState.capture(embeds.device)
    logits = model(inputs_embeds=embeds, attention_mask=am)
    c, target, x = ce(logits), logits.detach(), embeds.detach()
    noise = torch.randn(x.shape, generator=private_generator(x.device), dtype=x.dtype)
    d = _per_example_normalize(noise, am)
    step = kw["xi"] * x.masked_fill(~am[..., None], 0.0).norm(dim=(1, 2), keepdim=True)
    for _ in range(kw["power_iterations"]):
        d.requires_grad_(True)
        with rng_state.replay():
            perturbed = model(inputs_embeds=x + step * d, attention_mask=am)
        (g,) = torch.autograd.grad(div(target, perturbed, "sum"), [d])
        d = _per_example_normalize(g, am)
    with rng_state.replay():
        adversarial = model(inputs_embeds=embeds + kw["epsilon"] * d.detach(), attention_mask=am)
    r = div(target, adversarial, "mean")
    return c + kw["alpha"] * r, c, r


OBJECTIVE_CASES = [
    ("none", "gp_kl"),
    ("rdrop", "gp_kl"),
    ("rdrop", "softmax_kl"),
    ("vat", "gp_kl"),
    ("vat", "softmax_kl"),
]


@pytest.mark.parametrize("max_width", [None, 2], ids=["full", "band2"])
@pytest.mark.parametrize("head", ["gp", "egp"])
@pytest.mark.parametrize("kind, divergence", OBJECTIVE_CASES)
def test_fused_objectives_equal_the_materialised_logits_by_hand(kind, divergence, head, max_width):
    # float64, dropout on: the fused objectives (factors, blocked losses) must reproduce the
    # step-by-step computation on materialised logits, value and every parameter gradient. With
    # max_width=2 the gold spans of width 3 fall outside the band and are ignored by both.
    kw = {"alpha": 0.7, "epsilon": 0.5, "xi": 1e-3, "power_iterations": 2}
    model = make_model(p=0.2, dtype=torch.float64, head=head, max_width=max_width)
    batch = make_batch(lengths=(6, 4, 1, 0))
    params = list(model.parameters())
    objective = build_objective(kind, divergence=divergence, **kw)

    torch.manual_seed(5)
    loss, parts = objective(model, batch)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    want, want_ce, want_reg = objective_by_hand(kind, divergence, model, batch, 5, **kw)
    want_grads = torch.autograd.grad(want, params, allow_unused=True)

    assert loss.dtype == torch.float64
    if kind != "none":
        assert want_reg.item() > 1e-6  # a real regulariser term, not a trivial 0 = 0
    tight = {"rtol": 1e-10, "atol": 1e-13}
    torch.testing.assert_close(loss, want, **tight)
    assert parts["ce"] == pytest.approx(want_ce.item(), rel=1e-10, abs=1e-13)
    assert parts["reg"] == pytest.approx(want_reg.item(), rel=1e-10, abs=1e-13)
    for (name, _), g, h in zip(model.named_parameters(), grads, want_grads):
        g = torch.zeros_like(_) if g is None else g
        h = torch.zeros_like(_) if h is None else h
        torch.testing.assert_close(g, h, **tight, msg=lambda m, name=name: f"{name}: {m}")


# ---------------------------------------------------------------------------------- gradcheck


class _Wrapped(nn.Module):
    """So that ``torch.func.functional_call`` swaps the parameters seen by ``model.embed`` too."""

    def __init__(self, model: nn.Module, fn):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self) -> Tensor:
        return self.fn(self.model)


def _gradcheck(model: nn.Module, fn) -> bool:
    """Full (element by element) finite-difference check over all of the model's parameters."""
    wrapped = _Wrapped(model, fn)
    names = [n for n, _ in wrapped.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for _, p in wrapped.named_parameters())

    def f(*values):
        torch.manual_seed(0)  # fixes the dropout masks for every evaluation
        return torch.func.functional_call(wrapped, dict(zip(names, values)), ())

    with torch.random.fork_rng(devices=[]):
        return torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-6, rtol=1e-4)


def _tiny64() -> tuple[TinyModel, Batch]:
    # 62 parameters: a full (every-element) finite-difference check stays well under a second.
    model = make_model(vocab=5, hidden=2, head_size=2, max_len=4, p=0.2, dtype=torch.float64)
    batch = make_batch(lengths=(4, 2), length=4, vocab=5)
    return model, batch


def test_gradcheck_plain():
    model, batch = _tiny64()
    assert _gradcheck(model, lambda m: Plain()(m, batch)[0])


@pytest.mark.parametrize("divergence", ["gp_kl", "softmax_kl"])
def test_gradcheck_rdrop(divergence):
    model, batch = _tiny64()
    assert _gradcheck(model, lambda m: RDrop(0.7, divergence)(m, batch)[0])


@pytest.mark.parametrize("divergence", ["gp_kl", "softmax_kl"])
def test_gradcheck_vat_at_a_fixed_adversarial_direction(divergence):
    model, batch = _tiny64()
    am, div = batch.attention_mask, DIVERGENCES[divergence]
    # r_adv and the clean target are held fixed (VAT treats both as constants).
    torch.manual_seed(0)
    embeds, rng_state, target = clean_pass(model, batch)
    r_adv = 0.5 * vat_direction(model, embeds, am, target, divergence=div, rng_state=rng_state)
    target = target.detach()

    def loss(m):
        embeds, rng_state, clean = clean_pass(m, batch)
        penalty = vat_penalty(m, embeds, am, r_adv, target, divergence=div, rng_state=rng_state)
        return cross_entropy(clean, batch) + 0.7 * penalty

    assert _gradcheck(model, loss)


# ------------------------------------------------------------------------------------ NaN-free


@pytest.mark.parametrize("divergence", ["gp_kl", "softmax_kl"])
@pytest.mark.parametrize("kind", ["none", "rdrop", "vat"])
@pytest.mark.parametrize("logit_scale", [1.0, 300.0])
def test_masked_cells_never_produce_nan(divergence, kind, logit_scale):
    # float32, padding in every shape: full, partial, one token and an all-padding example;
    # logit_scale=300 makes the head confident (|s| in the hundreds) to stress exp and sigmoid.
    model, batch = make_model(p=0.1), make_batch(lengths=(6, 3, 1, 0))
    with torch.no_grad():
        model.head.proj.weight.mul_(math.sqrt(logit_scale))
    objective = build_objective(kind, alpha=1.0, divergence=divergence)
    torch.manual_seed(0)
    loss, parts = objective(model, batch)
    assert torch.isfinite(loss) and all(math.isfinite(v) for v in parts.values())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
