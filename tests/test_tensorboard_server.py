"""A real `tensorboard` process over a tiny run's logs, read through its HTTP data API."""

import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.conftest import Child

DEADLINE_S = 120


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def wait_for(fetch, ready, deadline):
    """Poll fetch() until ready(result) or the deadline passes; return the last result."""
    result = None
    while time.monotonic() < deadline:
        try:
            result = fetch()
            if ready(result):
                return result
        except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"TensorBoard did not serve the data in time; last answer: {result!r}")


@pytest.mark.slow
def test_tensorboard_serves_the_scalars_and_text_samples(tiny_bundle, tmp_path):
    logdir = tiny_bundle.parent.parent / "runs"
    # The `tensorboard` program, run by module from this interpreter so it is the installed one.
    command = [sys.executable, "-m", "tensorboard.main"]
    stderr = open(tmp_path / "tensorboard.err", "w+")
    deadline = time.monotonic() + DEADLINE_S
    with stderr, Child("--logdir", logdir, "--host", "127.0.0.1", "--port", "0", "--load_fast=false",
                       "--reload_interval", "1", command=command, stderr=stderr):
        def url_line():
            stderr.seek(0)
            found = re.search(r"http://127\.0\.0\.1:\d+/", stderr.read())
            return found.group(0) if found else None

        base = wait_for(url_line, bool, deadline)  # "TensorBoard 2.x at http://127.0.0.1:PORT/ ..."
        run = "tiny"
        scalars = wait_for(lambda: get_json(base + "data/plugin/scalars/tags"),
                           lambda r: f"{run}/validation" in r and f"{run}/train" in r, deadline)
        assert {"loss", "bits_per_char", "perplexity", "learning_rate", "tokens_per_second"} <= set(scalars[f"{run}/train"])
        assert {"loss", "bits_per_char", "perplexity", "best_bits_per_char"} <= set(scalars[f"{run}/validation"])
        query = urllib.parse.urlencode({"run": f"{run}/train", "tag": "loss"})
        points = get_json(base + "data/plugin/scalars/scalars?" + query)
        assert [step for _, step, _ in points] == [10, 20, 30, 40]

        text_tags = wait_for(lambda: get_json(base + "data/plugin/text/tags"),
                             lambda r: f"{run}/samples" in r, deadline)
        assert sorted(text_tags[f"{run}/samples"]) == ["temperature_0.5", "temperature_0.8", "temperature_1"]
        query = urllib.parse.urlencode({"run": f"{run}/samples", "tag": "temperature_0.8"})
        samples = get_json(base + "data/plugin/text/text?" + query)
        assert samples and "<pre><code>" in samples[-1]["text"]  # the fenced block renders as code

        plugins = get_json(base + "data/plugins_listing")
        assert all(plugins[name]["enabled"] for name in ("scalars", "text", "histograms", "hparams"))
