"""What `textgen inspect` writes: the terminal report, the cell page (HTML) and the plots (PNG).

The page is one self-contained file (inline CSS, no script, no network): one panel per top
cell showing the text with each character's background coloured by that cell's activation
after reading it (a word or BPE token colours all its characters). Activations are scaled
per cell to [-1, 1] and bucketed into 21 CSS classes, and runs of one colour share a span,
so 5,000 characters in 8 panels stay well under 2 MB.

Plots use matplotlib's Agg backend (files only, no display); matplotlib is the `inspect`
extra (pip install textgen[inspect]).
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from textgen.config import TextgenError
from textgen.insight import PAGE_CELLS, TOP_CELLS, Inspection

LEVELS = 10  # buckets each side of zero: classes n0 (most negative) .. n20 (most positive)
PAGE_FILE = "cells.html"
SPAN_PLOT = "memory_span.png"
GATES_PLOT = "gates.png"


def report_lines(found: Inspection) -> list[str]:
    """The terminal report: memory span table, gate summary, top cells per property."""
    lines = [f"memory span over {found.tokens:,} tokens ({found.characters:,} characters predicted)"]
    if found.unknown:
        lines.append(f"note: {found.unknown:,} tokens unknown to the model (at char level, characters) "
                     "were counted as [UNK]")
    lines.append(f"{'reset every k tokens':>22}  bits/char")
    for row in found.span:
        k = "whole text" if row is found.span[-1] else f"{row['k']:,}"
        lines.append(f"{k:>22}  {row['bits_per_char']:.4f}")
    gates = found.gates
    if not gates["applies"]:
        lines.append(gates["note"])
    for i, layer in enumerate(gates.get("layers", [])):
        means = ", ".join(f"{g} {v['mean']:.2f}" for g, v in layer.items() if isinstance(v, dict) and g != "abs_c")
        lines.append(f"layer {i} gates: mean {means}; {layer['keep_gate']} gate > 0.9 on {layer['saturated_open']:.1%}, "
                     f"< 0.1 on {layer['saturated_shut']:.1%}"
                     + (f"; |c| median {layer['abs_c']['percentiles']['50']:.2f}" if "abs_c" in layer else ""))
    for prop, cells in found.cells.items():
        shown = ", ".join(f"{c['cell']} r={c['correlation']:+.2f}" for c in cells[:TOP_CELLS]) or "(constant in this text)"
        lines.append(f"{prop:>16}: {shown}")
    return lines


def cell_page(found: Inspection, count: int = PAGE_CELLS) -> str:
    """The self-contained HTML page of the top `count` cells."""
    panels = []
    for name, index, prop, r in found.top_cells(count):
        body = _coloured(found.page_text, found.spans, found.activations[:, index])
        panels.append(f'<section class="panel"><h2>{html.escape(name)} <small>{html.escape(prop)} '
                      f'r={r:+.2f}</small></h2><pre>{body}</pre></section>')
    colours = "\n".join(f".n{b}{{background:{_colour(b)}}}" for b in range(2 * LEVELS + 1))
    return ("<!doctype html><html><head><meta charset=\"utf-8\"><title>textgen inspect: cells</title><style>"
            "body{font-family:sans-serif;margin:1em}pre{white-space:pre-wrap;font-size:13px;line-height:1.35}"
            f"h2{{font-size:15px}}\n{colours}</style></head><body><h1>Cells that mean something</h1>"
            "<p>Each character is coloured by the cell's activation after reading it: blue negative, "
            "red positive.</p>" + "".join(panels) + "</body></html>\n")


def _coloured(text: str, spans: np.ndarray, values: np.ndarray) -> str:
    """The text as spans of one colour class each; characters between tokens stay plain."""
    scale = float(np.abs(values).max()) or 1.0
    buckets = np.rint(values / scale * LEVELS).astype(int) + LEVELS  # (tokens,) in 0..2*LEVELS
    per_char = np.full(len(text), -1)
    for (start, end), bucket in zip(spans, buckets):
        per_char[start:end] = bucket
    out, run_start = [], 0
    for t in range(1, len(text) + 1):
        if t == len(text) or per_char[t] != per_char[run_start]:
            piece = html.escape(text[run_start:t])
            out.append(piece if per_char[run_start] < 0 else f'<span class="n{per_char[run_start]}">{piece}</span>')
            run_start = t
    return "".join(out)


def _colour(bucket: int) -> str:
    """White at zero, deeper blue below and red above."""
    strength = abs(bucket - LEVELS) / LEVELS
    fade = round(255 * (1 - 0.8 * strength))
    return f"rgb({fade},{fade},255)" if bucket < LEVELS else f"rgb(255,{fade},{fade})"


def write_outputs(found: Inspection, out: Path, cells: int = PAGE_CELLS) -> list[Path]:
    """Write the page and the plots into `out`; return the files written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / PAGE_FILE).write_text(cell_page(found, cells), encoding="utf-8")
    except OSError as err:
        raise TextgenError(f"{out}: cannot write there ({err.strerror or err})") from None
    return [out / PAGE_FILE, *_plots(found, out)]


def _plots(found: Inspection, out: Path) -> list[Path]:
    try:
        import matplotlib
    except ImportError:
        raise TextgenError("the plots need matplotlib: pip install 'textgen[inspect]'") from None
    matplotlib.use("Agg")  # files only: never a display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.plot([row["k"] for row in found.span], [row["bits_per_char"] for row in found.span], marker="o")
    axes.set(xscale="log", xlabel="state reset every k tokens", ylabel="bits per character", title="Memory span")
    axes.grid(alpha=0.3)
    written = [out / SPAN_PLOT]
    figure.savefig(written[0], dpi=100, bbox_inches="tight")
    plt.close(figure)
    layers = found.gates.get("layers", [])
    if layers:
        kinds = [k for k, v in layers[0].items() if isinstance(v, dict)]
        figure, grid = plt.subplots(len(layers), len(kinds), figsize=(3 * len(kinds), 2.2 * len(layers)),
                                    squeeze=False)
        for i, layer in enumerate(layers):
            for j, kind in enumerate(kinds):
                edges, counts = layer[kind]["edges"], layer[kind]["counts"]
                grid[i][j].bar(edges[:-1], counts, width=np.diff(edges), align="edge")
                grid[i][j].set_title(f"layer {i} {'|c|' if kind == 'abs_c' else kind}", fontsize=9)
        figure.tight_layout()
        written.append(out / GATES_PLOT)
        figure.savefig(written[-1], dpi=100)
        plt.close(figure)
    return written

