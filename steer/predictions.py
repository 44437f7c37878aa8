"""Evaluate the noise predictions (and features) that losses request, in as few denoiser calls
as possible."""

from __future__ import annotations

import contextlib
import re
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from backbones import Backbone, Conditioning
from hooks import FeatureTap
from hooks.capture import suggest
from losses import FeatureRequest, NoiseRequest


def unique(items: Iterable) -> list:
    """Items without duplicates, in first-seen order."""
    return list(dict.fromkeys(items))


def _guidance(group: Sequence[NoiseRequest], batch: int, device: torch.device) -> float | Tensor:
    """The guidance scale of each row of ``group``'s call: one float, or a tensor ``(len(group) *
    batch,)`` where the requests differ; filled on ``device`` rather than copied from the host, so
    that a CUDA graph can record it."""
    scales = {r.guidance_scale for r in group}
    if len(scales) == 1:
        return scales.pop()
    return torch.cat([torch.full((batch,), float(r.guidance_scale), device=device) for r in group])


def feature_modules(model: Backbone, features: Iterable[FeatureRequest]) -> list[str]:
    """Names of ``model``'s self-attention modules that the feature requests' patterns select
    (``None``: the backbone's ``decoder_self_attention``); a clear error for a pattern that
    selects none."""
    modules = model.self_attention_modules()
    names: list[str] = []
    for pattern in unique(model.decoder_self_attention if f.layers is None else f.layers for f in features):
        matched = [n for n in modules if re.search(pattern, n)]
        if not matched:
            raise ValueError(
                f"the feature layers {pattern!r} (PCon's layers, say) match none of the {len(modules)} "
                f"self-attention modules of {type(model).__name__} (pass a pattern that names some)"
                + suggest(pattern, modules)
            )
        names += matched
    return [n for n in modules if n in set(names)]  # in forward order, as the backbone lists them


#: each module of a denoiser that diffusers' gradient checkpointing switches, with its
#: ``gradient_checkpointing`` flag and its ``_gradient_checkpointing_func`` (``None``: never set)
_Checkpointing = list[tuple[nn.Module, bool, Callable[..., Any] | None]]


def _checkpointing(denoiser: nn.Module) -> _Checkpointing:
    """How each of ``denoiser``'s modules checkpoints (what ``enable_gradient_checkpointing`` sets)."""
    return [
        (m, m.gradient_checkpointing, getattr(m, "_gradient_checkpointing_func", None))
        for m in denoiser.modules()
        if hasattr(m, "gradient_checkpointing")
    ]


def _restore_checkpointing(saved: _Checkpointing) -> None:
    """Set each module's checkpointing back to ``saved`` (:func:`_checkpointing`)."""
    for module, enabled, fn in saved:
        module.gradient_checkpointing = enabled
        if fn is None:
            vars(module).pop("_gradient_checkpointing_func", None)
        else:
            module._gradient_checkpointing_func = fn


def _own_code(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (a function or bound method) running a copy of its code object; anything else
    callable, as it is.

    Dynamo keeps a code object's compiled graphs on it and counts them against its recompile
    limit (8) there; graphs for different objects share that count unless their guards pin the
    object by identity, which a module's do not. Every editor's predictors run the same
    methods, so they shared one count: 3 compiled SteerMusic+ editors (3 concepts) and a second
    clip length were past it, and the next predictor's calls ran eagerly. With its own copies,
    each predictor's graphs count for it alone, and go with it.
    """
    if isinstance(fn, types.MethodType):
        return types.MethodType(_own_code(fn.__func__), fn.__self__)
    if not isinstance(fn, types.FunctionType):
        return fn
    copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    copy.__qualname__ = fn.__qualname__
    return copy


class Predictor:
    """One model's denoiser calls: ``predict_noise``, eager or compiled, optionally returning the
    outputs of chosen modules.

    The modules are observed by a :class:`~hooks.FeatureTap`, installed before anything is
    compiled, so compiled calls return features too (with their autograd graph). Compiled
    functions are kept by the predictor: make one per model and editor, not per call, and
    :meth:`close` it to remove the hooks.

    Args:
        model: the backbone.
        features: the feature requests its calls answer; the modules each selects are worked
            out once, here (walking the model's modules per step costs milliseconds).
        compiler: compiles a function (:meth:`steer.performance.Performance.compiler`);
            ``None`` runs eagerly.
        checkpointing: when a feature request needs gradients, switch on the model's
            :attr:`~backbones.Backbone.gradient_checkpointing` until :meth:`close` (if it was
            off). If it is on already, the backbone's checkpoint function replaces the one set
            until :meth:`close` too: diffusers' own, or one of the user's, would recompute ε′
            with a LoRA concept's adapter switched off. :meth:`close` sets each module's
            checkpointing back as it found it.
    """

    def __init__(
        self,
        model: Backbone,
        features: Sequence[FeatureRequest] = (),
        compiler: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None,
        *,
        checkpointing: bool = False,
    ) -> None:
        self.model = model
        #: the modules each feature request selects, in forward order
        self.names = {f: feature_modules(model, [f]) for f in features}
        observed = feature_modules(model, features)  # every request's, in forward order
        compile_fn = (lambda fn: compiler(_own_code(fn))) if compiler else (lambda fn: fn)
        self._plain = compile_fn(model.predict_noise)
        self.tap = FeatureTap(model.denoiser, observed) if observed else None
        self._recorded = compile_fn(self._record) if self.tap is not None else None
        # last, so nothing above can raise with it switched on; as it was again in close()
        self._checkpointing: _Checkpointing = []  # what close() sets back
        if any(f.grad for f in features) and (checkpointing or model.gradient_checkpointing):
            self._checkpointing = _checkpointing(model.denoiser)
            try:
                model.gradient_checkpointing = True
            except ValueError:  # a denoiser that cannot checkpoint, asked by the preset
                self.close()
                raise ValueError(
                    f"the denoiser of {type(model).__name__} ({type(model.denoiser).__name__}) does not support "
                    "gradient checkpointing, which Performance(checkpointing=True) (the 'checkpointed' and "
                    "'fused-checkpointed' presets) needs: use the 'batched' or 'fused' preset"
                ) from None
            except BaseException:
                self.close()
                raise
            if _checkpointing(model.denoiser) == self._checkpointing:
                # set so already (by another model's predictor on this denoiser, say): whoever
                # set it sets it back, closed before or after this one
                self._checkpointing = []

    def _record(
        self,
        x_t: Tensor,
        t: Tensor,
        cond: Conditioning,
        guidance_scale: float | Tensor,
        layout: tuple[tuple[tuple[str, ...], int, bool], ...],
        blocks: int,
    ) -> tuple[Tensor, tuple[tuple[Tensor, ...], ...]]:
        """ε̂, and for each ``(module names, block, grad)`` of ``layout`` those modules' outputs
        on the conditional rows of latent ``block`` of the ``blocks`` stacked in ``x_t``, as
        float32 maps ``(B, T, F, C)`` (detached unless ``grad``).

        The rows are picked and reshaped here, in the compiled call, not by an eager op per
        module and request after it (SteerMusic+: 192 of a step's 252 eager ops, CPU).
        """
        assert self.tap is not None  # only compiled when there is one
        eps, captured = self.tap.record(self.model.predict_noise, x_t, t, cond, guidance_scale)
        batch = x_t.shape[0] // blocks
        first = self.model.conditional_rows(x_t.shape[0], guidance_scale).start
        latent_shape = (batch, *x_t.shape[1:])
        maps = []
        for names, block, grad in layout:
            start = first + block * batch
            rows = (captured[name][start : start + batch] for name in names)  # (B, T·F, C)
            maps.append(tuple(
                self.model.feature_map(h if grad else h.detach(), latent_shape).float() for h in rows
            ))
        return eps, tuple(maps)

    def __call__(
        self,
        x_t: Tensor,
        t: Tensor,
        cond: Conditioning,
        guidance_scale: float | Tensor,
        *,
        features: Sequence[tuple[FeatureRequest, int]] = (),
        blocks: int = 1,
    ) -> tuple[Tensor, dict[FeatureRequest, dict[str, Tensor]]]:
        """ε̂ of ``x_t`` ``(blocks · B, ...)``, ``blocks`` latents of B clips stacked, and for each
        ``(request, block)`` of ``features`` the request's modules' outputs on latent
        ``block``'s rows of the conditional branch (:meth:`~backbones.Backbone.conditional_rows`):
        float32 maps ``(B, T, F, C)`` by module name, with their autograd graph if the
        request's ``grad``."""
        if not features:
            return self._plain(x_t, t, cond, guidance_scale), {}
        if self._recorded is None:
            raise ValueError("this predictor observes no modules: make it with the feature requests to answer")
        unknown = [f for f, _ in features if f not in self.names]
        if unknown:
            raise ValueError(
                f"the predictor of model {unknown[0].request.model!r} was not made for {unknown[0]}: pass it the request"
            )
        layout = tuple((tuple(self.names[f]), block, f.grad) for f, block in features)
        try:
            eps, maps = self._recorded(x_t, t, cond, guidance_scale, layout, blocks)
        except BaseException:
            self.tap.reset()
            raise
        return eps, {f: dict(zip(self.names[f], m)) for (f, _), m in zip(features, maps)}

    def close(self) -> None:
        """Remove the hooks and set the model's checkpointing back as it found it (flags and
        functions); idempotent."""
        if self.tap is not None:
            self.tap.remove()
        _restore_checkpointing(self._checkpointing)
        self._checkpointing = []


def _call(
    predictor: Predictor,
    group: Sequence[NoiseRequest],
    features: Sequence[FeatureRequest],
    latents: Mapping[str, Tensor],
    prompts: Mapping[str, Conditioning],
    t: Tensor,
) -> tuple[dict[NoiseRequest, Tensor], dict[FeatureRequest, dict[str, Tensor]]]:
    """One denoiser call answering every request of ``group`` (all for ``predictor``'s model)."""
    batch = len(t)
    guidance = _guidance(group, batch, t.device)
    grad = any(f.grad for f in features)
    with torch.set_grad_enabled(grad):
        eps, out = predictor(
            torch.cat([latents[r.latent] if grad else latents[r.latent].detach() for r in group]),
            t.repeat(len(group)),
            Conditioning.cat([prompts[r.prompt] for r in group]),
            guidance,
            features=[(f, group.index(f.request)) for f in features],
            blocks=len(group),
        )
    return dict(zip(group, eps.detach().split(batch))), out


def _check_roles(
    requests: Iterable[NoiseRequest],
    models: Mapping[str, Backbone],
    latents: Mapping[str, Tensor],
    prompts: Mapping[str, Mapping[str, Conditioning]],
) -> None:
    """A clear error for a request whose model, latent or prompt role is not given."""
    for request in requests:
        given = (
            ("model", request.model, models),
            ("latent", request.latent, latents),
            (f"prompt of model {request.model!r}", request.prompt, prompts.get(request.model, {})),
        )
        for what, role, roles in given:
            if role not in roles:
                raise ValueError(
                    f"{request} asks for the {what} {role!r}, and the ones given are {sorted(roles)}: "
                    "give it, or ask for one of those"
                )


def evaluate_requests(
    requests: Iterable[NoiseRequest],
    *,
    models: Mapping[str, Backbone],
    latents: Mapping[str, Tensor],
    prompts: Mapping[str, Mapping[str, Conditioning]],
    t: Tensor,
    features: Iterable[FeatureRequest] = (),
    batched: bool = True,
    predictors: Mapping[str, Predictor] | None = None,
) -> tuple[dict[NoiseRequest, Tensor], dict[FeatureRequest, dict[str, Tensor]]]:
    """Guided noise predictions for each distinct request, and the requested features.

    Args:
        requests: what the losses need (duplicates are evaluated once).
        models: backbone by model name.
        latents: noisy latent by role (``"edit"``: x_t, ``"source"``: x_src_t), each ``(B, ...)``;
            x_t may carry a graph back to the edited latent, used only by calls whose features
            are requested with ``grad=True``.
        prompts: model name → prompt role → conditioning of batch size ``B`` (each model encodes
            its own prompts: a textual-inversion concept changes the encoding).
        t: timesteps ``(B,)``.
        features: self-attention features to capture from the calls (conditional rows only).
        batched: evaluate all requests of a model in one denoiser call (classifier-free guidance,
            every latent and every prompt stacked along the batch), features read from the same
            call. ``False`` is the reference loop: one call per request, without gradients, and
            for each feature request with ``grad=True`` a second call of its prediction with
            gradients (the same rows; its ε̂ is discarded).
        predictors: model name → its :class:`Predictor` (compiled, say), made for (at least)
            that model's feature requests; by default eager ones, made for this call.

    Returns:
        ε̂ for each request ``(B, ...)`` (detached), and for each feature request the features
        ``(B, T, F, C)`` by module name.
    """
    requests = unique(requests)
    features = unique(features)
    _check_roles(requests, models, latents, prompts)
    missing = [f.request for f in features if f.request not in requests]
    if missing:
        raise ValueError(f"features requested from a prediction nobody requested: {missing[0]}")
    if batched:
        groups = [[r for r in requests if r.model == m] for m in unique(r.model for r in requests)]
        calls = [(group, [f for f in features if f.request in group]) for group in groups]
    else:
        calls = [([r], [f for f in features if f.request == r and not f.grad]) for r in requests]
        # the reference loop's second pass: the prediction again, with gradients, for its features
        calls += [([f.request], [f]) for f in features if f.grad]
    with contextlib.ExitStack() as stack:
        if predictors is None:
            predictors = {
                name: stack.enter_context(
                    contextlib.closing(Predictor(model, [f for f in features if f.request.model == name]))
                )
                for name, model in models.items()
            }
        predictions: dict[NoiseRequest, Tensor] = {}
        captured: dict[FeatureRequest, dict[str, Tensor]] = {}
        for group, mine in calls:
            eps, feats = _call(predictors[group[0].model], group, mine, latents, prompts[group[0].model], t)
            for request, value in eps.items():
                predictions.setdefault(request, value)  # the second pass's ε̂ is discarded
            captured.update(feats)
    return predictions, captured
