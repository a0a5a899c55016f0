import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import OLD_BUNDLE, with_added_fields
from textgen.bundle import BundleError, load_bundle, save_bundle
from textgen.corpus_cache import sha256_file


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


def _rewrite(bundle, edit_config=None, **replace_files):
    """Edit a bundle's files, then update config.json's hashes so only the edit is wrong."""
    for name, data in replace_files.items():
        (bundle / name.replace("_", ".", 1).replace("_", ".")).write_bytes(data)
    path = bundle / "config.json"
    document = json.loads(path.read_text())
    if edit_config:
        edit_config(document)
    for name in ("model.weights.h5", "tokenizer.json"):
        document["files"][name] = sha256_file(bundle / name)
    path.write_text(json.dumps(document))


def test_truncated_weights_are_refused_even_with_a_matching_hash(bundle_copy):
    data = (bundle_copy / "model.weights.h5").read_bytes()
    _rewrite(bundle_copy, model_weights_h5=data[: len(data) // 2])
    with pytest.raises(BundleError, match="not a readable weights file"):
        load_bundle(bundle_copy)


def test_weights_for_fewer_layers_are_refused_not_half_loaded(bundle_copy):
    # Keras alone would load a 2-layer file into a 1-layer model without a word.
    _rewrite(bundle_copy, lambda d: d["config"]["model"].update(layers=1))
    with pytest.raises(BundleError, match="weights do not fit config"):
        load_bundle(bundle_copy)


def test_weights_with_an_extra_variable_are_refused(bundle_copy):
    import h5py

    with h5py.File(bundle_copy / "model.weights.h5", "a") as f:
        f["layers/lambda/vars/0"] = np.zeros(0, np.float32)  # same number count, one more name
    _rewrite(bundle_copy)
    with pytest.raises(BundleError, match="layers/lambda"):
        load_bundle(bundle_copy)


def test_weights_linking_to_another_file_are_refused(bundle_copy, tmp_path):
    import h5py

    with h5py.File(bundle_copy / "model.weights.h5", "a") as f:
        f["layers/extra"] = h5py.ExternalLink(str(tmp_path / "elsewhere.h5"), "/data")
    _rewrite(bundle_copy)
    with pytest.raises(BundleError, match="links to other data"):
        load_bundle(bundle_copy)


def test_non_finite_weights_are_refused(bundle_copy):
    import h5py

    with h5py.File(bundle_copy / "model.weights.h5", "a") as f:
        name = next(n for n in ("layers/dense/vars/1", "layers/logits/vars/1") if n in f)
        f[name][0] = np.nan
    _rewrite(bundle_copy)
    with pytest.raises(BundleError, match="NaN or infinite"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("edit, pattern", [
    (lambda d: d["config"]["model"].update(layer_type="GRU"), "model.layer_type"),
    (lambda d: d["config"].update(layer={"class_name": "Lambda"}), "unknown config key 'layer'"),
    (lambda d: d.update(custom_objects={}), "unknown keys"),
    (lambda d: d.update(format_version=2), "format_version 2"),
    (lambda d: d["config"]["model"].update(units=10**9), "units"),
    (lambda d: d["config"]["model"].update(units=True), "wrong type"),
    (lambda d: d["config"]["model"].update(dropout=float("nan")), "dropout"),
    (lambda d: d.update(state=[1, 2]), "state"),
])
def test_tampered_config_is_refused(bundle_copy, edit, pattern):
    _rewrite(bundle_copy, edit)
    with pytest.raises(BundleError, match=pattern):
        load_bundle(bundle_copy)


def test_tokenizer_disagreeing_with_vocab_size_is_refused(bundle_copy):
    from textgen.tokenizer import build_tokenizer

    other = build_tokenizer(["abc"], "char")
    other.save(str(bundle_copy / "tokenizer.json"))
    _rewrite(bundle_copy)
    with pytest.raises(BundleError, match="tokenizer has 5 tokens but config says"):  # [UNK], [DOC], a, b, c
        load_bundle(bundle_copy)


def test_deeply_nested_or_huge_config_json_is_refused(bundle_copy):
    (bundle_copy / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BundleError, match="unreadable"):
        load_bundle(bundle_copy)
    (bundle_copy / "config.json").write_text(" " * (2 << 20))
    with pytest.raises(BundleError, match="too large"):
        load_bundle(bundle_copy)


POINTS = ["files-written", "previous-kept", "weights-renamed", "tokenizer-renamed", "config-renamed"]


@pytest.mark.parametrize("point", POINTS)
def test_full_disk_at_any_point_of_a_save_keeps_the_previous_bundle(bundle_copy, monkeypatch, point):
    before = load_bundle(bundle_copy)
    changed = [w + 1.0 for w in before.model.get_weights()]
    before.model.set_weights(changed)
    monkeypatch.setenv("TEXTGEN_FAIL_AT", point)
    if point == "config-renamed":  # the new bundle is complete by then: the save stands
        save_bundle(bundle_copy, before.model, before.tokenizer, before.config, {"step": 99})
    else:
        with pytest.raises(BundleError, match="could not save the bundle.*previous bundle is kept"):
            save_bundle(bundle_copy, before.model, before.tokenizer, before.config, {"step": 99})
    after = load_bundle(bundle_copy)
    expected_step = 99 if point == "config-renamed" else before.state["step"]
    assert after.state["step"] == expected_step
    ids = np.arange(10, dtype=np.int32)[None, :] % before.config.model.vocab_size
    reference = before.model if point == "config-renamed" else load_bundle_weights_of(before)
    np.testing.assert_allclose(np.asarray(after.model(ids)), np.asarray(reference(ids)), atol=1e-6)
    assert not list(bundle_copy.glob(".tmp-*"))


def load_bundle_weights_of(bundle):
    """A model with the weights `bundle` had before they were changed in the test."""
    from textgen.model import build_model

    model = build_model(bundle.config.model)
    model.set_weights([w - 1.0 for w in bundle.model.get_weights()])
    return model


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill_during_a_save_leaves_the_previous_bundle_loadable(tmp_path):
    from tests.conftest import TINY_FLAGS, Child, make_text

    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(), encoding="utf-8")  # 41 steps per epoch: a save after each
    with Child("train", corpus, "--checkpoint-dir", tmp_path / "ck", "--log-dir", tmp_path / "runs",
               "--max-steps", 200, *TINY_FLAGS, env={"TEXTGEN_CRASH_AT": "weights-renamed:2"}) as child:
        code, _, err = child.finish()
    assert code == 137, err[-2000:]  # died inside the second save, like kill -9
    bundle_dir = tmp_path / "ck" / "c"
    document = json.loads((bundle_dir / "config.json").read_text())
    assert sha256_file(bundle_dir / "model.weights.h5") != document["files"]["model.weights.h5"]  # torn
    bundle = load_bundle(bundle_dir)  # ...yet the first save's bundle loads whole
    assert bundle.state == document["state"] and bundle.state["epoch"] == 1


def test_a_bundle_saved_by_earlier_code_loads_and_saves_back_identically(tmp_path):
    from textgen.bundle import bundle_info

    old = shutil.copytree(OLD_BUNDLE, tmp_path / "old")
    before = json.loads((old / "config.json").read_text())
    bundle = load_bundle(old)
    before = with_added_fields(before)
    assert bundle.state == before["state"] and bundle.config.to_dict() == before["config"]
    assert bundle_info(old)["parameters"] == bundle.model.count_params() == 488
    save_bundle(old, bundle.model, bundle.tokenizer, bundle.config, bundle.state)
    after = json.loads((old / "config.json").read_text())
    assert set(after["versions"]) == set(before["versions"])
    assert {**after, "versions": None} == {**before, "versions": None}  # same document, same file hashes


def test_info_reads_config_json_alone_and_imports_no_tensorflow(tmp_path):
    import os
    import subprocess
    import sys

    old = shutil.copytree(OLD_BUNDLE, tmp_path / "old")
    (old / "model.weights.h5").write_bytes(b"not HDF5")  # info must not even look at the weights
    (old / "tokenizer.json").unlink()
    script = ("import json, sys; from textgen.cli import main; code = main(['info', sys.argv[1], '--json']); "
              "print(json.dumps([code, [m for m in ('tensorflow', 'keras', 'h5py') if m in sys.modules]]))")
    done = subprocess.run([sys.executable, "-c", script, str(old)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    *info, last = done.stdout.splitlines()
    assert json.loads(last) == [0, []], done.stderr[-2000:]
    assert json.loads("\n".join(info))["parameters"] == 488  # what Keras counts (test above)


def _with_tokenizer(bundle, edit):
    """Rewrite a bundle's tokenizer.json through `edit(spec)` and record its new sha256."""
    import hashlib
    import json

    spec = json.loads((bundle / "tokenizer.json").read_text(encoding="utf-8"))
    edit(spec)
    data = json.dumps(spec).encode()
    (bundle / "tokenizer.json").write_bytes(data)
    config = json.loads((bundle / "config.json").read_text(encoding="utf-8"))
    config["files"]["tokenizer.json"] = hashlib.sha256(data).hexdigest()
    (bundle / "config.json").write_text(json.dumps(config), encoding="utf-8")


@pytest.mark.parametrize("part, value", [
    ("normalizer", {"type": "Sequence", "normalizers": [
        {"type": "Replace", "pattern": {"Regex": "^"}, "content": " "},
        {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True, "strip_accents": None,
         "lowercase": True}]}),
    ("pre_tokenizer", {"type": "Split", "pattern": {"Regex": "(a+)+$"}, "behavior": "Isolated", "invert": False}),
    ("decoder", {"type": "Replace", "pattern": {"String": "a"}, "content": "b"}),
    ("post_processor", {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}),
])
def test_tokenizer_parts_textgen_does_not_write_are_refused_on_load(bundle_copy, capsys, part, value):
    from textgen.cli import main

    _with_tokenizer(bundle_copy, lambda spec: spec.__setitem__(part, value))
    with pytest.raises(BundleError, match="not a textgen tokenizer"):
        load_bundle(bundle_copy)
    assert main(["generate", str(bundle_copy), "--length", "5"]) == 2  # one line, never a panic's traceback
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a textgen tokenizer" in err[0]


def test_a_lowercasing_word_tokenizer_is_accepted(tiny_bundle):
    from textgen.bundle import check_tokenizer_parts

    spec = {"normalizer": {"type": "Lowercase"}, "model": {"type": "WordLevel"}, "decoder": {"type": "Fuse"},
            "pre_tokenizer": {"type": "Split", "pattern": {"Regex": r"\w+|[^\w\s]|\s+"}}, "post_processor": None}
    check_tokenizer_parts(spec)


def test_encoding_never_reserialises_the_tokenizer(tiny_bundle):
    from textgen.generate import load

    generator = load(tiny_bundle)

    def refuse():
        raise AssertionError("to_str() called after load")

    generator.tokenizer.to_str = refuse  # an instance attribute shadows the method
    assert generator.encode_prime("The cat").shape == (7,)
    assert generator.generate("The", length=5, seed=1).startswith("The")
