#!/usr/bin/env python
"""Short documents: does a `--docs lines` model write whole, new lines?

    python bench/documents.py                  # 3 minutes of training, 100 samples
    python bench/documents.py --minutes 0.2    # a smoke run

Makes a line dataset on this machine: the first line of every docstring (modules, classes,
functions) in the Python standard library's own .py files, 10-100 characters, deduplicated,
shuffled with a fixed seed, at most --lines of them. The last 10 % of the lines are held out;
`python train.py train.txt --docs lines --max-minutes M` trains on the rest. Then it reports:
- ended: the share of --samples samples (temperature --temperature, seeds 0..) that end at
  `[DOC]` before the --length cap (char level, so a sample shorter than the cap ended);
- novel: the share that are not a training line (`samples(novelty=...)`);
- held-out bits/char: `textgen evaluate BUNDLE heldout.txt --docs lines`, which scores the
  held-out lines the way the bundle was trained ([DOC] d1 [DOC] d2 ... [DOC]).
Writes bench/results/documents-<timestamp>.json with the machine's record.
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import subprocess
import sys
import sysconfig
import tempfile
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results"


def docstring_lines(limit: int, seed: int = 0) -> list[str]:
    """First docstring lines of the standard library (10-100 characters), unique, shuffled."""
    found = set()
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                line = doc.strip().split("\n", 1)[0].strip() if doc else ""
                if 10 <= len(line) <= 100:
                    found.add(line)
    lines = sorted(found)
    random.Random(seed).shuffle(lines)
    return lines[:limit]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--lines", type=int, default=4000)
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--length", type=int, default=200, help="cap in tokens (characters)")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--train-args", default="", help="extra train flags")
    args = p.parse_args()

    import textgen
    from machine import describe, machine_record  # bench/machine.py

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        lines = docstring_lines(args.lines)
        held = max(1, len(lines) // 10)
        (work / "train.txt").write_text("\n".join(lines[:-held]) + "\n", encoding="utf-8")
        (work / "heldout.txt").write_text("\n".join(lines[-held:]) + "\n", encoding="utf-8")
        cmd = [sys.executable, str(REPO / "train.py"), str(work / "train.txt"), "--docs", "lines",
               "--max-minutes", str(args.minutes), "--name", "docs", "--checkpoint-dir", str(work / "ck"),
               "--log-dir", str(work / "runs"), *args.train_args.split()]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        bundle = work / "ck" / "docs"
        model = textgen.load(bundle)
        samples = list(model.samples(num_samples=args.samples, novelty=str(work / "train.txt"), seed=0,
                                     length=args.length, temperature=args.temperature))
        scored = subprocess.run([sys.executable, "-m", "textgen", "evaluate", str(bundle), str(work / "heldout.txt"),
                                 "--docs", "lines", "--json"], check=True, capture_output=True, text=True)
        evaluation = json.loads(scored.stdout.strip().splitlines()[-1])
    report = {
        "lines": len(lines), "held_out_lines": held, "minutes": args.minutes, "train_args": args.train_args,
        "samples": len(samples), "temperature": args.temperature, "length_cap": args.length,
        "ended_share": sum(len(s.text) < args.length for s in samples) / len(samples),
        "novel_share": sum(not s.novelty.copy for s in samples) / len(samples),
        "heldout_bits_per_char": evaluation["bits_per_char"],
        "first_samples": [s.text for s in samples[:5]],
        "machine": machine_record(),
    }
    print(describe(report["machine"]))
    print(f"{len(lines)} lines ({held} held out), {args.minutes:g} min: ended at [DOC] {report['ended_share']:.2f}, "
          f"novel {report['novel_share']:.2f}, held-out {report['heldout_bits_per_char']:.3f} bits/char")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"documents-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
