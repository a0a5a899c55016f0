"""textgen inspect: memory span, gates, meaningful cells, the cell page and bad input."""

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from textgen.config import TokenizerConfig
from textgen.insight import inspect, memory_span, span_lengths, text_properties
from textgen.insight_page import cell_page, write_outputs
from tests.conftest import make_text
from tests.test_cli import assert_one_line_error, run


def test_memory_span_at_the_whole_text_equals_evaluate_exactly(tiny_generator, tmp_path):
    from textgen.evaluate import evaluate_files

    text = tmp_path / "t.txt"
    text.write_text(make_text(120), encoding="utf-8")  # longer than one CHUNK_TOKENS chunk
    found = inspect(tiny_generator, text)
    score = evaluate_files(tiny_generator, [text])
    assert found.span[-1]["bits_per_char"] == score.bits_per_char and found.characters == score.characters
    assert [row["k"] for row in found.span] == span_lengths(score.tokens + 1)
    assert found.span[0]["bits_per_char"] > found.span[-1]["bits_per_char"]  # context is worth something


class DistanceModel:
    """A model whose loss against distance is known by construction.

    The text is "0123456" repeated. The state counts the tokens read since the last reset;
    with d tokens read, the next character gets probability Q[min(d, len(Q)) - 1] and the
    others share the rest evenly. So a token predicted from d tokens of context costs
    -ln Q[d - 1] nats, whatever row it is in.
    """

    Q = (0.2, 0.5, 0.7, 0.9)

    def __init__(self):
        from textgen.tokenizer import build_tokenizer

        self.tokenizer = build_tokenizer(["0123456"], "char")
        vocab = self.tokenizer.get_vocab_size()
        self.config = SimpleNamespace(model=SimpleNamespace(vocab_size=vocab), tokenizer=TokenizerConfig())
        self.next_id = np.zeros(vocab, int)  # the id of the character after each digit
        for digit in range(7):
            self.next_id[self.tokenizer.token_to_id(str(digit))] = self.tokenizer.token_to_id(str((digit + 1) % 7))

    def zero_states(self, rows):
        return [np.zeros((rows, 1), np.float32)]

    def forward(self, x, states):
        count = states[0][:, 0].astype(int)  # (rows,)
        vocab = self.config.model.vocab_size
        logits = np.empty((*x.shape, vocab))
        for t in range(x.shape[1]):
            count = count + 1
            q = np.asarray(self.Q)[np.minimum(count, len(self.Q)) - 1]  # (rows,)
            probs = np.repeat(((1 - q) / (vocab - 1))[:, None], vocab, axis=1)
            probs[np.arange(len(x)), self.next_id[x[:, t]]] = q
            logits[:, t] = np.log(probs)
        return logits, [count[:, None].astype(np.float32)]


def expected_bits(n_tokens, k, q=DistanceModel.Q):
    """The curve by construction: prediction j of a row has j % k + 1 tokens of context."""
    nats = sum(-math.log(q[min(j % k + 1, len(q)) - 1]) for j in range(n_tokens - 1))
    return nats / (n_tokens - 1) / math.log(2)


@pytest.mark.parametrize("level_bytes", [0, 1 << 26], ids=["rows-of-every-k", "rows-of-2k-from-rows-of-k"])
def test_memory_span_returns_the_curve_known_by_construction(level_bytes, monkeypatch):
    from textgen import insight
    from textgen.insight import Text
    from textgen.tokenizer import encode

    monkeypatch.setattr(insight, "LEVEL_STATE_BYTES", level_bytes)  # both ways of running the rows
    model = DistanceModel()
    text = "0123456" * 143  # 1001 tokens: 1000 predictions
    rows, whole = memory_span(model, Text([text], encode(model.tokenizer, text), 0))
    assert [row["k"] for row in rows] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000] and whole.characters == 1000
    for row in rows:
        assert row["bits_per_char"] == pytest.approx(expected_bits(1001, row["k"]), rel=1e-12), row
    assert rows[0]["bits_per_char"] == pytest.approx(-math.log2(0.2))  # k = 1: one token of context
    assert rows[-1]["bits_per_char"] == pytest.approx(expected_bits(1001, 1000), rel=1e-12)


COPY_LETTERS, COPY_HALF = "abcdefghijklmnop", 20  # a line: x1...x20|x1...x20, 42 characters with its newline


def copy_lines(seed: int, count: int) -> str:
    """`count` lines of the copy task: 20 random letters, "|", the same 20 letters."""
    rng = np.random.default_rng(seed)
    halves = ("".join(rng.choice(list(COPY_LETTERS), COPY_HALF)) for _ in range(count))
    return "".join(f"{half}|{half}\n" for half in halves)


def test_a_model_trained_on_a_copy_task_is_worth_half_a_bit_more_from_42_tokens_on(tmp_path):
    """The second half of each line can only be predicted from 21 tokens back: a model that
    learned to copy scores at least 0.5 bits/char better with k >= 42 than with k <= 20.

    A real 1-layer GRU (it learns this copy in far fewer updates than an LSTM: ~40 s here),
    trained on rows cut at random offsets of fresh lines, so that rows start mid-line as
    inspect's short spans do; measured on lines it never saw.
    """
    import keras

    from textgen.config import ModelConfig
    from textgen.generate import TextGenerator
    from textgen.model import build_model
    from textgen.tokenizer import build_tokenizer, encode

    tokenizer = build_tokenizer([COPY_LETTERS + "|\n"], "char")
    config = SimpleNamespace(model=ModelConfig(vocab_size=tokenizer.get_vocab_size(), embedding_dim=16, layers=1,
                                               units=128, dropout=0.0, cell="gru"), tokenizer=TokenizerConfig())
    keras.utils.set_random_seed(0)
    model = build_model(config.model)
    model.compile(keras.optimizers.Adam(0.01, clipnorm=1.0),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True)
    updates, batch, seq_len = 900, 32, 126
    stream = encode(tokenizer, copy_lines(0, updates * batch * 4))
    starts = np.random.default_rng(1).integers(0, len(stream) - seq_len - 1, updates * batch)
    rows = stream[starts[:, None] + np.arange(seq_len + 1)]  # (updates * batch, seq_len + 1)
    model.fit(rows[:, :-1], rows[:, 1:], batch_size=batch, epochs=1, shuffle=False, verbose=0)

    text = tmp_path / "copy.txt"
    text.write_text(copy_lines(2, 150), encoding="utf-8")
    found = inspect(TextGenerator.from_model(model, tokenizer, config), text)
    short = min(row["bits_per_char"] for row in found.span if row["k"] <= 20)
    long = max(row["bits_per_char"] for row in found.span if row["k"] >= 42)
    assert long <= short - 0.5, found.span


def test_rows_of_2k_run_from_rows_of_k_score_as_rows_run_from_zero(tiny_generator, tmp_path, monkeypatch):
    from textgen import insight
    from textgen.insight import read_text

    path = tmp_path / "t.txt"
    path.write_text(make_text(60), encoding="utf-8")
    text = read_text(tiny_generator, path)
    doubled, _ = memory_span(tiny_generator, text)
    monkeypatch.setattr(insight, "LEVEL_STATE_BYTES", 0)  # every k from zero states
    direct, _ = memory_span(tiny_generator, text)
    assert [row["k"] for row in doubled] == [row["k"] for row in direct] and len(direct) > 8
    for a, b in zip(doubled, direct):
        assert a["bits_per_char"] == pytest.approx(b["bits_per_char"], rel=1e-6), (a, b)


def test_text_properties_come_from_the_characters():
    found = text_properties('ab "c" (d[e]) “f”\n  12 x')
    assert found["inside_quote"].tolist()[:7] == [0, 0, 0, 1, 1, 0, 0]
    assert found["inside_quote"][15] == 1 and found["inside_quote"][16] == 0  # “ opens, ” closes
    assert found["bracket_depth"].tolist()[7:13] == [1, 1, 2, 2, 1, 0]
    assert found["line_position"][17] == 0 and found["line_position"][19] == 2
    assert found["indentation"][21] == 2 and found["inside_number"][20:23].tolist() == [1, 1, 0]
    assert found["word_start"][0] == 1 and found["word_start"][1] == 0


QUOTED = "".join(f"He said “{'yes' if i % 3 else 'no way'}, {i}” and she said “{'go on' * (i % 4 + 1)}” today.\n"
                 for i in range(60))


def planted_quote_generator():
    """A real 1-layer LSTM whose cell 0 is set by hand to hold “inside a quote”: “ writes 1,
    ” clears it, anything else keeps it. Every other weight is zero."""
    import keras

    from textgen.config import ModelConfig
    from textgen.generate import TextGenerator
    from textgen.model import build_model
    from textgen.tokenizer import build_tokenizer

    tokenizer = build_tokenizer([QUOTED], "char")
    config = SimpleNamespace(model=ModelConfig(vocab_size=tokenizer.get_vocab_size(), embedding_dim=2, layers=1,
                                               units=4, dropout=0.0),
                             tokenizer=TokenizerConfig())
    keras.utils.set_random_seed(0)
    model = build_model(config.model)
    embedding = np.zeros((config.model.vocab_size, 2), np.float32)
    embedding[tokenizer.token_to_id("“"), 0] = 1.0
    embedding[tokenizer.token_to_id("”"), 1] = 1.0
    kernel, recurrent, bias = (np.zeros_like(w) for w in model.get_layer("lstm_0").get_weights())
    u = 4  # columns: i, f, g, o blocks of 4 units each; cell 0 is column 0 of each block
    kernel[0, 0], bias[0] = 40.0, -20.0  # input gate opens on “
    kernel[0, u], kernel[1, u], bias[u] = -40.0, -40.0, 20.0  # forget gate shuts on “ and ”
    kernel[0, 2 * u] = 20.0  # candidate 1 on “
    bias[3 * u] = 20.0  # output gate open
    model.get_layer("embedding").set_weights([embedding])
    model.get_layer("lstm_0").set_weights([kernel, recurrent, bias])
    return TextGenerator.from_model(model, tokenizer, config)


def test_a_planted_inside_quote_cell_is_found(tmp_path):
    text = tmp_path / "q.txt"
    text.write_text(QUOTED, encoding="utf-8")
    found = inspect(planted_quote_generator(), text)
    best = found.cells["inside_quote"][0]
    assert best["cell"] in ("layer 0 h[0]", "layer 0 c[0]") and best["correlation"] > 0.9, found.cells
    assert found.gates["applies"] and len(found.gates["layers"]) == 1


def test_gates_do_not_apply_to_a_simple_rnn_and_it_is_said_not_raised(tmp_path):
    import keras

    from textgen.config import ModelConfig
    from textgen.generate import TextGenerator
    from textgen.model import build_model
    from textgen.tokenizer import build_tokenizer

    tokenizer = build_tokenizer([QUOTED], "char")
    model_config = ModelConfig(vocab_size=tokenizer.get_vocab_size(), embedding_dim=4, layers=2, units=8, cell="rnn")
    keras.utils.set_random_seed(0)
    config = SimpleNamespace(model=model_config, tokenizer=TokenizerConfig())
    generator = TextGenerator.from_model(build_model(model_config), tokenizer, config)
    (tmp_path / "q.txt").write_text(QUOTED, encoding="utf-8")
    found = inspect(generator, tmp_path / "q.txt", span_tokens=500)
    assert found.gates == {"applies": False, "note": "gates do not apply to a rnn (SimpleRNN has none)"}
    assert found.tokens == 500 and len(found.names) == 16
    assert [p.name for p in write_outputs(found, tmp_path / "out")] == ["cells.html", "memory_span.png"]


def test_the_cell_page_for_5000_characters_and_8_cells_stays_under_2_mb(tiny_generator, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(make_text(400), encoding="utf-8")
    found = inspect(tiny_generator, text, span_tokens=6000)
    assert len(found.page_text) == 5000 and len(found.top_cells(8)) == 8
    page = cell_page(found, 8)
    assert page.count('class="panel"') == 8 and len(page.encode()) < 2_000_000
    assert "http" not in page and "<script" not in page  # self-contained, nothing fetched


def test_inspect_cli_writes_page_and_plots_and_prints_json(tiny_bundle, tmp_path, capsys):
    import json

    text = tmp_path / "t.txt"
    text.write_text("Zebra ∑\n" + make_text(30), encoding="utf-8")  # Z, b, ∑ are not in the vocabulary
    code, out, _ = run(capsys, "inspect", tiny_bundle, text, "--out", tmp_path / "out", "--json")
    found = json.loads(out)
    assert code == 0 and found["unknown_tokens"] == 3
    assert {Path(f).name for f in found["files"]} == {"cells.html", "memory_span.png", "gates.png"}
    assert found["memory_span"][-1]["k"] == found["tokens"] - 1
    code, out, _ = run(capsys, "inspect", tiny_bundle, text, "--out", tmp_path / "out", "--span-tokens", "100")
    assert code == 0 and "whole text" in out and "counted as [UNK]" in out and "forget gate > 0.9" in out


def test_bad_inspect_input_is_one_line_and_exit_2(tiny_bundle, tmp_path, capsys):
    empty, binary = tmp_path / "empty.txt", tmp_path / "latin1.txt"
    empty.write_bytes(b"")
    binary.write_bytes("caf\u00e9 au lait".encode("latin-1"))
    assert_one_line_error(*run(capsys, "inspect", tiny_bundle, empty)[::2], "empty")
    assert_one_line_error(*run(capsys, "inspect", tiny_bundle, binary)[::2], "not valid utf-8")
    assert_one_line_error(*run(capsys, "inspect", tiny_bundle, tmp_path / "nope.txt")[::2], "no such file")
    assert_one_line_error(*run(capsys, "inspect", tiny_bundle, empty, "--span-tokens", "0")[::2], "--span-tokens")


@pytest.mark.slow
def test_the_cell_page_renders_its_panels_in_headless_chromium(tiny_generator, tmp_path):
    from tests.test_page import LAUNCH_FLAGS, find_browser

    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By

    binary, driver_path = find_browser()
    text = tmp_path / "t.txt"
    text.write_text(make_text(100), encoding="utf-8")
    page = write_outputs(inspect(tiny_generator, text), tmp_path / "out")[0]
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in LAUNCH_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        driver.get(page.as_uri())
        panels = driver.find_elements(By.CSS_SELECTOR, "section.panel")
        assert len(panels) == 8
        first = panels[0].find_element(By.TAG_NAME, "pre")
        assert first.text.startswith(make_text(1).strip()[:10]) and first.size["height"] > 50
        coloured = first.find_elements(By.TAG_NAME, "span")
        assert len({span.value_of_css_property("background-color") for span in coloured[:200]}) > 2
    finally:
        driver.quit()
