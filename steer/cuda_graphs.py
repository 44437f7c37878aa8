"""A ``torch.compile`` backend that replays dynamo's graphs as CUDA graphs, reading the
parameters where they are.

torch's own ``cudagraphs`` backend copies each graph input into the CUDA graph's buffers on every
replay, except the inputs AOTAutograd lifted itself. Dynamo passes a module's parameters to the
graph as inputs, so every replay of a real-size AudioLDM2 UNet call copied its 1 520 parameter
tensors: on one H100 a compiled SteerMusic step at batch 1 ran 1 534 device-to-device copies
(2.6 of its 14.8 ms of kernels) and took 23.3 ms. :func:`cuda_graphs` gives CUDA-graph trees the
parameters as static inputs, as inductor's ``mode="reduce-overhead"`` does: a replay reads them
in place (the same step: 180 copies, 14.3 ms, 1.63× faster), and a graph is recorded again where
a parameter has moved (the weights :class:`~steer.performance.CastOnce` casts keep their
addresses across edits for this). No code is generated: the graphs
replay torch's own kernels, so a first edit costs dynamo's trace and the recordings, not
inductor's compile (minutes at real size).

It is ``Performance(compile=True, compile_backend="steer-cudagraphs")``. Graphs on the CPU, and
graphs that mutate an input or hold an op CUDA graphs cannot capture, run as traced (torch logs
the skip and counts it in ``torch._dynamo.utils.counters["inductor"]["cudagraph_skips"]``), their
backward too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx
from torch._dynamo.backends import cudagraphs as torch_cudagraphs
from torch._dynamo.backends.common import aot_autograd
from torch._dynamo.backends.debugging import boxed_nop
from torch._inductor import cudagraph_trees, cudagraph_utils
from torch._inductor.compile_fx import get_static_input_idxs
from torch._inductor.utils import count_tangents, num_fw_fixed_arguments

Boxed = Callable[[list[Any]], Any]


@dataclass
class _Recording:
    """What a dynamo graph's backward needs from its forward: the CUDA device the forward was
    recorded on, ``None`` where the forward runs as traced (its backward then does too)."""

    device_index: int | None = None


def cuda_graphs(graph: fx.GraphModule, example_inputs: Sequence[Tensor]) -> Callable[..., Any]:
    """The backend: ``torch.compile(fn, backend=cuda_graphs)``.

    AOTAutograd splits ``graph`` into a forward and, where it is differentiated, a backward; each
    becomes a CUDA-graph tree node (:func:`torch._inductor.cudagraph_trees.cudagraphify_impl`):
    the forward with every parameter static (AOTAutograd's ``static_input_indices``, which dynamo
    sets for ``nn.Parameter`` inputs), the backward with its saved tensors static (the forward's
    outputs, in memory the tree owns). A replay's outputs live in memory a later replay reuses:
    clone what must outlive it (``Performance.compiler`` does).
    """
    recording = _Recording()

    def forward(aot_graph: fx.GraphModule, inputs: list[Any], is_inference: bool = False) -> Boxed:
        fixed = num_fw_fixed_arguments(len(example_inputs), len(inputs))
        static = get_static_input_idxs(fixed)
        return _record(aot_graph, inputs, static, recording, backward=False, inference=is_inference)

    def backward(aot_graph: fx.GraphModule, inputs: list[Any]) -> Boxed:
        static = range(count_tangents(aot_graph))
        return _record(aot_graph, inputs, static, recording, backward=True, inference=False)

    compiler = aot_autograd(
        fw_compiler=forward,
        bw_compiler=backward,
        inference_compiler=functools.partial(forward, is_inference=True),
        keep_inference_input_mutations=torch._dynamo.config.cudagraph_backend_keep_input_mutation,
    )
    return compiler(graph, example_inputs)


def _record(
    aot_graph: fx.GraphModule,
    inputs: list[Any],
    static: Sequence[int],
    recording: _Recording,
    *,
    backward: bool,
    inference: bool,
) -> Boxed:
    """``aot_graph`` as a CUDA-graph tree node with the inputs at ``static`` read in place, or
    as traced where it cannot be one."""
    run = boxed_nop(aot_graph, inputs)
    if backward and recording.device_index is None:
        return run
    # the forward's mutated inputs skip it (static ones included); the backward's are its own
    skip = _skip_reason(aot_graph, len(static) if backward else 0)
    if skip is not None:
        cudagraph_utils.log_cudagraph_skip_and_bump_counter(f"skipping cudagraphs due to {skip}")
        if not backward:
            return run
        return _eager_backward(run, recording.device_index)
    if not backward:
        recording.device_index = torch_cudagraphs.get_device_index(aot_graph)
    replay = _replay(
        run,
        inputs,
        static,
        device_index=recording.device_index,
        is_backward=backward,
        is_inference=inference,
        stack_traces=torch_cudagraphs.get_stack_traces(aot_graph),
        placeholders=cudagraph_utils.get_placeholder_info(aot_graph.graph),
        mutated_input_idxs=torch_cudagraphs.find_input_mutations(aot_graph.graph),
    )
    replay._boxed_call = True  # type: ignore[attr-defined]
    return replay


def _skip_reason(aot_graph: fx.GraphModule, fixed: int) -> str | None:
    """Why ``aot_graph`` cannot be a CUDA graph (a CPU tensor, an input mutated outside the first
    ``fixed`` inputs, an op CUDA graphs cannot capture), or ``None``."""
    return torch_cudagraphs.check_for_skip(aot_graph, fixed)


def _replay(run: Boxed, inputs: list[Any], static: Sequence[int], **options: Any) -> Boxed:
    """``run`` recorded as a CUDA graph on its first call and replayed after (the tree's node)."""
    return cudagraph_trees.cudagraphify_impl(run, inputs, static, **options)


def _eager_backward(run: Boxed, device_index: int) -> Boxed:
    """A backward run as traced after a recorded forward, telling the tree that the forward's
    backward has run (it holds the forward's outputs for it until then)."""

    def call(inputs: list[Any]) -> Any:
        manager = cudagraph_trees.get_manager(device_index, create_if_none_exists=False)
        if manager is not None:  # the forward's first call made it
            manager.set_to_running_backward()
        return run(inputs)

    call._boxed_call = True  # type: ignore[attr-defined]
    return call
