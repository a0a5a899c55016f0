"""The `textgen` command: train, generate, evaluate, info, serve.

TensorFlow is imported only after the arguments are parsed, with its start-up log
lines hidden unless --verbose is given: the terminal belongs to the user. User errors
print one line on stderr and exit 2; Ctrl-C exits 130. Ctrl-C or SIGTERM during
training finishes the step, saves, prints how to resume and exits 130 or 143.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Sequence

from textgen import __version__, export
from textgen.config import GENERATE_LENGTH, LEVELS, MAX_SEED, Interrupted, ModelConfig, TextgenError, TokenizerConfig, TrainConfig

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, not usage text plus error."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with `argv` (default sys.argv[1:]); return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse: --help, --version and usage errors
        return int(exit_.code or 0)
    _quiet_tensorflow(args.verbose)
    try:
        return args.run(args)
    except Interrupted as stop:  # Ctrl-C/SIGTERM during training: work saved, say how to resume
        print(f"textgen: {stop}", file=sys.stderr)
        return stop.exit_code
    except TextgenError as err:
        print(f"textgen: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ntextgen: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # a bug: one line unless --verbose asks for the traceback
        if args.verbose:
            raise
        print(f"textgen: internal error: {type(err).__name__}: {err} (--verbose shows the traceback)",
              file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", help="show TensorFlow's log lines and tracebacks")
    parser = _Parser(prog="textgen", description="Train LSTM language models on your text; generate from them.")
    parser.add_argument("--version", action="version", version=f"textgen {__version__}")
    parser.set_defaults(verbose=False, run=lambda _args: parser.print_help() or EXIT_USAGE)
    sub = parser.add_subparsers(title="commands", parser_class=_Parser)
    _add_train(sub.add_parser("train", parents=[common], help="train a model on a corpus",
                              description="Train a model; the best bundle by validation loss is kept."))
    _add_generate(sub.add_parser("generate", parents=[common], help="generate text from a bundle"))
    _add_evaluate(sub.add_parser("evaluate", parents=[common], help="bits per character of a text"))
    _add_info(sub.add_parser("info", parents=[common], help="describe a bundle"))
    _add_serve(sub.add_parser("serve", parents=[common], help="serve a bundle over HTTP with a web page"))
    export.add_arguments(sub.add_parser("export", parents=[common], help="export the one-step generator (SavedModel, LiteRT, ONNX)"))
    return parser


def _defaults(section: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(section)}


def _add_train(p: argparse.ArgumentParser) -> None:
    # Options default to "not given" (SUPPRESS) so a resumed run can tell a flag the user
    # typed from a default; the defaults shown come from the config dataclasses.
    d = {**_defaults(TokenizerConfig), **_defaults(ModelConfig), **_defaults(TrainConfig)}

    def option(group, flag: str, help: str, **kwargs):
        key = flag[2:].replace("-", "_")
        shown = f" (default: {d[key]})" if d.get(key) is not None else ""
        group.add_argument(flag, default=argparse.SUPPRESS, help=help + shown, **kwargs)

    p.add_argument("corpus", nargs="+", metavar="CORPUS",
                   help="text file(s), a folder of .txt files, or a known corpus name (shakespeare, pydoc)")
    p.add_argument("--glob", default="*.txt", help="files of a folder to read; '**/*.txt' recurses (default: %(default)s)")
    g = p.add_argument_group("tokens")
    option(g, "--level", "token level", choices=LEVELS)
    option(g, "--vocab-size", "word/bpe vocabulary size", type=int)
    option(g, "--encoding", "corpus encoding")
    g = p.add_argument_group("model")
    option(g, "--layers", "LSTM layers", type=int)
    option(g, "--units", "units per LSTM layer", type=int)
    option(g, "--embedding-dim", "token embedding width", type=int)
    option(g, "--dropout", "dropout between layers", type=float)
    g = p.add_argument_group("training")
    option(g, "--seq-len", "tokens per sequence (state is carried across sequences)", type=int)
    option(g, "--batch-size", "sequences (contiguous streams) per step", type=int)
    option(g, "--learning-rate", "Adam's peak rate; cosine decay to 0.1x over the budget", type=float)
    option(g, "--clip-norm", "global gradient-norm cap", type=float)
    option(g, "--epochs", "at most this many passes", type=int)
    option(g, "--max-steps", "stop after this many optimizer steps", type=int)
    option(g, "--max-minutes", "wall-time budget, validation included", type=float)
    option(g, "--val-fraction", "held-out tail of the corpus", type=float)
    option(g, "--patience", "validations without improvement before stopping", type=int)
    option(g, "--seed", "initial weights and dropout", type=int)
    option(g, "--checkpoint-every", "steps between resume states (default: about every 5 minutes)", type=int)
    g.add_argument("--val-file", default=None, help="validate on this file instead of the corpus tail")
    g = p.add_argument_group("devices")
    g.add_argument("--strategy", default="default", choices=["auto", "default", "mirrored", "multi-worker"],
                   help="tf.distribute strategy; --batch-size is the global batch (default: %(default)s)")
    g.add_argument("--mixed-precision", action="store_true",
                   help="compute in float16 on GPUs, bfloat16 elsewhere; weights stay float32")
    g = p.add_argument_group("output")
    g.add_argument("--name", default=None, help="run name (default: the corpus file's stem)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run of that name")
    g.add_argument("--resume", action="store_true", help="continue run NAME where it stopped")
    g.add_argument("--init-from", default=None, metavar="BUNDLE",
                   help="start from a bundle's weights and tokenizer (fine-tune on a new corpus)")
    g.add_argument("--checkpoint-dir", default="checkpoints", help="bundles go in DIR/NAME (default: %(default)s)")
    g.add_argument("--log-dir", default="runs", help="TensorBoard logs go in DIR/NAME (default: %(default)s)")
    g.add_argument("--sample-every", type=_positive_int, default=None, metavar="N",
                   help="also write TensorBoard text samples every N steps (always at epoch ends)")
    g.add_argument("--no-histograms", dest="histograms", action="store_false",
                   help="do not write weight histograms at epoch ends")
    p.set_defaults(run=_run_train)


def _add_generate(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE", help="a checkpoint folder, e.g. checkpoints/my_corpus")
    g = p.add_argument_group("input")
    prime = g.add_mutually_exclusive_group()
    prime.add_argument("--prime", default=None, help="text to start from (printed first)")
    prime.add_argument("--prime-file", default=None, help="read the prime from this UTF-8 file")
    prime.add_argument("--interactive", action="store_true",
                       help="read a prime per line from stdin and answer each with a continuation, until EOF")
    g = p.add_argument_group("length")
    g.add_argument("--length", type=_positive_int, default=None,
                   help=f"tokens to generate (default: {GENERATE_LENGTH}; unlimited when --max-chars is given)")
    g.add_argument("--max-chars", type=_positive_int, default=None, help="end each sample after this many characters")
    g.add_argument("--stop", action="append", default=[], metavar="STRING",
                   help="end a sample where STRING appears (not printed); repeatable")
    g = p.add_argument_group("sampling")
    g.add_argument("--temperature", type=_non_negative_float, default=1.0,
                   help="randomness; 0 = always the most likely token (default: %(default)s)")
    g.add_argument("--top-k", type=_positive_int, default=None, help="sample among the K most likely tokens")
    g.add_argument("--top-p", type=_probability, default=None,
                   help="sample among the most likely tokens whose probabilities add up to P (nucleus)")
    g.add_argument("--repetition-penalty", type=_positive_float, default=None,
                   help="> 1 discourages tokens seen in the last 64 (CTRL's penalty); 1 = off")
    g.add_argument("--seed", type=_seed, default=None, help="same seed, same text")
    g = p.add_argument_group("output")
    g.add_argument("--num-samples", type=_positive_int, default=1, help="samples generated as one batch (default: 1)")
    g.add_argument("--json", action="store_true", help="print a JSON list of the samples")
    p.set_defaults(run=_run_generate)


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("files", nargs="+", metavar="FILE", help="text files to score")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(run=_run_evaluate)


def _add_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(run=_run_info)


def _add_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port; 0 picks a free one (default: %(default)s)")
    p.set_defaults(run=_run_serve)


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in 0..65535, not {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in 0..{MAX_SEED}, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], not {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be 0 or positive, not {text}")
    return value


_NOT_OPTIONS = {"corpus", "name", "overwrite", "resume", "init_from", "checkpoint_dir", "log_dir",
                "val_file", "glob", "verbose", "run", "sample_every", "histograms"}


def _run_train(args: argparse.Namespace) -> int:
    from textgen.training import train

    options = {k: v for k, v in vars(args).items() if k not in _NOT_OPTIONS}
    train(args.corpus, name=args.name, overwrite=args.overwrite, resume=args.resume, init_from=args.init_from,
          checkpoint_dir=args.checkpoint_dir, log_dir=args.log_dir, val_file=args.val_file, glob=args.glob,
          sample_every=args.sample_every, histograms=args.histograms, **options)
    return 0


def _run_generate(args: argparse.Namespace) -> int:
    from textgen.generate import load

    prime = _read_prime(args)  # bad prime files fail before the model loads
    generator = load(args.bundle)
    options = dict(length=args.length, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   repetition_penalty=args.repetition_penalty, stop=args.stop, seed=args.seed,
                   max_chars=args.max_chars)
    if options["length"] is None and args.max_chars is None:
        options["length"] = GENERATE_LENGTH
    if args.interactive:
        return _interactive(generator, options)
    if args.num_samples == 1 and not args.json:
        _write_stream(generator.stream(prime, **options))
        return 0
    samples = generator.sample(prime, num_samples=args.num_samples, **options)
    if args.json:
        print(json.dumps(samples, ensure_ascii=False))
    else:
        for i, text in enumerate(samples, 1):
            print(f"=== sample {i} of {len(samples)} ===")
            print(text)
    return 0


def _read_prime(args: argparse.Namespace) -> str:
    if args.prime_file is None:
        return args.prime or ""
    from pathlib import Path

    from textgen.data import read_text

    return read_text(Path(args.prime_file), "utf-8")


def _write_stream(pieces) -> None:
    """Write pieces as they come; Ctrl-C keeps what was printed, ending on a clean line."""
    wrote = False
    try:
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
            wrote = True
    finally:
        if wrote:
            sys.stdout.write("\n")
            sys.stdout.flush()


def _interactive(generator, options: dict) -> int:
    """Answer each line of stdin (the prime) with a streamed continuation, until EOF.

    A line the model cannot read (unknown characters) gets its one-line error and the
    session goes on.
    """
    prompt = sys.stdin.isatty()
    while True:
        if prompt:
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            return 0
        try:
            _write_stream(generator.stream(line.rstrip("\r\n"), include_prime=False, **options))
        except TextgenError as err:
            print(f"textgen: error: {err}", file=sys.stderr)


def _run_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm.auto import tqdm

    from textgen.evaluate import evaluate_files
    from textgen.generate import load

    generator = load(args.bundle)
    paths = [Path(f) for f in args.files]
    for path in paths:
        if not path.exists():
            raise TextgenError(f"{path}: no such file")
        if not path.is_file():
            raise TextgenError(f"{path}: not a file")
    total = sum(p.stat().st_size for p in paths)
    with tqdm(total=total, unit="B", unit_scale=True, desc="evaluating", disable=args.json) as bar:
        score = evaluate_files(generator, paths, progress=bar.update)
    if args.json:
        print(json.dumps({k: score.to_dict()[k] for k in ("bits_per_char", "perplexity", "characters", "tokens")}))
    else:
        print(f"{score.bits_per_char:.4f} bits per character, perplexity {score.perplexity:.3f} per token "
              f"({score.characters:,} characters, {score.tokens:,} tokens)")
    return 0


def _run_info(args: argparse.Namespace) -> int:
    from textgen.checkpoint import bundle_info

    info = bundle_info(args.bundle)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    m, t, corpus = info["config"]["model"], info["config"]["train"], info["corpus"]
    best = "none yet" if info["best_val_loss"] is None else f"{info['best_val_loss']:.4f} nats/token"
    if info["best_val_bits_per_char"] is not None:
        best += f" ({info['best_val_bits_per_char']:.3f} bits/char)"
    files = ", ".join(f"{s['file']} ({s['bytes']:,} bytes, sha256 {s['sha256'][:12]})"
                      for s in corpus.get("sources", []))
    lines = [
        f"bundle       {info['path']}  (name {info['name']!r}, format {info['format_version']})",
        f"model        {m['layers']}x{m['units']} LSTM, embedding {m['embedding_dim']}, dropout {m['dropout']}, "
        f"{info['parameters']:,} parameters",
        f"tokens       {info['level']} level, vocabulary {info['vocab_size']:,}",
        f"training     step {_count(info['step'])}, epoch {_count(info['epoch'])}; batch {t['batch_size']} x {t['seq_len']}, "
        f"learning rate {t['learning_rate']}, seed {t['seed']}",
        f"best val     {best}",
        f"corpus       {corpus.get('characters', 0):,} characters from {files or 'unknown files'}"
        + (f"; validation file {corpus['val_file']}" if corpus.get("val_file") else ""),
        "versions     " + ", ".join(f"{k} {v}" for k, v in sorted(info["versions"].items())),
    ]
    print("\n".join(lines))
    return 0


def _count(value: Any) -> str:
    """1,808 for a count; None (an old bundle without it) as is."""
    return f"{value:,}" if isinstance(value, int) else str(value)


def _run_serve(args: argparse.Namespace) -> int:
    from textgen.serve import serve

    serve(args.bundle, host=args.host, port=args.port)
    return 0


def _quiet_tensorflow(verbose: bool) -> None:
    """Hide TensorFlow's import-time C++ and Python log lines unless asked for."""
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import logging
    import warnings

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="keras")
    warnings.filterwarnings("ignore", module="tensorflow")
    _import_with_stderr_hidden("tensorflow")


def _import_with_stderr_hidden(module: str) -> None:
    """Import `module` with file descriptor 2 pointed at a temporary file.

    TensorFlow's C++ runtime logs through absl before it reads TF_CPP_MIN_LOG_LEVEL
    (e.g. "oneDNN custom operations are on", on CPUs with AVX-512), so only the
    descriptor can hide those lines. If the import fails, what it wrote is replayed.
    """
    if module in sys.modules:
        return
    import importlib
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        try:
            os.dup2(captured.fileno(), 2)
            try:
                importlib.import_module(module)
            finally:
                os.dup2(saved, 2)
        except BaseException:
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise
        finally:
            os.close(saved)
