"""Step graphs (``Performance(step_graph=True)``, issue 5): a whole editor step recorded once as
a CUDA graph and replayed.

A CUDA graph replays the recorded kernels on the recorded memory with the Python values of the
capture. On the CPU, :class:`Tape` does the same with the aten ops of the recorded step (each
replayed on the tensor objects it had, its outputs written into the capture's), so an edit whose
later steps are replays of one tape shows what a CUDA graph would miss: a Python value baked in
(a float learning rate that decays), a tensor made afresh outside the step, a host read (refused
at the capture, as on CUDA). A capture runs the ops (a CUDA capture does not), so the tape puts
back the memory and generator states the capture changed.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import steer.editor
from backbones import AudioLDM2Backbone
from backbones.tiny import tiny_audioldm2_pipeline
from steer import Concept, Editor, SteerMusic, SteerMusicPlus
from steer.concepts.concept import LORA_TARGETS, ConceptConfig
from steer.performance import Performance
from steer.step_graph import StepGraph

# the editors warn that a step graph needs CUDA, where the tape stands in for one
pytestmark = pytest.mark.filterwarnings("ignore:step_graph records CUDA graphs")
PROMPTS = dict(source="a piano melody", target="a sks guitar melody")
aten = torch.ops.aten
#: ops that read a tensor's value on the host: a CUDA graph cannot hold them
HOST_READS = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default, aten.nonzero.default}


class Tape:
    """A :class:`steer.step_graph.Graph` on the CPU: the capture records each aten op with its
    arguments and outputs, and a replay runs them again on those tensors."""


    def __init__(self, device: torch.device, generators: list[torch.Generator] = ()) -> None:
        self.device = device
        self.ops: list[tuple[Any, tuple, dict, Any]] = []
        self.generators = [*generators, torch.default_generator]
        self.captures = self.replays = 0

    def warming(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def capturing(self) -> Iterator[None]:
        states = [g.get_state() for g in self.generators]
        recorder = _Recorder(self.ops)
        with recorder:
            yield
        for storage, before in recorder.before.values():
            storage.copy_(before)
        for generator, state in zip(self.generators, states):
            generator.set_state(state)
        self.captures += 1

    def replay(self) -> None:
        with torch.no_grad():
            for func, args, kwargs, recorded in self.ops:
                out = func(*args, **kwargs)
                for new, old in zip(tree_leaves(out), tree_leaves(recorded)):
                    if isinstance(old, torch.Tensor) and new is not old:
                        old.copy_(new)
        self.replays += 1


class _Recorder(TorchDispatchMode):
    """Records each op; keeps, before an op first writes to a storage, its bytes."""

    def __init__(self, ops: list) -> None:
        super().__init__()
        self.ops = ops
        self.before: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in HOST_READS:
            raise AssertionError(f"a step graph's step reads a value on the host: {func}")
        for tensor in _written(func, args, kwargs):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in self.before:
                whole = torch.empty(0, dtype=torch.uint8).set_(storage)
                self.before[storage.data_ptr()] = (whole, whole.clone())
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out


def _written(func, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The tensors ``func`` writes to (its schema's mutable arguments)."""
    written = []
    for i, argument in enumerate(func._schema.arguments):
        if argument.alias_info is None or not argument.alias_info.is_write:
            continue
        value = args[i] if i < len(args) else kwargs.get(argument.name)
        written += [t for t in tree_leaves(value) if isinstance(t, torch.Tensor)]
    return written


@pytest.fixture()
def tapes(monkeypatch) -> list[Tape]:
    """Editors replay their steps from a :class:`Tape` on the CPU; the tapes they made."""
    made: list[Tape] = []

    def tape(device, generators=()) -> Tape:
        made.append(Tape(device, generators))
        return made[-1]

    monkeypatch.setattr(steer.editor, "CUDAGraph", tape)
    monkeypatch.setattr(Performance, "step_graphs", lambda self, device: self.step_graph)
    return made


@pytest.fixture()
def latent(tiny_backbone):
    waveform = torch.randn(1, 1, 10240, generator=torch.Generator().manual_seed(0))
    return tiny_backbone.encode_audio(waveform, 16000)  # (1, 8, 16, 16)


def _edit(editor: Editor, latent: torch.Tensor, **prompts: str):
    states = []
    result = editor.edit_latent(latent, seed=3, callback=states.append, **prompts)
    return result, states


def _assert_same_edit(graphed, plain) -> None:
    (result, states), (expected, expected_states) = graphed, plain
    torch.testing.assert_close(result.latent, expected.latent, rtol=0, atol=0)
    assert result.history == expected.history
    for state, want in zip(states, expected_states, strict=True):
        assert (state.step, state.lr) == (want.step, want.lr)
        torch.testing.assert_close(state.t, want.t, rtol=0, atol=0)
        torch.testing.assert_close(state.noise, want.noise, rtol=0, atol=0)
        torch.testing.assert_close(state.gradient, want.gradient, rtol=0, atol=0)


LORA = ConceptConfig(
    method="lora", token="sks", class_word="guitar", family="audioldm2", lora_rank=2, lora_targets=LORA_TARGETS
)
# the learning rate decays twice during the replays: a graph that baked it in would miss both
DECAYING = dict(steps=7, lr=0.5, lr_step_size=2, lr_gamma=0.5)


@pytest.mark.parametrize(
    "path", ["batched", "reference", "bf16", "adam", "fused-projections"], ids=lambda p: p
)
def test_steermusic_edits_the_same_when_its_later_steps_replay_the_third(tiny_backbone, latent, tapes, path):
    # Adam: fused in both (a step graph fuses the update, which reads its learning rate on the device)
    performance = {
        "adam": Performance(fused=True), "fused-projections": Performance(precision="bf16", fuse_projections=True)
    }.get(path) or Performance.preset(path)
    options = dict(DECAYING, optimizer="adam" if path == "adam" else "sgd")
    plain = _edit(SteerMusic(tiny_backbone, performance=performance, **options), latent, **PROMPTS)
    graphed_performance = dataclasses.replace(performance, step_graph=True)
    graphed = _edit(SteerMusic(tiny_backbone, performance=graphed_performance, **options), latent, **PROMPTS)
    _assert_same_edit(graphed, plain)
    assert [(t.captures, t.replays) for t in tapes] == [(1, 5)]  # steps 0, 1 run; 2 recorded; 2-6 replayed
    assert all(s.lr == pytest.approx(0.5 * 0.5 ** (s.step // 2)) for s in graphed[1])


@pytest.mark.parametrize(
    "path", ["batched", "checkpointed", "checkpointed-merge-lora", "checkpointed-merge-lora-fuse-projections"]
)
def test_steermusic_plus_edits_the_same_when_its_later_steps_replay_the_third(tiny_backbone, lora, latent, tapes, path):
    """PCon backpropagates through ε′ (checkpointed: recomputed with the adapter switched on in
    the backward pass; merged: with ε′'s merged weights, and fused: its projections' and ε's as
    one matmul a group) and samples its positions from the editor's generator each step."""

    def edit(performance: Performance):
        editor = SteerMusicPlus(tiny_backbone, lora, pcon_positions=8, performance=performance, **DECAYING)
        return _edit(editor, latent, **PROMPTS)

    performance = dataclasses.replace(
        Performance.preset(path.split("-")[0]), merge_lora="-merge-lora" in path, fuse_projections="-fuse-" in path
    )
    _assert_same_edit(edit(dataclasses.replace(performance, step_graph=True)), edit(performance))
    assert [(t.captures, t.replays) for t in tapes] == [(1, 5)]


def test_a_compiled_step_replays_its_graphs_kernels_in_the_step_graph(tiny_backbone, latent, tapes, dynamo):
    """Compiled (dynamo's graphs run as traced, ``eager``: quick on the CPU; AOTAutograd's
    in the slow test below), the denoiser's and the losses' graphs run inside the recorded
    step, whose later calls skip all but the essential guards."""
    performance = Performance(compile=True, compile_backend="eager")
    with SteerMusic(tiny_backbone, performance=performance, **DECAYING) as editor:
        plain = _edit(editor, latent, **PROMPTS)
        graphs = dynamo.graphs()
        # the same compiled calls (one trace on the CPU, where a step graph changes no compile setting)
        editor.performance = dataclasses.replace(performance, step_graph=True)
        graphed = _edit(editor, latent, **PROMPTS)
    _assert_same_edit(graphed, plain)
    assert dynamo.breaks() == [] and dynamo.graphs() == graphs >= 1
    assert [(t.captures, t.replays) for t in tapes] == [(1, 5)]


@pytest.mark.slow  # a compile of SteerMusic+ with aot_eager: about 3 minutes on 2 cores
def test_a_compiled_checkpointed_steermusic_plus_step_replays_its_forward_and_backward(tiny_backbone, latent, tapes):
    """``fused-checkpointed`` in float32 with ``aot_eager``: AOTAutograd's forward and backward
    of ε′, whose checkpointed regions the backward recomputes, inside the recorded step."""
    performance = dataclasses.replace(
        Performance.preset("fused-checkpointed"), precision="fp32", compile_backend="aot_eager"
    )
    concept = Concept(LORA, {})
    with SteerMusicPlus(tiny_backbone, concept, pcon_positions=8, performance=performance, **DECAYING) as editor:
        plain = _edit(editor, latent, **PROMPTS)
        editor.performance = dataclasses.replace(performance, step_graph=True)  # the same graphs (CPU)
        graphed = _edit(editor, latent, **PROMPTS)
    _assert_same_edit(graphed, plain)
    assert [(t.captures, t.replays) for t in tapes] == [(1, 5)]


def test_a_step_graph_returns_copies_and_replays_the_capture(tapes):
    x = torch.zeros(3)
    seen: list[int] = []

    def step(index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        seen.append(index)
        x.add_(1)
        return x * 2, {"sum": x.sum()}

    tape = Tape(torch.device("cpu"))
    graphed = StepGraph(step, tape, warmup=2)
    outputs = [graphed(i) for i in range(5)]
    assert seen == [0, 1, 2]  # Python runs the warm-up calls and the capture only
    assert x.tolist() == [5.0] * 3  # and the replays do the capture's work: 5 calls, 5 additions
    assert [o[0][0].item() for o in outputs] == [2.0, 4.0, 6.0, 8.0, 10.0]
    assert [o[1]["sum"].item() for o in outputs] == [3.0, 6.0, 9.0, 12.0, 15.0]
    assert (tape.captures, tape.replays) == (1, 3)
    with pytest.raises(ValueError, match="at least 1 warm-up call"):
        StepGraph(step, tape, warmup=0)


def test_a_step_that_reads_a_value_on_the_host_is_refused_with_the_way_out():
    """What a CUDA graph cannot record: the step below would branch on its tensor's value."""
    x = torch.ones(2)
    graphed = StepGraph(lambda: x * 2 if x.sum() > 0 else x, Tape(x.device), warmup=1)
    graphed()
    with pytest.raises(RuntimeError, match="recording a step as one CUDA graph failed .*reads a value on "
                       "the host.*Performance\\(step_graph=False\\), or leave out --step-graph"):
        graphed()


def test_step_graph_settings_refuse_what_a_graph_cannot_hold():
    with pytest.raises(ValueError, match="loss scaling.*precision='bf16', loss_scaling=False"):
        Performance(precision="fp16", step_graph=True)
    Performance(precision="fp16", loss_scaling=False, step_graph=True)
    for backend in ("steer-cudagraphs", "cudagraphs"):
        with pytest.raises(ValueError, match=f"'{backend}' backend's own CUDA graphs: use compile_backend='inductor'"):
            Performance(compile=True, compile_backend=backend, step_graph=True)
    with pytest.warns(UserWarning, match="step_graph records CUDA graphs; on cpu each step runs as it is"):
        Performance(step_graph=True).check(torch.device("cpu"))


def test_a_step_graph_holds_inductors_graphs_as_plain_kernels(monkeypatch):
    """On CUDA the compiled calls are not CUDA graphs of their own inside a step graph:
    inductor without ``reduce-overhead``, no copies of their outputs."""
    modes = []
    monkeypatch.setattr(torch, "compile", lambda fn, **options: modes.append(options["mode"]) or fn)
    cuda = torch.device("cuda")
    for autotune in (False, True):
        fused = dataclasses.replace(Performance.preset("fused"), autotune=autotune)
        graphed = dataclasses.replace(fused, step_graph=True)
        assert (fused.cuda_graphs(cuda), graphed.cuda_graphs(cuda)) == (True, False)
        assert (graphed.step_graphs(cuda), graphed.step_graphs(torch.device("cpu"))) == (True, False)
        fused.compiler(cuda)(lambda: None)
        graphed.compiler(cuda)(lambda: None)
    assert modes == ["reduce-overhead", None, "max-autotune", "max-autotune-no-cudagraphs"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "performance",
    [
        Performance(), Performance(checkpointing=True), Performance(precision="bf16", fused=True),
        Performance(precision="bf16", fused=True, checkpointing=True, merge_lora=True),
        Performance(precision="bf16", fused=True, checkpointing=True, merge_lora=True, fuse_projections=True),
    ],
    ids=[
        "batched", "checkpointed", "bf16-fused-kernels", "bf16-checkpointed-merged-lora",
        "bf16-checkpointed-merged-fused-projections",
    ],
)
def test_a_cuda_step_graph_edits_as_the_steps_run_as_they_are(performance):
    """On CUDA, a real CUDA graph: SteerMusic+ (tiny AudioLDM2, a LoRA concept, PCon) with and
    without its later steps replayed: eagerly checkpointed (no generator state read during the
    capture), in bf16 with the Triton noising kernel and the fused SGD step, and so with ε′'s
    LoRA merged and checkpointed, its projections fused or not. The draws of
    (t, ε) must match: the graph advances the editor's generator as the steps did."""
    backbone = AudioLDM2Backbone.from_pipe(tiny_audioldm2_pipeline(seed=0).to("cuda"))
    latent = torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(0)).cuda()

    def edit(performance: Performance):
        concept = Concept(LORA, {})
        with SteerMusicPlus(backbone, concept, pcon_positions=8, performance=performance, **DECAYING) as editor:
            return _edit(editor, latent, **PROMPTS)

    plain = edit(performance)
    graphed = edit(dataclasses.replace(performance, step_graph=True))
    (result, states), (expected, expected_states) = graphed, plain
    for state, want in zip(states, expected_states, strict=True):
        torch.testing.assert_close(state.t, want.t, rtol=0, atol=0)
        torch.testing.assert_close(state.noise, want.noise, rtol=0, atol=0)
    torch.testing.assert_close(result.latent, expected.latent, rtol=1e-4, atol=1e-5)
