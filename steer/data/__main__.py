"""``python -m steer.data``: render an instrument-swap dataset folder with its manifest."""

from __future__ import annotations

import argparse
import sys
import time

from steer.data.dataset import render_dataset
from steer.data.instruments import DEFAULT_INSTRUMENTS, GM_PROGRAMS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m steer.data",
        description="Render melodies of a music21 corpus collection with General-MIDI "
        "instruments: a ground-truth instrument-swap dataset and its manifest.jsonl. Rendering "
        "into an existing folder adds the clips asked for that are missing; it refuses other "
        "settings (seed, length, rate, tempo, collection, test fraction) and any render that "
        "would move an already-rendered melody between train and test (render into a new "
        "folder instead). manifest.jsonl is rewritten only when its content changes.",
    )
    parser.add_argument("--out", required=True, help="dataset folder (reused as a cache)")
    parser.add_argument(
        "--collection",
        default="ryansMammoth",
        help="music21 corpus folder, in any case: ryansMammoth, bach, oneills1850, ...",
    )
    parser.add_argument("--n-melodies", type=int, default=40)
    parser.add_argument(
        "--instruments",
        nargs="+",
        default=list(DEFAULT_INSTRUMENTS),
        metavar="NAME",
        help=f"from: {', '.join(sorted(GM_PROGRAMS))}",
    )
    parser.add_argument(
        "--seconds", type=float, default=5.12, help="clip length, 0.514 s (what CQT-1 PCC reads) or more"
    )
    parser.add_argument("--sample-rate", type=int, default=16000, help="16000 (Hz) or more")
    parser.add_argument("--seed", type=int, default=0, help="a non-negative integer")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--qpm", type=float, default=100.0, help="tempo, quarter notes a minute")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a manifest.jsonl holding lines this render would not write (edited by "
        "hand, or melodies or instruments not asked for this time); never moves a melody "
        "to the other split",
    )
    args = parser.parse_args(argv)

    start = time.perf_counter()
    n_cached = 0
    interactive = sys.stderr.isatty()

    def progress(done: int, total: int, path: str, cached: bool) -> None:
        nonlocal n_cached
        n_cached += cached
        if interactive:  # one line, redrawn
            sys.stderr.write(f"\r[{done}/{total}] {n_cached} cached  {path}"[:100].ljust(100))
            if done == total:
                sys.stderr.write("\n")
        elif done == total or done % max(1, total // 10) == 0:  # logs: a line every 10 %
            elapsed = time.perf_counter() - start
            sys.stderr.write(f"[{done}/{total}] {n_cached} cached, {elapsed:.1f} s\n")
        sys.stderr.flush()

    try:
        manifest = render_dataset(
            args.out,
            collection=args.collection,
            n_melodies=args.n_melodies,
            instruments=args.instruments,
            seconds=args.seconds,
            sample_rate=args.sample_rate,
            seed=args.seed,
            test_fraction=args.test_fraction,
            qpm=args.qpm,
            overwrite=args.overwrite,
            progress=progress,
        )
    except ValueError as error:
        parser.error(str(error))
    except KeyboardInterrupt:  # every file is written whole (steer.data._files), so a rerun resumes
        if interactive:
            sys.stderr.write("\n")  # below the progress line
        sys.stderr.write(
            f"{parser.prog}: interrupted; run the same command again to resume: clips already "
            "rendered and notes already parsed are kept\n"
        )
        return 130
    print(f"{manifest}  ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
