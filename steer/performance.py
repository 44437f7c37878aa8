"""How an editor runs each step: the same maths along different paths (issue 5).

Every path computes the gradient of the reference loop; they differ in how many denoiser calls a
step makes, in which precision the denoiser runs, and whether compiled code or fused kernels do
the work. The latent x, its gradient and the optimiser state stay float32 on every path.

Example:
    >>> Performance.preset("fused")
    Performance(path='batched', precision='bf16', compile=True, fused=True, loss_scaling=True, checkpointing=False, compile_backend='inductor', prompt_padding=32, dynamic=None, guards='first-step', cast_weights=True, autotune=False, step_graph=False, fuse_projections=False, merge_lora=False)
    >>> Performance(precision="fp64")
    Traceback (most recent call last):
    ...
    ValueError: unknown precision 'fp64': use one of fp32, bf16, fp16
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from backbones import Conditioning
from losses.base import Fn
from losses.fused import triton_available

from . import toolchain
from .merged_lora import MergedLoRA
from .predictions import unique
from .projections import FusedProjections
from .sources import Sources

PATHS = ("reference", "batched")
GUARDS = ("first-step", "every-step")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: :attr:`Performance.compile_backend` for :func:`steer.cuda_graphs.cuda_graphs`
STEER_CUDA_GRAPHS = "steer-cudagraphs"
#: the backends that replay their graphs as CUDA graphs (inductor too, unless ``step_graph``)
CUDA_GRAPH_BACKENDS = ("cudagraphs", STEER_CUDA_GRAPHS)


def compile_backends() -> list[str]:
    """The names :attr:`Performance.compile_backend` takes: ``"steer-cudagraphs"``
    (:func:`steer.cuda_graphs.cuda_graphs`) and torch's registered backends."""
    return [STEER_CUDA_GRAPHS, *torch.compiler.list_backends(exclude_tags=())]


@dataclass(frozen=True)
class Performance:
    """The execution path of an editor's steps.

    Args:
        path: ``"reference"``: the authors' loop, one ``predict_noise`` call per prediction (each
            with its own classifier-free-guidance batch of 2) without gradients, and for a loss
            that backpropagates through features (PCon) a second forward of that prediction with
            gradients. ``"batched"`` (default): all predictions of a model in one call (guidance
            rows, both latents and every prompt stacked), features read from the same call.
        precision: dtype the denoiser runs in under autocast: ``"fp32"`` (no autocast),
            ``"bf16"`` or ``"fp16"`` (slow on most CPUs). Predictions and features are returned
            as float32; the latent, its gradient and the optimiser stay float32.
        compile: ``torch.compile`` each model's denoiser calls (on CUDA
            ``mode="reduce-overhead"``, i.e. CUDA graphs, unless ``step_graph``), those that
            return PCon's features too: the feature hooks are installed before compilation
            (:class:`hooks.FeatureTap`) and traced into the graph; the losses' maths too
            (``LossContext.compile``). A compiled editor keeps its graphs and hooks across
            edits until :meth:`~steer.editor.Editor.close`; each new editor traces its calls
            again, and dynamo's recompile limit (8) counts each editor's model calls apart. How
            new clip lengths and batch sizes are traced: ``dynamic``; prompt lengths:
            ``prompt_padding``.
        fused: fused kernels: the Triton kernel that noises x and x_src from one read of ε
            (CUDA with triton; elsewhere the backbone's ``add_noise``, said once in a warning)
            and the fused optimiser step (``SGD``/``Adam`` with ``fused=True``).
        loss_scaling: with fp16, dynamic loss scaling (``torch.amp.GradScaler``) of the losses
            that backpropagate through the denoiser (PCon), whose gradients would otherwise
            underflow in fp16: the loss is multiplied by a scale before the backward pass and
            x's gradient divided by it after; a step whose scaled backward overflows is skipped
            (counted in ``EditResult.skipped_steps``) and the scale halves. Score gradients
            (DDS, PDS, shift) need none: they are formed from float32 predictions.
        checkpointing: gradient checkpointing of the denoiser calls that backpropagate
            (SteerMusic+'s personalised call, for PCon): each block keeps only its inputs and
            recomputes the rest in the backward pass, with a LoRA concept's adapter as in the
            forward (diffusers nests the checkpoints, so eagerly the attention blocks'
            transformers are recomputed twice). On the real-size UNet (CPU proxy,
            ``python -m benchmarks.memory``) it cut what a SteerMusic+ step adds to the
            denoiser's weights from 1522 MiB to 304 MiB (SteerMusic: 125 MiB),
            SteerMusic+/SteerMusic from 1.96× to 1.12×, and made the step 1.41× slower (CPU,
            17.8 → 25.1 s). With ``compile`` the checkpointed blocks, those holding PCon's
            feature hooks included, are traced into the graphs as regions the compiled backward
            recomputes; the checkpoints do not nest there (a transformer's blocks are the
            regions, not the transformer), and the regions keep attention's outputs rather than
            recompute attention under a saved generator state, which CUDA graphs cannot capture
            (:func:`backbones.base.keep_random`). Compiled in bf16 (``fused-checkpointed``) the
            step's rise fell from 1316 MiB to 233 MiB (SteerMusic: 48 MiB),
            SteerMusic+/SteerMusic 1.92× → 1.13× (CPU proxy, ``aot_eager``; keeping attention's
            outputs added 31 MiB).
        compile_backend: the ``torch.compile`` backend (:func:`compile_backends`):
            ``"inductor"`` (default: generated Triton/C++ kernels; on one H100, real-size UNet,
            SteerMusic at batch 1: 8.5 ms a step, 22× ``reference``, after a 120-s first edit);
            ``"steer-cudagraphs"`` (:mod:`steer.cuda_graphs`: on CUDA dynamo's graphs replayed
            as CUDA graphs that read the parameters in place, no code generated: 14.3 ms a
            step after a 32-s first edit); ``"cudagraphs"`` (torch's: the same, but every replay
            copies each parameter into the graph: 23.3 ms a step, with 1 534 device copies a
            step against steer-cudagraphs' 180), or e.g. ``"aot_eager"``, which traces forward
            and backward without generating code (quick; how the tests check the compiled calls
            on a CPU). Inductor on a CPU, in bf16 or fp16, first checks that the host's C++
            compiler gets its AVX-512 code right (:mod:`steer.toolchain`; g++ 12.2 does not) and
            writes AVX2 code where it does not, with a warning.
        prompt_padding: with ``compile``, the prompts' token sequences (the fields a backbone
            masks, :attr:`backbones.Conditioning.masks`: AudioLDM2's T5 states, say) are padded
            with masked zeros to a multiple of this many tokens, so a manifest of prompts up to
            32 tokens long keeps one graph with the token count constant. Without it a new prompt
            length traces the denoiser's call again (minutes with inductor), as a new clip length
            does (see ``dynamic``). The masks hide the padding: the predictions are unchanged up
            to rounding.
        dynamic: with ``compile``, how the graphs follow the clip's length and the batch size
            (``torch.compile``'s ``dynamic``). ``None`` (default): the first edit's shapes are
            traced as constants; an edit of another length traces the calls once more with that
            size symbolic, and that graph serves every later length (a few more traces where a
            model branches on the length, e.g. AudioLDM2's UNet on multiples of 8): a manifest
            of clips of many lengths traces each call two or three times, not once per length.
            ``False``: every new length is traced again (minutes each with inductor) and, past
            dynamo's recompile limit (8), runs eagerly. ``True``: symbolic from the first trace.
            With CUDA graphs each new shape still records its own graph (a replay, no trace).
        guards: with ``compile``, when dynamo checks that a compiled denoiser call's graph still
            fits its inputs and the model (its guards: thousands, on every module's attributes
            and parameters). On the real-size UNet the host's time a step, the graphs' work
            left out, was 3.7–4.5 ms with every guard checked and 1.2–2.6 ms with a later step's
            checks for SteerMusic, 25.3 ms and 11.7 ms for SteerMusic+ with a LoRA concept (CPU,
            ``python -m benchmarks.host_time``; a 1-s edit leaves 2.5 ms a step).
            ``"first-step"`` (default): in full at each edit's first step; its later steps run
            only the guards that tell a model's graphs apart (input shapes and dtypes, and what
            failed before: ``torch.compiler.set_stance(skip_guard_eval_unsafe=True)``), as they
            call the denoisers with the first step's shapes, prompts and models. A change to a
            model during an edit (by a ``callback``) is then seen from the next edit on.
            ``"every-step"``: in full at every call. The losses' compiled maths are always
            checked in full (a few guards).
        cast_weights: with ``"bf16"`` or ``"fp16"``, the denoisers' float32 matmul and
            convolution weights and biases (``nn.Linear`` and ``nn.Conv*``, a LoRA adapter's
            included) are cast to that dtype once (:class:`CastOnce`) instead of by autocast on
            every call: a kernel each, about 1 000 a call on the real-size AudioLDM2 UNet, which
            on a GPU made the eager ``bf16`` step slower than ``fp32``. The values are the ones
            autocast makes, so predictions and gradients are the same bit for bit (tested on
            every backbone). The copies add half the float32 size of those weights on the
            device for the edit (a compiled editor's until :meth:`~steer.editor.Editor.close`);
            outside the edits the modules hold their float32 parameters (a ``callback`` runs
            inside the edit: a denoiser it calls has the copies).
        autotune: with ``compile`` on ``"inductor"``, its ``max-autotune`` mode: compiling a
            graph, inductor times candidate kernels for each matmul and convolution (its own
            Triton templates, with the ops around them fused in, against cuBLAS and cuDNN) and
            tunes the launch settings of the kernels it generates (coordinate descent), keeping
            the fastest; on CUDA the graphs are CUDA graphs as without it. It aims at the
            small matmuls of a batch-1 step (most ran 3–5 µs each in cuBLAS on one H100,
            6.5 ms of kernels a step: ``benchmarks/README.md``). A first edit compiles for
            longer, timing every candidate; the results differ from the untuned kernels' by
            rounding. Neither the gain nor the compile time is measured at real size yet.
        step_graph: on CUDA, each step of an edit as one CUDA graph (:mod:`steer.step_graph`):
            the first two steps run as they are (compilation, kernel choices), the third is
            recorded, and every later step is one replay of the step's kernels (noising, the
            denoiser calls, the backward pass, the losses, the optimiser), with no host work
            between them: no guards, no AOTAutograd wrappers, no autograd engine. It works on
            any path but fp16 with ``loss_scaling`` (whose skipped steps are decided on the
            host), eager ones included, where it spares the compile; compiled calls are then
            not CUDA graphs themselves (inductor without ``"reduce-overhead"``; the
            ``"cudagraphs"`` and ``"steer-cudagraphs"`` backends are refused). The timesteps
            and noise are drawn as without it, from the same generator; the graph and its
            memory last one edit. A ``callback`` still sees each step, but a change it makes to
            a model reaches the replays only where it writes into the tensors they read (a
            setting's new Python value does not: the recording keeps the old one). On the CPU a
            step runs as it is (said once in a warning). Not yet measured on a GPU.
        fuse_projections: during an edit, each attention's projections of one input run as one
            matmul (:class:`~steer.projections.FusedProjections`): self-attention's query, key
            and value, cross-attention's key and value. A guided call of the real-size AudioLDM2
            UNet then runs 128 matmuls without a bias instead of 288, the same products (its
            output on the CPU differed by rounding only, if at all). Where the weights are cast
            for the edit (:attr:`cast_weights`) their cast copies are views of the fused rows,
            so it takes no more memory; in float32 it takes one more copy of those weights
            (67.5 M values: 258 MiB). Attention layers with an unmerged LoRA adapter on their
            projections (SteerMusic+'s usual concept without :attr:`merge_lora`) and other
            processors (Stable Audio's) keep theirs. Not yet measured on a GPU.
        merge_lora: during an edit, a LoRA concept's adapted layers run one matmul each
            (:class:`~steer.merged_lora.MergedLoRA`): with ``W + s·BA``, merged once an edit,
            while ε′ runs, and with ``W`` while ε does, instead of the adapter's two more
            matmuls, a scale and an add per layer, so ε′'s call costs ε's. On the real-size
            AudioLDM2 UNet with a LoRA on every attention projection, ε′'s guided call runs
            288 matmuls without a bias instead of 1 056 (4 206 aten ops instead of 8 046), and
            its backward pass drops the adapter's too. The merged weights are one more copy of
            the adapted weights in the dtype the edit runs in (183 MiB in bf16 there: SteerMusic+
            at 1.19× SteerMusic's memory on the CPU proxy, ``benchmarks/memory.py``, against
            1.09× without); the predictions differ from the adapter's by rounding. With
            :attr:`fuse_projections` the merged projections are fused too
            (:class:`~steer.projections.FusedMergedLinear`), for no more memory than merging
            alone in bf16. Not yet measured on a GPU.
    """

    path: Literal["reference", "batched"] = "batched"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False
    fused: bool = False
    loss_scaling: bool = True
    checkpointing: bool = False
    compile_backend: str = "inductor"
    prompt_padding: int = 32
    dynamic: bool | None = None
    guards: Literal["first-step", "every-step"] = "first-step"
    cast_weights: bool = True
    autotune: bool = False
    step_graph: bool = False
    fuse_projections: bool = False
    merge_lora: bool = False

    def __post_init__(self) -> None:
        switches = ("compile", "fused", "loss_scaling", "checkpointing", "cast_weights", "autotune", "step_graph",
                    "fuse_projections", "merge_lora")
        for name in switches:  # "no" is truthy: it would switch the option on
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not isinstance(self.compile_backend, str):
            raise TypeError(f"compile_backend must be a backend's name, got {self.compile_backend!r}")
        if self.compile:  # refused when made, not at the first edit after the prompts are encoded
            backends = compile_backends()
            if self.compile_backend not in backends:
                raise ValueError(f"unknown compile_backend {self.compile_backend!r}: use one of {', '.join(backends)}")
        if isinstance(self.prompt_padding, bool) or not isinstance(self.prompt_padding, int):
            raise TypeError(f"prompt_padding must be a whole number of tokens, got {self.prompt_padding!r}")
        if self.path not in PATHS:
            raise ValueError(f"unknown path {self.path!r}: use one of {', '.join(PATHS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"unknown precision {self.precision!r}: use one of {', '.join(PRECISIONS)}"
            )
        if self.prompt_padding < 1:
            raise ValueError(f"prompt_padding must be a number of tokens ≥ 1, got {self.prompt_padding}")
        if self.dynamic not in (None, True, False):
            raise ValueError(
                f"dynamic must be None (symbolic sizes from a second shape on), True or False, got {self.dynamic!r}"
            )
        if self.guards not in GUARDS:
            raise ValueError(f"unknown guards {self.guards!r}: use one of {', '.join(GUARDS)}")
        if self.autotune and not (self.compile and self.compile_backend == "inductor"):
            raise ValueError(
                "autotune tunes the kernels inductor generates: set compile=True with "
                f"compile_backend='inductor' (got compile={self.compile}, "
                f"compile_backend={self.compile_backend!r}), or autotune=False"
            )
        if self.step_graph and self.precision == "fp16" and self.loss_scaling:
            raise ValueError(
                "step_graph cannot replay fp16's loss scaling (whether a step is skipped is read "
                "on the host each step): use precision='bf16', loss_scaling=False, or step_graph=False"
            )
        if self.step_graph and self.compile and self.compile_backend in CUDA_GRAPH_BACKENDS:
            raise ValueError(
                f"step_graph records each step as one CUDA graph, which cannot hold the "
                f"{self.compile_backend!r} backend's own CUDA graphs: use compile_backend='inductor' "
                "(or e.g. 'aot_eager'), or step_graph=False"
            )

    @classmethod
    def preset(cls, name: str) -> Performance:
        """The paths by name: ``reference``, ``batched``, ``bf16``, ``fp16``, ``checkpointed``,
        ``fused``, ``fused-checkpointed``."""
        if name not in PRESETS:
            raise ValueError(f"unknown performance preset {name!r}: use one of {', '.join(PRESETS)}")
        return PRESETS[name]

    @property
    def batched(self) -> bool:
        return self.path == "batched"

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, ``None`` for float32."""
        return PRECISIONS[self.precision]

    def check_weights(self, dtype: torch.dtype, model: str = "base") -> None:
        """Refuse half-precision weights of the other half type than :attr:`precision` (of the
        editor's model named ``model``): autocast to bf16 cannot mix in float16 tensors (nor fp16
        bfloat16 ones), and the first step would fail inside the model with "Unexpected floating
        ScalarType" or "mixed dtype"."""
        halves = {torch.float16: "fp16", torch.bfloat16: "bf16"}
        if self.dtype is not None and dtype in halves and dtype != self.dtype:
            ours, theirs = (str(d).removeprefix("torch.") for d in (self.dtype, dtype))
            raise ValueError(
                f"precision {self.precision!r} computes in {ours} but the {model} model's weights are {theirs}: "
                f"use precision {halves[dtype]!r}, or load the weights in float32 or {ours}"
            )

    def check(self, device: torch.device) -> None:
        """Refuse what ``device`` cannot run, with the fix; warn once where a fallback is used."""
        if self.compile:  # its backend was checked when made (__post_init__)
            inductor = self.compile_backend == "inductor"
            if inductor and device.type == "cuda" and not triton_available(device):
                raise ValueError("torch.compile on CUDA needs triton: pip install triton, or compile=False")
            if inductor and device.type == "cpu" and toolchain.compiler() is None:
                raise ValueError(
                    "torch.compile on the CPU needs a C++ compiler, and none of inductor's "
                    f"({', '.join(toolchain.candidates())}) "
                    "runs: install g++ or name one in the CXX environment variable, or compile=False"
                )
            if self.inductor_options(device):
                wrong = toolchain.wrong_values(self.dtype)
                warnings.warn(
                    f"inductor's AVX-512 code for {self.precision} tensors in two memory layouts came "
                    f"out wrong with this machine's C++ compiler ({wrong} of 4096 values of "
                    "steer.toolchain's check; g++ 12.2 drops the stores of torch's tile transpose): "
                    "compiling AVX2 code instead (cpp.simdlen=256). A C++ compiler without the "
                    "defect, named in the CXX environment variable, gets the AVX-512 code back",
                    RuntimeWarning,
                    stacklevel=3,
                )
        if self.step_graph and device.type != "cuda":
            warnings.warn(
                f"step_graph records CUDA graphs; on {device.type} each step runs as it is",
                stacklevel=3,
            )
        if self.fused and not triton_available(device):
            warnings.warn(
                f"fused kernels need triton on a CUDA device; on {device.type} the same maths "
                "runs as plain torch",
                stacklevel=3,
            )

    @contextlib.contextmanager
    def autocast(self, device: torch.device) -> Iterator[None]:
        """Autocast to :attr:`dtype` on ``device`` (a no-op for float32); in a step graph without
        autocast's cache of cast weights, which a CUDA graph's capture must not keep."""
        if self.dtype is None:
            yield
            return
        with torch.autocast(device.type, dtype=self.dtype, cache_enabled=not self.step_graphs(device)):
            yield

    def guarding(self, step: int) -> contextlib.AbstractContextManager[None]:
        """Around step ``step``'s denoiser calls (counted from 0 in each edit): how dynamo checks
        the compiled ones (:attr:`guards`). From the second step of a ``"first-step"`` edit
        only the guards that tell graphs apart run; the user's compiler stance is kept."""
        if not self.compile or self.guards == "every-step" or step == 0:
            return contextlib.nullcontext()
        stance = torch._dynamo.eval_frame._stance
        return torch.compiler.set_stance(
            stance.stance, skip_guard_eval_unsafe=True, force_backend=stance.backend
        )

    def weight_casts(self, modules: Iterable[nn.Module]) -> CastOnce | None:
        """What casts ``modules``' weights once for this path (see :attr:`cast_weights`), or
        ``None`` where nothing is cast (float32, or ``cast_weights=False``)."""
        if self.dtype is None or not self.cast_weights:
            return None
        return CastOnce(modules, self.dtype)

    def lora_merges(self, modules: Iterable[nn.Module], adapters: Iterable[str]) -> MergedLoRA | None:
        """What merges the LoRA ``adapters`` of ``modules`` for this path (see
        :attr:`merge_lora`), in the dtype the weights are cast to, or ``None``."""
        if not self.merge_lora:
            return None
        return MergedLoRA(modules, adapters, self.dtype if self.cast_weights else None)

    def projection_fusion(self, modules: Iterable[nn.Module], casts: CastOnce | None = None) -> FusedProjections | None:
        """What fuses ``modules``' attention projections for this path (see
        :attr:`fuse_projections`), holding ``casts``' copies of them in its rows, or ``None``."""
        return FusedProjections(modules, casts) if self.fuse_projections else None

    def conditioning(self, cond: Conditioning) -> Conditioning:
        """``cond`` as this path's denoiser calls take it: padded (:attr:`prompt_padding`) when
        compiled, as it is otherwise."""
        return cond.padded(self.prompt_padding) if self.compile else cond

    def grad_scaler(self, device: torch.device) -> torch.amp.GradScaler | None:
        """The loss scaler of an fp16 edit (see :attr:`loss_scaling`), else ``None``.

        It starts at 2¹² (torch's default 2¹⁶ would cost more skipped steps while it halves
        down; a choice not yet measured on a GPU) and doubles after every 100 unskipped steps,
        so a 400-step edit can recover from a halving.
        """
        if self.precision != "fp16" or not self.loss_scaling:
            return None
        return torch.amp.GradScaler(device.type, init_scale=2.0**12, growth_interval=100)

    def cuda_graphs(self, device: torch.device) -> bool:
        """Whether this path's compiled calls run as CUDA graphs on ``device`` (compiled on CUDA
        with inductor, ``"cudagraphs"`` or ``"steer-cudagraphs"``; not with :attr:`step_graph`,
        whose graph holds them)."""
        return (
            self.compile
            and device.type == "cuda"
            and not self.step_graph
            and self.compile_backend in ("inductor", *CUDA_GRAPH_BACKENDS)
        )

    def step_graphs(self, device: torch.device) -> bool:
        """Whether an edit's steps on ``device`` are replayed as one CUDA graph (:attr:`step_graph`)."""
        return self.step_graph and device.type == "cuda"

    def inductor_options(self, device: torch.device) -> dict[str, Any]:
        """The inductor settings this path adds on ``device``: :data:`steer.toolchain.AVX2`
        where inductor compiles a bf16 or fp16 path for a CPU whose C++ compiler gets its
        AVX-512 code wrong (:func:`steer.toolchain.wrong_values`, checked once per process),
        else none."""
        if not (self.compile and self.compile_backend == "inductor" and device.type == "cpu"):
            return {}
        if self.dtype is None or not toolchain.wrong_values(self.dtype):
            return {}
        return dict(toolchain.AVX2)

    def compiler(self, device: torch.device, *, checkpointing: bool | None = None) -> Callable[[Fn], Fn] | None:
        """What compiles a function for this path on ``device`` (``None`` without ``compile``).

        ``torch.compile(fn, dynamic=dynamic, backend=compile_backend)``; with inductor on CUDA,
        ``mode="reduce-overhead"`` (CUDA graphs; not inside a :attr:`step_graph`), or
        ``"max-autotune"`` with :attr:`autotune` (``"max-autotune-no-cudagraphs"`` on the CPU),
        with :meth:`inductor_options` added. A CUDA graph's outputs (inductor's, or the
        ``steer-cudagraphs`` or ``cudagraphs`` backend's) live in memory its next replay
        overwrites, so they are cloned (one copy of each output) and the outputs of earlier
        calls in a step stay valid.

        Dynamo traces them with two settings (during the compiled calls only):
        ``Logger.info`` calls are dropped from the graphs rather than breaking them (AudioLDM2's
        UNet logs at info level on every call whose latent length is not a multiple of 8, a 10-s
        clip's 250 frames say, and a graph break runs the rest of the call eagerly); with
        checkpointing, ``skip_fwd_side_effects_in_bwd_under_checkpoint``:
        PCon's feature hooks record inside checkpointed blocks in the forward pass, and are not
        run again by the recomputation (where eagerly they record nothing either), so those
        blocks are checkpointed too.

        Args:
            device: where the compiled calls run.
            checkpointing: whether they run checkpointed blocks (default :attr:`checkpointing`);
                the editor passes ``True`` also where a model's checkpointing is on already (the
                user's, or another open editor's), whose blocks otherwise each broke the graph
                until dynamo's recompilation limit failed the edit's second step.
        """
        if not self.compile:
            return None
        inductor = self.compile_backend == "inductor"
        cuda_graphs = self.cuda_graphs(device)
        if not inductor:
            mode = None
        elif self.autotune:
            mode = "max-autotune" if cuda_graphs else "max-autotune-no-cudagraphs"
        else:
            mode = "reduce-overhead" if cuda_graphs else None
        options = self.inductor_options(device)
        if options and mode is not None:  # torch.compile takes a mode or options, not both
            from torch._inductor import list_mode_options

            options, mode = {**list_mode_options(mode), **options}, None
        backend: str | Callable[..., Any] = self.compile_backend
        if backend == STEER_CUDA_GRAPHS:  # imported here: it imports inductor's CUDA-graph trees
            from steer.cuda_graphs import cuda_graphs as backend
        checkpointing = self.checkpointing if checkpointing is None else checkpointing

        def compile_fn(fn: Fn) -> Fn:
            compiled = torch.compile(fn, dynamic=self.dynamic, backend=backend, mode=mode, options=options or None)

            @functools.wraps(fn)
            def call(*args: Any, **kwargs: Any) -> Any:
                with _tracing(checkpointing=checkpointing):
                    out = compiled(*args, **kwargs)
                return clone_outputs(out) if cuda_graphs else out

            return call  # type: ignore[return-value]

        return compile_fn


#: the modules whose weight and bias autocast casts on every call (matmuls and convolutions)
AUTOCAST_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class _Copy:
    sources: Sources  # the float32 parameter it was cast from
    copy: nn.Parameter


class CastOnce:
    """The float32 weights and biases of the matmul and convolution modules in ``modules``
    (:data:`AUTOCAST_MODULES`), cast once to ``dtype`` for use under autocast.

    :meth:`applied` puts the cast copies in the modules and the float32 parameters back after;
    autocast then finds those weights in its dtype and casts nothing. The copies are kept
    between uses (a compiled graph reads them at the same addresses) and cast again, in place,
    where the float32 parameter was changed (its version counter) or replaced, or after
    :meth:`refresh`. They do not require gradients: the editors differentiate with respect to
    the latent only.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        >>> casts = CastOnce([net], torch.bfloat16)
        >>> with casts.applied():
        ...     net[0].weight.dtype, net[1].weight.dtype
        (torch.bfloat16, torch.float32)
        >>> net[0].weight.dtype
        torch.float32
    """

    def __init__(self, modules: Iterable[nn.Module], dtype: torch.dtype) -> None:
        self.modules = list(modules)
        self.dtype = dtype
        self._copies: dict[tuple[int, str], _Copy] = {}

    def refresh(self) -> None:
        """Cast every copy again, in place, at the next :meth:`applied`: for a change of the
        float32 weights that their version counters do not show (see
        :class:`~steer.sources.Fingerprint`)."""
        for entry in self._copies.values():
            entry.sources = Sources.of(())

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The modules hold the cast copies inside the block, their own parameters after it."""
        swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
        try:
            # each module once, a denoiser shared by several models included
            for module in unique(m for root in self.modules for m in root.modules()):
                if not isinstance(module, AUTOCAST_MODULES):
                    continue
                for name, param in module._parameters.items():
                    if param is not None and param.dtype == torch.float32:
                        swapped.append((module, name, param))
                        module._parameters[name] = self._copy(module, name, param)
            yield
        finally:
            for module, name, param in swapped:
                module._parameters[name] = param

    @torch.no_grad()
    def keep_in(self, module: nn.Module, name: str, tensor: Tensor) -> None:
        """Inside :meth:`applied`, hold ``module``'s cast ``name`` in ``tensor`` (of its shape and
        dtype: a view of rows of :class:`~steer.projections.FusedProjections`' fused weights) from
        now on, so that the two are one copy; later casts write into it. A parameter it did not
        cast is left alone."""
        entry = self._copies.get((id(module), name))
        if entry is None or module._parameters.get(name) is not entry.copy:
            return
        if (tensor.shape, tensor.dtype, tensor.device) != (entry.copy.shape, entry.copy.dtype, entry.copy.device):
            raise ValueError(f"cannot keep a {entry.copy.dtype} {tuple(entry.copy.shape)} cast in {tensor.dtype} "
                             f"{tuple(tensor.shape)}")
        if tensor.data_ptr() != entry.copy.data_ptr():
            tensor.copy_(entry.copy)
            entry.copy = module._parameters[name] = nn.Parameter(tensor, requires_grad=False)

    def _copy(self, module: nn.Module, name: str, param: nn.Parameter) -> nn.Parameter:
        entry = self._copies.get((id(module), name))
        if entry is not None and entry.copy.shape == param.shape and entry.copy.device == param.device:
            if not entry.sources.current([param]):
                with torch.no_grad():
                    entry.copy.copy_(param)
                entry.sources = Sources.of([param])
            return entry.copy
        copy = nn.Parameter(param.detach().to(self.dtype), requires_grad=False)
        self._copies[id(module), name] = _Copy(Sources.of([param]), copy)
        return copy


@contextlib.contextmanager
def _tracing(*, checkpointing: bool) -> Iterator[None]:
    """Dynamo's settings for the compiled calls (see :meth:`Performance.compiler`); with
    ``checkpointing``, torch's warning about selective checkpointing left out: it asks the
    policy's author (:func:`backbones.base.keep_random`) to keep in-place ops out of the regions,
    and the tests compare the compiled gradients with eager's."""
    config = torch._dynamo.config
    settings: dict[str, Any] = {}
    if _LOGGER_INFO not in config.ignore_logging_functions:
        settings["ignore_logging_functions"] = config.ignore_logging_functions | {_LOGGER_INFO}
    if checkpointing:
        settings["skip_fwd_side_effects_in_bwd_under_checkpoint"] = True
    with config.patch(settings), contextlib.ExitStack() as stack:
        if checkpointing:
            _SELECTIVE_CHECKPOINT_LOG.addFilter(_SELECTIVE_CHECKPOINT_WARNING)
            stack.callback(_SELECTIVE_CHECKPOINT_LOG.removeFilter, _SELECTIVE_CHECKPOINT_WARNING)
        yield


class _Without(logging.Filter):
    """Drops the log records whose message holds ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


_SELECTIVE_CHECKPOINT_LOG = logging.getLogger("torch._higher_order_ops.wrap")
_SELECTIVE_CHECKPOINT_WARNING = _Without("context_fn is passed to torch.utils.checkpoint under torch.compile")


class _LoggerMethod(str):
    """A logging method, for ``torch._dynamo.config.ignore_logging_functions``, that is also its
    name: equal to the method (and hashed alike), so dynamo finds it in the set, and a string,
    so torch 2.11's record of each compilation can sort the set and write it as JSON (the
    method itself cannot be: it logs a TypeError traceback at ERROR level on every compile)."""

    def __new__(cls, method: Callable[..., Any]) -> _LoggerMethod:
        self = super().__new__(cls, f"{method.__module__}.{method.__qualname__}")
        self.method = method
        return self

    def __eq__(self, other: object) -> bool:
        return other is self.method or (isinstance(other, _LoggerMethod) and other.method is self.method)

    def __ne__(self, other: object) -> bool:  # str's own would disagree with __eq__
        return not self == other

    def __hash__(self) -> int:
        return hash(self.method)

    def __reduce__(self) -> tuple[type[_LoggerMethod], tuple[Callable[..., Any]]]:  # copies and pickles
        return type(self), (self.method,)


_LOGGER_INFO = _LoggerMethod(logging.Logger.info)


def clone_outputs(value: Any) -> Any:
    """A copy of each tensor in a tensor, tuple or dict (what the compiled calls return)."""
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, tuple):
        return tuple(clone_outputs(v) for v in value)
    if isinstance(value, dict):
        return {k: clone_outputs(v) for k, v in value.items()}
    return value


PRESETS: dict[str, Performance] = {
    "reference": Performance(path="reference"),
    "batched": Performance(),
    "bf16": Performance(precision="bf16"),
    "fp16": Performance(precision="fp16"),
    "checkpointed": Performance(checkpointing=True),
    "fused": Performance(precision="bf16", compile=True, fused=True),
    "fused-checkpointed": Performance(precision="bf16", compile=True, fused=True, checkpointing=True),
}
