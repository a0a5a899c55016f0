import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from textgen import __version__
from textgen.cli import main
from tests.conftest import TINY_FLAGS, Child, make_text

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(code, err, pattern):
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "error" in lines[0] and pattern in lines[0], lines[0]


def test_lowercase_word_level_reports_coverage_and_writes_lowercase(tmp_path, capsys):
    corpus = tmp_path / "plays.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    code, out, _ = run(capsys, "train", corpus, "--checkpoint-dir", tmp_path / "ck", "--log-dir", tmp_path / "runs",
                       "--level", "word", "--lowercase", "--vocab-size", 12, "--max-steps", 3, *TINY_FLAGS)
    assert code == 0 and "Vocabulary 12 covers" in out
    bundle = tmp_path / "ck" / "plays"
    code, out, _ = run(capsys, "generate", bundle, "--prime", "The", "--length", 30, "--seed", 5)
    assert code == 0 and out.startswith("The") and out[3:] == out[3:].lower()  # the prime is echoed as typed
    (tmp_path / "val.txt").write_text(make_text(20).upper(), encoding="utf-8")  # folded: no [UNK] for case
    code, out, _ = run(capsys, "evaluate", bundle, tmp_path / "val.txt", "--json")
    assert code == 0 and 0 < json.loads(out)["bits_per_char"] < 8
    (tmp_path / "val.txt").write_text("the zork", encoding="utf-8")  # "the" is never predicted, " zork" is [UNK]
    code, out, _ = run(capsys, "evaluate", bundle, tmp_path / "val.txt")
    assert code == 0 and "(5 characters, 100.00% of them inside [UNK] tokens, 1 tokens)" in out


def test_train_generate_evaluate_end_to_end(tmp_path, capsys):
    corpus = tmp_path / "plays.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    code, out, _ = run(capsys, "train", corpus, "--checkpoint-dir", tmp_path / "ck",
                       "--log-dir", tmp_path / "runs", "--max-steps", 20, *TINY_FLAGS)
    assert code == 0 and "textgen generate" in out
    bundle = tmp_path / "ck" / "plays"
    code, out, _ = run(capsys, "generate", bundle, "--prime", "The", "--length", 30, "--seed", 5)
    assert code == 0 and out.startswith("The") and len(out.rstrip("\n")) >= 30
    code, again, _ = run(capsys, "generate", bundle, "--prime", "The", "--length", 30, "--seed", 5)
    assert again == out
    (tmp_path / "val.txt").write_text(make_text(20), encoding="utf-8")
    code, out, _ = run(capsys, "evaluate", bundle, tmp_path / "val.txt", "--json")
    result = json.loads(out)
    assert code == 0 and set(result) == {"bits_per_char", "perplexity", "characters", "tokens",
                                         "unk_char_share"}
    assert 0 < result["bits_per_char"] < 8


def _file(name, data: bytes):
    def make(folder):
        (folder / name).write_bytes(data)
        return folder / name
    return make


def _empty_dir(folder):
    (folder / "sub").mkdir()
    return folder / "sub"


@pytest.mark.parametrize("make, pattern", [
    (lambda d: d / "missing.txt", "no such file"),
    (_empty_dir, "no files matching"),
    (_file("e.txt", b""), "empty"),
    (_file("b.txt", b"abc\xff\xfedef"), "byte offset 3"),
    (_file("n.txt", b"ab\x00"), "NUL byte"),
    (_file("s.txt", b"short text"), "too short"),
])
def test_bad_corpora_get_one_line_and_exit_2(tmp_path, capsys, make, pattern):
    path = make(tmp_path)
    code, _, err = run(capsys, "train", path, "--checkpoint-dir", tmp_path / "ck", "--log-dir", tmp_path / "r")
    assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "ck").exists()  # bad input leaves nothing behind


def test_bad_strategies_get_one_line_and_exit_2(tmp_path, capsys, corpus_file, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    argv = ["train", corpus_file, "--checkpoint-dir", tmp_path / "ck", "--log-dir", tmp_path / "r"]
    assert_one_line_error(*run(capsys, *argv, "--strategy", "multi-worker")[::2], "needs TF_CONFIG")
    monkeypatch.setenv("TF_CONFIG", "{oops")
    assert_one_line_error(*run(capsys, *argv, "--strategy", "multi-worker")[::2], "TF_CONFIG must be JSON")
    assert_one_line_error(*run(capsys, *argv, "--strategy", "horovod")[::2], "invalid choice")
    assert not (tmp_path / "ck").exists()


def test_bad_generate_inputs_get_one_line_and_exit_2(tiny_bundle, tmp_path, capsys):
    assert_one_line_error(*run(capsys, "generate", tmp_path)[::2], "not a textgen bundle")
    assert_one_line_error(*run(capsys, "generate", tiny_bundle, "--prime", "Q@")[::2], "'Q'")
    assert_one_line_error(*run(capsys, "generate", tiny_bundle, "--temperature", "-1")[::2], "temperature")
    assert_one_line_error(*run(capsys, "generate", tiny_bundle, "--length", "0")[::2], "length")
    assert_one_line_error(*run(capsys, "generate", tiny_bundle, "--top-k", "-1")[::2], "--top-k")
    assert_one_line_error(*run(capsys, "generate", tiny_bundle, "--seed", str(2**63))[::2], "--seed")
    assert_one_line_error(*run(capsys, "generate", tiny_bundle, "--top-p", "1.5")[::2], "--top-p")
    assert_one_line_error(*run(capsys, "generate", tiny_bundle, "--repetition-penalty", "0")[::2], "penalty")
    assert_one_line_error(*run(capsys, "generate", tiny_bundle, "--num-samples", "0")[::2], "--num-samples")
    assert_one_line_error(*run(capsys, "generate", tiny_bundle, "--prime-file", tmp_path / "nope.txt")[::2],
                          "nope.txt")
    assert_one_line_error(*run(capsys, "generate", tiny_bundle, "--prime", "a", "--interactive")[::2],
                          "not allowed")
    assert_one_line_error(*run(capsys, "train", "x.txt", "--level", "bytes")[::2], "level")
    assert_one_line_error(*run(capsys, "train", "x.txt", "--cell", "transformer")[::2], "--cell")
    assert_one_line_error(*run(capsys, "train", "x.txt", "--no-such-flag")[::2], "unrecognized")


def test_out_of_range_hyperparameters_are_refused(tmp_path, capsys, corpus_file):
    code, _, err = run(capsys, "train", corpus_file, "--dropout", "1.5", "--checkpoint-dir", tmp_path / "ck")
    assert_one_line_error(code, err, "dropout")


def test_readme_train_flag_table_lists_every_train_option_with_its_default():
    import re

    from textgen.config import train_options

    section = (ROOT / "README.md").read_text().split("## `textgen train CORPUS...`")[1].split("\n#")[0]
    table = dict(re.findall(r"^\| `(--[a-z-]+)[^`]*` \| ([^|]+) \|", section, re.M))
    assert set(table) == {option.flag for option in train_options()} | {"--verbose"}
    for option in train_options():
        if option.default is not None and option.kind is not bool:
            assert table[option.flag].strip().strip("`") == str(option.default), option.flag


def test_only_typed_train_flags_become_train_keywords():
    """Untyped flags stay out, so train's defaults (config.py's) apply and a resume can tell them apart."""
    from textgen.cli import build_parser, train_keywords

    args = build_parser().parse_args(["train", "c.txt", "--units", "8", "--no-histograms", "--mixed-precision",
                                      "--max-minutes", "1.5", "--verbose"])
    assert train_keywords(args) == {"units": 8, "histograms": False, "mixed_precision": True, "max_minutes": 1.5}
    assert train_keywords(build_parser().parse_args(["train", "c.txt"])) == {}


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"textgen {__version__}"


def test_real_process_hides_tensorflow_logs_and_prints_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-m", "textgen", "generate", str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"textgen: error: {tmp_path}: not a textgen bundle (no config.json)"]


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

TRAIN_FLAGS = ["--level", "--vocab-size", "--encoding", "--layers", "--units", "--embedding-dim",
               "--dropout", "--dropout-min-epochs", "--seq-len", "--batch-size", "--learning-rate", "--clip-norm",
               "--epochs", "--max-steps", "--max-minutes", "--val-fraction", "--patience", "--seed", "--name"]
VALUES = st.one_of(st.text(max_size=12), st.integers(-2**70, 2**70).map(str),
                   st.sampled_from(["nan", "inf", "-inf", "1e309", "0", "-0", "1e-320", "0x10", "1_0"]))


@settings(deadline=None, derandomize=True, max_examples=150)
@given(st.lists(st.tuples(st.sampled_from(TRAIN_FLAGS), VALUES), max_size=4))
def test_any_train_flag_values_give_exit_2_and_one_line(tmp_path_factory, flags):
    """Arbitrary values never reach a traceback: each is refused, or the missing corpus is."""
    import contextlib
    import io

    argv = ["train", "no-such-corpus.txt", "--checkpoint-dir", str(tmp_path_factory.getbasetemp() / "h")]
    for flag, value in flags:
        argv.append(f"{flag}={value}")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "error" in lines[0], (argv, err.getvalue())


@settings(deadline=None, derandomize=True, max_examples=60)
@given(st.text(max_size=40), st.one_of(st.integers(-5, 2**40), st.none()),
       st.sampled_from(["0", "1e-45", "1e-300", "0.7", "1e300", "nan", "-1"]))
def test_generate_never_tracebacks_on_any_prime_seed_or_temperature(tiny_bundle, prime, seed, temp):
    import contextlib
    import io

    argv = ["generate", str(tiny_bundle), "--prime", prime, "--length", "3", "--temperature", temp]
    argv += [] if seed is None else ["--seed", str(seed)]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    assert code in (0, 2), err.getvalue()
    if code == 0:
        assert out.getvalue().startswith(prime) and "[UNK]" not in out.getvalue()[len(prime):]
    else:
        assert len([line for line in err.getvalue().splitlines() if line.strip()]) == 1, err.getvalue()


def test_corpus_with_bom_crlf_and_mixed_scripts_trains_and_generates(tmp_path, capsys):
    text = make_text(120).replace("cat", "кот").replace("dog", "犬").replace("mat", "حصير")
    corpus = tmp_path / "mixed.txt"
    corpus.write_bytes("\ufeff".encode() + text.replace("\n", "\r\n").encode("utf-8"))
    code, out, _ = run(capsys, "train", corpus, "--checkpoint-dir", tmp_path / "ck", "--log-dir",
                       tmp_path / "runs", "--max-steps", 5, *TINY_FLAGS)
    assert code == 0, out
    from textgen.bundle import load_bundle

    vocab = load_bundle(tmp_path / "ck" / "mixed").tokenizer.get_vocab()
    assert "\r" not in vocab and "\ufeff" not in vocab and {"к", "犬", "ح"} <= set(vocab)
    code, out, _ = run(capsys, "generate", tmp_path / "ck" / "mixed", "--prime", "犬 кот حصير", "--length", 5)
    assert code == 0 and out.startswith("犬 кот حصير")


def test_a_prime_far_longer_than_any_training_sequence_works(tiny_generator):
    prime = make_text(400)[:30_000]  # ~2,000x the training seq_len, read in chunks
    text = tiny_generator.generate(prime=prime, length=5, temperature=0, seed=0)
    assert text.startswith(prime) and len(text) == len(prime) + 5


def test_generate_batch_prints_numbered_samples_or_a_json_list(tiny_bundle, capsys):
    import textgen

    code, out, _ = run(capsys, "generate", tiny_bundle, "--prime", "The", "--length", 30, "--seed", 4,
                       "--num-samples", 3, "--json")
    samples = json.loads(out)
    assert code == 0 and len(samples) == 3 and all(s.startswith("The") for s in samples)
    assert samples[0] == textgen.load(tiny_bundle).generate(prime="The", length=30, seed=4)
    code, out, _ = run(capsys, "generate", tiny_bundle, "--prime", "The", "--length", 30, "--seed", 4,
                       "--num-samples", 3)
    assert out == "".join(f"=== sample {i} of 3 ===\n{s}\n" for i, s in enumerate(samples, 1))


def test_generate_reads_the_prime_from_a_file_and_honours_stop_and_max_chars(tiny_bundle, tmp_path, capsys):
    (tmp_path / "prime.txt").write_text("The cat\n", encoding="utf-8")
    code, free, _ = run(capsys, "generate", tiny_bundle, "--prime-file", tmp_path / "prime.txt",
                        "--length", 100, "--seed", 1)
    assert code == 0 and free.startswith("The cat\n")
    code, capped, _ = run(capsys, "generate", tiny_bundle, "--prime-file", tmp_path / "prime.txt",
                          "--max-chars", 12, "--seed", 1)
    assert capped == free[: len("The cat\n") + 12] + "\n"
    stop = free[len("The cat\n"):][5]
    code, cut, _ = run(capsys, "generate", tiny_bundle, "--prime", "The cat\n", "--length", 100,
                       "--seed", 1, "--stop", stop, "--stop", "zzz")
    cut = cut[:-1]  # the newline the CLI ends its output with
    assert stop not in cut[len("The cat\n"):] and free.startswith(cut)


def test_interactive_mode_answers_each_stdin_line_until_eof(tiny_bundle, capsys, monkeypatch):
    import textgen

    monkeypatch.setattr("sys.stdin", io.StringIO("The cat\nQ@\nA dog\n"))
    code, out, err = run(capsys, "generate", tiny_bundle, "--interactive", "--length", 20, "--seed", 3)
    generator = textgen.load(tiny_bundle)
    answers = [generator.generate(prime=p, length=20, seed=3)[len(p):] for p in ("The cat", "A dog")]
    assert code == 0 and out == f"{answers[0]}\n{answers[1]}\n"
    assert err.count("error") == 1 and "'Q'" in err  # a bad line is reported and the session goes on


@pytest.mark.slow
def test_ctrl_c_keeps_what_was_printed_and_exits_130(tiny_bundle):
    with Child("generate", tiny_bundle, "--prime", "The", "--max-chars", 10**8, "--seed", 1, cwd=ROOT) as child:
        head = child.proc.stdout.read(200)  # generation is under way
        child.proc.send_signal(signal.SIGINT)
        code, rest, err = child.finish(timeout=60)
    assert code == 130 and head.startswith("The")
    assert rest.endswith("\n") and err.strip().splitlines() == ["textgen: interrupted"]


def test_info_prints_the_bundle_and_its_json(tiny_bundle, tiny_generator, capsys):
    code, out, _ = run(capsys, "info", tiny_bundle)
    assert code == 0
    assert f"{tiny_generator.model.count_params():,} parameters" in out and "tiny.txt" in out
    code, out, _ = run(capsys, "info", tiny_bundle, "--json")
    info = json.loads(out)
    assert code == 0 and info["parameters"] == tiny_generator.model.count_params()
    assert info["vocab_size"] == tiny_generator.config.model.vocab_size and info["level"] == "char"
    assert info["step"] == tiny_generator.state["step"] and info["corpus"]["sources"][0]["file"] == "tiny.txt"
    assert info["best_val_loss"] == tiny_generator.state["best_val_loss"]
    assert abs(info["best_val_bits_per_char"] * 0.6931471805599453 - info["best_val_loss"]) < 1e-9  # char level


def test_info_and_evaluate_refuse_what_is_not_there(tiny_bundle, tmp_path, capsys):
    assert_one_line_error(*run(capsys, "info", tmp_path)[::2], "not a textgen bundle")
    assert_one_line_error(*run(capsys, "evaluate", tiny_bundle, tmp_path / "nope.txt")[::2], "nope.txt")
    assert_one_line_error(*run(capsys, "evaluate", tiny_bundle, tmp_path)[::2], "not a file")


# ---------------------------------------------------------------- many samples to a file, labels


def test_output_jsonl_holds_one_object_per_sample_with_its_seed_and_index(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "samples.jsonl"
    code, _, err = run(capsys, "generate", tiny_bundle, "--num-samples", 5, "--length", 20, "--seed", 3,
                       "--output", out)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert code == 0 and "wrote 5 samples" in err
    assert [(r["seed"], r["index"]) for r in rows] == [(3, i) for i in range(5)]
    import textgen

    assert [r["text"] for r in rows] == textgen.load(tiny_bundle).sample("", 5, length=20, seed=3)


def test_output_txt_refuses_a_sample_with_a_newline_and_writes_nothing(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "samples.txt"
    code, _, err = run(capsys, "generate", tiny_bundle, "--num-samples", 3, "--length", 300, "--seed", 1,
                       "--output", out)
    assert code == 2 and "use" not in err and "samples.jsonl instead" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_output_txt_writes_one_sample_per_line(labelled_bundle, tmp_path, capsys):
    out = tmp_path / "samples.txt"
    code, _, _ = run(capsys, "generate", labelled_bundle, "--num-samples", 70, "--seed", 1, "--output", out)
    import textgen

    assert code == 0
    assert out.read_text(encoding="utf-8").split("\n")[:-1] == textgen.load(labelled_bundle).sample(
        "", 70, seed=1)


def test_novelty_reports_copies_per_sample_and_in_total(labelled_bundle, tmp_path, capsys):
    corpus = tmp_path / "docs.jsonl"
    from tests.conftest import make_labelled_documents

    corpus.write_text(make_labelled_documents(), encoding="utf-8")
    out = tmp_path / "s.jsonl"
    code, _, err = run(capsys, "generate", labelled_bundle, "--num-samples", 20, "--seed", 2, "--output", out,
                       "--novelty", corpus, "--unique")
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    documents = {json.loads(line)["text"] for line in make_labelled_documents().splitlines()}
    assert code == 0 and [r["copy"] for r in rows] == [r["text"] in documents for r in rows]
    assert len({r["text"] for r in rows}) == len(rows)
    new = sum(r["text"] not in documents for r in rows)
    assert f"novelty: {new} of {len(rows)} samples are not training documents" in err


def test_labels_are_listed_checked_and_refused_on_a_bundle_without_them(labelled_bundle, tiny_bundle, capsys):
    code, out, _ = run(capsys, "info", labelled_bundle)
    assert code == 0 and "labels       low, up" in out
    code, _, err = run(capsys, "generate", labelled_bundle, "--label", "mid")
    assert code == 2 and err.strip() == "textgen: error: unknown label 'mid'; the labels are: 'low', 'up'"
    code, _, err = run(capsys, "generate", tiny_bundle, "--label", "low")
    assert code == 2 and "this bundle has no labels" in err and len(err.strip().splitlines()) == 1


def test_samples_for_a_label_use_only_that_labels_characters(labelled_bundle):
    import textgen

    g = textgen.load(labelled_bundle)
    for label, letters in (("low", set("abc")), ("up", set("XYZ"))):
        samples = g.sample("", num_samples=24, label=label, length=30, seed=5, temperature=0.5)
        assert set("".join(samples)) <= letters, (label, samples)
        assert sum(map(len, samples)) > 24  # they did write something


def test_evaluate_scores_documents_in_the_bundles_mode_and_refuses_bad_files(lines_bundle, tmp_path, capsys):
    import textgen
    from textgen.evaluate import evaluate_documents, evaluate_files

    held_out = tmp_path / "held_out.txt"
    held_out.write_text("The cat sat on a mat.\n\nA dog ran to it.\n", encoding="utf-8")
    generator = textgen.load(lines_bundle)
    as_documents = evaluate_documents(generator, [held_out], "lines").bits_per_char
    assert as_documents != evaluate_files(generator, [held_out]).bits_per_char
    for flags in ([], ["--docs", "lines"]):  # the bundle's own mode by default
        code, out, _ = run(capsys, "evaluate", lines_bundle, held_out, "--json", *flags)
        assert code == 0 and json.loads(out)["bits_per_char"] == as_documents
    code, out, _ = run(capsys, "evaluate", lines_bundle, held_out, "--json", "--docs", "text")
    assert code == 0 and json.loads(out)["bits_per_char"] == evaluate_files(generator, [held_out]).bits_per_char
    assert_one_line_error(*run(capsys, "evaluate", lines_bundle, held_out, "--docs", "jsonl:text")[::2],
                          f"{held_out}:1: not a JSON line")
    assert_one_line_error(*run(capsys, "evaluate", lines_bundle, held_out, "--docs", "rows")[::2],
                          "docs must be text, lines, jsonl:FIELD or csv:COLUMN")
