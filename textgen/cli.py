"""The `textgen` command: train, generate, evaluate, info, serve, inspect.

TensorFlow is imported only after the arguments are parsed, with its start-up log
lines hidden unless --verbose is given: the terminal belongs to the user. User errors
print one line on stderr and exit 2; Ctrl-C exits 130. Ctrl-C or SIGTERM during
training finishes the step, saves, prints how to resume and exits 130 or 143.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from textgen import __version__, export
from textgen.config import Interrupted, TextgenError, TrainOption, train_options
from textgen.controls import RULES, UNIQUE_ATTEMPTS, Rule

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
    if args.run is not _run_info:  # info reads config.json only: no TensorFlow to start
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
    except BaseException as err:  # a bug, or a Rust panic in `tokenizers` (a BaseException): one line
        if args.verbose or not (isinstance(err, Exception) or type(err).__name__ == "PanicException"):
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
    _add_inspect(sub.add_parser("inspect", parents=[common], help="memory span, gates and cells of a model on a text"))
    export.add_arguments(sub.add_parser("export", parents=[common], help="export the one-step generator (SavedModel, LiteRT, ONNX)"))
    return parser


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("corpus", nargs="+", metavar="CORPUS",
                   help="text file(s), a folder of .txt files, or a known corpus name (shakespeare, pydoc)")
    groups: dict[str, Any] = {}
    for option in train_options():
        if option.group not in groups:
            groups[option.group] = p.add_argument_group(option.group)
        _add_option(groups[option.group], option)
    p.set_defaults(run=_run_train)


def _add_option(group, option: TrainOption) -> None:
    """One train option as a flag. Flags default to "not given" (SUPPRESS), so only typed ones
    reach `train` (a resumed run tells them from defaults) and the defaults live in config.py."""
    shown = "" if option.default is None or option.kind is bool else f" (default: {option.default})"
    if option.kind is bool:
        kwargs = {"action": "store_false" if option.default else "store_true", "dest": option.name}
    else:
        kwargs = {"type": option.kind, "choices": option.choices, "metavar": option.metavar}
    group.add_argument(option.flag, default=argparse.SUPPRESS, help=option.help + shown, **kwargs)


def _add_generate(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE", help="a checkpoint folder, e.g. checkpoints/my_corpus")
    g = p.add_argument_group("input")
    prime = g.add_mutually_exclusive_group()
    prime.add_argument("--prime", default=None, help="text to start from (printed first)")
    prime.add_argument("--prime-file", default=None, help="read the prime from this UTF-8 file")
    prime.add_argument("--interactive", action="store_true",
                       help="read a prime per line from stdin and answer each with a continuation, until EOF")
    _add_controls(p)
    g = p.add_argument_group("output")
    g.add_argument("--num-samples", type=_positive_int, default=1, help="samples generated as one batch (default: 1)")
    g.add_argument("--json", action="store_true", help="print a JSON list of the samples")
    g.add_argument("--output", default=None, metavar="FILE",
                   help="write the samples to FILE, one per line: .txt (text) or .jsonl (text, seed, index)")
    g.add_argument("--unique", action="store_true",
                   help=f"drop repeated samples until --num-samples distinct ones (at most "
                        f"{UNIQUE_ATTEMPTS} x --num-samples tries)")
    g.add_argument("--novelty", action="append", default=None, metavar="CORPUS",
                   help="the training corpus: report per sample whether it is a training document and the "
                        "longest span it copies; repeatable")
    p.set_defaults(run=_run_generate)


def _add_controls(p: argparse.ArgumentParser) -> None:
    """One flag per decoding control: type, limits, default and help read from its Rule.

    A flag not given stays out of the namespace, so the control's own default applies.
    """
    groups: dict[str, Any] = {}
    for rule in RULES.values():
        if rule.group not in groups:
            groups[rule.group] = p.add_argument_group(rule.group)
        flag = "--" + rule.name.replace("_", "-")
        shown = f" (default: {rule.default})" if rule.default not in (None, ()) else ""
        help = rule.help + _CLI_DEFAULTS.get(rule.name, shown)
        if rule.repeated:
            groups[rule.group].add_argument(flag, action="append", default=argparse.SUPPRESS,
                                            metavar=rule.metavar, help=help + "; repeatable")
        else:
            groups[rule.group].add_argument(flag, type=_flag_type(rule), default=argparse.SUPPRESS,
                                            metavar=rule.metavar, help=help)


# The command's own defaults, where they differ from the Python API's.
_CLI_DEFAULTS = {"length": f" (default: {RULES['length'].default}; unlimited when --max-chars is given)"}


def _flag_type(rule: Rule):
    """argparse's type for a control: the text parsed as int or float, then checked by the rule."""
    def parse(text: str):
        value = rule.kind(text)  # a ValueError reads "invalid int value: 'x'"
        if not rule.accepts(value):
            raise argparse.ArgumentTypeError(f"must be {rule.describe()}, not {text}")
        return value

    parse.__name__ = rule.kind.__name__
    return parse


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("files", nargs="+", metavar="FILE", help="text files to score")
    p.add_argument("--docs", metavar="MODE", help="text, lines, jsonl:FIELD or csv:COLUMN: score the files' "
                   "documents each ended by [DOC] (default: the bundle's own mode)")
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
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a host name (or address) clients reach this server by, besides localhost; repeatable; "
                        "required with --host 0.0.0.0")
    p.add_argument("--max-queue", type=_positive_int, default=None, metavar="N",
                   help="requests that may wait for the model; past it: 503 with Retry-After "
                        "(default: twice the batch, 64)")
    p.add_argument("--request-timeout", type=_positive_float, default=60.0, metavar="SECONDS",
                   help="longest a request may wait and generate; past it: 504 (default: %(default)s)")
    p.set_defaults(run=_run_serve)


def _add_inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("file", metavar="FILE", help="the text to look at (UTF-8 or the bundle's encoding)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where the cell page and plots go (default: inspect-NAME in this folder)")
    p.add_argument("--span-tokens", type=_positive_int, default=200_000, metavar="N",
                   help="tokens the memory span is measured over (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print every number as one JSON object")
    p.set_defaults(run=_run_inspect)


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


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def _run_train(args: argparse.Namespace) -> int:
    from textgen.training import train

    train(args.corpus, **train_keywords(args))
    return 0


def train_keywords(args: argparse.Namespace) -> dict[str, Any]:
    """The train options typed on the command line, as `textgen.train` keywords."""
    names = {option.name for option in train_options()}
    return {key: value for key, value in vars(args).items() if key in names}


def _run_generate(args: argparse.Namespace) -> int:
    from textgen.generate import load

    prime = _read_prime(args)  # bad prime files fail before the model loads
    generator = load(args.bundle)
    options = {name: getattr(args, name) for name in RULES if hasattr(args, name)}  # the flags given
    if "max_chars" in options and "length" not in options:
        options["length"] = None  # only --max-chars: no token limit
    if args.interactive:
        return _interactive(generator, options)
    if args.output or args.unique or args.novelty:
        return _many_samples(generator, prime, options, args)
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


def _many_samples(generator, prime: str, options: dict, args: argparse.Namespace) -> int:
    """--output, --unique, --novelty: samples in batches behind a progress bar, checked, then written."""
    from pathlib import Path

    from tqdm.auto import tqdm

    from textgen.sample_file import check_output, write_samples

    output = Path(args.output) if args.output else None
    if output is not None:
        check_output(output)
    index = generator.corpus_index(args.novelty) if args.novelty else None
    rows = []
    with tqdm(total=args.num_samples, unit="sample", desc="generating", disable=None, leave=False) as bar:
        for sample in generator.samples(prime, args.num_samples, unique=args.unique, novelty=index, **options):
            row = {"text": sample.text, "seed": sample.seed, "index": sample.index}
            if sample.novelty is not None:
                row |= {"copy": sample.novelty.copy, "longest_copy": sample.novelty.longest}
            rows.append(row)
            bar.update()
    if len(rows) < args.num_samples:
        print(f"textgen: found {len(rows)} distinct samples of the {args.num_samples} asked for in "
              f"{UNIQUE_ATTEMPTS * args.num_samples} tries", file=sys.stderr)
    if output is not None:
        write_samples(output, rows)
        print(f"wrote {len(rows)} samples to {output}", file=sys.stderr)
    elif args.json:
        print(json.dumps([r["text"] for r in rows], ensure_ascii=False))
    else:
        for i, row in enumerate(rows, 1):
            print(f"=== sample {i} of {len(rows)}{_novelty_note(row)} ===")
            print(row["text"])
    if index is not None:
        print(_novelty_summary(rows, index.k), file=sys.stderr)
    return 0


def _novelty_note(row: dict) -> str:
    if "copy" not in row:
        return ""
    return " (a training document)" if row["copy"] else f" (longest copied span {row['longest_copy']} characters)"


def _novelty_summary(rows: list[dict], k: int) -> str:
    """One line: how many samples are new, and the copied spans."""
    new = sum(not r["copy"] for r in rows)
    longest = [r["longest_copy"] for r in rows]
    return (f"novelty: {new} of {len(rows)} samples are not training documents; longest copied span "
            f"(runs of {k}-character pieces of the corpus): mean {sum(longest) / max(len(rows), 1):.1f}, "
            f"max {max(longest, default=0)} characters")


def _read_prime(args: argparse.Namespace) -> str:
    if args.prime_file is None:
        return args.prime or ""
    from pathlib import Path

    from textgen.text import read_text

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

    from textgen.evaluate import evaluate_documents, evaluate_files
    from textgen.generate import load

    generator = load(args.bundle)
    paths = [Path(f) for f in args.files]
    for path in paths:
        if not path.exists():
            raise TextgenError(f"{path}: no such file")
        if not path.is_file():
            raise TextgenError(f"{path}: not a file")
    total = sum(p.stat().st_size for p in paths)
    docs = args.docs or generator.config.tokenizer.docs
    # No bar with --json nor when stderr is not a terminal (as training's), so an error stays one line.
    with tqdm(total=total, unit="B", unit_scale=True, desc="evaluating", disable=True if args.json else None) as bar:
        if docs == "text":
            score = evaluate_files(generator, paths, progress=bar.update)
        else:
            score = evaluate_documents(generator, paths, docs, progress=bar.update)
    if args.json:
        keys = ("bits_per_char", "perplexity", "characters", "tokens", "unk_char_share")
        print(json.dumps({k: score.to_dict()[k] for k in keys}))
    else:
        unknown = f", {score.unk_char_share:.2%} of them inside [UNK] tokens" if score.unk_char_share else ""
        print(f"{score.bits_per_char:.4f} bits per character, perplexity {score.perplexity:.3f} per token "
              f"({score.characters:,} characters{unknown}, {score.tokens:,} tokens)")
    return 0


def _run_info(args: argparse.Namespace) -> int:
    from textgen.bundle import bundle_info

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
        f"model        {m['layers']}x{m['units']} {m['cell'].upper()}, embedding {m['embedding_dim']}, "
        f"dropout {m['dropout']}, {info['parameters']:,} parameters",
        f"tokens       {info['level']} level, vocabulary {info['vocab_size']:,}"
        + (f"; documents: --docs {info['docs']}" if info["docs"] != "text" else ""),
        *([f"labels       {', '.join(info['labels'])}"] if info["labels"] else []),
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


def _run_inspect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from textgen.generate import load
    from textgen.insight import inspect
    from textgen.insight_page import report_lines, write_outputs

    path = Path(args.file)
    if not path.is_file():
        raise TextgenError(f"{path}: no such file")
    generator = load(args.bundle)
    found = inspect(generator, path, span_tokens=args.span_tokens)
    written = write_outputs(found, Path(args.out or f"inspect-{Path(args.bundle).resolve().name}"))
    if args.json:
        print(json.dumps({**found.to_dict(), "files": [str(f) for f in written]}))
    else:
        print("\n".join([*report_lines(found), "wrote " + ", ".join(str(f) for f in written)]))
    return 0


def _run_serve(args: argparse.Namespace) -> int:
    from textgen.serve import Limits, serve

    serve(args.bundle, host=args.host, port=args.port, allowed_hosts=args.allowed_host,
          limits=Limits(max_queue=args.max_queue, request_timeout=args.request_timeout))
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
