import json
import shutil

import numpy as np
import pytest

from textgen.checkpoint import BundleError, load_bundle


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(tiny_bundle, target)
    return target


def test_bundle_holds_config_tokenizer_and_weights(tiny_bundle):
    names = {p.name for p in tiny_bundle.iterdir()}
    assert {"config.json", "tokenizer.json", "model.weights.h5"} <= names
    assert not [n for n in names if n.startswith(".tmp")]  # no temporary files left behind
    document = json.loads((tiny_bundle / "config.json").read_text())
    assert document["format_version"] == 1
    assert {"textgen", "keras", "tensorflow"} <= set(document["versions"])
    assert document["config"]["corpus"]["sources"][0]["sha256"]
    assert document["state"]["step"] == 40


def test_save_then_load_gives_identical_predictions(tiny_bundle, tiny_generator):
    again = load_bundle(tiny_bundle)
    ids = np.arange(20, dtype=np.int32)[None, :] % again.config.model.vocab_size
    np.testing.assert_array_equal(np.asarray(again.model(ids)), np.asarray(tiny_generator.model(ids)))


def test_folder_without_config_is_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a textgen bundle"):
        load_bundle(tmp_path)


def test_edited_weights_are_refused_by_hash(bundle_copy):
    with open(bundle_copy / "model.weights.h5", "r+b") as f:
        f.seek(-100, 2)
        f.write(b"\x00" * 10)
    with pytest.raises(BundleError, match="do not match"):
        load_bundle(bundle_copy)


def test_unknown_config_keys_are_refused(bundle_copy):
    path = bundle_copy / "config.json"
    document = json.loads(path.read_text())
    document["config"]["model"]["layer_class"] = "Lambda"
    path.write_text(json.dumps(document))
    with pytest.raises(BundleError, match="layer_class"):
        load_bundle(bundle_copy)


def test_config_disagreeing_with_weights_is_refused(bundle_copy):
    path = bundle_copy / "config.json"
    document = json.loads(path.read_text())
    document["config"]["model"]["units"] = 32
    path.write_text(json.dumps(document))
    with pytest.raises(BundleError, match="weights do not fit"):
        load_bundle(bundle_copy)
