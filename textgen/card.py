"""The model card: a README.md written into every bundle at each save.

It says what the model is (cell, layers x units, parameters, tokenizer), what it was
trained on (the corpus files and their sha256, from config.json's provenance), how long
and how well (steps, training time, best validation bits per character), the Python call
that trained it (and each call that resumed it), and how to load it. It is for people:
loading never reads it, config.json does not hash it, so a missing or edited card is fine.
It is written atomically (temporary file, fsync, rename) like the bundle's other files.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from textgen.atomic import write_text_atomic
from textgen.bundle import bundle_info
from textgen.config import train_options

CARD_FILE = "README.md"


class Clock:
    """Training wall time across sessions: seconds carried from a resumed run plus this one's."""

    def __init__(self, carried: float = 0.0):
        self.carried = float(carried)
        self.start = time.monotonic()

    def __call__(self) -> float:
        return self.carried + time.monotonic() - self.start


def train_call(corpus: str | Path | list, options: dict[str, Any]) -> str:
    """`textgen.train(...)` as called: the corpus and every option that differs from its default.

    `options` is train()'s **options (callbacks are not shown: a call cannot spell them).
    """
    defaults = {o.name: o.default for o in train_options()}
    shown = {k: v for k, v in options.items() if k not in defaults or v != defaults[k]}
    corpus = [str(c) for c in corpus] if isinstance(corpus, (list, tuple)) else str(corpus)
    if isinstance(corpus, list) and len(corpus) == 1:  # `train.py FILE` passes a list of one
        corpus = corpus[0]
    parts = [repr(corpus)] + [f"{k}={_literal(v)}" for k, v in sorted(shown.items())]
    return f"textgen.train({', '.join(parts)})"


def _literal(value: Any) -> str:
    return repr(str(value)) if isinstance(value, Path) else repr(value)


def write_card(bundle_dir: Path, trained_by: list[str], seconds: float) -> Path:
    """Write (or replace) the bundle's README.md from its config.json; return its path."""
    path = Path(bundle_dir) / CARD_FILE
    write_text_atomic(path, render(bundle_info(bundle_dir), trained_by, seconds))
    return path


def render(info: dict[str, Any], trained_by: list[str], seconds: float) -> str:
    """The card's Markdown from `bundle.bundle_info` and the training calls and time."""
    m, t, corpus = info["config"]["model"], info["config"]["train"], info["corpus"]
    bits = info["best_val_bits_per_char"]
    best = "no validation yet" if info["best_val_loss"] is None else f"{info['best_val_loss']:.4f} nats/token"
    if bits is not None:
        best = f"{bits:.3f} bits per character ({best})"
    versions = ", ".join(f"{k} {v}" for k, v in sorted(info["versions"].items()))
    lines = [
        f"# {info['name']}: a textgen language model",
        "",
        "| | |",
        "|---|---|",
        f"| model | {m.get('cell', 'lstm').upper()} cell, {m['layers']} layers x {m['units']} units, embedding {m['embedding_dim']}, "
        f"{info['parameters']:,} parameters |",
        f"| tokens | {info['level']} level, vocabulary {info['vocab_size']:,}"
        f"{', lowercased' if info['config']['tokenizer'].get('lowercase') else ''} |",
        f"| training | step {_count(info['step'])} (epoch {_count(info['epoch'])}), {_duration(seconds)} of training; "
        f"batch {t['batch_size']} x {t['seq_len']}, learning rate {t['learning_rate']}, seed {t['seed']} |",
        f"| best validation | {best} |",
        f"| written by | {versions} |",
        "",
        "## Corpus",
        "",
        f"{corpus.get('files', 0):,} file(s), {corpus.get('characters', 0):,} characters, "
        f"{corpus.get('bytes', 0):,} bytes; sha256 of them all: `{corpus.get('sha256')}`"
        + (f"; validated on {corpus['val_file']}" if corpus.get("val_file") else ""),
        "",
        "| file | bytes | sha256 |",
        "|---|---:|---|",
        *(f"| {s['file']} | {s['bytes']:,} | `{s['sha256']}` |" for s in corpus.get("sources", [])),
    ]
    unlisted = corpus.get("files", 0) - len(corpus.get("sources", []))
    if unlisted > 0:
        lines.append(f"| ... and {unlisted:,} more | | |")
    lines += ["", "## How it was trained", "", "```python", "import textgen", "", *trained_by[:1], "```"]
    if trained_by[1:]:
        lines += ["", "then resumed with:", "", "```python", *trained_by[1:], "```"]
    lines += [
        "", "## Use it", "",
        "```", f"textgen generate {info['path']} --length 300 --temperature 0.8", "```", "",
        "```python", "import textgen", "", f"model = textgen.load({info['path']!r})",
        "print(model.generate(length=300, temperature=0.8))", "```", "",
        "textgen rewrites this card at every save; loading the bundle does not need it.", "",
    ]
    return "\n".join(lines)


def _count(value) -> str:
    return "?" if value is None else f"{value:,}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s" if minutes else f"{secs} s"
