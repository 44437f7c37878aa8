"""SteerMusic+ in the editor: reduction to SteerMusic, PCon's gradient path, call counts."""

import pytest
import torch

from losses import TimestepWeighting
from steer import Audio, Concept, SteerMusic, SteerMusicPlus


class SameModel:
    """A concept that changes nothing: ε' = ε (an adapter switched off)."""

    token = "sks"

    def apply(self, backbone):
        return backbone


@pytest.fixture()
def latent(tiny_backbone):
    return tiny_backbone.encode_audio(torch.randn(1, 10240, generator=torch.Generator().manual_seed(0)), 16000)


def test_without_shift_and_pcon_an_unchanged_concept_is_steermusic(tiny_backbone, latent):
    kwargs = dict(steps=4, guidance_scale=30.0, lr=0.5, weighting=TimestepWeighting(scale=2.0), t_min=20, t_max=980)
    plus = SteerMusicPlus(tiny_backbone, SameModel(), shift=0, pcon_weight=0, **kwargs)
    plain = SteerMusic(tiny_backbone, **kwargs)
    prompts = dict(source="a piano melody", target="a sks guitar melody")
    a = plus.edit_latent(latent, **prompts).latent
    b = plain.edit_latent(latent, **prompts).latent
    # equal but for rounding: the two editors batch their calls differently, and guidance 30 with
    # lr 0.5 moves the latent by up to 11; measured 1.2e-5 of the displacement (1.6e-5 with the
    # tiny text encoders of transformers 5.0), 1.3e-4 at most in one value
    assert (a - b).norm() <= 1e-4 * (b - latent).norm()
    assert not torch.allclose(a, latent)


def test_pcon_reaches_the_latent_in_two_calls_and_leaves_no_hooks(tiny_backbone, latent, monkeypatch):
    unet = tiny_backbone.pipe.unet
    batches = []
    original = unet.forward
    monkeypatch.setattr(unet, "forward", lambda x, *a, **k: batches.append((x.shape[0], torch.is_grad_enabled())) or original(x, *a, **k))
    states = []
    editor = SteerMusicPlus(tiny_backbone, SameModel(), steps=2, shift=0.05, pcon_weight=3.0, pcon_positions=8)
    result = editor.edit_latent(latent, source="a piano", target="a sks guitar", callback=states.append)
    # per step: base (x_src_t·y_src, x_t·y_cls) in one call, personalised ε'(x_t, y_tgt) with grad
    assert batches == [(2, True), (4, False)] * 2
    assert all(state.losses["PersonalizedContrastiveLoss"] > 0 for state in states)
    assert sum(len(m._forward_hooks) for m in unet.modules()) == 0
    # PCon's gradient is part of the applied one
    no_pcon = SteerMusicPlus(tiny_backbone, SameModel(), steps=2, shift=0.05, pcon_weight=0)
    other = no_pcon.edit_latent(latent, source="a piano", target="a sks guitar")
    assert (result.latent - other.latent).abs().max() > 1e-6


def test_target_must_name_the_token(tiny_backbone, latent):
    editor = SteerMusicPlus(tiny_backbone, SameModel(), steps=1)
    assert editor.prompt_roles(["a piano"], ["a sks  guitar melody"])["target_base"] == ["a guitar melody"]
    with pytest.raises(ValueError, match="does not name the concept token 'sks': write e.g. 'a sks melody'$"):
        editor.edit_latent(latent, source="a piano", target="a guitar")


def test_a_target_missing_the_token_is_shown_in_the_concepts_own_words(tiny_backbone, latent):
    """The example was 'a sks guitar melody' whatever the concept's class word."""

    class Violin(SameModel):
        token, class_word = "<v>", "violin"

    editor = SteerMusicPlus(tiny_backbone, Violin(), steps=1)
    with pytest.raises(ValueError, match="^the target prompt 'a violin' does not name the concept token '<v>': write e.g. 'a <v> violin melody'$"):
        editor.edit_latent(latent, source="a piano", target="a violin")


@pytest.mark.parametrize("token", ["sks", "[S]", "<s1>"])
def test_a_token_of_any_characters_is_found_as_a_word_of_its_own(tiny_backbone, token):
    concept = SameModel()
    concept.token = token
    editor = SteerMusicPlus(tiny_backbone, concept, steps=1)
    roles = editor.prompt_roles(["a piano"] * 2, [f"a {token}  guitar melody", f"{token}, a guitar"])
    assert roles["target_base"] == ["a guitar melody", "a guitar"]  # the comma goes with the token
    for inside_a_word in (f"a x{token} guitar", f"a {token}x guitar"):
        with pytest.raises(ValueError, match="does not name the concept token"):
            editor.prompt_roles(["a piano"], [inside_a_word])


def test_recipe_defaults_are_the_authors(tiny_backbone):
    editor = SteerMusicPlus(tiny_backbone, SameModel())
    pds, shift, pcon = editor.losses
    assert (editor.steps, editor.lr, editor.lr_step_size, editor.lr_gamma) == (400, 0.1, 20, 0.9)
    # SteerMusic_personalized.py keeps AudioLDM2_pipe's t_range 0.05–0.95 (20…980 is the zero-shot script's)
    assert (editor.t_min, editor.t_max) == (50, 950)
    assert pds.target.guidance_scale == 15.0 and pds.weighting == TimestepWeighting(scale=1.0)
    assert shift.strength == 0.05
    assert (pcon.weight, pcon.tau, pcon.num_positions) == (3.0, 0.07, 256)
    assert pcon.reference.request == pds.source  # the paper's choice


def test_pcon_layers_that_match_nothing_are_refused(tiny_backbone, latent):
    editor = SteerMusicPlus(tiny_backbone, SameModel(), steps=1, pcon_layers=r"^down_blocks\.9")
    with pytest.raises(ValueError, match=r"match none of the 48 self-attention modules.*pass a pattern"):
        editor.edit_latent(latent, source="a piano", target="a sks guitar")


def _adapted_layers(module) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(isinstance(m, BaseTunerLayer) for m in module.modules())


def test_closing_the_editor_removes_the_lora_adapter(tiny_backbone, latent):
    clip = Audio(0.1 * torch.randn(1, 16000, generator=torch.Generator().manual_seed(1)), 16000)
    concept = Concept.train(tiny_backbone, [clip], token="sks", class_word="guitar", method="lora", steps=0, progress=False)
    with SteerMusicPlus(tiny_backbone, concept, steps=1, pcon_positions=8) as editor:
        assert _adapted_layers(tiny_backbone.denoiser) > 0
        editor.edit_latent(latent, source="a piano", target="a sks guitar")
    assert _adapted_layers(tiny_backbone.denoiser) == 0
    editor.close()  # idempotent
    # it said "this personalised backbone was closed", an object the user never made
    with pytest.raises(RuntimeError, match="^this SteerMusicPlus editor was closed .*: build a new one to edit again$"):
        editor.edit_latent(latent, source="a piano", target="a sks guitar")


def test_a_concept_folder_or_repo_id_is_loaded(tiny_backbone, latent, tmp_path):
    clip = Audio(0.1 * torch.randn(1, 16000, generator=torch.Generator().manual_seed(1)), 16000)
    concept = Concept.train(tiny_backbone, [clip], token="sks", class_word="guitar", method="lora", steps=2, lr=0.05, progress=False)
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in concept.weights.items())
    concept.save_pretrained(tmp_path / "guitar")
    edits = []
    for given in (concept, str(tmp_path / "guitar"), tmp_path / "guitar"):
        with SteerMusicPlus(tiny_backbone, given, steps=2, pcon_positions=8) as editor:
            edits.append(editor.edit_latent(latent, source="a piano", target="a sks guitar").latent)
    torch.testing.assert_close(edits[1], edits[0], rtol=0, atol=0)
    torch.testing.assert_close(edits[2], edits[0], rtol=0, atol=0)
    with SteerMusicPlus(tiny_backbone, SameModel(), steps=2, pcon_positions=8) as editor:  # the concept counts
        assert not torch.allclose(editor.edit_latent(latent, source="a piano", target="a sks guitar").latent, edits[0])
    with pytest.raises(TypeError, match="needs a Concept .*, got NoneType"):
        SteerMusicPlus(tiny_backbone, None)
    with pytest.raises(ValueError, match="is not a steer concept"):
        SteerMusicPlus(tiny_backbone, tmp_path)


@pytest.mark.parametrize("recipe", ["steermusic", "steermusic_plus"])
def test_a_batch_edits_each_clip_as_it_is_edited_alone(tiny_backbone, lora, recipe):
    """Batching is for speed: every clip gets the timesteps, noise and PCon positions one clip
    draws, and PCon's gradient is summed over the clips, so each edit equals the clip's own."""
    clips = [0.1 * torch.randn(1, 10240, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    latents = torch.cat([tiny_backbone.encode_audio(c, 16000) for c in clips])
    sources, targets = ["a piano melody", "a soft flute"], ["a sks guitar melody", "a loud sks guitar"]
    kwargs = dict(steps=4, lr=0.5, pcon_positions=8)
    with (SteerMusic(tiny_backbone, steps=4, lr=0.5) if recipe == "steermusic" else SteerMusicPlus(tiny_backbone, lora, **kwargs)) as editor:
        batch = editor.edit_latent(latents, source=sources, target=targets, seed=3).latent
        alone = torch.cat([
            editor.edit_latent(latents[i : i + 1], source=sources[i], target=targets[i], seed=3).latent for i in range(2)
        ])
    assert (batch - latents).abs().amax() > 0.05  # the edits moved
    torch.testing.assert_close(batch, alone, rtol=1e-4, atol=1e-4)
