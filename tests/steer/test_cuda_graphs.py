"""The ``steer-cudagraphs`` backend (issue 5): dynamo's graphs as CUDA-graph tree nodes that read
the parameters in place. CUDA graphs need a GPU; here the trees are replaced by a recorder of
what they would be given (which inputs are static) and of the real inputs each graph is then
called with, and the graphs run as traced."""

import pytest
import torch
from torch import nn

import steer.cuda_graphs
from steer import SteerMusic, SteerMusicPlus
from steer.cuda_graphs import cuda_graphs
from steer.performance import Performance


class _Recorder:
    """Stands in for :func:`torch._inductor.cudagraph_trees.cudagraphify_impl`."""

    def __init__(self):
        self.graphs = []  # one dict per graph the trees would record

    def forwards(self):
        return [g for g in self.graphs if not g["backward"]]

    def backwards(self):
        return [g for g in self.graphs if g["backward"]]

    def replay(self, run, inputs, static, *, is_backward, **options):
        graph = dict(static=set(static), backward=is_backward, inference=options["is_inference"], calls=[])
        self.graphs.append(graph)

        def call(args):
            graph["calls"].append(
                dict(
                    parameters={i for i, a in enumerate(args) if isinstance(a, nn.Parameter)},
                    addresses=[args[i].data_ptr() for i in sorted(graph["static"])],
                    dtypes={args[i].dtype for i in graph["static"]},
                )
            )
            return run(args)

        return call


@pytest.fixture()
def recorder(monkeypatch):
    """CUDA-graph trees replaced by a recorder, every graph taken as a CUDA one (device 0)."""
    recorder = _Recorder()
    monkeypatch.setattr(steer.cuda_graphs, "_skip_reason", lambda graph, fixed: None)
    monkeypatch.setattr(steer.cuda_graphs.torch_cudagraphs, "get_device_index", lambda graph: 0)
    monkeypatch.setattr(steer.cuda_graphs, "_replay", recorder.replay)
    return recorder


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU(), nn.Conv1d(8, 4, 1))


def _run(net, x):
    """The output and x's gradient."""
    x = x.clone().requires_grad_(True)
    y = net(x)
    (grad,) = torch.autograd.grad(y.square().sum(), x)
    return y.detach(), grad


def _traced(net):
    """``net`` compiled with ``aot_eager``: the same forward and backward graphs, run as traced."""
    return torch.compile(net, backend="aot_eager")


def test_graphs_read_the_parameters_in_place_and_give_the_traced_values(recorder, dynamo):
    """A forward graph is recorded with exactly its parameter inputs static (torch's own
    ``cudagraphs`` backend gives none under dynamo's inlined modules, and copies each one into
    the graph on every replay), a backward graph with its saved tensors static; calls after the
    first read the parameters at the same addresses (no new recording); outputs and gradients
    are those of the same graphs traced."""
    net, x = _net(), torch.randn(2, 4, 16)
    compiled = torch.compile(net, backend=cuda_graphs)
    first, second = _run(compiled, x), _run(compiled, x + 1)
    (forward,), (backward,) = recorder.forwards(), recorder.backwards()
    assert len(forward["static"]) == 6  # two convolutions' and the norm's weight and bias
    for call in forward["calls"]:
        assert call["parameters"] == forward["static"]
        assert call["addresses"] == forward["calls"][0]["addresses"]
    assert len(forward["calls"]) == 2 and len(backward["calls"]) == 2
    assert backward["static"] == set(range(len(backward["static"])))  # the tangents come last
    torch._dynamo.reset()  # the same net, traced afresh
    traced = _traced(net)
    for got, expected in zip(first + second, _run(traced, x) + _run(traced, x + 1)):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_graphs_on_the_cpu_run_as_traced(dynamo):
    """On the CPU (no recorder) the backend skips the CUDA graph, says so once (the forward's
    skip; its backward follows it), and gives the traced values."""
    from torch._dynamo.utils import counters

    net, x = _net(), torch.randn(2, 4, 16)
    got = _run(torch.compile(net, backend=cuda_graphs), x)
    assert counters["inductor"]["cudagraph_skips"] == 1
    torch._dynamo.reset()  # the same net, traced afresh
    for got_, expected in zip(got, _run(_traced(net), x)):
        torch.testing.assert_close(got_, expected, rtol=0, atol=0)


def test_a_backward_that_cannot_be_a_cuda_graph_runs_as_traced_after_a_recorded_forward(recorder, dynamo, monkeypatch):
    """Where only the backward cannot be recorded, it runs as traced: the same gradient."""
    from torch._dynamo.utils import counters

    def skip_backward(graph, fixed):
        tangents = [n for n in graph.graph.nodes if n.op == "placeholder" and n.name.startswith("tangents")]
        return "a test's reason" if tangents else None

    monkeypatch.setattr(steer.cuda_graphs, "_skip_reason", skip_backward)
    net, x = _net(), torch.randn(2, 4, 16)
    got = _run(torch.compile(net, backend=cuda_graphs), x)
    assert len(recorder.forwards()) == 1 and recorder.backwards() == []
    assert counters["inductor"]["cudagraph_skips"] == 1
    torch._dynamo.reset()  # the same net, traced afresh
    for got_, expected in zip(got, _run(_traced(net), x)):
        torch.testing.assert_close(got_, expected, rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:fused kernels need triton")
def test_a_compiled_bf16_editor_records_its_graphs_once_with_the_cast_weights_static(tiny_backbone, recorder, dynamo):
    """Compiled bf16 SteerMusic with ``compile_backend="steer-cudagraphs"`` (tiny AudioLDM2, two
    edits of two steps): every parameter input of each graph is static, the cast bf16 weights
    among them, at the same addresses in every call, so the graphs recorded in the first edit's
    first step are replayed after, never recorded again. The second edit repeats the first."""
    waveform = torch.randn(1, 1, 10240, generator=torch.Generator().manual_seed(0))
    latent = tiny_backbone.encode_audio(waveform, 16000)
    prompts = dict(source="a piano melody", target="a jazz guitar melody")
    performance = Performance(precision="bf16", compile=True, compile_backend="steer-cudagraphs")
    editor = SteerMusic(tiny_backbone, steps=2, performance=performance)
    first = editor.edit_latent(latent, seed=3, **prompts).latent
    second = editor.edit_latent(latent, seed=3, **prompts).latent
    assert dynamo.breaks() == []
    unet = [g for g in recorder.forwards() if torch.bfloat16 in g["calls"][0]["dtypes"]]
    assert len(unet) == 1 and len(unet[0]["calls"]) == 2 * 2  # one guided call a step
    static = unet[0]["static"]
    assert len(static) == sum(1 for _ in tiny_backbone.denoiser.parameters())
    for call in unet[0]["calls"]:
        assert call["parameters"] == static and call["addresses"] == unet[0]["calls"][0]["addresses"]
    assert unet[0]["calls"][0]["dtypes"] == {torch.bfloat16, torch.float32}  # cast weights; norms' stay
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert not torch.equal(first, latent)
    editor.close()


def _recorded_by_now(recorder):
    """How many graphs the recorder holds and how often each was called."""
    return [len(g["calls"]) for g in recorder.graphs]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:fused kernels need triton")
def test_a_compiled_steermusic_plus_records_forward_backward_and_inference_graphs_once(tiny_backbone, lora, recorder, dynamo):
    """Compiled bf16 SteerMusic+ (a LoRA concept, PCon) with ``steer-cudagraphs``, two edits of
    two steps: ε′'s call (with gradients, PCon's features out) records a forward and a backward
    graph, ε's call (no gradients) a forward graph; each UNet graph is called once a step with
    every parameter input static (LoRA's included) at the same addresses, and no graph is
    recorded after the first edit's first step. The second edit repeats the first."""
    waveform = torch.randn(1, 1, 10240, generator=torch.Generator().manual_seed(0))
    latent = tiny_backbone.encode_audio(waveform, 16000)
    prompts = dict(source="a piano melody", target="a sks guitar melody")
    performance = Performance(precision="bf16", compile=True, compile_backend="steer-cudagraphs")
    editor = SteerMusicPlus(tiny_backbone, lora, steps=2, pcon_positions=8, performance=performance)
    calls_a_step = []
    first = editor.edit_latent(latent, seed=3, callback=lambda state: calls_a_step.append(_recorded_by_now(recorder)), **prompts).latent
    second = editor.edit_latent(latent, seed=3, **prompts).latent
    assert dynamo.breaks() == []
    assert len(calls_a_step[1]) == len(calls_a_step[0]) == len(recorder.graphs)  # all recorded in the first step
    assert _recorded_by_now(recorder) == [4 * n for n in calls_a_step[0]]  # and replayed in each
    unet = [g for g in recorder.forwards() if torch.bfloat16 in g["calls"][0]["dtypes"]]
    assert len(unet) == 2 and all(len(g["calls"]) == 4 for g in unet)  # ε′ and ε, once a step
    base = sum(1 for name, _ in tiny_backbone.denoiser.named_parameters() if "lora_" not in name)
    adapter = sum(1 for name, _ in tiny_backbone.denoiser.named_parameters() if "lora_" in name)
    # ε runs with the adapter off and without gradients, ε′ with both
    assert sorted((len(g["static"]), g["inference"]) for g in unet) == [(base, True), (base + adapter, False)]
    for graph in unet:
        for call in graph["calls"]:
            assert call["parameters"] == graph["static"] and call["addresses"] == graph["calls"][0]["addresses"]
    # ε′'s backward (PCon's gradient through the UNet), recorded once, replayed each step
    assert any(len(g["static"]) > base and len(g["calls"]) == 4 for g in recorder.backwards())
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert not torch.equal(first, latent)
    editor.close()


def test_performance_compiles_with_the_backend_by_its_name(monkeypatch):
    backends = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: backends.append(kwargs["backend"]) or fn)
    performance = Performance(compile=True, compile_backend="steer-cudagraphs")
    performance.check(torch.device("cpu"))
    performance.compiler(torch.device("cpu"))(lambda: None)
    assert backends == [cuda_graphs]
