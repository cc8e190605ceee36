"""Random-number state: capture, restore and replay, for training and for VAT.

One :class:`RNGState` serves both: VAT replays the torch state of its clean pass so that every
perturbed pass draws the same dropout masks (:meth:`RNGState.replay`), and the trainer saves the
whole process's state (Python, NumPy, torch) with each epoch so that a resumed run continues
exactly (:meth:`RNGState.capture` with ``host=True``, :meth:`RNGState.restore`).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["RNGState", "private_generator", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class RNGState:
    """The global RNG state of the CPU and of one accelerator (and optionally of Python and
    NumPy), to replay dropout masks or to resume a run.

    VAT compares the clean logits with logits of a perturbed input. If the perturbed passes drew
    fresh dropout masks, the divergence would mostly measure dropout noise (R-Drop's term) and the
    power iteration would chase it. So the state is captured just before the clean forward and
    every perturbed pass runs inside :meth:`replay`, which forks the RNG, rewinds it to the
    captured state (same masks, provided the passes have the clean pass's shapes, which they do)
    and, on exit, puts back the state it found, i.e. the one the clean forward left. The net
    effect on the global RNG is that of the clean forward alone, exactly as in a plain step.
    """

    cpu: Tensor
    device: torch.device
    accelerator: Tensor | None
    python: tuple | None = None  # random.getstate(), with host=True
    numpy: tuple | None = None  # np.random.get_state(), with host=True

    @classmethod
    def capture(cls, device: torch.device | str = "cpu", *, host: bool = False) -> RNGState:
        """Snapshot the CPU RNG and, for an accelerator ``device``, that device's RNG; with
        ``host`` also Python's and NumPy's global generators."""
        device = torch.device(device)
        accelerator = None
        if device.type != "cpu":
            accelerator = torch.get_device_module(device.type).get_rng_state(device)
        if not host:
            return cls(torch.get_rng_state(), device, accelerator)
        return cls(
            torch.get_rng_state(), device, accelerator, random.getstate(), np.random.get_state()
        )

    def restore(self) -> None:
        """Set the global generators to this state."""
        torch.set_rng_state(self.cpu)
        if self.accelerator is not None:
            torch.get_device_module(self.device.type).set_rng_state(self.accelerator, self.device)
        if self.python is not None:
            random.setstate(self.python)
        if self.numpy is not None:
            np.random.set_state(self.numpy)

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block from this state; the torch state from before the block is restored
        after (Python's and NumPy's are not touched)."""
        devices = [] if self.accelerator is None else [self.device]
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            torch.set_rng_state(self.cpu)
            if self.accelerator is not None:
                torch.get_device_module(self.device.type).set_rng_state(
                    self.accelerator, self.device
                )
            yield

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain containers (a resume state is read with ``weights_only=True``):
        ``{"python", "numpy", "torch", "cuda", "device"}``, NumPy's key array as an int64
        tensor."""
        numpy = None
        if self.numpy is not None:
            kind, keys, pos, has_gauss, cached = self.numpy
            numpy = (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)
        return {
            "python": self.python,
            "numpy": numpy,
            "torch": self.cpu,
            "cuda": self.accelerator,
            "device": str(self.device),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> RNGState:
        numpy = state.get("numpy")
        if numpy is not None:
            kind, keys, pos, has_gauss, cached = numpy
            numpy = (kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
        python = state.get("python")
        if python is not None:
            version, internal, gauss = python
            python = (version, tuple(internal), gauss)
        accelerator = state.get("cuda")
        device = torch.device(state.get("device", "cpu" if accelerator is None else "cuda"))
        if isinstance(accelerator, (list, tuple)):  # every device's state, as older runs saved
            accelerator = accelerator[device.index or 0] if accelerator else None
        return cls(state["torch"], device, accelerator, python, numpy)


def private_generator(device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded from the global CPU RNG without advancing it.

    VAT's random start direction comes from here, so that VAT consumes no global randomness beyond
    the model's own passes. The seed is the number the global stream would produce next, mixed
    with a constant so the private stream is not the global one's continuation.
    """
    with torch.random.fork_rng(devices=[]):
        seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    generator = torch.Generator(device=device)
    generator.manual_seed(seed ^ 0x1E37_79B9_7F4A_7C15)
    return generator
