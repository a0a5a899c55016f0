"""`textgen.train(corpus, ...)`: corpus -> tokenizer -> model.fit -> checkpoint bundle."""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from textgen.card import Clock, train_call, write_card
from textgen.checkpoint import CONFIG_FILE, load_bundle, load_resume_state
from textgen.config import (Config, Interrupted, TextgenError, TrainConfig, check_memory, config_from_options,
                            option_value, override)
from textgen.corpus_cache import TokenIds, token_ids
from textgen.data import StreamLayout, check_length, make_stream_dataset, resolve_paths, sources_digest, split_ids
from textgen.device import startup_lines


@dataclass
class Prepared:
    """Everything the training loop needs from the text."""

    config: Config
    tokenizer: Any  # tokenizers.Tokenizer
    train_ids: np.ndarray
    val_ids: np.ndarray
    chars_per_token: float  # for bits per character from nats per token


# Options a resumed run may change: how long it goes on, not what it is.
RESUMABLE = {"epochs", "max_steps", "max_minutes", "patience", "checkpoint_every"}


def train(corpus: str | list[str], *, name: str | None = None, overwrite: bool = False,
          resume: bool = False, init_from: str | Path | None = None,
          checkpoint_dir: str | Path = "checkpoints", log_dir: str | Path = "runs",
          val_file: str | None = None, glob: str = "*.txt", callbacks: list | tuple = (),
          strategy: str = "default", mixed_precision: bool = False,
          sample_every: int | None = None, histograms: bool = True, **options: Any) -> Path:
    """Train a model on `corpus` and return the path of its checkpoint bundle.

    Args:
        corpus: a text file, several files, a folder of .txt files, or a known corpus name.
        name: run name (default: the corpus file's stem); bundle in CHECKPOINT_DIR/NAME,
            TensorBoard logs in LOG_DIR/NAME.
        overwrite: replace an existing run of that name.
        resume: continue run NAME from its resume state (same corpus and settings; only
            the budget options in RESUMABLE may change).
        init_from: start from this bundle's weights and tokenizer (fine-tuning on a new corpus).
        val_file: validate on this file instead of holding out the end of the corpus.
        glob: which files of a corpus folder to read ("**/*.txt": recursively).
        callbacks: extra Keras callbacks for model.fit.
        strategy: "default", "mirrored", "multi-worker" or "auto" (see textgen.distribute);
            --batch-size is the global batch, split across the replicas.
        mixed_precision: compute in bfloat16 (float16 on GPUs), weights stay float32.
        sample_every: also write TensorBoard text samples every N steps (always at epoch ends).
        histograms: write per-layer weight histograms at epoch ends.
        **options: any field of TokenizerConfig, ModelConfig or TrainConfig, e.g.
            level="word", units=512, max_minutes=5.
    """
    from textgen import distribute

    call = train_call(train, locals())  # for the model card, before any local is added
    items = [str(i) for i in ([corpus] if isinstance(corpus, (str, Path)) else corpus)]
    name = name or default_name(items)
    check_name(name)
    if sample_every is not None and sample_every < 1:
        raise TextgenError(f"sample_every must be at least 1, not {sample_every}")
    tf_strategy = distribute.make_strategy(strategy)  # before any TensorFlow op (collectives)
    bundle_dir, run_dir = Path(checkpoint_dir) / name, Path(log_dir) / name
    state = start = None
    if resume:
        state = load_resume_state(bundle_dir)
        prepared = prepare(items, val_file, _resumed_config(state.config, options), state.tokenizer, glob)
        _check_same_corpus(state.config, prepared.config, name)
    else:
        if (bundle_dir / CONFIG_FILE).exists() and not overwrite:
            raise TextgenError(
                f"{bundle_dir} already exists; pass --resume to continue it, --overwrite to replace it, "
                f"or choose another --name"
            )
        config, tokenizer = config_from_options(**options), None
        if init_from:
            start = load_bundle(init_from)
            config, tokenizer = _fine_tune_config(start.config, options), start.tokenizer
        prepared = prepare(items, val_file, config.replace(name=name), tokenizer, glob)
    check_memory(prepared.config)
    # The chief writes the real bundle and logs; other workers run the same saves into
    # temporary folders (saves may hold collectives) and delete them at the end.
    out_bundle, out_run = distribute.output_dir(bundle_dir), distribute.output_dir(run_dir)
    _claim_run(out_bundle, out_run, (overwrite and not resume) or out_bundle != bundle_dir)
    monitoring = {"sample_every": sample_every, "histograms": histograms}
    try:
        return fit(prepared, out_bundle, out_run, state, start.model if start else None, list(callbacks),
                   monitoring, strategy=tf_strategy, mixed_precision=mixed_precision, trained_by=call)
    except Interrupted as stop:
        command = ["python", "train.py", *items, "--name", name, "--resume"]
        for flag, value, default in (("--checkpoint-dir", checkpoint_dir, "checkpoints"),
                                     ("--log-dir", log_dir, "runs")):
            if str(value) != default:
                command += [flag, str(value)]
        raise Interrupted(f"{stop}; resume with: {shlex.join(command)}", stop.exit_code) from None
    finally:
        if out_bundle != bundle_dir:
            shutil.rmtree(out_bundle.parent, ignore_errors=True)
            shutil.rmtree(out_run.parent, ignore_errors=True)


def check_name(name: str) -> None:
    """A run name is one folder name: no separators, no '..', nothing a path would reinterpret."""
    bad = not name or name in (".", "..") or any(c in name for c in "/\\\0") or len(name) > 200
    if bad or Path(name).is_absolute():
        raise TextgenError(f"invalid run name {name!r}: use a plain folder name (--name)")


def _resumed_config(saved: Config, options: dict[str, Any]) -> Config:
    """The saved run's config, with only budget options taken from the command line."""
    for key, value in options.items():
        if key not in RESUMABLE and option_value(saved, key) != value:
            raise TextgenError(
                f"--{key.replace('_', '-')} {value} differs from the run's {option_value(saved, key)}; "
                f"a resumed run keeps its settings (start a new --name to change them)"
            )
    return override(saved, **{k: v for k, v in options.items() if k in RESUMABLE})


def _fine_tune_config(base: Config, options: dict[str, Any]) -> Config:
    """A new run on the bundle's architecture and tokenizer; training options may change."""
    fixed = {k for k in options if option_value(base, k) != options[k]} - {f.name for f in dataclasses.fields(TrainConfig)}
    if fixed:
        raise TextgenError(f"--init-from keeps the bundle's model and tokenizer; cannot change {sorted(fixed)}")
    return override(Config(tokenizer=base.tokenizer, model=base.model), **options)


def _check_same_corpus(saved: Config, current: Config, name: str) -> None:
    def digests(config: Config) -> list[str]:  # the combined digest covers files past the listed ones
        return [config.corpus.get("sha256")] + [s["sha256"] for s in config.corpus.get("sources", [])]

    if digests(saved) != digests(current):
        raise TextgenError(
            f"the corpus differs from the one run {name!r} was trained on; resuming needs the same text "
            f"(to fine-tune on a new corpus, start a new run with --init-from {name}'s bundle)"
        )


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
            _probe_writable(folder)
        except OSError as err:
            raise TextgenError(f"{folder}: cannot write there ({err.strerror or err})") from None


def _probe_writable(folder: Path) -> None:
    """Create, fsync and delete a file: an unwritable or read-only folder fails now, not at the first save."""
    probe = folder / f".tmp-{os.getpid()}.probe"
    with open(probe, "wb") as f:
        f.write(b"textgen")
        os.fsync(f.fileno())
    probe.unlink()


def prepare(items: list[str], val_file: str | None, config: Config, tokenizer=None,
            glob: str = "*.txt") -> Prepared:
    """Token ids of the corpus (built once into the on-disk token cache, then memory-mapped)
    with a tokenizer built from it (unless given), split into training and validation."""
    val_paths = resolve_paths([val_file], glob) if val_file else []
    corpus = token_ids(resolve_paths(items, glob), val_paths, config.tokenizer, tokenizer=tokenizer)
    tokenizer, ids = corpus.tokenizer, corpus.train
    print(f"Token cache: {corpus.folder} ({'reused' if corpus.reused else 'built'})")
    seq_len = config.train.seq_len
    if val_file:
        train_ids, val_ids = ids, corpus.val
        check_length(train_ids, seq_len, "corpus")
        if len(val_ids) < 2:
            raise TextgenError(f"{val_file}: validation text needs at least two tokens")
    else:
        train_ids, val_ids = split_ids(ids, config.train.val_fraction, seq_len)
    model_cfg = dataclasses.replace(config.model, vocab_size=tokenizer.get_vocab_size())
    config = config.replace(model=model_cfg, corpus=_provenance(corpus, val_file)).validate()
    return Prepared(config, tokenizer, train_ids, val_ids, corpus.characters / max(len(ids), 1))


MAX_LISTED_SOURCES = 100  # a folder of a million files must not make config.json 100 MB


def _provenance(corpus: TokenIds, val_file: str | None) -> dict:
    return {"sources": corpus.sources[:MAX_LISTED_SOURCES], "files": len(corpus.sources),
            "bytes": sum(s["bytes"] for s in corpus.sources), "sha256": sources_digest(corpus.sources),
            "characters": corpus.characters, "val_file": val_file}


def fit(prepared: Prepared, bundle_dir: Path, run_dir: Path, resume_state=None, init_model=None,
        extra_callbacks: list | None = None, monitoring: dict | None = None, strategy=None,
        mixed_precision: bool = False, trained_by: str | None = None) -> Path:
    """Build, compile and fit the model; the best bundle by validation loss ends in bundle_dir.

    Args:
        resume_state: a checkpoint.ResumeState to continue from exactly.
        init_model: a Keras model whose weights start the run (fine-tuning).
        extra_callbacks: more Keras callbacks for model.fit.
        monitoring: keyword arguments for monitor.monitoring_callbacks (sample_every, histograms).
        strategy: a tf.distribute.Strategy (default: the default one); the trainer is built
            inside its scope and the batch split by rows, one set of streams per replica.
        mixed_precision: per-layer mixed dtype policy (textgen.distribute.mixed_precision_dtype).
        trained_by: the `textgen.train(...)` call, for the model card (kept across resumes).
    """
    import keras
    import tensorflow as tf

    from textgen import distribute

    from textgen import callbacks as cb
    from textgen.checkpoint import save_bundle, save_resume_state
    from textgen.generate import TextGenerator
    from textgen.model import CarriedStateModel, build_model, build_stateful_model, copy_weights
    from textgen.monitor import monitoring_callbacks

    cfg, t = prepared.config, prepared.config.train
    strategy = strategy or tf.distribute.get_strategy()
    replicas, chief = strategy.num_replicas_in_sync, distribute.is_chief()
    keras.utils.set_random_seed(t.seed)
    layout = _replica_layout(len(prepared.train_ids), t.batch_size, t.seq_len, replicas)
    val_layout = _replica_layout(len(prepared.val_ids), layout.batch, layout.seq_len, replicas)
    policy = distribute.mixed_precision_dtype(_device_kind()) if mixed_precision else None
    with strategy.scope():
        net = build_stateful_model(cfg.model, dropout=True, dtype=policy)
        trainer = CarriedStateModel(net, cfg.model, layout.batch // replicas, val_layout.batch // replicas)
        per = layout.batch // replicas  # MultiWorkerFix builds from one replica's batch
        trainer.build_batch = ((np.zeros((per, layout.seq_len), np.int32), np.zeros(per, bool)),
                               np.zeros((per, layout.seq_len), np.int32))
        optimizer = keras.optimizers.Adam(t.learning_rate, global_clipnorm=t.clip_norm)
        if policy == "mixed_float16":  # float16 gradients underflow without loss scaling
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        trainer.compile(
            optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=False,  # XLA makes the LSTM loop slower on CPU (measured: bench/train_speed.py)
        )
        progress = _restore(trainer, resume_state, replicas) if resume_state else {}
    if init_model is not None:
        copy_weights(init_model, net)
    export = build_model(cfg.model)  # the plain tokens -> logits view saved in bundles
    first_step = int(trainer.optimizer.iterations.numpy())
    tokens_per_step = layout.batch * layout.seq_len
    _announce(prepared, layout, bundle_dir, run_dir, first_step)
    calls = [*progress.get("trained_by", []), *([trained_by] if trained_by else [])]  # for the model card
    clock = Clock(progress.get("train_seconds", 0))  # training time across resumed sessions

    def current_model() -> keras.Model:
        copy_weights(net, export)
        return export

    def save(state: dict) -> Path:
        state = {**state, "chars_per_token": prepared.chars_per_token}  # lets `info` show bits/char
        path = save_bundle(bundle_dir, current_model(), prepared.tokenizer, cfg, state)
        write_card(path, calls, clock())
        return path

    printer = TextGenerator.from_model(export, prepared.tokenizer, cfg)  # built once, refreshed per sample

    def sample() -> str:
        current_model()
        printer.refresh_weights()
        return printer.generate(length=200, temperature=0.8, seed=t.seed)

    planned = t.epochs * layout.steps
    bar = cb.ProgressBar(min(planned, t.max_steps or planned), tokens_per_step, initial=first_step)
    budget = cb.Budget(t.max_steps, t.max_minutes, planned, val_batches=val_layout.steps,
                       agree=distribute.worker_mean(strategy))
    best = cb.BestBundle(save, t.patience, _inf(progress.get("best_val_loss")), progress.get("wait", 0),
                         progress.get("epoch", 0))
    resume_writer = cb.ResumeCheckpoint(
        lambda: save_resume_state(bundle_dir, trainer, prepared.tokenizer, cfg,
                                  {**best.progress(), "replicas": replicas, "trained_by": calls, "train_seconds": clock()}),
        t.checkpoint_every,
    )
    stop = cb.StopOnSignal(bar.write)
    callbacks = [
        stop, budget, cb.CosineSchedule(budget, t.learning_rate), keras.callbacks.TerminateOnNaN(),
        cb.TensorBoardScalars(run_dir, tokens_per_step, prepared.chars_per_token,
                              best_loss=_inf(progress.get("best_val_loss"))),
        best, resume_writer,
        *monitoring_callbacks(current_model, prepared.tokenizer, cfg, prepared.train_ids, run_dir,
                              **(monitoring or {})),
        *(extra_callbacks or []),
    ]
    if chief:  # the other workers train silently
        callbacks[:0] = [bar]
        callbacks.append(cb.SamplePrinter(bar.write, sample, 1.0 / (math.log(2) * prepared.chars_per_token)))
    with stop:  # Ctrl-C/SIGTERM: finish the step; validation, bundle and resume state follow
        history = trainer.fit(
            _by_rows(make_stream_dataset(prepared.train_ids, layout, first_step=first_step)),
            steps_per_epoch=layout.steps, initial_epoch=best.epoch, epochs=max(t.epochs, best.epoch + 1),
            validation_data=_by_rows(make_stream_dataset(prepared.val_ids, val_layout, repeat=False)),
            callbacks=callbacks, shuffle=False, verbose=0,  # order matters: state is carried across batches
        )
    _check_finite(history, best)
    if stop.interrupted:
        raise Interrupted(f"stopped by {stop.signal_name} after step {stop.step:,}; "
                          f"bundle {best.saved_path or 'not saved'}", stop.exit_code)
    for reason in (budget.reason, "no improvement for --patience validations" if best.stopped_early else ""):
        if reason:
            print(f"Stopped: {reason}.")
    _summarize(best, prepared.chars_per_token, bundle_dir)
    return bundle_dir


def _replica_layout(n_ids: int, batch: int, seq_len: int, replicas: int) -> StreamLayout:
    """StreamLayout.fit with the batch a multiple of the replicas (each reads batch/replicas streams)."""
    if batch % replicas:
        raise TextgenError(f"--batch-size {batch} is the global batch: it must be a multiple of the "
                           f"{replicas} replicas")
    layout = StreamLayout.fit(n_ids, batch, seq_len)
    if layout.batch % replicas:  # a short text shrank the batch: round down to whole replicas
        layout = StreamLayout.fit(n_ids, layout.batch - layout.batch % replicas, layout.seq_len)
    if layout.batch < replicas:
        raise TextgenError(f"the text is too short to give each of the {replicas} replicas a stream")
    return layout


def _by_rows(dataset):
    """Shard across workers by batch rows: a strategy then splits each global batch into
    contiguous row blocks, one per replica, so every replica reads the same streams at
    every step (tested against one device in tests/test_distribute.py). AUTO would look
    for input files first, find none, and fall back to this with a warning."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def _device_kind() -> str:
    import tensorflow as tf

    return "GPU" if tf.config.list_logical_devices("GPU") else "CPU"


def _restore(trainer, state, replicas: int = 1) -> dict:
    """Load a resume state's variables into a freshly built trainer and its optimizer."""
    from textgen.checkpoint import restore_variables

    saved = state.progress.get("replicas", 1)
    if saved != replicas:
        raise TextgenError(f"this run was trained on {saved} replicas and must resume on as many, not {replicas}")
    trainer.optimizer.build(trainer.trainable_variables)
    restore_variables(trainer.state_variables(), state.arrays, "model")
    restore_variables(trainer.optimizer.variables, state.arrays, "optimizer")
    return state.progress


def _inf(value: float | None) -> float:
    return math.inf if value is None else float(value)


def _announce(prepared: Prepared, layout: StreamLayout, bundle_dir: Path, run_dir: Path, first_step: int) -> None:
    cfg = prepared.config
    print(
        f"Corpus: {cfg.corpus['characters']:,} characters -> {len(prepared.train_ids):,} training and "
        f"{len(prepared.val_ids):,} validation tokens ({cfg.tokenizer.level} level, "
        f"vocabulary {cfg.model.vocab_size:,})"
    )
    m, t = cfg.model, cfg.train
    for line in startup_lines():
        print(line)
    print(
        f"Model: {m.layers}x{m.units} LSTM, batch {layout.batch} x {layout.seq_len} tokens "
        f"(state carried across batches), {layout.steps:,} steps per epoch"
    )
    if first_step:
        print(f"Resuming at step {first_step:,}")
    print(f"Bundle: {bundle_dir}/   TensorBoard: tensorboard --logdir {run_dir.parent}")


def _check_finite(history, best) -> None:
    losses = history.history.get("loss", [])
    if losses and not math.isfinite(losses[-1]):
        kept = (f"the last good bundle is kept ({best.saved_path})" if best.saved_path
                else "no bundle was saved")
        raise TextgenError(f"training stopped: the loss became {losses[-1]} (try a lower "
                           f"--learning-rate or --clip-norm); {kept}")


def _summarize(best, chars_per_token: float, bundle_dir: Path) -> None:
    bits_scale = 1.0 / (math.log(2) * chars_per_token)
    if math.isfinite(best.best):
        print(f"Best validation loss {best.best:.4f} nats/token ({best.best * bits_scale:.3f} bits/char)")
    print(f"Bundle: {bundle_dir} (generate with: textgen generate {bundle_dir})")
