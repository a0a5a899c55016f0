#!/usr/bin/env python
"""LSTM vs GRU vs SimpleRNN at one parameter budget: bits/char, updates, memory span.

    python bench/cells.py                      # 10 minutes per run, lstm 2x256's budget
    python bench/cells.py --minutes 0.2 --span-tokens 2000   # a smoke run

Two corpora, each split like nanoGPT (first 90 % train, last 10 % validation):
- shakespeare: ../shared/corpora/tinyshakespeare.txt (or --shakespeare FILE);
- code: the Python standard library's own .py files (this interpreter's), sorted by path
  and concatenated up to --code-bytes (default 1.1 MB, about tiny-shakespeare's size).

Every cell gets the parameter count of an LSTM of --layers x --units (GRU and SimpleRNN
get the unit count whose ModelConfig.parameter_count comes closest), and trains twice:
- same minutes: --max-minutes M, as many updates as it manages (only LSTM has the fast CPU
  path, so this compares what a user gets in M minutes);
- same updates: --max-steps equal to the updates the LSTM made in M minutes, so the cells
  differ only in what they can learn (the vanishing-gradient comparison).
Each bundle is scored on the validation text with textgen.evaluate (bits/char) and
textgen.insight.memory_span (bits/char when the state is reset every k tokens).

Runs are sequential in this process. The table is printed and written to
bench/results/cells-<timestamp>.json (rewritten after every run).
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_SHAKESPEARE = REPO.parent / "shared" / "corpora" / "tinyshakespeare.txt"
RESULTS = REPO / "bench" / "results"
TRAIN_FRACTION = 0.9  # nanoGPT's split
CELLS = ("lstm", "gru", "rnn")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cells", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="wall budget per same-minutes run")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--units", type=int, default=256, help="the LSTM's units; the budget is its parameter count")
    parser.add_argument("--span-tokens", type=int, default=20_000, help="validation tokens the memory span reads")
    parser.add_argument("--code-bytes", type=int, default=1_100_000)
    parser.add_argument("--shakespeare", type=Path, default=DEFAULT_SHAKESPEARE)
    parser.add_argument("--corpora", default="shakespeare,code")
    args = parser.parse_args(argv)
    if not args.shakespeare.is_file() and "shakespeare" in args.corpora:
        print(f"cells: error: {args.shakespeare}: no such file (--shakespeare FILE)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="textgen-cells-") as work:
        return run(args, Path(work))


def run(args, work: Path) -> int:
    import textgen
    from textgen.evaluate import evaluate_files
    from textgen.insight import inspect

    out = RESULTS / f"cells-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}.json"
    rows: list[dict] = []
    units = budget_units(args.layers, args.units)
    for corpus in args.corpora.split(","):
        train, val = split(corpus_text(corpus, args), work / corpus)
        lstm_updates = None
        for mode in ("minutes", "updates"):
            for cell in CELLS:
                budget = {"max_minutes": args.minutes} if mode == "minutes" else {"max_steps": lstm_updates}
                started = time.monotonic()
                bundle = textgen.train(str(train), name=f"{corpus}-{cell}-{mode}", val_file=str(val),
                                       checkpoint_dir=work / "ck", log_dir=work / "runs", overwrite=True,
                                       histograms=False, cell=cell, layers=args.layers, units=units[cell],
                                       epochs=10_000, **budget)
                generator = textgen.load(bundle)
                updates = int(json.loads((bundle / "config.json").read_text())["state"]["step"])
                if cell == "lstm" and mode == "minutes":
                    lstm_updates = updates
                found = inspect(generator, val, span_tokens=args.span_tokens, page_chars=1)
                rows.append({"corpus": corpus, "mode": mode, "cell": cell, "units": units[cell],
                             "parameters": generator.model.count_params(), "updates": updates,
                             "seconds": round(time.monotonic() - started, 1),
                             "bits_per_char": evaluate_files(generator, [val]).bits_per_char,
                             "memory_span": found.span})
                _write(out, args, rows)
    print(table(rows))
    print(f"\nwritten to {out}")
    return 0


def budget_units(layers: int, lstm_units: int) -> dict[str, int]:
    """Units per cell whose parameter count is closest to the LSTM's (vocabulary 65, embedding 64)."""
    from textgen.config import ModelConfig

    def count(cell: str, units: int) -> int:
        return ModelConfig(vocab_size=65, layers=layers, units=units, cell=cell).parameter_count()

    target = count("lstm", lstm_units)
    return {cell: min(range(1, 4 * lstm_units), key=lambda u: abs(count(cell, u) - target)) for cell in CELLS}


def corpus_text(name: str, args) -> str:
    if name == "shakespeare":
        return args.shakespeare.read_text(encoding="utf-8")
    if name == "code":
        stdlib, pieces, size = Path(sysconfig.get_paths()["stdlib"]), [], 0
        for path in sorted(stdlib.rglob("*.py")):
            if "site-packages" in path.parts or "test" in path.parts:
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            pieces.append(text)
            size += len(text)
            if size >= args.code_bytes:
                break
        return "".join(pieces)[: args.code_bytes]
    raise SystemExit(f"cells: error: unknown corpus {name!r} (shakespeare, code)")


def split(text: str, folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    cut = int(TRAIN_FRACTION * len(text))
    train, val = folder / "train.txt", folder / "val.txt"
    train.write_text(text[:cut], encoding="utf-8")
    val.write_text(text[cut:], encoding="utf-8")
    return train, val


def table(rows: list[dict]) -> str:
    """One markdown table: bits/char, updates and the memory-span curve of every run."""
    ks = sorted({r["k"] for row in rows for r in row["memory_span"][:-1]})
    head = ["corpus", "budget", "cell", "units", "params", "updates", "bits/char"] + [f"k={k}" for k in ks] + ["whole"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        span = {r["k"]: r["bits_per_char"] for r in row["memory_span"][:-1]}
        cells = [row["corpus"], f"same {row['mode']}", row["cell"], str(row["units"]), f"{row['parameters']:,}",
                 f"{row['updates']:,}", f"{row['bits_per_char']:.3f}"]
        cells += [f"{span[k]:.3f}" if k in span else "" for k in ks] + [f"{row['memory_span'][-1]['bits_per_char']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write(out: Path, args, rows: list[dict]) -> None:
    from machine import machine_record  # bench/machine.py (bench/ is this script's folder)

    out.parent.mkdir(parents=True, exist_ok=True)
    document = {"args": {k: str(v) for k, v in vars(args).items()}, "machine": machine_record(), "runs": rows}
    out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
