"""A whole editor step as one CUDA graph: captured once, replayed for every later step
(``Performance(step_graph=True)``).

Compiled calls replayed as CUDA graphs still leave the host work around them to every step:
dynamo's guards, AOTAutograd's wrappers (Python work per graph input: every parameter of the
UNet is one), the autograd engine's backward pass, the losses' eager ops and the optimiser. On
the CPU that was 15.5 ms of a compiled SteerMusic+ step on the real-size UNet (``python -m
benchmarks.host_time --autograd``), against the 2.5 ms a step of a 1-s, 400-step edit. A
replayed step graph launches the step's kernels (both latents' noising, the denoiser calls, the
backward pass, the losses and the optimiser step) in one call.

What a capture fixes: the tensors the step reads and writes (the latent, its gradient, the
source latent, the prompts' conditionings, the weights), and every Python value it used
(timestep bounds, the models' adapter switches, a learning rate given as a float). So the
step draws its timestep and noise on the device from a generator the graph is told of, the
optimiser reads its learning rate from a tensor, and the host reads nothing back inside the
step. Arguments of a call after the capture are not seen: the replay repeats the capture's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, Protocol, TypeVar

import torch

from steer.performance import clone_outputs

Out = TypeVar("Out")
#: calls a step graph runs as they are before it records one (compilation, kernel choices)
WARMUP = 2


class Graph(Protocol):
    """What :class:`StepGraph` records into: :class:`CUDAGraph`, or a stand-in in the tests."""

    def warming(self) -> contextlib.AbstractContextManager[None]:
        """Around a call run as it is before the capture."""
        ...

    def capturing(self) -> contextlib.AbstractContextManager[None]:
        """Around the call that is recorded (and not run)."""
        ...

    def replay(self) -> None:
        """Run the recorded call's work again on the tensors it recorded."""
        ...


class CUDAGraph:
    """A ``torch.cuda.CUDAGraph`` on ``device`` that knows ``generators`` (their draws advance
    with each replay, as they would with each call), with the warm-up calls on a side stream, as
    torch's whole-network capture asks (their kernels and workspaces set up off the capture's
    stream)."""

    def __init__(self, device: torch.device, generators: Sequence[torch.Generator] = ()) -> None:
        self.device = device
        with torch.cuda.device(device):
            self.graph = torch.cuda.CUDAGraph()
            for generator in generators:
                self.graph.register_generator_state(generator)
            self._stream = torch.cuda.Stream()

    @contextlib.contextmanager
    def warming(self) -> Iterator[None]:
        with torch.cuda.device(self.device):
            current = torch.cuda.current_stream()
            self._stream.wait_stream(current)
            with torch.cuda.stream(self._stream):
                yield
            current.wait_stream(self._stream)

    @contextlib.contextmanager
    def capturing(self) -> Iterator[None]:
        with torch.cuda.device(self.device), torch.cuda.graph(self.graph):
            yield

    def replay(self) -> None:
        with torch.cuda.device(self.device):
            self.graph.replay()


class StepGraph(Generic[Out]):
    """``step`` run as it is for its first ``warmup`` calls (compilation, kernel choices,
    workspaces), recorded into ``graph`` at the next and replayed from then on.

    ``step`` returns tensors (in tuples or dicts). A replay writes them to the memory
    the capture gave them, so the calls from the capture on return copies, which later
    replays leave alone.

    Example (on CUDA)::

        x = torch.zeros(4, device="cuda")

        def step() -> torch.Tensor:
            x.add_(1)
            return x * 2

        graphed = StepGraph(step, CUDAGraph(x.device), warmup=1)
        outputs = [graphed() for _ in range(3)]  # run, recorded and replayed, replayed
        # x is 3 everywhere, outputs[-1] 6: the replays added to x as the calls did
    """

    def __init__(self, step: Callable[..., Out], graph: Graph, *, warmup: int = WARMUP) -> None:
        if warmup < 1:
            raise ValueError(f"a step graph needs at least 1 warm-up call before its capture, got {warmup}")
        self.step = step
        self.graph = graph
        self.warmup = warmup
        self.calls = 0
        self._outputs: Out | None = None

    def __call__(self, *args: Any) -> Out:
        """``step(*args)``: run, or at the capture recorded with ``args`` and replayed."""
        self.calls += 1
        if self.calls <= self.warmup:
            with self.graph.warming():
                return self.step(*args)
        if self._outputs is None:
            try:
                with self.graph.capturing():
                    self._outputs = self.step(*args)
            except Exception as error:
                raise RuntimeError(
                    f"recording a step as one CUDA graph failed ({type(error).__name__}: {error}); "
                    "edit without a step graph: Performance(step_graph=False), or leave out --step-graph"
                ) from error
        self.graph.replay()
        return clone_outputs(self._outputs)
