#!/usr/bin/env python
"""Does word level write words? Train it for a wall budget, sample, and check the words.

    python bench/word_level.py corpus.txt --minutes 1
    python bench/word_level.py corpus.txt --minutes 5 --train-args "--units 512 --lowercase"

Trains `python train.py corpus.txt --level word --max-minutes M` in a fresh process, then
generates 60 samples of 200 tokens (temperature 1, seeds (0, i)) with an empty prime and
reports, over the letters-only runs of the samples ("words"):

- known: the fraction of generated words that occur in the corpus;
- glued: how many generated words are not in the corpus but are two corpus words joined
  ("theprogram"), the failure word level had when whitespace was a token of its own.

The result is printed and written to bench/results/word_level-<timestamp>.json with the
machine (bench/machine.py: CPU model and flags, cores, load, library versions).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_record  # noqa: E402  (bench/machine.py)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SAMPLES, LENGTH = 60, 200
LETTER_RUNS = re.compile(r"[^\W\d_]+")  # letters only: digits and "_" split words


def glued(word: str, words: set[str]) -> bool:
    """Whether `word` is not a corpus word but two corpus words written together."""
    return word not in words and any(word[:k] in words and word[k:] in words for k in range(1, len(word)))


def word_figures(samples: list[str], corpus: str) -> dict:
    """known (share of generated words the corpus has) and glued (count) over the samples."""
    words = set(LETTER_RUNS.findall(corpus))
    generated = [w for sample in samples for w in LETTER_RUNS.findall(sample)]
    return {"generated_words": len(generated),
            "known": sum(w in words for w in generated) / max(len(generated), 1),
            "glued": sum(glued(w, words) for w in generated)}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    corpus = Path(args.corpus)
    text = corpus.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, str(REPO / "train.py"), str(corpus), "--level", "word",
                   "--max-minutes", str(args.minutes), "--checkpoint-dir", f"{tmp}/ck", "--log-dir", f"{tmp}/runs",
                   "--name", "bench", *shlex.split(args.train_args)]
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode:
            print(run.stderr.strip().splitlines()[-1] if run.stderr.strip() else "training failed", file=sys.stderr)
            return 2
        import textgen

        generator = textgen.load(f"{tmp}/ck/bench")
        samples = generator.sample(num_samples=SAMPLES, length=LENGTH, seed=0)
        corpus_text = text.lower() if generator.config.tokenizer.lowercase else text
        figures = word_figures(samples, corpus_text) | {
            "minutes": args.minutes, "corpus": corpus.name, "corpus_characters": len(text),
            "vocab_size": generator.config.model.vocab_size, "steps": generator.state.get("step"),
            "start_up": [line for line in run.stdout.splitlines() if line.startswith(("Corpus", "Vocabulary"))],
            "example": samples[0][:300], "machine": machine_record()}
    print(json.dumps(figures, indent=2, ensure_ascii=False))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"word_level-{stamp}.json").write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("corpus", help="a UTF-8 text file")
    p.add_argument("--minutes", type=float, default=1.0, help="training wall budget (default: %(default)s)")
    p.add_argument("--train-args", default="", help="extra train flags, e.g. \"--units 512\"")
    return p


if __name__ == "__main__":
    sys.exit(main())
