"""Does textgen scale with corpus size? Tokenization speed and peak memory, 10 MB to 1 GB.

    python bench/corpus_scale.py                      # 10 MB, 100 MB, 1 GB (char), subword to 100 MB
    python bench/corpus_scale.py --sizes 10 --levels char,word,bpe --steps 20

For each size a synthetic corpus is generated on the fly (random words with a Zipf-like
frequency, punctuation, line breaks, some accented words) into a temporary folder that is
deleted afterwards. Each measurement runs in its own process:

- tokenize: build the token cache (both passes: vocabulary and encoding); reports MB/s
  of the corpus file and peak RssAnon;
- train (char level): `textgen.train` for --steps steps on the cached ids, with a small
  --val-file so validation does not scale with the corpus; reports peak RssAnon.

Peak anonymous memory (RssAnon) is sampled every 20 ms from /proc/self/status by a thread:
plain RSS would count the memmap's file pages, which the kernel drops under pressure.
Linux only. Prints one JSON line per measurement and a table at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

MB = 1_000_000


def make_corpus(path: Path, size_mb: float, seed: int = 0) -> None:
    """Write size_mb MB of word-like text: a random ~8 MB block, repeated and cut at a line end.

    Repeating one block keeps generation at disk speed; the tokenizers see the same word
    statistics as in one long random text (no cache in textgen depends on repetition).
    """
    rng = np.random.default_rng(seed)
    syllables = ["ka", "to", "ri", "mo", "an", "el", "us", "th", "er", "in", "qu", "é", "ø", "st"]
    words = np.array(["".join(rng.choice(syllables, size=rng.integers(1, 5))) for _ in range(20_000)])
    weights = 1.0 / np.arange(1, len(words) + 1)  # Zipf: a few words are most of the text
    punct = np.array([" ", " ", " ", " ", " ", " ", ", ", ". ", ".\n", "\n\n", "; ", "! "])
    n = 1_200_000
    idx = rng.choice(len(words), size=n, p=weights / weights.sum())
    block = "".join(w + s for w, s in zip(words[idx], rng.choice(punct, size=n))).encode("utf-8")
    block = block[: block.rfind(b"\n") + 1]
    target = int(size_mb * MB)
    with open(path, "wb") as f:
        while target > 0:
            part = block if target >= len(block) else block[: block.rfind(b"\n", 0, target) + 1]
            target -= f.write(part) if part else target


def rss_anon_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


class PeakSampler:
    """Track the peak RssAnon of this process from a background thread."""

    def __init__(self, every: float = 0.02):
        self.peak, self.every, self._stop = 0, every, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_anon_kb())
            time.sleep(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon_kb())


def child(args) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    from textgen.config import TokenizerConfig
    from textgen.corpus_cache import token_ids

    corpus, val = Path(args.corpus), Path(args.val)
    settings = TokenizerConfig(level=args.level, vocab_size=args.vocab_size)
    if args.what == "tokenize":
        start = rss_anon_kb()
        with PeakSampler() as peak:
            t0 = time.perf_counter()
            ids = token_ids([corpus], [val], settings)
            seconds = time.perf_counter() - t0
        out = {"mb_per_s": corpus.stat().st_size / MB / seconds, "seconds": seconds,
               "tokens": len(ids.train), "dtype": ids.train.dtype.name, "reused": ids.reused}
    else:
        import textgen

        start = rss_anon_kb()
        with PeakSampler() as peak:
            t0 = time.perf_counter()
            textgen.train(str(corpus), val_file=str(val), level=args.level, vocab_size=args.vocab_size,
                          max_steps=args.steps, units=64, layers=2, embedding_dim=32, seq_len=64,
                          batch_size=32, checkpoint_dir=args.work + "/ck", log_dir=args.work + "/runs",
                          overwrite=True)
            seconds = time.perf_counter() - t0
        out = {"seconds": seconds, "steps": args.steps}
    out |= {"what": args.what, "level": args.level, "size_mb": args.size_mb,
            "peak_rss_anon_mb": peak.peak / 1024, "start_rss_anon_mb": start / 1024}
    print("RESULT " + json.dumps(out), flush=True)


def run_child(**kw) -> dict:
    cmd = [sys.executable, __file__, "--child"] + [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"measurement failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10,100,1000", help="corpus sizes in MB")
    p.add_argument("--levels", default="char,word,bpe")
    p.add_argument("--subword-max-mb", type=int, default=100, help="skip word/bpe above this size")
    p.add_argument("--vocab-size", type=int, default=8000, help="word/bpe vocabulary")
    p.add_argument("--steps", type=int, default=100, help="training steps (char level)")
    p.add_argument("--dir", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("what", "level", "corpus", "val", "work"):
        p.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    p.add_argument("--size-mb", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    from machine import describe, machine_record  # bench/machine.py (bench/ is this script's folder)

    print(f"# {describe(machine_record())}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="textgen-scale-", dir=args.dir))
    os.environ["TEXTGEN_CACHE_DIR"] = str(work / "cache")
    results = []
    try:
        val = work / "val.txt"
        make_corpus(val, 0.1, seed=99)
        for size in [int(s) for s in args.sizes.split(",")]:
            corpus = work / f"corpus_{size}mb.txt"
            t0 = time.perf_counter()
            make_corpus(corpus, size)
            print(f"# generated {corpus.stat().st_size / MB:.0f} MB in {time.perf_counter() - t0:.0f}s", flush=True)
            common = dict(corpus=corpus, val=val, work=work, size_mb=size, vocab_size=args.vocab_size)
            for level in args.levels.split(","):
                if level != "char" and size > args.subword_max_mb:
                    continue
                results.append(run_child(what="tokenize", level=level, **common))
            if "char" in args.levels.split(","):
                results.append(run_child(what="train", level="char", steps=args.steps, **common))
            corpus.unlink()
            shutil.rmtree(work / "cache", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n| corpus | level | step | MB/s | peak RssAnon MB |\n|---|---|---|---|---|")
    for r in results:
        rate = f"{r['mb_per_s']:.1f}" if "mb_per_s" in r else "-"
        print(f"| {r['size_mb']} MB | {r['level']} | {r['what']} | {rate} | {r['peak_rss_anon_mb']:.0f} |")


if __name__ == "__main__":
    main()
