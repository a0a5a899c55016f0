"""`textgen inspect`: what a trained model's memory does on a text, as numbers.

Three measurements, each on the user's own model and text:
- memory span: bits per character when the state is reset every k tokens (k = 1, 2, 4, ...
  up to the whole text), i.e. how much each extra span of context is worth. Each k is a
  batched pass: the tokens cut into rows of k, every row run from a zero state (equal rows
  once; from the k whose rows' end states fit in LEVEL_STATE_BYTES on, a row of 2k as the row
  of k continued: `_Level`). The whole text is scored exactly as `textgen evaluate` scores it
  (textgen.evaluate's functions);
- gates: per layer, the distribution of each gate's activation (LSTM input/forget/output,
  GRU update/reset), the share of "keep" gates (LSTM forget, GRU update) saturated open
  (> 0.9) or shut (< 0.1), and for an LSTM the distribution of |c|;
- cells that mean something: properties of the text computed from its characters alone
  (inside a quote, bracket depth, ...) and the state units whose activation correlates most
  with each.
The page and plots that show them are textgen.insight_page's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from textgen.cells import cell_of
from textgen.config import TextgenError
from textgen.evaluate import CHUNK_TOKENS, Score, bits_per_char, evaluate_document, read_pieces, token_nats
from textgen.tokenizer import UNK, encode

SPAN_TOKENS = 200_000  # tokens the memory span is measured over
PAGE_CHARS = 5_000  # characters the gates, cells and page look at
TOP_CELLS = 3  # cells listed per property
PAGE_CELLS = 8  # panels of the cell page
ROW_BUDGET = 1 << 23  # logits per forward call (rows x time x vocab): bounds memory for big vocabularies
# The memory span keeps every row's end state from the first k whose rows' states fit in this
# (`_Level`): 16 and up for a 2 x 256 LSTM on 200,000 tokens (12,500 rows of 4 KB).
LEVEL_STATE_BYTES = 64 << 20
SATURATED = 0.9  # a gate above this is open, below 1 - this shut
KEEP_GATES = {"lstm": "forget", "gru": "update"}  # the gate that decides how much of the state is kept


@dataclass(frozen=True)
class Text:
    """The part of FILE that inspect reads."""

    pieces: list[str]  # the first span-tokens tokens' text, in the pieces evaluate reads
    ids: np.ndarray  # (n_tokens,) its token ids
    unknown: int  # tokens that became [UNK] (at char level: characters the vocabulary lacks)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def read_text(generator, path: Path, span_tokens: int = SPAN_TOKENS) -> Text:
    """Read FILE block by block until `span_tokens` tokens (evaluate's reader: same errors)."""
    pieces, ids, have = [], [], 0
    settings = generator.config.tokenizer
    for piece in read_pieces(path, settings.encoding, settings.level):
        piece = _cut_to_tokens(generator.tokenizer, settings.level, piece, span_tokens - have)
        piece_ids = encode(generator.tokenizer, piece)
        pieces.append(piece)
        ids.append(piece_ids)
        have += len(piece_ids)
        if have >= span_tokens:
            break
    ids = np.concatenate(ids) if ids else np.zeros(0, np.int32)
    if len(ids) < 2:
        raise TextgenError(f"{path}: too short to inspect (needs at least two tokens)")
    return Text(pieces, ids, int((ids == generator.tokenizer.token_to_id(UNK)).sum()))


def _cut_to_tokens(tokenizer, level: str, piece: str, tokens: int) -> str:
    """The start of `piece` holding at most `tokens` tokens (a char token is one character)."""
    if level == "char":
        return piece[:tokens]
    offsets = tokenizer.encode(piece).offsets
    return piece if len(offsets) <= tokens else piece[: offsets[tokens - 1][1]]


def span_lengths(tokens: int) -> list[int]:
    """k = 1, 2, 4, ... below the number of predictions, then the whole text (tokens - 1)."""
    ks, k = [], 1
    while k < tokens - 1:
        ks.append(k)
        k *= 2
    return ks + [tokens - 1]


def memory_span(generator, text: Text) -> tuple[list[dict], Score]:
    """Bits per character with the state reset every k tokens, for each k of `span_lengths`,
    and the whole text's Score.

    generator: a TextGenerator (or anything with its `forward`, `zero_states`, tokenizer and
    config). Token t+1 is predicted from the tokens of its row up to t, so every token but
    the first is predicted once for every k, over the same characters. The whole text (the
    largest k) is scored by textgen.evaluate itself, so its bits/char is `textgen evaluate`'s.
    """
    whole = evaluate_document(generator, text.pieces)
    inputs, targets = text.ids[:-1], text.ids[1:]
    state_bytes = sum(state.nbytes for state in generator.zero_states(1))  # one row's
    nats, level = {}, None
    for k in span_lengths(len(text.ids))[:-1]:
        if level is not None:
            level = level.doubled(generator, inputs, targets)
        elif math.ceil(len(inputs) / k) * state_bytes <= LEVEL_STATE_BYTES:
            level = _Level.first(generator, inputs, targets, k)
        else:
            nats[k] = _nats(generator, inputs, targets, k)
            continue
        nats[k] = float(level.nats.sum())
    rows = [{"k": k, "bits_per_char": bits_per_char(total, whole.characters)} for k, total in nats.items()]
    return rows + [{"k": len(inputs), "bits_per_char": whole.bits_per_char}], whole


def _nats(generator, inputs: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Total nats with rows of k tokens, each from a zero state (a shorter last row alone).

    Equal rows score equally, so each distinct row runs once, weighted by how often it occurs:
    on 200,000 characters of English, k = 1 has ~65 distinct rows and k = 2 ~1,000, which took
    11.7 and 8.7 s of inspect's ~170 s as 200,000 and 100,000 rows (a 2 x 256 model, 2 cores).
    """
    full = len(inputs) // k * k
    groups = [_distinct(inputs[:full].reshape(-1, k), targets[:full].reshape(-1, k))]
    if full < len(inputs):
        groups.append((inputs[full:][None, :], targets[full:][None, :], np.ones(1)))
    total = 0.0
    for x, y, counts in groups:
        total += sum(float(nats @ counts[part]) for part, nats, _ in _calls(generator, x, y))
    return total


def _distinct(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct rows of inputs x and targets y (rows, k) and how often each occurs."""
    rows, counts = np.unique(np.concatenate([x, y[:, -1:]], axis=1), axis=0, return_counts=True)  # y is x moved by 1
    return rows[:, :-1], rows[:, 1:], counts


@dataclass(frozen=True)
class _Level:
    """One k of the memory span, row by row: row r is tokens [r*k, (r+1)*k) (the last may be
    shorter), run from a zero state.

    Why rows keep their end states: a row of 2k is a row of k followed by the next row of k
    run from the first one's end state (2k is a multiple of k, so the rows line up). So
    `doubled` runs only the odd rows of this k, each from the end state of the row before
    it, and every k after the first costs half a pass over the text instead of a whole one.
    """

    k: int
    nats: np.ndarray  # (rows,) each row's total nats
    states: list[np.ndarray]  # each (rows, units): every row's end state, in zero_states' order

    @classmethod
    def first(cls, generator, inputs: np.ndarray, targets: np.ndarray, k: int) -> "_Level":
        """Every row of k from a zero state."""
        starts = range(0, len(inputs), k)
        return cls(k, *_run_rows(generator, inputs, targets, starts, k, generator.zero_states(len(starts))))

    def doubled(self, generator, inputs: np.ndarray, targets: np.ndarray) -> "_Level":
        """The rows of 2k: each even row of this k, then the odd row after it from its end state."""
        odd = range(self.k, len(inputs), 2 * self.k)  # starts of the odd rows
        odd_nats, odd_states = _run_rows(generator, inputs, targets, odd, self.k,
                                         [state[0 : 2 * len(odd) : 2] for state in self.states])
        nats = self.nats[0::2].copy()
        nats[: len(odd)] += odd_nats
        states = [state[0::2].copy() for state in self.states]
        for state, after in zip(states, odd_states):
            state[: len(odd)] = after
        return _Level(2 * self.k, nats, states)


def _run_rows(generator, inputs: np.ndarray, targets: np.ndarray, starts: range, k: int,
              states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Rows [start, start + k) (the last may be shorter) from `states` (one row each): each
    row's nats (rows,) and end states."""
    full = sum(1 for start in starts if start + k <= len(inputs))
    index = np.asarray(starts[:full])[:, None] + np.arange(k)  # (full, k)
    groups = [(inputs[index], targets[index], slice(0, full))]
    if full < len(starts):  # the shorter last row
        groups.append((inputs[None, starts[-1] :], targets[None, starts[-1] :], slice(full, None)))
    nats, ends = np.zeros(len(starts)), [state.copy() for state in states]
    for x, y, rows in groups:
        for part, part_nats, after in _calls(generator, x, y, [state[rows] for state in states]):
            nats[rows][part] = part_nats
            for end, state in zip(ends, after):
                end[rows][part] = state
    return nats, ends


def _calls(generator, x: np.ndarray, y: np.ndarray, states: list[np.ndarray] | None = None):
    """Rows x, y (rows, time) in forward calls of at most ROW_BUDGET logits, each row from its
    row of `states` (default: zero): yields each call's rows (a slice), nats (rows,) and end states."""
    per_call = max(1, ROW_BUDGET // (min(x.shape[1], CHUNK_TOKENS) * generator.config.model.vocab_size))
    for first in range(0, len(x), per_call):
        part = slice(first, first + per_call)
        start = generator.zero_states(len(x[part])) if states is None else [state[part] for state in states]
        yield (part, *_rows_nats(generator, x[part], y[part], start))


def _rows_nats(generator, x: np.ndarray, y: np.ndarray,
               states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Rows run from `states` in CHUNK_TOKENS columns, state carried (as evaluate): each row's
    total nats (rows,) and the end states."""
    total = np.zeros(len(x))
    for start in range(0, x.shape[1], CHUNK_TOKENS):
        nats, states = token_nats(generator, x[:, start : start + CHUNK_TOKENS], y[:, start : start + CHUNK_TOKENS],
                                  states)
        total += nats.sum(axis=1)
    return total, states


# ---------------------------------------------------------------------------------------
# Gates and cells, over the first PAGE_CHARS characters.


def token_spans(generator, text: str) -> np.ndarray:
    """(n_tokens, 2) character [start, end) of each token of `text`."""
    if generator.config.tokenizer.level == "char":
        starts = np.arange(len(text))
        return np.stack([starts, starts + 1], axis=1)
    return np.asarray(generator.tokenizer.encode(text).offsets, np.int64).reshape(-1, 2)


def gate_report(cell: str, trace: list[dict[str, np.ndarray]]) -> dict:
    """Per layer: each gate's histogram and mean, the keep gate's saturation, |c| for an LSTM."""
    spec = cell_of(cell)
    if not spec.gates:
        return {"applies": False, "note": f"gates do not apply to a {cell} (SimpleRNN has none)"}
    layers = []
    for layer in trace:
        found = {gate: _distribution(layer[gate], (0.0, 1.0)) for gate in spec.gates}
        keep = layer[KEEP_GATES[cell]]
        found["keep_gate"] = KEEP_GATES[cell]
        found["saturated_open"] = float((keep > SATURATED).mean())
        found["saturated_shut"] = float((keep < 1 - SATURATED).mean())
        if "c" in layer:
            magnitude = np.abs(layer["c"])
            found["abs_c"] = _distribution(magnitude, (0.0, max(float(magnitude.max()), 1e-6)))
        layers.append(found)
    return {"applies": True, "layers": layers}


def _distribution(values: np.ndarray, limits: tuple[float, float], bins: int = 20) -> dict:
    counts, edges = np.histogram(values, bins=bins, range=limits)
    return {"mean": float(values.mean()), "percentiles": {str(p): float(np.percentile(values, p)) for p in (5, 50, 95)},
            "counts": counts.tolist(), "edges": [float(e) for e in edges]}


def text_properties(text: str) -> dict[str, np.ndarray]:
    """Per character, what holds once it has been read: properties of the characters alone.

    inside_quote (a quote opened and not closed: " toggles, “ opens, ” closes), bracket_depth and inside_brackets
    (( [ { minus ) ] }), line_position (characters since the newline), indentation (leading
    whitespace of the line so far), word_start (a letter or digit after a non-one),
    inside_number (a digit).
    """
    n = len(text)
    out = {name: np.zeros(n, np.float32) for name in
           ("inside_quote", "inside_brackets", "bracket_depth", "line_position", "indentation",
            "word_start", "inside_number")}
    depth = position = indent = 0
    quote = False
    leading, previous = True, ""
    for t, ch in enumerate(text):
        if ch in '"“”':
            quote = not quote if ch == '"' else ch == "“"
        depth = max(0, depth + (ch in "([{") - (ch in ")]}"))
        if ch == "\n":
            position, indent, leading = 0, 0, True
        else:
            position += 1
            leading = leading and ch in " \t"
            indent += leading
        out["inside_quote"][t] = quote
        out["bracket_depth"][t] = depth
        out["inside_brackets"][t] = depth > 0
        out["line_position"][t] = position
        out["indentation"][t] = indent
        out["word_start"][t] = ch.isalnum() and not previous.isalnum()
        out["inside_number"][t] = ch.isdigit()
        previous = ch
    return out


def cell_activations(trace: list[dict[str, np.ndarray]], cell: str) -> tuple[np.ndarray, list[str]]:
    """Every state unit of every layer as columns: (tokens, units * states * layers) and names."""
    spec, columns, names = cell_of(cell), [], []
    for i, layer in enumerate(trace):
        for state in spec.states:
            columns.append(layer[state])
            names += [f"layer {i} {state}[{u}]" for u in range(layer[state].shape[1])]
    return np.concatenate(columns, axis=1), names


def rank_cells(activations: np.ndarray, names: list[str], properties: dict[str, np.ndarray],
               top: int = TOP_CELLS) -> dict[str, list[dict]]:
    """For each property (one value per token), the `top` cells by |Pearson correlation|."""
    a = activations - activations.mean(axis=0)  # (tokens, cells)
    a_norm = np.sqrt((a * a).sum(axis=0))
    ranked = {}
    for name, values in properties.items():
        v = values - values.mean()
        v_norm = math.sqrt(float((v * v).sum()))
        if v_norm == 0:
            ranked[name] = []  # the property never changes in this text
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.nan_to_num((v @ a) / (a_norm * v_norm))  # (cells,)
        best = np.argsort(-np.abs(r))[:top]
        ranked[name] = [{"cell": names[j], "index": int(j), "correlation": float(r[j])} for j in best]
    return ranked


def per_token(properties: dict[str, np.ndarray], spans: np.ndarray) -> dict[str, np.ndarray]:
    """Each character property read at the last character of each token."""
    return {name: values[spans[:, 1] - 1] for name, values in properties.items()}


@dataclass
class Inspection:
    """Everything `textgen inspect` found; `to_dict` is its --json."""

    span: list[dict]
    characters: int
    tokens: int
    unknown: int
    gates: dict
    cells: dict[str, list[dict]]  # the best PAGE_CELLS per property, best first
    page_text: str
    spans: np.ndarray  # (page tokens, 2) character range of each token
    activations: np.ndarray  # (page tokens, cells)
    names: list[str]

    def to_dict(self) -> dict:
        return {"memory_span": self.span, "characters": self.characters, "tokens": self.tokens,
                "unknown_tokens": self.unknown, "gates": self.gates,
                "cells": {prop: cells[:TOP_CELLS] for prop, cells in self.cells.items()}}

    def top_cells(self, count: int = PAGE_CELLS) -> list[tuple[str, int, str, float]]:
        """The best distinct cells over all properties: (name, index, property, correlation)."""
        found = sorted(((abs(c["correlation"]), c["cell"], c["index"], prop, c["correlation"])
                        for prop, cells in self.cells.items() for c in cells), reverse=True)
        chosen, seen = [], set()
        for _, name, index, prop, r in found:
            if index not in seen:
                seen.add(index)
                chosen.append((name, index, prop, r))
        return chosen[:count]


def inspect(generator, path: Path, span_tokens: int = SPAN_TOKENS, page_chars: int = PAGE_CHARS) -> Inspection:
    """Measure memory span, gates and meaningful cells of `generator`'s model on FILE."""
    from textgen.stepper import Stepper

    text = read_text(generator, Path(path), span_tokens)
    span, whole = memory_span(generator, text)
    page_text = text.text[:page_chars]
    spans = token_spans(generator, page_text)
    trace = Stepper.from_model(generator.model).trace(encode(generator.tokenizer, page_text)[: len(spans)])
    cell = generator.config.model.cell
    activations, names = cell_activations(trace, cell)
    cells = rank_cells(activations, names, per_token(text_properties(page_text), spans), top=PAGE_CELLS)
    return Inspection(span, whole.characters, len(text.ids), text.unknown,
                      gate_report(cell, trace), cells, page_text, spans, activations, names)
