"""A built training session: the carried-state trainer under a tf.distribute strategy,
the plain model bundles hold, the stream layouts, and the saves the callbacks call.

`build_session` seeds, lays out the streams (the global batch split by rows, one set of
streams per replica), builds and compiles the trainer inside the strategy's scope, and
restores a resume state or starts from a bundle's weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from textgen.callbacks import BestBundle, ShortRunDropout
from textgen.bundle import save_bundle
from textgen.card import Clock, write_card
from textgen.config import Config, TextgenError
from textgen.data import StreamLayout, make_stream_dataset
from textgen.device import Precision, choose_precision, cpu_bfloat16
from textgen.model import CarriedStateModel, LeveledDropout, build_model, build_stateful_model, copy_weights
from textgen.resume import restore_variables, save_resume_state


@dataclass
class Prepared:
    """Everything the training loop needs from the text."""

    config: Config
    tokenizer: Any  # tokenizers.Tokenizer
    train_ids: np.ndarray
    val_ids: np.ndarray
    chars_per_token: float  # for bits per character from nats per token

    @property
    def bits_scale(self) -> float:
        """The factor from a loss in nats per token to bits per character."""
        return 1.0 / (math.log(2) * self.chars_per_token)


@dataclass
class Session:
    """A built run: the carried-state trainer, the plain model bundles hold, the stream layouts.

    Its methods are what the callbacks call back into: the current weights, the two saves.
    """

    prepared: Prepared
    trainer: CarriedStateModel  # built inside the strategy's scope
    export: keras.Model  # the plain tokens -> logits view saved in bundles
    layout: StreamLayout  # training streams: the global batch, split by rows across replicas
    val_layout: StreamLayout
    replicas: int
    resumed: dict  # a resume state's counters (epoch, best_val_loss, wait); {} for a new run
    bundle_dir: Path
    first_step: int  # optimizer steps already taken (a resumed run's)
    trained_by: list[str]  # the textgen.train calls so far, for the model card
    clock: Clock  # training time across resumed sessions, for the model card
    precision: Precision  # the compute precision, recorded in the resume state

    @property
    def best_val_loss(self) -> float:
        """The best validation loss so far: a resumed run's, else infinity."""
        best = self.resumed.get("best_val_loss")
        return math.inf if best is None else float(best)

    @property
    def dropout_layers(self) -> list[LeveledDropout]:
        """The trainer's dropout layers (callbacks.ShortRunDropout sets their level)."""
        return [layer for layer in self.trainer.net.layers if isinstance(layer, LeveledDropout)]

    def current_model(self) -> keras.Model:
        """The export model holding the trainer's weights as they are now."""
        copy_weights(self.trainer.net, self.export)
        return self.export

    def save_bundle(self, state: dict) -> Path:
        """Write the bundle and its model card (BestBundle calls it on improvement)."""
        state = {**state, "chars_per_token": self.prepared.chars_per_token}  # lets `info` show bits/char
        path = save_bundle(self.bundle_dir, self.current_model(), self.prepared.tokenizer, self.prepared.config, state)
        write_card(path, self.trained_by, self.clock())
        return path

    def save_resume(self, best: BestBundle, run_settings: dict, dropout: ShortRunDropout) -> Path:
        """Write the resume state with the counters `best` keeps, the run settings a resumed run
        keeps (config.kept_settings) and the dropout choice; ResumeCheckpoint calls it."""
        progress = {**best.progress(), "replicas": self.replicas, "run": run_settings, "dropout_level": dropout.level,
                    "precision": self.precision.policy,  # a resumed run continues in it (device.choose_precision)
                    "trained_by": self.trained_by, "train_seconds": self.clock()}
        return save_resume_state(self.bundle_dir, self.trainer, self.prepared.tokenizer, self.prepared.config,
                                 progress)

    def fit(self, callbacks: list):
        """model.fit over the carried-state streams from `first_step` on; Keras' History."""
        epochs, epoch = self.prepared.config.train.epochs, self.resumed.get("epoch", 0)
        return self.trainer.fit(
            _by_rows(make_stream_dataset(self.prepared.train_ids, self.layout, first_step=self.first_step)),
            steps_per_epoch=self.layout.steps, initial_epoch=epoch, epochs=max(epochs, epoch + 1),
            validation_data=_by_rows(make_stream_dataset(self.prepared.val_ids, self.val_layout, repeat=False)),
            callbacks=callbacks, shuffle=False, verbose=0,  # order matters: state is carried across batches
        )


def build_session(prepared: Prepared, bundle_dir: Path, strategy, resume_state=None, init_model=None,
                  mixed_precision: bool = False, trained_by: str | None = None) -> Session:
    """Seed, lay out the streams, build and compile the trainer, then restore or initialise its weights.

    `trained_by` is this run's `textgen.train(...)` call; the model card lists it after those
    of the sessions a resume state continues. `mixed_precision` is the run's request; the
    precision used (device.choose_precision) goes into the resume state.
    """
    cfg = prepared.config
    replicas = strategy.num_replicas_in_sync
    keras.utils.set_random_seed(cfg.train.seed)
    layout = _replica_layout(len(prepared.train_ids), cfg.train.batch_size, cfg.train.seq_len, replicas)
    val_layout = _replica_layout(len(prepared.val_ids), layout.batch, layout.seq_len, replicas)
    precision = choose_precision(mixed_precision, _device_kind(), cpu_bfloat16(), resumed=resume_state is not None,
                                 saved=resume_state.progress.get("precision") if resume_state else None,
                                 cell=cfg.model.cell)
    with strategy.scope():
        trainer = _build_trainer(cfg, layout.batch // replicas, val_layout.batch // replicas, layout.seq_len,
                                 precision)
        resumed = _restore(trainer, resume_state, replicas) if resume_state else {}
    if init_model is not None:
        copy_weights(init_model, trainer.net)
    first_step = int(trainer.optimizer.iterations.numpy())
    calls = [*resumed.get("trained_by", []), *([trained_by] if trained_by else [])]
    return Session(prepared, trainer, build_model(cfg.model), layout, val_layout, replicas, resumed, bundle_dir,
                   first_step, calls, Clock(resumed.get("train_seconds", 0)), precision)


def _build_trainer(cfg: Config, batch: int, val_batch: int, seq_len: int, precision: Precision) -> CarriedStateModel:
    """The compiled carried-state trainer; `batch` and `val_batch` are one replica's streams."""
    net = build_stateful_model(cfg.model, dropout=True, dtype=precision.layer_dtype,
                               matmul_dtype=precision.matmul_dtype)
    trainer = CarriedStateModel(net, cfg.model, batch, val_batch)
    tokens = np.zeros((batch, seq_len), np.int32)  # MultiWorkerFix builds from one replica's batch
    trainer.build_batch = ((tokens, np.zeros(batch, bool)), tokens)
    optimizer = keras.optimizers.Adam(cfg.train.learning_rate, global_clipnorm=cfg.train.clip_norm)
    if precision.policy == "mixed_float16":  # float16 gradients underflow without loss scaling
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    trainer.compile(
        optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,  # XLA makes the LSTM loop slower on CPU (measured: bench/train_speed.py)
    )
    return trainer


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

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def _device_kind() -> str:
    return "GPU" if tf.config.list_logical_devices("GPU") else "CPU"


def _restore(trainer, state, replicas: int = 1) -> dict:
    """Load a resume state's variables into a freshly built trainer and its optimizer."""
    saved = state.progress.get("replicas", 1)
    if saved != replicas:
        raise TextgenError(f"this run was trained on {saved} replicas and must resume on as many, not {replicas}")
    trainer.optimizer.build(trainer.trainable_variables)
    restore_variables(trainer.state_variables(), state.arrays, "model")
    restore_variables(trainer.optimizer.variables, state.arrays, "optimizer")
    return state.progress
