"""Every hyperparameter and run setting, as typed dataclasses.

One `Config` travels from the command line to the model and into the bundle's
`config.json`; loading a bundle rebuilds it with `Config.from_dict`, which checks
every key, type and range, so a bundle can only describe models textgen makes.
`RunConfig` holds how one training invocation runs (folders, devices, what it shows);
it is never saved. Each field that is a train option says so with `option(...)`: its
--help line and whether it may change on --resume. `train_options()` lists them all,
and the `textgen train` flags and the `textgen.train(...)` keywords come from it.
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
STRATEGIES = ("auto", "default", "mirrored", "multi-worker")  # --strategy (see textgen.distribute)


class TextgenError(Exception):
    """A problem with the user's input: the CLI prints it as one line and exits 2."""


class Interrupted(TextgenError):
    """Training stopped on SIGINT/SIGTERM after a clean step; the CLI exits 128 + signal."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class ConfigError(TextgenError, ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


def option(default: Any, help: str, *, resumable: bool = False, group: str | None = None,
           choices: tuple | None = None, metavar: str | None = None) -> Any:
    """A dataclass field that is also a train option: a `textgen train` flag and a `textgen.train` keyword.

    Args:
        help: its --help line.
        resumable: whether a resumed run may change it (how long a run goes on, not what it is).
        group: its --help section (default: its config section's).
        choices, metavar: as argparse takes them.
    """
    return field(default=default, metadata={"help": help, "resumable": resumable, "group": group,
                                            "choices": choices, "metavar": metavar})


@dataclass(frozen=True)
class TokenizerConfig:
    """How text becomes token ids."""

    # char: every character; word: words and punctuation with their space; bpe: byte-level BPE
    level: str = option("char", "token level", choices=LEVELS)
    vocab_size: int = option(20_000, "word/bpe vocabulary size")  # char level keeps every character seen
    encoding: str = option("utf-8", "corpus encoding")  # how corpus files are decoded
    # a Lowercase normalizer inside tokenizer.json
    lowercase: bool = option(False, "fold case: the model reads and writes lowercase text")
    # Documents are joined by [DOC] (textgen.documents reads them); "text" is one long text per file.
    docs: str = option("text", "what a document is: text (a whole file), lines (each non-empty line), "
                       "jsonl:FIELD or csv:COLUMN (that field's text)", group="corpus", metavar="MODE")
    label_field: str | None = option(None, "with --docs jsonl:...: each document's label (generate --label)",
                                     group="corpus", metavar="FIELD")
    label_column: str | None = option(None, "with --docs csv:...: each document's label (generate --label)",
                                      group="corpus", metavar="COLUMN")

    def validate(self) -> None:
        require(self.level in LEVELS, f"level must be one of {', '.join(LEVELS)}, not {self.level!r}")
        require(2 <= self.vocab_size <= 10**7, "vocab_size must be in 2..10000000")
        require(self.level != "bpe" or self.vocab_size >= 258,
                "vocab_size must be at least 258 at bpe level (256 bytes and 2 special tokens)")
        require(_is_text_encoding(self.encoding), f"unknown text encoding {self.encoding!r}")
        kind, _, name = self.docs.partition(":")
        require(self.docs in ("text", "lines") or (kind in ("jsonl", "csv") and name),
                f"docs must be text, lines, jsonl:FIELD or csv:COLUMN, not {self.docs!r}")
        require(self.label_field is None or kind == "jsonl", "--label-field needs --docs jsonl:FIELD")
        require(self.label_column is None or kind == "csv", "--label-column needs --docs csv:COLUMN")

    @property
    def documents(self) -> bool:
        """Whether the corpus is a set of documents, each ended by [DOC] (not one long text)."""
        return self.docs != "text"

    @property
    def label_key(self) -> str | None:
        """The jsonl field or csv column holding each document's label, if labelled."""
        return self.label_field or self.label_column


@dataclass(frozen=True)
class ModelConfig:
    """The network: embedding -> stacked recurrent layers (LSTM by default) -> dense logits."""

    vocab_size: int = 0  # set from the tokenizer once it is built (0 = not yet known)
    embedding_dim: int = option(64, "token embedding width")  # small: ~65 chars, the recurrent layers do the work
    # One wide layer learns more per update than two narrow ones: in 5 minutes on 2 cores 1x512
    # reached 1.461 nats/char against 2x256's 1.492 (mean of 3 seeds, bench/quality.py, AVX-512
    # EPYC, 2026-12-08), at ~0.85x 2x256's tokens/s; ~17,000 tokens/s on an idle 2-core CPU.
    layers: int = option(1, "recurrent layers")
    units: int = option(512, "units per recurrent layer")
    # 1 MB overfits in 10 CPU-minutes at 0.1 (bench/quality.py)
    dropout: float = option(0.25, "dropout between layers and before the output")
    # textgen.cells defines each; bundles from before the choice have no key and are lstm
    cell: str = option("lstm", "recurrent cell", choices=CELL_NAMES)

    def validate(self) -> None:
        require(0 <= self.vocab_size <= 10**7 and self.vocab_size != 1, "vocab_size must be in 2..10000000")
        require(1 <= self.embedding_dim <= 65_536, "embedding_dim must be in 1..65536")
        require(1 <= self.layers <= 16, "layers must be in 1..16")
        require(1 <= self.units <= 65_536, "units must be in 1..65536")
        require(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")
        require(self.cell in CELL_NAMES, f"cell must be one of {', '.join(CELL_NAMES)}, not {self.cell!r}")

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

    # Steps carry state on, so a short window is cheap context; small batches give more updates per CPU-minute.
    seq_len: int = option(64, "tokens per sequence (state is carried across sequences)")
    batch_size: int = option(32, "sequences (contiguous streams) per step")
    learning_rate: float = option(4e-3, "Adam's peak rate, then a cosine decay over the budget")
    # Decaying to 0 rather than to 0.1x: 5 minutes of 1 x 512 (seed 0, bench/quality.py, AVX-512
    # EPYC, 2026-12-08) reached 1.453 nats/char (0.01x: 1.458; 0.1x: 1.466); the last updates settle.
    final_lr_fraction: float = option(0.0, "the learning rate at the budget's end, as a fraction of "
                                           "--learning-rate", metavar="FRACTION")
    clip_norm: float = option(1.0, "global gradient-norm cap")  # keeps LSTM updates stable
    # Dropout fights overfitting, which takes repeated passes; in fewer it only slows learning
    # (callbacks.ShortRunDropout has the measurements).
    dropout_min_epochs: float = option(6.0, "a run expected to end before this many epochs trains without dropout "
                                            "(0: always with --dropout)", metavar="EPOCHS")
    # The budget: a resumed run may change it. Early stopping or --max-minutes usually ends before --epochs.
    epochs: int = option(50, "at most this many passes", resumable=True)
    max_steps: int | None = option(None, "stop after this many optimizer steps", resumable=True)
    max_minutes: float | None = option(None, "wall-time budget, validation included", resumable=True)
    val_fraction: float = option(0.05, "held-out tail of the corpus")
    patience: int = option(3, "validations without improvement before stopping", resumable=True)
    seed: int = option(0, "initial weights and dropout")
    checkpoint_every: int | None = option(None, "steps between resume states (default: about every 5 minutes)",
                                          resumable=True)

    def validate(self) -> None:
        require(1 <= self.seq_len <= 1 << 20, "seq_len must be in 1..1048576")
        require(1 <= self.batch_size <= 1 << 20, "batch_size must be in 1..1048576")
        require(0 < self.learning_rate < math.inf, "learning_rate must be positive and finite")
        require(0 < self.clip_norm < math.inf, "clip_norm must be positive and finite")
        require(0 <= self.final_lr_fraction <= 1, "final_lr_fraction must be in [0, 1]")
        require(0 <= self.dropout_min_epochs <= MAX_COUNT, f"dropout_min_epochs must be in 0..{MAX_COUNT}")
        require(1 <= self.epochs <= MAX_COUNT, f"epochs must be in 1..{MAX_COUNT}")
        require(self.max_steps is None or 1 <= self.max_steps <= MAX_COUNT,
                f"max_steps must be in 1..{MAX_COUNT}")
        require(self.max_minutes is None or self.max_minutes > 0, "max_minutes must be positive")
        require(0.0 < self.val_fraction < 1.0, "val_fraction must be in (0, 1)")
        require(1 <= self.patience <= MAX_COUNT, f"patience must be in 1..{MAX_COUNT}")
        require(0 <= self.seed <= MAX_SEED, f"seed must be in 0..{MAX_SEED}")
        require(self.checkpoint_every is None or 1 <= self.checkpoint_every <= MAX_COUNT,
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
        require(isinstance(data, dict), "config must be a JSON object")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in SECTIONS:
                kwargs[key] = _build(SECTIONS[key], value, key)
            elif key == "name":
                require(isinstance(value, str), "name must be a string")
                kwargs[key] = value
            elif key == "corpus":
                require(isinstance(value, dict), "corpus must be an object")
                kwargs[key] = value
            else:
                raise ConfigError(f"unknown config key {key!r}")
        return cls(**kwargs).validate()


SECTIONS = {"tokenizer": TokenizerConfig, "model": ModelConfig, "train": TrainConfig}  # config.json's sections
# What a config.json written before a field existed meant by leaving it out, where that is not
# today's default: dropout ran in every run and the rate decayed to 0.1x, so a resumed older run keeps both.
_BEFORE_FIELD = {"train": {"dropout_min_epochs": 0.0, "final_lr_fraction": 0.1}}


@dataclass(frozen=True)
class RunConfig:
    """How one training invocation runs: what it reads, where it writes, on which devices,
    what it shows. Not the model: never saved in config.json. The settings that shape the
    data or the training (not `resumable`) go into the resume state (`kept_settings`), and a
    resumed run keeps them (`resumed_run`); it may change the rest."""

    glob: str = option("*.txt", "files of a folder to read; '**/*.txt' recurses", group="corpus")
    val_file: str | None = option(None, "validate on this file instead of the corpus tail", group="corpus")
    strategy: str = option("default", "tf.distribute strategy; --batch-size is the global batch",
                           group="devices", choices=STRATEGIES)
    mixed_precision: bool = option(False, "compute in float16 on GPUs, bfloat16 elsewhere (on a CPU with AMX or "
                                          "AVX-512 BF16: an LSTM's products outside its time loops); weights "
                                          "stay float32",
                                   group="devices")
    name: str | None = option(None, "run name (default: the corpus file's stem)", group="output", resumable=True)
    overwrite: bool = option(False, "replace an existing run of that name", group="output", resumable=True)
    resume: bool = option(False, "continue run NAME where it stopped", group="output", resumable=True)
    init_from: str | None = option(None, "start from a bundle's weights and tokenizer (fine-tune on a new corpus)",
                                   group="output", metavar="BUNDLE", resumable=True)
    checkpoint_dir: str = option("checkpoints", "bundles go in DIR/NAME", group="output", resumable=True)
    log_dir: str = option("runs", "TensorBoard logs go in DIR/NAME", group="output", resumable=True)
    sample_every: int | None = option(None, "also write TensorBoard text samples every N steps (always at epoch ends)",
                                      group="output", metavar="N", resumable=True)
    histograms: bool = option(True, "do not write weight histograms at epoch ends", group="output",
                              resumable=True)  # --no-histograms

    def validate(self) -> "RunConfig":
        """Check the settings no later step checks; return self so calls chain."""
        require(self.sample_every is None or self.sample_every >= 1,
                f"sample_every must be at least 1, not {self.sample_every}")
        return self


@dataclass(frozen=True)
class TrainOption:
    """One train option as the CLI and `textgen.train` see it (from a field made with `option`)."""

    name: str
    default: Any
    kind: type  # int, float, str or bool, from the field's annotation
    help: str
    group: str  # its --help section
    resumable: bool
    choices: tuple | None
    metavar: str | None

    @property
    def flag(self) -> str:
        """`--seq-len` for seq_len; `--no-histograms` for a switch that is on by default."""
        dashed = self.name.replace("_", "-")
        return f"--no-{dashed}" if self.default is True else f"--{dashed}"


OPTION_GROUPS = ("corpus", "tokens", "model", "training", "devices", "output")  # --help's order


def train_options() -> list[TrainOption]:
    """Every train option: the Config fields a run may set, then RunConfig's, in --help order."""
    found = []
    for group, section in (("tokens", TokenizerConfig), ("model", ModelConfig), ("training", TrainConfig),
                           (None, RunConfig)):
        for f in dataclasses.fields(section):
            if "help" in f.metadata:  # ModelConfig.vocab_size comes from the tokenizer: no option
                found.append(TrainOption(f.name, f.default, _kind(f.type), f.metadata["help"],
                                         f.metadata["group"] or group, f.metadata["resumable"],
                                         f.metadata["choices"], f.metadata["metavar"]))
    return sorted(found, key=lambda o: OPTION_GROUPS.index(o.group))


def split_options(options: dict[str, Any]) -> tuple[RunConfig, dict[str, Any]]:
    """`textgen.train` keywords as the run's RunConfig and the rest (Config options)."""
    run_fields = _field_names(RunConfig)
    run = RunConfig(**{k: v for k, v in options.items() if k in run_fields}).validate()
    return run, {k: v for k, v in options.items() if k not in run_fields}


def resumed_config(saved: Config, options: dict[str, Any]) -> Config:
    """The saved run's config with the resumable options applied; any other must equal the saved value."""
    resumable = {o.name for o in train_options() if o.resumable}
    for key, value in options.items():
        if key not in resumable and option_value(saved, key) != value:
            raise _changed_on_resume(key, value, option_value(saved, key))
    return override(saved, **{k: v for k, v in options.items() if k in resumable})


def kept_settings(run: RunConfig) -> dict[str, Any]:
    """The run settings a resumed run keeps (they shape its data or training), for its resume state."""
    return {f.name: getattr(run, f.name) for f in dataclasses.fields(RunConfig) if not f.metadata["resumable"]}


def resumed_run(run: RunConfig, saved: dict[str, Any], given: set[str]) -> RunConfig:
    """`run` with the saved run's kept settings; a setting in `given` must equal the saved value.

    A resume state saved before a setting was kept means its default.
    """
    kept = {key: saved.get(key, getattr(RunConfig, key)) for key in kept_settings(run)}
    types = {f.name: f.type for f in dataclasses.fields(RunConfig)}
    for key, value in kept.items():
        require(fits_type(types[key], value), f"the resume state's {key} has the wrong type: {value!r}")
        if key in given and getattr(run, key) != value:
            raise _changed_on_resume(key, getattr(run, key), value)
    return dataclasses.replace(run, **kept)


def _changed_on_resume(key: str, value: Any, saved: Any) -> ConfigError:
    return ConfigError(f"--{key.replace('_', '-')} {value} differs from the run's {saved}; "
                       f"a resumed run keeps its settings (start a new --name to change them)")


def fine_tune_config(base: Config, options: dict[str, Any]) -> Config:
    """A new run on a bundle's architecture and tokenizer; only training options may change."""
    fixed = {k for k in options if option_value(base, k) != options[k]} - _field_names(TrainConfig)
    if fixed:
        raise ConfigError(f"--init-from keeps the bundle's model and tokenizer; cannot change {sorted(fixed)}")
    return override(Config(tokenizer=base.tokenizer, model=base.model), **options)


def config_from_options(**options: Any) -> Config:
    """A validated Config from flat option names (`units=512, level="word", ...`)."""
    return override(Config(), **options)


def override(config: Config, **options: Any) -> Config:
    """A copy of `config` with flat options replaced in whichever section owns them.

    `vocab_size` is the tokenizer's cap (the model's vocabulary size always comes from
    the built tokenizer).
    """
    values: dict[str, dict[str, Any]] = {key: dataclasses.asdict(getattr(config, key)) for key in SECTIONS}
    for key, value in options.items():
        owner = next((s for s, cls in SECTIONS.items() if key in _field_names(cls)), None)
        if owner is None:
            raise ConfigError(f"unknown option {key!r}")
        values[owner][key] = value
    return config.replace(**{s: _build(cls, values[s], s) for s, cls in SECTIONS.items()}).validate()


def option_value(config: Config, key: str) -> Any:
    """The current value of a flat option name in `config`."""
    for section in (config.tokenizer, config.model, config.train):
        if key in _field_names(type(section)):
            return getattr(section, key)
    raise ConfigError(f"unknown option {key!r}")


def check_memory(config: Config, training: bool = True) -> None:
    """Refuse a model that cannot fit in this machine's memory, before building it.

    Training: weights, gradients and two Adam moments (4 float32 copies of the parameters)
    plus one batch of activations (logits and their gradients dominate for big vocabularies).
    Loading a bundle (`training=False`): the weights and the copy read from the file.
    """
    m, t = config.model, config.train
    if training:
        activations = t.batch_size * t.seq_len * (3 * m.vocab_size + 12 * m.units * m.layers)
        need = 4 * (4 * m.parameter_count() + activations)
    else:
        need = 4 * 2 * m.parameter_count()
    have = _physical_memory()
    if have and need > have:
        advice = ": lower --units, --layers, --batch-size, --seq-len or --vocab-size" if training else ""
        raise ConfigError(f"this model needs about {need / 2**30:,.1f} GiB of memory and this machine has "
                          f"{have / 2**30:,.1f} GiB{advice}")


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


def _kind(annotation: str) -> type:
    """The value type of a field annotation written as a string (PEP 563): "int | None" -> int."""
    return next((kind for kind in (bool, int, float) if annotation.startswith(kind.__name__)), str)


def _build(section: type, data: Any, where: str) -> Any:
    """Build one section dataclass from a dict, checking keys and types."""
    require(isinstance(data, dict), f"{where} must be an object")
    data = {**_BEFORE_FIELD.get(where, {}), **data}  # a field an older config.json leaves out
    fields = {f.name: f for f in dataclasses.fields(section)}
    for key, value in data.items():
        require(key in fields, f"unknown config key {where}.{key}")
        require(fits_type(fields[key].type, value), f"{where}.{key} has the wrong type: {value!r}")
    return section(**data)


def fits_type(annotation: str, value: Any) -> bool:
    """Whether a JSON value fits a field annotation written as a string (PEP 563).

    A bool is not a number here, though Python says True == 1; a float field takes ints.
    """
    optional = "None" in annotation
    if value is None:
        return optional
    if annotation.startswith("bool"):
        return isinstance(value, bool)
    if annotation.startswith("int"):
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation.startswith("float"):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation.startswith("str"):
        return isinstance(value, str)
    return True


def require(condition: Any, message: str) -> None:
    """Raise ConfigError(message) unless `condition`: every validator's one-line refusal."""
    if not condition:
        raise ConfigError(message)
