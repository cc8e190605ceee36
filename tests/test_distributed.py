"""The collectives of data-parallel training reach the process group on the device it serves.

nccl refuses CPU tensors ("No backend type associated with device type cpu"); gloo takes them.
The old ``Dist.mean`` reduced a CPU tensor, so a multi-GPU run would have crashed at the end of
its first epoch. Here a process group that refuses tensors off its device, as nccl does, stands
in for nccl on a machine without GPUs; a real one-process gloo group checks the values, and a
real nccl group runs where there is a GPU.
"""

import pytest
import torch
import torch.distributed as dist

from gpner import distributed
from gpner.distributed import Dist


class _Refused(RuntimeError):
    pass


class _Reached(Exception):
    """The collective got a tensor its group accepts (raised to stop there: a meta tensor,
    which stands for the device, holds no values to reduce)."""


def _nccl_like(device_type: str):
    """A stand-in for ``dist.all_reduce``/``dist.broadcast`` of a group serving ``device_type``."""

    def collective(tensor, *args, **kwargs):
        if tensor.device.type != device_type:
            raise _Refused(f"No backend type associated with device type {tensor.device.type}")
        raise _Reached(tensor.device.type)

    return collective


@pytest.mark.parametrize("collective", ["mean", "decide", "average_gradients"])
def test_every_collective_uses_the_groups_device(monkeypatch, collective):
    monkeypatch.setattr(distributed.dist, "all_reduce", _nccl_like("meta"))
    monkeypatch.setattr(distributed.dist, "broadcast", _nccl_like("meta"))
    ddp = Dist(rank=0, world=2, device=torch.device("meta"))
    with pytest.raises(_Reached):
        if collective == "mean":
            ddp.mean({"loss": 1.5, "kl": 0.25})
        elif collective == "decide":
            ddp.decide(True, torch.device("meta"))
        else:  # gradients live where the model does: on the group's device
            layer = torch.nn.Linear(2, 2, device="meta")
            layer.weight.grad = torch.ones(2, 2, device="meta")
            ddp.average_gradients(layer)


@pytest.fixture
def gloo_group(monkeypatch):
    """A real one-process gloo group (loopback only)."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_mean_over_a_real_group(gloo_group):
    # One process, told it is one of two: the all-reduced sum is its own values, halved.
    ddp = Dist(rank=0, world=2, device="cpu")
    assert ddp.mean({"loss": 1.5, "kl": 0.25}) == {"kl": 0.125, "loss": 0.75}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for nccl")
def test_mean_over_a_real_nccl_group(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=device)
    try:
        ddp = Dist(rank=0, world=2, device=device)
        assert ddp.mean({"loss": 1.5}) == {"loss": 0.75}
        assert ddp.decide(True, device) is True
    finally:
        dist.destroy_process_group()
