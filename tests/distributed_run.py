"""One tiny distributed training run in its own process, for tests/test_distribute.py.

    python tests/distributed_run.py STRATEGY OUT_DIR [REPLICAS]

Trains textgen's network (wrapped with MultiWorkerFix) with model.fit for a few
steps under the strategy, then saves a textgen bundle to distribute.output_dir: on the
chief that is OUT_DIR/bundle, elsewhere a worker-temporary folder, deleted afterwards.
Writes OUT_DIR/losses-<task>.json with the per-step loss curve.
"""

import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from textgen import distribute  # noqa: E402

strategy_name, out = sys.argv[1], Path(sys.argv[2])
if strategy_name == "mirrored":
    distribute.split_cpu(int(sys.argv[3]))  # before TensorFlow starts

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from textgen.checkpoint import save_bundle  # noqa: E402
from textgen.config import config_from_options  # noqa: E402
from textgen.model import build_model  # noqa: E402
from textgen.tokenizer import build_tokenizer, encode  # noqa: E402

GLOBAL_BATCH, SEQ, STEPS = 8, 16, 6
strategy = distribute.make_strategy(strategy_name)  # before any TensorFlow op runs


class Trainer(distribute.MultiWorkerFix, keras.Model):
    def __init__(self, net, **kwargs):
        super().__init__(**kwargs)
        self.net = net

    def call(self, tokens, training=False):
        return self.net(tokens, training=training)


text = "the cat sat on the mat and the dog ran to it.\n" * 60
tokenizer = build_tokenizer([text], "char")
ids = encode(tokenizer, text)
rows = np.lib.stride_tricks.sliding_window_view(ids, SEQ + 1)[::SEQ][: GLOBAL_BATCH * STEPS]
data = tf.data.Dataset.from_tensor_slices((rows[:, :-1], rows[:, 1:])).batch(GLOBAL_BATCH)
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
data = data.with_options(options)
config = config_from_options(units=16, layers=1, embedding_dim=8, seq_len=SEQ, dropout=0.0)
config = config.replace(model=config.model.__class__(**{**config.model.__dict__, "vocab_size": tokenizer.get_vocab_size()}))

replicas = strategy.num_replicas_in_sync
with strategy.scope():
    net = build_model(config.model)
    rng = np.random.default_rng(0)  # identical start under every strategy
    net.set_weights([rng.normal(0, 0.2, w.shape).astype("float32") for w in net.get_weights()])
    model = Trainer(net)
    model.build_batch = (np.zeros((GLOBAL_BATCH // replicas, SEQ), np.int32),) * 2
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

keras.config.disable_traceback_filtering()
losses = []
record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: losses.append(float(logs["loss"])))
model.fit(data, epochs=1, verbose=0, callbacks=[record])

task = distribute.cluster_task()
target = distribute.output_dir(out / "bundle", task)
save_bundle(target, net, tokenizer, config, {"step": len(losses)})  # every worker runs it
if not distribute.is_chief(task):
    shutil.rmtree(target.parent)
name = "local" if task is None else f"{task[0]}{task[1]}"
(out / f"losses-{name}.json").write_text(json.dumps({"losses": losses, "replicas": replicas}))
