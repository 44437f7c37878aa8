"""The personalised backbone ε': one network with a switchable LoRA, copies, and prompt-only concepts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from backbones import Conditioning
from steer import SteerMusic, SteerMusicPlus
from steer.concepts import Concept, PersonalizedBackbone

PROMPT = "a recording of a sks guitar"


def _train(backbone, clips, method, **kwargs):
    kwargs = {"steps": 2, "batch_size": 1, "lr": 1e-2, "crop_seconds": 0.64, "progress": False, **kwargs}
    return Concept.train(backbone, clips, token="sks", class_word="guitar", method=method, **kwargs)


def _inputs(backbone, channels=8):
    x = torch.randn(2, channels, 8, 16, generator=torch.Generator().manual_seed(0))
    return x, torch.tensor([100, 700]), backbone.encode_prompt([PROMPT, "a piano"])


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_a_fresh_lora_changes_nothing(tiny_backbone, clips):
    concept = _train(tiny_backbone, clips, "lora", steps=0)
    assert all(not v.any() for k, v in concept.weights.items() if "lora_B" in k)
    assert any(v.any() for k, v in concept.weights.items() if "lora_A" in k)
    x, t, cond = _inputs(tiny_backbone)
    with concept.apply(tiny_backbone) as personalized:
        for g in (1.0, 7.5):
            assert torch.equal(
                personalized.predict_noise(x, t, personalized.encode_prompt([PROMPT, "a piano"]), g),
                tiny_backbone.predict_noise(x, t, cond, g),
            )


def test_a_loaded_adapter_is_off_for_the_base(tiny_backbone, clips):
    unet = tiny_backbone.denoiser
    x, t, cond = _inputs(tiny_backbone)
    before = tiny_backbone.predict_noise(x, t, cond, 3.0)
    state = _state(unet)
    concept = _train(tiny_backbone, clips, "lora")
    assert _state(unet).keys() == state.keys()  # training left no adapter behind
    with concept.apply(tiny_backbone) as personalized:
        assert personalized.denoiser is unet  # one network
        assert torch.equal(tiny_backbone.predict_noise(x, t, cond, 3.0), before)
        eps = personalized.predict_noise(x, t, personalized.encode_prompt([PROMPT, "a piano"]), 3.0)
        assert (eps - before).abs().max() > 1e-4
        assert torch.equal(tiny_backbone.predict_noise(x, t, cond, 3.0), before)  # off again
        assert not any(p.requires_grad for p in unet.parameters())
    assert not hasattr(unet, "peft_config")
    assert all(type(m) is nn.Linear for n, m in unet.named_modules() if n.endswith((".to_q", ".to_out.0")))
    after = _state(unet)
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)


def test_applying_a_learnt_lora_leaves_the_random_stream_alone(tiny_backbone, clips):
    """peft draws a fresh A before the learnt one replaces it: a user's seeded stream moved."""
    concept = _train(tiny_backbone, clips, "lora")
    state = torch.get_rng_state()
    with concept.apply(tiny_backbone):
        assert torch.equal(torch.get_rng_state(), state)


def _base_is_clean(denoiser: nn.Module) -> bool:
    return not hasattr(denoiser, "peft_config") and all(
        type(m) is nn.Linear for n, m in denoiser.named_modules() if n.endswith(".to_q")
    )


def test_a_forgotten_personalised_model_leaves_the_base_clean(tiny_backbone, clips):
    import gc

    concept = _train(tiny_backbone, clips, "lora", steps=1)
    x, t, cond = _inputs(tiny_backbone)
    before = tiny_backbone.predict_noise(x, t, cond, 3.0)
    personalized = concept.apply(tiny_backbone)
    del personalized
    gc.collect()
    assert torch.equal(tiny_backbone.predict_noise(x, t, cond, 3.0), before)  # queued, switched off
    SteerMusic(tiny_backbone, steps=1).edit_latent(x[:1], source="a piano", target="a guitar")
    assert _base_is_clean(tiny_backbone.denoiser)  # the base model's edit removed it (it stayed for good)
    forgotten = concept.apply(tiny_backbone)
    del forgotten
    gc.collect()
    concept.apply(tiny_backbone).close()  # so did the next personalised model
    assert _base_is_clean(tiny_backbone.denoiser)


@pytest.mark.parametrize("which", ["tiny_backbone", "mel_backbone"])
def test_a_base_model_is_saved_without_a_concept_s_adapter(which, clips, tmp_path, request):
    """Saved with a LoRA adapter in its layers (a personalised model open, or collected unclosed),
    the denoiser's projections went under peft's names (``to_q.base_layer.weight``): the mel
    model loaded them at their random initial values without a word, the pipeline failed."""
    import gc

    from backbones import load_backbone

    backbone = request.getfixturevalue(which)
    state = _state(backbone.denoiser)
    concept = _train(backbone, clips, "lora", steps=1)
    with concept.apply(backbone), pytest.raises(ValueError, match="holds a concept's LoRA adapter .*: close it"):
        backbone.save_pretrained(tmp_path / "open")
    assert not (tmp_path / "open").exists()
    forgotten = concept.apply(backbone)
    del forgotten
    gc.collect()  # its adapter is queued for removal, still in the layers
    backbone.save_pretrained(tmp_path / "saved")
    loaded = _state(load_backbone(str(tmp_path / "saved")).denoiser)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


def test_collecting_a_forgotten_adapter_during_the_next_injection_keeps_the_new_one_whole(
    tiny_backbone, clips, monkeypatch
):
    """The cycle collector can finalize an unclosed ε' while peft injects the next adapter into the
    same layers; removing the old adapter there left the new one on detached modules."""
    from peft.tuners.lora import LoraModel

    concept = _train(tiny_backbone, clips, "lora", steps=1)
    with concept.apply(tiny_backbone) as alone:
        expected = alone.concept_weights()
    forgotten = [concept.apply(tiny_backbone)]
    create_and_replace = LoraModel._create_and_replace
    calls = []

    def collect_midway(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            forgotten.clear()  # the last reference: its finalizer runs here, mid-injection
        return create_and_replace(*args, **kwargs)

    monkeypatch.setattr(LoraModel, "_create_and_replace", collect_midway)
    with concept.apply(tiny_backbone) as personalized:
        assert not forgotten and len(calls) > 2
        weights = personalized.concept_weights()
        assert weights.keys() == expected.keys()
        assert all(torch.equal(weights[k], expected[k]) for k in expected)
        assert len(personalized.trainable_parameters()) == len(expected)
    assert _base_is_clean(tiny_backbone.denoiser)  # the forgotten adapter went too


def test_the_adapter_switches_off_after_an_exception(tiny_backbone, clips):
    x, t, cond = _inputs(tiny_backbone)
    before = tiny_backbone.predict_noise(x, t, cond)
    with _train(tiny_backbone, clips, "lora").apply(tiny_backbone) as personalized:
        with pytest.raises(RuntimeError, match="boom"), personalized.adapter_enabled():
            assert not torch.equal(tiny_backbone.predict_noise(x, t, cond), before)  # ε' inside
            raise RuntimeError("boom")
        assert torch.equal(tiny_backbone.predict_noise(x, t, cond), before)
    with pytest.raises(RuntimeError, match="closed"):
        personalized.predict_noise(x, t, cond)


def test_two_lora_concepts_share_the_base(tiny_backbone, clips):
    a = _train(tiny_backbone, clips, "lora", seed=0, steps=1)
    b = _train(tiny_backbone, clips, "lora", seed=1, rank=2, steps=1)
    x, t, cond = _inputs(tiny_backbone)
    with a.apply(tiny_backbone) as alone:
        eps_a = alone.predict_noise(x, t, cond, 3.0)
    with a.apply(tiny_backbone) as pa, b.apply(tiny_backbone) as pb:
        assert torch.equal(pa.predict_noise(x, t, cond, 3.0), eps_a)
        assert not torch.equal(pb.predict_noise(x, t, cond, 3.0), eps_a)


def test_dreambooth_holds_its_own_denoiser(tiny_backbone, clips):
    x, t, cond = _inputs(tiny_backbone)
    before = tiny_backbone.predict_noise(x, t, cond, 3.0)
    concept = _train(tiny_backbone, clips, "dreambooth", lr=1e-3)
    personalized = concept.apply(tiny_backbone)
    assert personalized.denoiser is not tiny_backbone.denoiser
    assert personalized.self_attention_modules().keys() == tiny_backbone.self_attention_modules().keys()
    assert torch.equal(tiny_backbone.predict_noise(x, t, cond, 3.0), before)
    assert not torch.equal(personalized.predict_noise(x, t, personalized.encode_prompt([PROMPT, "a piano"]), 3.0), before)
    # the audio path and the schedule are the base's
    wave = torch.randn(1, 16000, generator=torch.Generator().manual_seed(1)) * 0.1
    assert torch.equal(personalized.encode_audio(wave, 16000), tiny_backbone.encode_audio(wave, 16000))
    assert personalized.alphas_cumprod is tiny_backbone.alphas_cumprod


def test_textual_inversion_changes_only_the_prompt(mel_backbone, clips):
    vocabulary = dict(mel_backbone.model.text_encoder.vocabulary)
    concept = _train(mel_backbone, clips, "textual_inversion")
    assert concept.weights.keys() == {"token_embedding"}
    with concept.apply(mel_backbone) as personalized:
        assert personalized.denoiser is mel_backbone.denoiser
        assert mel_backbone.model.text_encoder.vocabulary == vocabulary  # the base never learns the word
        with pytest.warns(UserWarning, match="<unk>"):
            mel_backbone.encode_prompt([PROMPT])
        same = personalized.encode_prompt(["a recording of a violin"]).cond["encoder_hidden_states"]
        assert torch.equal(same, mel_backbone.encode_prompt(["a recording of a violin"]).cond["encoder_hidden_states"])
        ours = personalized.encode_prompt([PROMPT]).cond["encoder_hidden_states"]
        unk = mel_backbone.encode_prompt([PROMPT]).cond["encoder_hidden_states"]
        assert not torch.equal(ours, unk)


def test_a_mel_lora_binds_a_new_token_to_unk(mel_backbone, clips):
    concept = _train(mel_backbone, clips, "lora")
    unk = mel_backbone.model.text_encoder.embed.weight[1]
    assert torch.equal(concept.weights["token_embedding"], unk)  # fixed: only the adapter learns
    # a word the model knows is used as it is
    known = Concept.train(mel_backbone, clips, token="violin", class_word=None, method="lora", steps=1, progress=False)
    assert "token_embedding" not in known.weights
    with pytest.raises(ValueError, match="already a word of the base model's vocabulary"):
        Concept.train(mel_backbone, clips, token="violin", class_word=None, method="textual_inversion", steps=1, progress=False)


@pytest.mark.parametrize("class_word", ["guitar", "Guitar", "electric guitar"])
def test_a_mel_textual_inversion_starts_from_its_class_word_as_prompts_read_it(mel_backbone, clips, class_word):
    """"Guitar" and "electric guitar" were looked up as typed: not in the vocabulary, they started
    from the mean of all words, as if there were no class word."""
    concept = Concept.train(mel_backbone, clips, token="sks", class_word=class_word, method="textual_inversion",
                            steps=0, progress=False)
    encoder = mel_backbone.model.text_encoder
    assert torch.equal(concept.weights["token_embedding"], encoder.embed.weight[encoder.vocabulary["guitar"]])


def _hooks(module: nn.Module) -> int:
    return len(module._forward_hooks) + len(module._forward_pre_hooks)


def test_textual_inversion_on_audioldm2_learns_one_row_per_tokenizer(tiny_backbone, clips, tmp_path):
    pipe = tiny_backbone.pipe
    embeddings = [pipe.text_encoder.text_model.get_input_embeddings(), pipe.text_encoder_2.encoder.get_input_embeddings()]
    sizes = (len(pipe.tokenizer), len(pipe.tokenizer_2))
    base_before = tiny_backbone.encode_prompt([PROMPT]).cond
    start = _train(tiny_backbone, clips, "textual_inversion", steps=0)
    concept = _train(tiny_backbone, clips, "textual_inversion", steps=3, lr=1e-1)
    assert concept.weights.keys() == {"token_embedding.tokenizer", "token_embedding.tokenizer_2"}
    # initialised at the class word's mean embedding, then learnt
    guitar = pipe.tokenizer("guitar", add_special_tokens=False).input_ids
    assert torch.allclose(start.weights["token_embedding.tokenizer"], embeddings[0].weight[guitar].mean(0))
    for key in concept.weights:
        assert not torch.allclose(concept.weights[key], start.weights[key])
    # the base never learns the word: same tokenizers, same encoding, no hooks left behind
    assert (len(pipe.tokenizer), len(pipe.tokenizer_2)) == sizes
    tiny_backbone._prompts.clear()
    for key, value in tiny_backbone.encode_prompt([PROMPT]).cond.items():
        assert torch.equal(value, base_before[key])
    concept.save_pretrained(tmp_path / "ti")
    loaded = Concept.from_pretrained(tmp_path / "ti")
    with concept.apply(tiny_backbone) as personalized, loaded.apply(tiny_backbone) as again:
        assert personalized.denoiser is tiny_backbone.denoiser
        ours = personalized.encode_prompt([PROMPT]).cond["encoder_hidden_states"]
        assert not torch.allclose(ours, base_before["encoder_hidden_states"])
        assert torch.equal(again.encode_prompt([PROMPT]).cond["encoder_hidden_states"], ours)
        for plain in ("a recording of a guitar", "guitar riffs on desks and tasks"):  # "sks" inside words
            assert torch.equal(
                personalized.encode_prompt([plain]).cond["encoder_hidden_states_1"],
                tiny_backbone.encode_prompt([plain]).cond["encoder_hidden_states_1"],
            )
        assert [_hooks(e) for e in embeddings] == [0, 0]
        with torch.no_grad():  # the encoding follows the learnt rows (no stale cache)
            for row in personalized.trainable_parameters().values():
                row += 1.0
        assert not torch.equal(personalized.encode_prompt([PROMPT]).cond["encoder_hidden_states"], ours)
    with pytest.raises(ValueError, match="already a word of the base model's 'tokenizer'"):
        Concept.train(tiny_backbone, clips, token="b", class_word=None, method="textual_inversion", steps=0, progress=False)


@pytest.mark.parametrize("vocabulary", ["sentencepiece", "bpe"])
def test_a_word_the_tokenizer_holds_as_a_word_piece_is_refused(vocabulary):
    """T5 holds words as "▁piano" and RoBERTa as "Ġpiano": the bare string was looked up, so
    "piano" was taken as a new token, and every "piano" of a target became the learnt vector.
    (The offline tokenizers read characters: only a vocabulary with words can show it.)"""
    from transformers import RobertaTokenizer, T5Tokenizer

    from backbones.tiny.audioldm2 import _roberta_vocab, _t5_vocab
    from steer.concepts.new_token import NewToken

    if vocabulary == "sentencepiece":
        tokenizer = T5Tokenizer(vocab=[*_t5_vocab(), ("▁piano", -0.5)], extra_ids=0)
    else:
        vocab = _roberta_vocab()
        merges = [("p", "i"), ("a", "n"), ("pi", "an"), ("Ġ", "pian"), ("Ġpian", "o")]  # " piano": one piece
        vocab.update({piece: len(vocab) + i for i, piece in enumerate(["pi", "an", "pian", "Ġpian", "Ġpiano"])})
        tokenizer = RobertaTokenizer(vocab=vocab, merges=merges)
    assert len(tokenizer.tokenize(" piano")) == 1  # a word of its vocabulary
    embedding = torch.nn.Embedding(len(tokenizer), 4)
    with pytest.raises(ValueError, match="the token 'piano' is already a word of the base model's 'tokenizer'"):
        NewToken("piano", {"tokenizer": (tokenizer, embedding)}, init_word=None)
    assert NewToken("sks", {"tokenizer": (tokenizer, embedding)}, init_word=None).token_ids["tokenizer"] == len(tokenizer)


def test_unsupported_backbones_are_refused(analytic_backbone, tiny_backbone, clips):
    with pytest.raises(ValueError, match="concepts work on base backbones of the families audioldm, audioldm2, mel-diffusion, musicldm"):
        _train(analytic_backbone, clips, "lora")
    with (
        _train(tiny_backbone, clips, "lora", steps=0).apply(tiny_backbone) as personalized,
        pytest.raises(TypeError, match="not to a personalised one"),
    ):
        PersonalizedBackbone(personalized, Concept(personalized.concept.config, {}))


def test_hooks_on_the_shared_denoiser_see_base_and_personalised_calls(tiny_backbone, clips):
    """Why PCon captures per call: with LoRA, ε and ε' run the very same attn1 modules."""
    concept = _train(tiny_backbone, clips, "lora")
    x, t, cond = _inputs(tiny_backbone)
    with concept.apply(tiny_backbone) as personalized:
        name, module = next(iter(personalized.self_attention_modules().items()))
        assert module is tiny_backbone.self_attention_modules()[name]
        seen = []
        handle = module.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
        try:
            tiny_backbone.predict_noise(x, t, cond)
            personalized.predict_noise(x, t, cond)
        finally:
            handle.remove()
        assert len(seen) == 2 and not torch.equal(seen[0], seen[1])


def test_prompts_are_cached_by_the_personalised_model(tiny_backbone, clips):
    with _train(tiny_backbone, clips, "lora", steps=0).apply(tiny_backbone) as personalized:
        cond = personalized.encode_prompt([PROMPT])
        assert isinstance(cond, Conditioning) and len(cond) == 1
        assert personalized.encode_prompt([PROMPT]) is cond  # cached on the personalised side
        assert tiny_backbone.encode_prompt([PROMPT]) is not cond  # not shared with the base


@pytest.mark.parametrize("method", ["lora", "dreambooth", "textual_inversion"])
@pytest.mark.parametrize("which", ["tiny", "mel"])
def test_the_users_modes_and_trainable_flags_are_left_as_they_were(which, method, tiny_backbone, mel_backbone, clips):
    """A personalised model's view set the shared modules to eval and frozen (and peft froze the
    denoiser): a base model a user had in train mode came back from training a concept or a
    SteerMusic+ edit in eval mode and frozen; training's backward filled its weights' .grad."""
    backbone = tiny_backbone if which == "tiny" else mel_backbone
    modules = [backbone.denoiser, *([backbone.pipe.vae, backbone.pipe.text_encoder] if which == "tiny" else [backbone.model])]
    for module in modules:
        module.train().requires_grad_(True)

    def flags():
        return [([m.training for m in module.modules()], [p.requires_grad for p in module.parameters()]) for module in modules]

    before = flags()
    try:
        assert all(all(a) and all(b) for a, b in before)
        concept = _train(backbone, clips, method, steps=1)
        assert flags() == before
        assert all(p.grad is None for module in modules for p in module.parameters())
        with SteerMusicPlus(backbone, concept, steps=1) as editor:
            editor.edit(clips[0], source="a piano", target="a sks guitar")
        assert flags() == before
    finally:  # the tiny pipeline is shared by the tests of this process
        for module in modules:
            module.eval().requires_grad_(False)
