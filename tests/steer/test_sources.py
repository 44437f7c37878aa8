"""steer.sources.Fingerprint: a look sees any tensor's values changed through ``.data``, at two
dispatches a float32 tensor (a compiled editor looks at every weight at each edit's start)."""

import pytest
import torch
from torch.profiler import profile

from steer.sources import Fingerprint


def _tensors() -> list[torch.Tensor]:
    """Sizes below, at and above 65536 values (the rows the first fingerprint cut tensors into),
    a bfloat16 one, and an integer buffer that is not looked at."""
    generator = torch.Generator().manual_seed(0)
    shapes = [(3,), (256, 256), (640, 700), (5, 7, 11)]
    tensors = [torch.randn(shape, generator=generator) for shape in shapes]
    return [*tensors, torch.randn(300, generator=generator).bfloat16(), torch.arange(4)]


@pytest.mark.parametrize("index", range(5))
@pytest.mark.parametrize("change", ["one value", "scaled", "negated"])
def test_a_change_of_any_tensor_through_data_is_seen_and_nothing_else(index, change):
    tensors = _tensors()
    fingerprint = Fingerprint()
    assert not fingerprint.changed(tensors)
    assert not fingerprint.changed(tensors)
    with torch.no_grad():
        data = tensors[index].data.view(-1)
        if change == "one value":
            data[-1] += 0.25  # the last value, which the first fingerprint read through its tail
        elif change == "scaled":
            data.mul_(2)
        else:
            data.neg_()
    assert fingerprint.changed(tensors)
    assert not fingerprint.changed(tensors)


def test_a_look_is_two_dispatches_a_float32_tensor():
    """It was 11 (slices, views, two matmuls, a sum and an add a tensor): 16722 at each edit's
    start for AudioLDM2's UNet, whose 1520 tensors now take 3042."""
    tensors = [torch.randn(n) for n in range(100, 70100, 1000)]  # 70 tensors
    fingerprint = Fingerprint()
    fingerprint.changed(tensors)
    with profile() as prof:
        fingerprint.changed(tensors)
    top = [event.name for event in prof.events() if event.cpu_parent is None]
    assert len(top) <= 2 * len(tensors) + 4, sorted(set(top))
