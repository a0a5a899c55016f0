"""`textgen.train(corpus, ...)`: corpus -> tokenizer -> model.fit -> checkpoint bundle.

Read top to bottom: `train` sorts the options and prepares the corpus; `fit` builds the
trainer (`build_session`), builds the callbacks (`build_callbacks`), fits, and reports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shlex
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import keras

from textgen import callbacks as cb
from textgen import distribute, monitor
from textgen.bundle import CONFIG_FILE, load_bundle
from textgen.card import train_call
from textgen.config import (Config, Interrupted, RunConfig, TextgenError, check_memory, config_from_options,
                            fine_tune_config, kept_settings, resumed_config, resumed_run, split_options,
                            train_options)
from textgen.corpus_cache import TokenIds, shown_name, token_ids
from textgen.data import check_length, resolve_paths, sources_digest, split_documents, split_ids
from textgen.resume import has_resume_state, load_resume_state, remove_resume_state, saved_run_settings
from textgen.device import startup_lines
from textgen.run_lock import run_lock
from textgen.session import Prepared, Session, build_session
from textgen.tokenizer import DOC


def train(corpus: str | list[str], *, callbacks: list | tuple = (), **options: Any) -> Path:
    """Train a model on `corpus` and return the path of its checkpoint bundle.

    Args:
        corpus: a text file, several files, a folder of .txt files, or a known corpus name.
        callbacks: extra Keras callbacks for model.fit.
        **options: any train option (textgen.config.train_options(), the `textgen train`
            flags): a RunConfig field (name, overwrite, resume, init_from, checkpoint_dir,
            log_dir, val_file, glob, strategy, mixed_precision, sample_every, histograms)
            or a TokenizerConfig, ModelConfig or TrainConfig field, e.g. level="word",
            units=512, max_minutes=5. A resumed run may change only the budget options and
            where it writes and what it shows; it keeps its corpus and device settings.
    """
    run, config_options = split_options(options)
    items = [str(i) for i in ([corpus] if isinstance(corpus, (str, Path)) else corpus)]
    name = run.name or default_name(items)
    check_name(name)
    bundle_dir, run_dir = Path(run.checkpoint_dir) / name, Path(run.log_dir) / name
    # The chief writes the real bundle and logs; other workers run the same saves into
    # temporary folders (saves may hold collectives) and delete them at the end.
    out_bundle, out_run = distribute.output_dir(bundle_dir), distribute.output_dir(run_dir)
    with run_lock(bundle_dir) if out_bundle == bundle_dir else contextlib.nullcontext():  # the chief's
        if run.resume:
            run = resumed_run(run, saved_run_settings(bundle_dir), set(options))
        strategy = distribute.make_strategy(run.strategy)  # before any TensorFlow op (collectives)
        prepared, resume_state, init_model = _start(items, name, run, config_options, bundle_dir)
        check_memory(prepared.config)
        _claim_run(out_bundle, out_run, (run.overwrite and not run.resume) or out_bundle != bundle_dir)
        try:
            return fit(prepared, out_bundle, out_run, run, strategy, resume_state, init_model, list(callbacks),
                       trained_by=train_call(corpus, options))
        except Interrupted as stop:
            raise Interrupted(f"{stop}; resume with: {_resume_command(items, name, run)}", stop.exit_code) from None
        finally:
            if out_bundle != bundle_dir:
                shutil.rmtree(out_bundle.parent, ignore_errors=True)
                shutil.rmtree(out_run.parent, ignore_errors=True)


def _start(items: list[str], name: str, run: RunConfig, options: dict[str, Any], bundle_dir: Path) -> tuple:
    """(Prepared, resume state or None, model to start from or None) for a new, resumed or fine-tuned run."""
    if run.resume:
        state = load_resume_state(bundle_dir)
        prepared = prepare(items, run.val_file, resumed_config(state.config, options), state.tokenizer, run.glob)
        _check_same_corpus(state.config, prepared.config, name)
        return prepared, state, None
    if ((bundle_dir / CONFIG_FILE).exists() or has_resume_state(bundle_dir)) and not run.overwrite:
        raise TextgenError(
            f"{bundle_dir} already exists; pass --resume to continue it, --overwrite to replace it, "
            f"or choose another --name"
        )
    config, tokenizer, init_model = config_from_options(**options), None, None
    if run.init_from:
        start = load_bundle(run.init_from)
        config, tokenizer, init_model = fine_tune_config(start.config, options), start.tokenizer, start.model
    return prepare(items, run.val_file, config.replace(name=name), tokenizer, run.glob), None, init_model


def _resume_command(items: list[str], name: str, run: RunConfig) -> str:
    """The command that resumes this run: its folders and the settings it keeps, where not the defaults."""
    command = ["python", "train.py", *items, "--name", name, "--resume"]
    for option in train_options():
        value = getattr(run, option.name, None)
        if option.name in (*kept_settings(run), "checkpoint_dir", "log_dir") and value != option.default:
            command += [option.flag] if option.kind is bool else [option.flag, str(value)]
    return shlex.join(command)


def check_name(name: str) -> None:
    """A run name is one folder name: no separators, no '..', nothing a path would reinterpret."""
    bad = not name or name in (".", "..") or any(c in name for c in "/\\\0") or len(name) > 200
    if bad or Path(name).is_absolute():
        raise TextgenError(f"invalid run name {name!r}: use a plain folder name (--name)")


def _check_same_corpus(saved: Config, current: Config, name: str) -> None:
    def digests(config: Config) -> list[str]:  # the combined digest covers files past the listed ones
        return [config.corpus.get("sha256")] + [s["sha256"] for s in config.corpus.get("sources", [])]

    if digests(saved) != digests(current):
        raise TextgenError(
            f"the corpus differs from the one run {name!r} was trained on; resuming needs the same text "
            f"(to fine-tune on a new corpus, start a new run with --init-from {name}'s bundle)"
        )


def default_name(items: list[str]) -> str:
    """The run name for corpus arguments: the first file's (or folder's) stem, or the corpus name
    (as text: bytes of the file name that are not UTF-8 become replacement characters)."""
    return shown_name(Path(items[0].rstrip("/\\")).stem) or "corpus"


def _claim_run(bundle_dir: Path, run_dir: Path, overwrite: bool) -> None:
    """Create the run's folders; with overwrite, clear the old logs (so curves do not mix) and
    the old resume state (so a crash before the first save cannot resume the old run)."""
    if overwrite:
        shutil.rmtree(run_dir, ignore_errors=True)
        remove_resume_state(bundle_dir)
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
    if config.tokenizer.level == "word":
        print(corpus.coverage_line())
    seq_len = config.train.seq_len
    if val_file:
        train_ids, val_ids = ids, corpus.val
        check_length(train_ids, seq_len, "corpus")
        if len(val_ids) < 2:
            raise TextgenError(f"{val_file}: validation text needs at least two tokens")
    elif config.tokenizer.documents:
        train_ids, val_ids = split_documents(ids, tokenizer.token_to_id(DOC), config.train.val_fraction, seq_len)
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


def fit(prepared: Prepared, bundle_dir: Path, run_dir: Path, run: RunConfig, strategy, resume_state=None,
        init_model=None, extra_callbacks: list | tuple = (), trained_by: str | None = None) -> Path:
    """Build the trainer, build the callbacks, fit; the best bundle by validation loss ends in bundle_dir.

    Args:
        run: the run's settings (mixed precision, what TensorBoard gets).
        strategy: a tf.distribute.Strategy; the trainer is built inside its scope and the
            batch split by rows, one set of streams per replica.
        resume_state: a resume.ResumeState to continue from exactly.
        init_model: a Keras model whose weights start the run (fine-tuning).
        extra_callbacks: more Keras callbacks for model.fit.
        trained_by: the `textgen.train(...)` call, for the model card (kept across resumes).
    """
    session = build_session(prepared, bundle_dir, strategy, resume_state, init_model, run.mixed_precision,
                            trained_by)
    _announce(session, run_dir)
    callbacks = build_callbacks(session, run_dir, run, strategy, extra_callbacks)
    with callbacks.stop:  # Ctrl-C/SIGTERM: finish the step; validation, bundle and resume state follow
        history = session.fit(callbacks.all)
    _report(history, callbacks, session)
    return bundle_dir


@dataclass
class Callbacks:
    """The run's Keras callbacks in the order they run, and those whose outcome `fit` reports."""

    all: list
    stop: cb.StopOnSignal
    budget: cb.Budget
    best: cb.BestBundle


def build_callbacks(session: Session, run_dir: Path, run: RunConfig, strategy,
                    extra: list | tuple = ()) -> Callbacks:
    """Control (signals, budget, schedule, NaN, best bundle, resume state), then TensorBoard,
    then `extra`; on the chief, the progress bar first and the sample printer last."""
    p, t = session.prepared, session.prepared.config.train
    planned = t.epochs * session.layout.steps
    tokens_per_step = session.layout.batch * session.layout.seq_len
    budget = cb.Budget(t.max_steps, t.max_minutes, planned, val_batches=session.val_layout.steps,
                       agree=distribute.worker_mean(strategy))
    bar = monitor.ProgressBar(budget.expected_steps, tokens_per_step, initial=session.first_step)
    stop = cb.StopOnSignal(bar.write)
    best = cb.BestBundle(session.save_bundle, t.patience, session.best_val_loss, session.resumed.get("wait", 0),
                         session.resumed.get("epoch", 0))
    dropout = cb.ShortRunDropout(budget, session.dropout_layers, session.layout.steps, t.dropout_min_epochs,
                                 decided=session.resumed.get("dropout_level"), report=bar.write)
    schedule = cb.CosineSchedule(budget, t.learning_rate, t.final_lr_fraction)
    resume = cb.ResumeCheckpoint(partial(session.save_resume, best, kept_settings(run), dropout),
                                 t.checkpoint_every, report=bar.write)
    control = [stop, budget, schedule, dropout, keras.callbacks.TerminateOnNaN(), best, resume]
    sampler = monitor.LiveSampler(session.current_model, p.tokenizer, p.config)
    tensorboard = monitor.tensorboard_callbacks(
        run_dir, sampler, p.config, monitor.sample_prime(p.tokenizer, p.train_ids), tokens_per_step=tokens_per_step,
        chars_per_token=p.chars_per_token, best_loss=session.best_val_loss, sample_every=run.sample_every,
        histograms=run.histograms)
    found = [*control, *tensorboard, *extra]
    if distribute.is_chief():  # the other workers train silently
        found = [bar, *found, monitor.SamplePrinter(bar.write, sampler, p.bits_scale)]
    return Callbacks(found, stop, budget, best)


def _report(history, callbacks: Callbacks, session: Session) -> None:
    """Refuse a non-finite loss; raise Interrupted after a signal; else say why training stopped."""
    best, stop = callbacks.best, callbacks.stop
    _check_finite(history, best)
    if stop.interrupted:
        raise Interrupted(f"stopped by {stop.signal_name} after step {stop.step:,}; "
                          f"bundle {best.saved_path or 'not saved'}", stop.exit_code)
    for reason in (callbacks.budget.reason, "no improvement for --patience validations" if best.stopped_early else ""):
        if reason:
            print(f"Stopped: {reason}.")
    _summarize(best, session.prepared.bits_scale, session.bundle_dir)


def _announce(session: Session, run_dir: Path) -> None:
    """The header lines: corpus, device, model and where the bundle and logs go."""
    p, layout = session.prepared, session.layout
    cfg = p.config
    print(
        f"Corpus: {cfg.corpus['characters']:,} characters -> {len(p.train_ids):,} training and "
        f"{len(p.val_ids):,} validation tokens ({cfg.tokenizer.level} level, "
        f"vocabulary {cfg.model.vocab_size:,})"
    )
    for line in [*startup_lines(), *filter(None, [session.precision.line])]:
        print(line)
    print(
        f"Model: {cfg.model.layers}x{cfg.model.units} {cfg.model.cell.upper()}, "
        f"batch {layout.batch} x {layout.seq_len} tokens "
        f"(state carried across batches), {layout.steps:,} steps per epoch"
    )
    if session.first_step:
        print(f"Resuming at step {session.first_step:,}")
    print(f"Bundle: {session.bundle_dir}/   TensorBoard: tensorboard --logdir {run_dir.parent}")


def _check_finite(history, best) -> None:
    losses = history.history.get("loss", [])
    if losses and not math.isfinite(losses[-1]):
        kept = (f"the last good bundle is kept ({best.saved_path})" if best.saved_path
                else "no bundle was saved")
        raise TextgenError(f"training stopped: the loss became {losses[-1]} (try a lower "
                           f"--learning-rate or --clip-norm); {kept}")


def _summarize(best, bits_scale: float, bundle_dir: Path) -> None:
    if math.isfinite(best.best):
        print(f"Best validation loss {best.best:.4f} nats/token ({best.best * bits_scale:.3f} bits/char)")
    print(f"Bundle: {bundle_dir} (generate with: textgen generate {bundle_dir})")
