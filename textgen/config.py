"""Every hyperparameter of a run, as typed dataclasses.

One `Config` travels from the command line to the model and into the bundle's
`config.json`; loading a bundle rebuilds it with `Config.from_dict`, which checks
every key, type and range, so a bundle can only describe models textgen makes.
"""

from __future__ import annotations

import codecs
import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

from textgen.cells import CELL_NAMES, cell_of

FORMAT_VERSION = 1
LEVELS = ("char", "word", "bpe")
# Upper bounds keep every value inside what NumPy, tf.data and the tokenizers library
# accept (a 2**32 seed or a 2**64 vocabulary would crash them with a traceback).
MAX_SEED = 2**32 - 1
MAX_COUNT = 2**31 - 1
GENERATE_LENGTH = 200  # tokens generated when no length (and no character cap) is given


class TextgenError(Exception):
    """A problem with the user's input: the CLI prints it as one line and exits 2."""


class Interrupted(TextgenError):
    """Training stopped on SIGINT/SIGTERM after a clean step; the CLI exits 128 + signal."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class ConfigError(TextgenError, ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


@dataclass(frozen=True)
class TokenizerConfig:
    """How text becomes token ids."""

    level: str = "char"  # char: every character; word: words, punctuation, whitespace runs; bpe: byte-level BPE
    vocab_size: int = 20_000  # word and bpe vocabulary size (char level keeps every character seen)
    encoding: str = "utf-8"  # how corpus files are decoded

    def validate(self) -> None:
        _check(self.level in LEVELS, f"level must be one of {', '.join(LEVELS)}, not {self.level!r}")
        _check(2 <= self.vocab_size <= 10**7, "vocab_size must be in 2..10000000")
        _check(self.level != "bpe" or self.vocab_size >= 258,
               "vocab_size must be at least 258 at bpe level (256 bytes and 2 special tokens)")
        _check(_is_text_encoding(self.encoding), f"unknown text encoding {self.encoding!r}")


@dataclass(frozen=True)
class ModelConfig:
    """The network: embedding -> stacked recurrent layers (LSTM by default) -> dense logits."""

    vocab_size: int = 0  # set from the tokenizer once it is built (0 = not yet known)
    embedding_dim: int = 64  # small: a char vocabulary has ~65 symbols, the LSTM does the work
    layers: int = 2  # two layers learn better text than one at the same CPU budget
    units: int = 256  # per LSTM layer; 2x256 trains ~6,000 tokens/s on a busy 2-core CPU
    dropout: float = 0.25  # between layers; 1 MB overfits within 10 CPU-minutes at 0.1 (bench/quality.py)
    cell: str = "lstm"  # lstm, gru or rnn (textgen.cells); bundles from before the choice are lstm

    def validate(self) -> None:
        _check(0 <= self.vocab_size <= 10**7 and self.vocab_size != 1, "vocab_size must be in 2..10000000")
        _check(1 <= self.embedding_dim <= 65_536, "embedding_dim must be in 1..65536")
        _check(1 <= self.layers <= 16, "layers must be in 1..16")
        _check(1 <= self.units <= 65_536, "units must be in 1..65536")
        _check(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")
        _check(self.cell in CELL_NAMES, f"cell must be one of {', '.join(CELL_NAMES)}, not {self.cell!r}")

    def parameter_count(self) -> int:
        """Numbers in the network's weights, from the config alone (checked before building).

        Embedding V*E; each recurrent layer as its cell counts it (an LSTM layer: kernel
        (in, 4u), recurrent kernel (u, 4u), bias 4u); the logits layer u*V + V.
        """
        v, e, u = self.vocab_size, self.embedding_dim, self.units
        cell = cell_of(self.cell)
        recurrent = sum(cell.layer_parameters(e if i == 0 else u, u) for i in range(self.layers))
        return v * e + recurrent + u * v + v


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation: data windows, optimiser, stopping rules."""

    seq_len: int = 64  # tokens per step and stream; state carries on, so short is cheap context
    batch_size: int = 32  # contiguous streams; small batches mean more updates per CPU-minute
    learning_rate: float = 4e-3  # Adam's peak; cosine decay to 0.1x over the budget
    clip_norm: float = 1.0  # global gradient-norm clipping keeps LSTM updates stable
    epochs: int = 50  # upper bound; early stopping or --max-minutes usually ends sooner
    max_steps: int | None = None  # stop after this many optimiser steps
    max_minutes: float | None = None  # wall-time budget from the first step, validation included
    val_fraction: float = 0.05  # the last 5% of the corpus is held out for validation
    patience: int = 3  # validations without improvement before stopping
    seed: int = 0  # initial weights and dropout derive from it
    checkpoint_every: int | None = None  # steps between resume states (None: about every 5 minutes)

    def validate(self) -> None:
        _check(1 <= self.seq_len <= 1 << 20, "seq_len must be in 1..1048576")
        _check(1 <= self.batch_size <= 1 << 20, "batch_size must be in 1..1048576")
        _check(0 < self.learning_rate < math.inf, "learning_rate must be positive and finite")
        _check(0 < self.clip_norm < math.inf, "clip_norm must be positive and finite")
        _check(1 <= self.epochs <= MAX_COUNT, f"epochs must be in 1..{MAX_COUNT}")
        _check(self.max_steps is None or 1 <= self.max_steps <= MAX_COUNT,
               f"max_steps must be in 1..{MAX_COUNT}")
        _check(self.max_minutes is None or self.max_minutes > 0, "max_minutes must be positive")
        _check(0.0 < self.val_fraction < 1.0, "val_fraction must be in (0, 1)")
        _check(1 <= self.patience <= MAX_COUNT, f"patience must be in 1..{MAX_COUNT}")
        _check(0 <= self.seed <= MAX_SEED, f"seed must be in 0..{MAX_SEED}")
        _check(self.checkpoint_every is None or 1 <= self.checkpoint_every <= MAX_COUNT,
               f"checkpoint_every must be in 1..{MAX_COUNT}")


@dataclass(frozen=True)
class Config:
    """A whole run: tokenizer, model and training settings, plus provenance."""

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str = ""  # run name: checkpoints/NAME and runs/NAME
    corpus: dict[str, Any] = field(default_factory=dict)  # names, sizes and sha256 of the source files

    def validate(self) -> "Config":
        """Check every section; return self so calls chain."""
        self.tokenizer.validate()
        self.model.validate()
        self.train.validate()
        return self

    def replace(self, **sections: Any) -> "Config":
        """A copy with whole sections or top-level fields replaced."""
        return dataclasses.replace(self, **sections)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "Config":
        """Rebuild and validate a Config from plain JSON data; unknown keys are refused."""
        _check(isinstance(data, dict), "config must be a JSON object")
        sections = {"tokenizer": TokenizerConfig, "model": ModelConfig, "train": TrainConfig}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in sections:
                kwargs[key] = _build(sections[key], value, key)
            elif key == "name":
                _check(isinstance(value, str), "name must be a string")
                kwargs[key] = value
            elif key == "corpus":
                _check(isinstance(value, dict), "corpus must be an object")
                kwargs[key] = value
            else:
                raise ConfigError(f"unknown config key {key!r}")
        return cls(**kwargs).validate()


def config_from_options(**options: Any) -> Config:
    """A validated Config from flat option names (`units=512, level="word", ...`)."""
    return override(Config(), **options)


def override(config: Config, **options: Any) -> Config:
    """A copy of `config` with flat options replaced in whichever section owns them.

    `vocab_size` is the tokenizer's cap (the model's vocabulary size always comes from
    the built tokenizer).
    """
    sections = {"tokenizer": TokenizerConfig, "model": ModelConfig, "train": TrainConfig}
    values: dict[str, dict[str, Any]] = {key: dataclasses.asdict(getattr(config, key)) for key in sections}
    for key, value in options.items():
        owner = next((s for s, cls in sections.items() if key in _field_names(cls)), None)
        if owner is None:
            raise ConfigError(f"unknown option {key!r}")
        values[owner][key] = value
    return config.replace(**{s: _build(cls, values[s], s) for s, cls in sections.items()}).validate()


def option_value(config: Config, key: str) -> Any:
    """The current value of a flat option name in `config`."""
    for section in (config.tokenizer, config.model, config.train):
        if key in _field_names(type(section)):
            return getattr(section, key)
    raise ConfigError(f"unknown option {key!r}")


def check_memory(config: Config) -> None:
    """Refuse a model that cannot fit in this machine's memory, before building it.

    Weights, gradients and two Adam moments (4 float32 copies of the parameters) plus
    one batch of activations: logits and their gradients dominate for big vocabularies.
    """
    m, t = config.model, config.train
    activations = t.batch_size * t.seq_len * (3 * m.vocab_size + 12 * m.units * m.layers)
    need = 4 * (4 * m.parameter_count() + activations)
    have = _physical_memory()
    if have and need > have:
        raise ConfigError(
            f"this model needs about {need / 2**30:,.1f} GiB of memory and this machine has "
            f"{have / 2**30:,.1f} GiB: lower --units, --layers, --batch-size, --seq-len or --vocab-size"
        )


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX: skip the check
        return 0


def _is_text_encoding(name: str) -> bool:
    try:
        return codecs.lookup(name)._is_text_encoding
    except (LookupError, TypeError, ValueError):
        return False


def _field_names(section: type) -> set[str]:
    return {f.name for f in dataclasses.fields(section)}


def _build(section: type, data: Any, where: str) -> Any:
    """Build one section dataclass from a dict, checking keys and types."""
    _check(isinstance(data, dict), f"{where} must be an object")
    fields = {f.name: f for f in dataclasses.fields(section)}
    for key, value in data.items():
        _check(key in fields, f"unknown config key {where}.{key}")
        _check(_type_ok(fields[key].type, value), f"{where}.{key} has the wrong type: {value!r}")
    return section(**data)


def _type_ok(annotation: str, value: Any) -> bool:
    """Whether a JSON value fits a field annotation written as a string (PEP 563)."""
    optional = "None" in annotation
    if value is None:
        return optional
    if annotation.startswith("int"):
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation.startswith("float"):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation.startswith("str"):
        return isinstance(value, str)
    return True


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
