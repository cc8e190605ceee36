"""Pure math of GlobalPointer NER: rotary embeddings, span logits, masks, losses, divergences.

Shape letters used throughout:
    B batch, C entity types, L tokens, D head size, H hidden size, N gold spans,
    W maximum span width (banded layout).

Where to read what:

* :mod:`.rope` -- rotary position embeddings.
* :mod:`.layout` -- valid cells, the full (B, C, L, L) and band (B, C, L, W) layouts, decoding
  cells above a threshold.
* :mod:`.logits` -- GlobalPointer / Efficient GlobalPointer logits and :class:`SpanFactors`,
  their factored form.
* :mod:`.cells` -- the divergence ``D(s, t)`` of one cell, its gradient, and its derivation.
* :mod:`.losses` -- the public losses and divergences, on logits (drop-in) or on factors
  (fused: no (B, C, L, L) tensor at all), one ``reduction`` vocabulary (:mod:`.reduction`).
* :mod:`.kd` -- knowledge-distillation terms (the divergences above and the squared error) with
  a temperature and the teacher floor of a sparse teacher cache.
* :mod:`.reference` -- dense textbook definitions, the oracle of the tests.
* :mod:`._blocked` -- the cache-blocked engine the losses run on, with optional compiled
  kernels (:func:`gpner.backends.compiled_kernels`).

Masks are bool. Invalid cells contribute exactly zero to every loss and divergence, with zero
gradient, even where the logits hold ``-inf`` (``-inf - -inf`` is NaN, so no arithmetic ever
touches an invalid cell's value). Half-precision inputs are accumulated in float32.
"""

from .cells import gp_kl_cell, gp_kl_cell_grad
from .kd import apply_floor, distillation_term, squared_error
from .layout import (
    band_mask,
    band_to_dense,
    band_to_spans,
    dense_to_band,
    invalid_cells,
    select_cells,
    span_mask,
    spans_to_band,
)
from .logits import (
    SpanFactors,
    efficient_global_pointer_factors,
    efficient_global_pointer_logits,
    factors_to_logits,
    global_pointer_factors,
    global_pointer_logits,
    projected_factors,
)
from .losses import (
    fused_crossentropy,
    fused_global_pointer_kl,
    fused_rdrop_losses,
    global_pointer_kl,
    multilabel_categorical_crossentropy,
    softmax_kl,
    softmax_kl_all,
    sparse_multilabel_categorical_crossentropy,
)
from .rope import rope

__all__ = [
    "rope",
    "span_mask",
    "band_mask",
    "invalid_cells",
    "global_pointer_logits",
    "efficient_global_pointer_logits",
    "SpanFactors",
    "global_pointer_factors",
    "efficient_global_pointer_factors",
    "factors_to_logits",
    "projected_factors",
    "gp_kl_cell",
    "gp_kl_cell_grad",
    "multilabel_categorical_crossentropy",
    "sparse_multilabel_categorical_crossentropy",
    "global_pointer_kl",
    "softmax_kl",
    "softmax_kl_all",
    "fused_crossentropy",
    "fused_global_pointer_kl",
    "fused_rdrop_losses",
    "dense_to_band",
    "band_to_dense",
    "spans_to_band",
    "band_to_spans",
    "select_cells",
    "squared_error",
    "distillation_term",
    "apply_floor",
]
