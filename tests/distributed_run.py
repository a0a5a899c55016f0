"""One tiny `textgen.train` run in its own process, for tests/test_distribute.py.

    python tests/distributed_run.py STRATEGY CORPUS OUT_DIR [REPLICAS]

Logical CPU devices (REPLICAS of them, for "mirrored") must be configured before
TensorFlow starts, hence a process of its own. Trains the tiny model for 8 steps
with carried state, then resumes it for 2 more, and writes OUT_DIR/losses.json: the
per-step loss curves of both.
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from textgen import distribute  # noqa: E402

strategy, corpus, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
if len(sys.argv) > 4:
    distribute.split_cpu(int(sys.argv[4]))  # before TensorFlow starts

import keras  # noqa: E402

import textgen  # noqa: E402
from tests.conftest import TINY  # noqa: E402
curves = {"first": [], "resumed": []}
for part, steps in (("first", 8), ("resumed", 10)):
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: curves[part].append(float(logs["loss"])))
    textgen.train(corpus, checkpoint_dir=out / "ck", log_dir=out / "runs", strategy=strategy, callbacks=[record],
                  max_steps=steps, learning_rate=0.02, resume=part == "resumed", **TINY)
(out / "losses.json").write_text(json.dumps(curves))
