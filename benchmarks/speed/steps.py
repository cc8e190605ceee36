"""The measured steps: one configuration, several implementations of the same computation.

A *step* is forward + backward of, per mode:

* ``headloss``: one pass of the head over dropout(hidden) and the multi-label cross-entropy;
* ``rdrop``: two passes of the head over two dropouts of the same hidden states, both
  cross-entropies and the GlobalPointer divergence, loss ``(ce1 + ce2) / 2 + alpha * D``;
* ``rdrop_nokl``: the same two passes and cross-entropies without the divergence (so the
  divergence's own cost is ``rdrop - rdrop_nokl``).

Implementations:

* ``reference``: typical public code (benchmarks/speed/reference.py), dense labels built per step;
* ``logits``: gpner's heads materialising logits, then gpner's drop-in losses on them;
* ``fused``: gpner's heads returning factors, then the fused losses (the fast training path);
* ``fused_compiled``: ``fused`` with gpner's optional ``torch.compile``-fused block kernels
  (``gpner.backends.compiled_kernels``); its compilation time is measured separately;
* ``fused_baseline``: ``fused`` with gpner imported from another source tree (``--baseline``:
  e.g. the commit a change started from), so old and new code are timed side by side;
* ``gemm``: not a head step but the roofline's rate: one linear forward + backward of the
  GlobalPointer projection's shape (see roofline.py).

``hidden`` requires grad, so every step includes the gradient into the encoder.
"""

from __future__ import annotations

import dataclasses
import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable

import torch
from torch import Tensor, nn

from benchmarks.speed import reference as ref
from benchmarks.speed import roofline
from gpner import functional as F
from gpner.backends import compiled_kernels
from gpner.heads import build_head

ALPHA = 1.0
DROPOUT = 0.1


@dataclasses.dataclass(frozen=True)
class Config:
    head: str = "global_pointer"  # or "efficient_global_pointer"
    mode: str = "rdrop"  # "headloss", "rdrop" or "rdrop_nokl"
    batch: int = 16
    types: int = 10
    head_size: int = 64
    hidden: int = 768
    length: int = 512
    max_width: int | None = None  # gpner implementations only

    @property
    def cells_bytes(self) -> int:
        """Bytes of one (B, C, L, L) float32 tensor: the unit memory is reported in."""
        return self.batch * self.types * self.length * self.length * 4

    def key(self) -> str:
        width = f"-W{self.max_width}" if self.max_width else ""
        return f"{self.head}-{self.mode}-H{self.hidden}-L{self.length}{width}"


@dataclasses.dataclass
class Inputs:
    hidden: Tensor  # (B, L, H), requires grad
    attention_mask: Tensor  # (B, L) bool
    spans: Tensor  # (N, 4) [b, c, i, j], all shorter than 16 tokens


def make_inputs(cfg: Config, seed: int = 0) -> Inputs:
    g = torch.Generator().manual_seed(seed)
    b, length = cfg.batch, cfg.length
    hidden = torch.randn(b, length, cfg.hidden, generator=g).requires_grad_()
    lengths = length - torch.randint(0, max(1, length // 4), (b,), generator=g)
    lengths[0] = length  # the batch is padded to its longest example
    attention_mask = torch.arange(length)[None, :] < lengths[:, None]
    rows = []
    per_example = max(1, length // 16)
    for bb in range(b):
        n = int(lengths[bb])
        starts = torch.randint(0, n, (per_example,), generator=g)
        widths = torch.randint(0, 16, (per_example,), generator=g)
        ends = torch.minimum(starts + widths, torch.tensor(n - 1))
        types = torch.randint(0, cfg.types, (per_example,), generator=g)
        rows.append(torch.stack([torch.full_like(starts, bb), types, starts, ends], -1))
    return Inputs(hidden, attention_mask, torch.cat(rows))


def make_heads(cfg: Config, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(gpner head, reference head) computing the same function."""
    torch.manual_seed(seed)
    head = build_head(cfg.head, cfg.hidden, cfg.types, cfg.head_size, max_width=cfg.max_width)
    reference = ref.build(cfg.head, cfg.hidden, cfg.types, cfg.head_size)
    ref.copy_weights_from_gpner(reference, head)
    return head, reference


def _passes(cfg: Config) -> int:
    return 1 if cfg.mode == "headloss" else 2


def reference_step(cfg: Config, head: nn.Module, x: Inputs, dropout: float = DROPOUT) -> Tensor:
    shape = (cfg.batch, cfg.types, cfg.length, cfg.length)
    labels = ref.dense_labels(x.spans, shape)
    logits = [
        head(nn.functional.dropout(x.hidden, dropout), x.attention_mask)
        for _ in range(_passes(cfg))
    ]
    ce = [ref.global_pointer_crossentropy(labels, s) for s in logits]
    if cfg.mode == "headloss":
        return ce[0]
    loss = (ce[0] + ce[1]) / 2
    if cfg.mode == "rdrop":
        loss = loss + ALPHA * ref.global_pointer_divergence(logits[0], logits[1], x.attention_mask)
    return loss


def logits_step(cfg: Config, head: nn.Module, x: Inputs, dropout: float = DROPOUT) -> Tensor:
    w = cfg.max_width
    logits = [
        head(nn.functional.dropout(x.hidden, dropout), x.attention_mask)
        for _ in range(_passes(cfg))
    ]
    ce = [
        F.sparse_multilabel_categorical_crossentropy(s, x.spans, x.attention_mask, max_width=w)
        for s in logits
    ]
    if cfg.mode == "headloss":
        return ce[0]
    loss = (ce[0] + ce[1]) / 2
    if cfg.mode == "rdrop":
        kl = F.global_pointer_kl(logits[0], logits[1], x.attention_mask, max_width=w)
        loss = loss + ALPHA * kl
    return loss


def fused_step(
    cfg: Config,
    head: nn.Module,
    x: Inputs,
    dropout: float = DROPOUT,
    F=F,  # noqa: N803
) -> Tensor:
    factors = [
        head.factors(nn.functional.dropout(x.hidden, dropout), x.attention_mask)
        for _ in range(_passes(cfg))
    ]
    if cfg.mode == "headloss":
        return F.fused_crossentropy(factors[0], x.spans)
    if cfg.mode == "rdrop_nokl":
        ce = [F.fused_crossentropy(f, x.spans) for f in factors]
        return (ce[0] + ce[1]) / 2
    ce1, ce2, kl = F.fused_rdrop_losses(factors[0], factors[1], x.spans)
    return (ce1 + ce2) / 2 + ALPHA * kl


STEPS: dict[str, Callable[..., Tensor]] = {
    "reference": reference_step,
    "logits": logits_step,
    "fused": fused_step,
}


_BASELINES: dict[str, tuple] = {}


def load_baseline(src: str) -> tuple:
    """``(functional, heads)`` of the gpner package under ``src`` (a ``src`` directory, e.g. of
    ``git archive`` of an older commit), imported next to the current gpner.

    The current ``gpner`` modules are set aside while the other tree is imported and put back
    afterwards; the baseline's modules keep their references to each other (``heads`` binds
    its ``functional`` at import), so both versions run side by side in one process.
    """
    if src in _BASELINES:
        return _BASELINES[src]

    def ours() -> dict:
        return {k: m for k, m in sys.modules.items() if k == "gpner" or k.startswith("gpner.")}

    current = ours()
    for name in current:
        del sys.modules[name]
    try:
        # The other tree's gpner package, found in ``src`` alone (the import path untouched): its
        # submodules are found through the package's own ``__path__``.
        spec = importlib.machinery.PathFinder.find_spec("gpner", [src])
        if spec is None:
            raise RuntimeError(f"no gpner package under {src}")
        package = importlib.util.module_from_spec(spec)
        sys.modules["gpner"] = package
        spec.loader.exec_module(package)
        import gpner.functional as base_functional
        import gpner.heads as base_heads
    finally:
        for name in ours():
            del sys.modules[name]
        sys.modules.update(current)
    if base_functional is F:
        raise RuntimeError(f"{src} did not provide its own gpner")
    _BASELINES[src] = (base_functional, base_heads)
    return _BASELINES[src]


def implementation(cfg: Config, name: str, seed: int = 0, baseline: str | None = None):
    """A zero-argument callable running one forward + backward step of ``name``.

    ``*_compiled`` runs the gpner implementation inside ``gpner.backends.compiled_kernels()``
    (its first call compiles). ``impl@mode`` runs ``impl`` in another
    mode than ``cfg.mode`` (to time modes side by side). ``fused_baseline`` runs ``fused`` with
    the gpner under ``baseline`` (see :func:`load_baseline`); ``gemm`` the roofline's GEMM.
    """
    if "@" in name:
        name, mode = name.split("@")
        cfg = dataclasses.replace(cfg, mode=mode)
    if name == "gemm":
        return roofline.gemm_step(cfg.batch, cfg.length, cfg.hidden, cfg.types, cfg.head_size)
    head, reference = make_heads(cfg, seed)
    x = make_inputs(cfg, seed)
    module = reference if name == "reference" else head
    functional = F
    if name == "fused_baseline":
        if baseline is None:
            raise ValueError("fused_baseline needs a baseline source tree")
        functional, base_heads = load_baseline(baseline)
        module = base_heads.build_head(
            cfg.head, cfg.hidden, cfg.types, cfg.head_size, max_width=cfg.max_width
        )
        module.load_state_dict(head.state_dict())
        name = "fused"
    compiled = name.endswith("_compiled")
    fn = STEPS[name.removesuffix("_compiled")]
    kwargs = {"F": functional} if fn is fused_step else {}

    def step() -> float:
        with compiled_kernels(compiled):
            module.zero_grad(set_to_none=True)
            x.hidden.grad = None
            loss = fn(cfg, module, x, **kwargs)
            loss.backward()
        return float(loss.detach())

    return step


def parity(cfg: Config, seed: int = 0, baseline: str | None = None) -> dict[str, float]:
    """Loss values of every implementation without dropout: they must agree."""
    head, reference = make_heads(cfg, seed)
    x = make_inputs(cfg, seed)
    with torch.no_grad():
        out = {
            "reference": float(reference_step(cfg, reference, x, 0.0)),
            "logits": float(logits_step(cfg, head, x, 0.0)),
            "fused": float(fused_step(cfg, head, x, 0.0)),
        }
        if baseline is not None:
            functional, base_heads = load_baseline(baseline)
            old = base_heads.build_head(
                cfg.head, cfg.hidden, cfg.types, cfg.head_size, max_width=cfg.max_width
            )
            old.load_state_dict(head.state_dict())
            out["fused_baseline"] = float(fused_step(cfg, old, x, 0.0, F=functional))
    return out
