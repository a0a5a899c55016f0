"""`textgen.train(corpus, ...)`: corpus -> tokenizer -> model.fit -> checkpoint bundle."""

from __future__ import annotations

import dataclasses
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from textgen.config import Config, TextgenError, config_from_options
from textgen.data import Corpus, StreamLayout, check_length, load_corpus, make_stream_dataset, split_ids
from textgen.tokenizer import build_tokenizer, encode


@dataclass
class Prepared:
    """Everything the training loop needs from the text."""

    config: Config
    tokenizer: Any  # tokenizers.Tokenizer
    train_ids: np.ndarray
    val_ids: np.ndarray
    chars_per_token: float  # for bits per character from nats per token


def train(corpus: str | list[str], *, name: str | None = None, overwrite: bool = False,
          checkpoint_dir: str | Path = "checkpoints", log_dir: str | Path = "runs",
          val_file: str | None = None, **options: Any) -> Path:
    """Train a model on `corpus` and return the path of its checkpoint bundle.

    Args:
        corpus: a text file, several files, a folder of .txt files, or a known corpus name.
        name: run name (default: the corpus file's stem); bundle in CHECKPOINT_DIR/NAME,
            TensorBoard logs in LOG_DIR/NAME.
        overwrite: replace an existing run of that name.
        val_file: validate on this file instead of holding out the end of the corpus.
        **options: any field of TokenizerConfig, ModelConfig or TrainConfig, e.g.
            level="word", units=512, max_minutes=5.
    """
    items = [corpus] if isinstance(corpus, (str, Path)) else list(corpus)
    items = [str(i) for i in items]
    name = name or default_name(items)
    bundle_dir, run_dir = Path(checkpoint_dir) / name, Path(log_dir) / name
    if (bundle_dir / "config.json").exists() and not overwrite:
        raise TextgenError(f"{bundle_dir} already exists; choose another --name or pass --overwrite")
    config = config_from_options(**options).replace(name=name)
    prepared = prepare(items, val_file, config)
    _claim_run(bundle_dir, run_dir, overwrite)
    return fit(prepared, bundle_dir, run_dir)


def default_name(items: list[str]) -> str:
    """The run name for corpus arguments: the first file's (or folder's) stem, or the corpus name."""
    return Path(items[0].rstrip("/\\")).stem or "corpus"


def _claim_run(bundle_dir: Path, run_dir: Path, overwrite: bool) -> None:
    """Create the run's folders; with overwrite, clear the old logs so curves do not mix."""
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    for folder in (bundle_dir, run_dir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TextgenError(f"{folder}: cannot create folder ({err.strerror})") from None


def prepare(items: list[str], val_file: str | None, config: Config) -> Prepared:
    """Read the corpus, build the tokenizer, encode and split into train/validation ids."""
    corpus = load_corpus(items, config.tokenizer.encoding)
    val_text = load_corpus([val_file], config.tokenizer.encoding).text if val_file else ""
    tok = config.tokenizer
    tokenizer = build_tokenizer([corpus.text, val_text], tok.level, tok.vocab_size)
    ids = encode(tokenizer, corpus.text)
    seq_len = config.train.seq_len
    if val_file:
        train_ids, val_ids = ids, encode(tokenizer, val_text)
        check_length(train_ids, seq_len, "corpus")
        if len(val_ids) < 2:
            raise TextgenError(f"{val_file}: validation text needs at least two tokens")
    else:
        train_ids, val_ids = split_ids(ids, config.train.val_fraction, seq_len)
    model_cfg = dataclasses.replace(config.model, vocab_size=tokenizer.get_vocab_size())
    config = config.replace(model=model_cfg, corpus=_provenance(corpus, val_file)).validate()
    return Prepared(config, tokenizer, train_ids, val_ids, len(corpus.text) / max(len(ids), 1))


def _provenance(corpus: Corpus, val_file: str | None) -> dict:
    return {"sources": corpus.sources, "characters": len(corpus.text), "val_file": val_file}


def fit(prepared: Prepared, bundle_dir: Path, run_dir: Path) -> Path:
    """Build, compile and fit the model; the best bundle by validation loss ends in bundle_dir."""
    import keras

    from textgen import callbacks as cb
    from textgen.checkpoint import save_bundle
    from textgen.generate import TextGenerator
    from textgen.model import CarriedStateModel, build_model, build_stateful_model, copy_weights

    cfg, t = prepared.config, prepared.config.train
    keras.utils.set_random_seed(t.seed)
    layout = StreamLayout.fit(len(prepared.train_ids), t.batch_size, t.seq_len)
    val_layout = StreamLayout.fit(len(prepared.val_ids), layout.batch, layout.seq_len)
    net = build_stateful_model(cfg.model, dropout=True)
    trainer = CarriedStateModel(net, cfg.model, layout.batch, val_layout.batch)
    trainer.compile(
        optimizer=keras.optimizers.Adam(t.learning_rate, global_clipnorm=t.clip_norm),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,  # XLA makes the LSTM loop slower on CPU (measured: bench/train_speed.py)
    )
    export = build_model(cfg.model)  # the plain tokens -> logits view saved in bundles
    tokens_per_step = layout.batch * layout.seq_len
    _announce(prepared, layout, bundle_dir, run_dir)

    def current_model() -> keras.Model:
        copy_weights(net, export)
        return export

    def save(state: dict) -> Path:
        return save_bundle(bundle_dir, current_model(), prepared.tokenizer, cfg, state)

    def sample() -> str:
        generator = TextGenerator.from_model(current_model(), prepared.tokenizer, cfg)
        return generator.generate(length=200, temperature=0.8, seed=t.seed)

    planned = t.epochs * layout.steps
    progress = cb.ProgressBar(min(planned, t.max_steps or planned), tokens_per_step)
    budget = cb.Budget(t.max_steps, t.max_minutes, planned, val_batches=val_layout.steps)
    best = cb.BestBundle(save)
    callbacks = [
        progress, budget, cb.CosineSchedule(budget, t.learning_rate),
        keras.callbacks.TerminateOnNaN(),
        cb.TensorBoardScalars(run_dir, tokens_per_step, prepared.chars_per_token),
        best, cb.SamplePrinter(progress.write, sample, 1.0 / (math.log(2) * prepared.chars_per_token)),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=t.patience),
    ]
    history = trainer.fit(
        make_stream_dataset(prepared.train_ids, layout), epochs=t.epochs, steps_per_epoch=layout.steps,
        validation_data=make_stream_dataset(prepared.val_ids, val_layout, repeat=False), callbacks=callbacks,
        shuffle=False, verbose=0,  # order matters: state is carried from batch to batch
    )
    _check_finite(history, best)
    if budget.reason:
        print(f"Stopped: {budget.reason}.")
    _summarize(best, prepared.chars_per_token)
    return bundle_dir


def _announce(prepared: Prepared, layout: StreamLayout, bundle_dir: Path, run_dir: Path) -> None:
    cfg = prepared.config
    print(
        f"Corpus: {cfg.corpus['characters']:,} characters -> {len(prepared.train_ids):,} training and "
        f"{len(prepared.val_ids):,} validation tokens ({cfg.tokenizer.level} level, "
        f"vocabulary {cfg.model.vocab_size:,})"
    )
    m, t = cfg.model, cfg.train
    print(
        f"Model: {m.layers}x{m.units} LSTM, batch {layout.batch} x {layout.seq_len} tokens "
        f"(state carried across batches), {layout.steps:,} steps per epoch"
    )
    print(f"Bundle: {bundle_dir}/   TensorBoard: tensorboard --logdir {run_dir.parent}")


def _check_finite(history, best) -> None:
    losses = history.history.get("loss", [])
    if losses and not math.isfinite(losses[-1]):
        kept = f"; the last good bundle is kept ({best.saved_path})" if best.saved_path else ""
        raise TextgenError(f"training stopped: the loss became {losses[-1]}{kept}")


def _summarize(best, chars_per_token: float) -> None:
    bits_scale = 1.0 / (math.log(2) * chars_per_token)
    if math.isfinite(best.best):
        print(f"Best validation loss {best.best:.4f} nats/token ({best.best * bits_scale:.3f} bits/char)")
    print(f"Saved {best.saved_path}")
