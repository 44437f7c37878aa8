"""``steer personalize``: learn a concept from reference clips, save it, optionally push it.

``steer.cli`` adds the subcommand with :func:`add_personalize_parser` and runs it with
:func:`run_personalize`; problems with the user's input are raised as ``ValueError`` before any
model is loaded, so the command line prints them as one line.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from huggingface_hub import constants as hub_constants

from backbones.auto import TINY, is_mel_diffusion_folder
from backbones.word_encoder import split_words

from .concept import (
    CONFIG_NAME,
    METHODS,
    PushError,
    check_new_words,
    check_repo_id,
    check_save_folder,
)
from .train import check_checkpoint_dir, check_references, check_settings


class Interrupted(KeyboardInterrupt):
    """Ctrl-C where the command has already written something: ``left`` says what, and how to go on."""

    def __init__(self, left: str) -> None:
        super().__init__(left)
        self.left = left


def add_personalize_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``personalize`` to a ``parser.add_subparsers()`` object; returns its parser."""
    from ..cli import path_option  # steer.cli imports this module: a lazy import

    parser = subparsers.add_parser(
        "personalize",
        help="learn a concept (a token for a sound) from reference clips, for SteerMusic+",
        description="Fine-tune a backbone on a few reference clips so that '<token> <class word>' "
        "names their sound (DreamSound's recipe), and save the concept as safetensors with a "
        "model card. Defaults for steps / lr / batch size depend on the method and the backbone.",
    )
    parser.add_argument("references", nargs="+", type=path_option, metavar="REF", help="reference audio files")
    parser.add_argument("--token", required=True, help="the new word naming the concept (e.g. sks)")
    parser.add_argument("--class-word", help="the kind of sound (e.g. guitar)")
    parser.add_argument("--method", choices=METHODS, default="lora", help="how to learn it (default: lora)")
    parser.add_argument("-o", "--output", type=path_option, required=True, help="folder to save the concept in")
    parser.add_argument(
        "--backbone",
        default="cvssp/audioldm2-music",
        help="base model: Hub repo id, local folder saved with save_pretrained, or an offline build with random "
        f"weights: {', '.join(TINY)} (default: cvssp/audioldm2-music)",
    )
    parser.add_argument("--steps", type=int, help="training steps (default: by method)")
    parser.add_argument("--lr", type=float, help="learning rate (default: by method)")
    parser.add_argument("--batch-size", type=int, help="clips per step (default: 4)")
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank (default: 4)")
    parser.add_argument("--crop-seconds", type=float, help="training crop length (default: by backbone)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--checkpoint-dir", type=path_option, help="save the training state here")
    parser.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints (default: 50)")
    parser.add_argument(
        "--keep-checkpoints", type=int, default=2, help="newest checkpoints of this run to keep (default: 2; 0 keeps all)"
    )
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload the concept to this Hub repo")
    parser.add_argument("--private", action="store_true", help="create the --push-to-hub repo as private")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="save into an output folder that is not empty: a concept there is replaced, other files are kept",
    )
    return parser


def run_personalize(args: argparse.Namespace) -> Path:
    """Learn, save (and push) the concept ``args`` describe; returns the output folder.

    Everything that can be checked without the model is checked before it loads: the output and
    checkpoint folders, the reference clips (read and checked as training reads them), the token
    (for a local mel-diffusion model, against its vocabulary's rule), the Hub repo id and the
    training numbers. Training that diverges raises before anything is saved or pushed. A failed
    push leaves the saved concept in place and raises a
    :class:`~steer.concepts.concept.PushError` that says how to push it again.
    """
    output: Path = args.output
    check_save_folder(output)
    _check_output_overwrite(output, args.overwrite)
    check_references(args.references)
    check_new_words(args.token, args.class_word)
    _check_mel_token(args.backbone, args.token)
    if args.push_to_hub is not None:
        check_repo_id(args.push_to_hub, "--push-to-hub")
        if hub_constants.HF_HUB_OFFLINE:  # known now: the push would fail after training
            raise ValueError(
                "--push-to-hub cannot push while HF_HUB_OFFLINE is set: unset it, or drop --push-to-hub "
                "and push the saved folder later (Concept.from_pretrained(folder).push_to_hub(repo_id))"
            )
    elif args.private:
        raise ValueError("--private applies with --push-to-hub: add --push-to-hub REPO_ID or drop --private")
    if args.resume and args.checkpoint_dir is None:
        raise ValueError("--resume needs --checkpoint-dir")
    if args.checkpoint_dir is not None:
        check_checkpoint_dir(args.checkpoint_dir, resume=args.resume)
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be at least 1 (0 would save an untrained concept), got {args.steps}")
    check_settings(
        steps=args.steps, lr=args.lr, batch_size=args.batch_size, crop_seconds=args.crop_seconds,
        checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
        rank=args.rank if args.method == "lora" else None, seed=args.seed, as_flags=True,
    )
    from backbones import load_backbone

    from ..cli import apply_threads, device_option  # steer.cli imports this module: a lazy import

    device = device_option(args.device)
    apply_threads(args.threads)

    from .concept import Concept

    backbone = load_backbone(args.backbone, device=device)
    try:
        concept = Concept.train(
            backbone,
            args.references,
            token=args.token,
            class_word=args.class_word,
            method=args.method,
            steps=args.steps,
            lr=args.lr,
            batch_size=args.batch_size,
            rank=args.rank,
            crop_seconds=args.crop_seconds,
            seed=args.seed,
            checkpoint_dir=args.checkpoint_dir,
            checkpoint_every=args.checkpoint_every,
            keep_checkpoints=args.keep_checkpoints,
            resume=args.resume,
            progress=True,
        )
    except NotImplementedError as error:  # an unsupported method for this backbone: a usage error
        raise ValueError(str(error)) from error
    concept.save_pretrained(output, repo_id=args.push_to_hub)
    print(f"wrote {output} ({concept.method}); name the concept in prompts as '{concept.prompt()}'")
    if args.push_to_hub:
        private = ", private=True" if args.private else ""
        code = (
            f"from steer.concepts import Concept; Concept.from_pretrained({str(output.resolve())!r})"
            f".push_to_hub({args.push_to_hub!r}{private})"
        )
        # in a shell's double quotes, as before, with what they expand escaped: runs as printed
        push = "python -c \"" + re.sub(r'([\\"$`])', r"\\\1", code) + "\""
        try:
            commit = concept.push_to_hub(args.push_to_hub, private=args.private or None)
        except KeyboardInterrupt:
            raise Interrupted(f"the concept is saved at {output} but not pushed: push it with {push}") from None
        except PushError as error:
            retry = f"the concept IS saved at {output}: once the Hub is reachable, push it with {push}"
            raise PushError(error.repo_id, error.reason, retry=retry) from error
        except ValueError as error:  # a public repo for --private
            raise ValueError(f"{str(error).replace('private=True', '--private')}; the concept IS saved at {output}") from None
        print(f"pushed to {getattr(commit, 'commit_url', args.push_to_hub)}")
    return output


def _check_output_overwrite(output: Path, overwrite: bool) -> None:
    """Refuse, without ``--overwrite``, an output folder that is not empty, saying what
    ``--overwrite`` would do there (``output`` is a folder or absent: :func:`check_save_folder`)."""
    if overwrite or not output.is_dir() or not any(output.iterdir()):
        return
    if (output / CONFIG_NAME).is_file():
        raise ValueError(f"{output} holds a concept; pass --overwrite to replace it")
    raise ValueError(
        f"{output} is a folder holding other files; pass --overwrite to save the concept beside them "
        "(they are kept), or choose an empty or new folder"
    )


def _check_mel_token(backbone: str, token: str) -> None:
    """Refuse a token the mel-diffusion model's vocabulary cannot hold (one lower-case word of its
    prompt splitting) when ``--backbone`` is such a model's folder, before it loads."""
    if is_mel_diffusion_folder(backbone) and split_words(token) != [token]:
        raise ValueError(
            f"--token {token!r} is not one lower-case word, which the mel-diffusion model {backbone} needs "
            "(e.g. 'sks' or '[s]')"
        )
