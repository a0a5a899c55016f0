import pytest

from textgen.config import Config, ConfigError, TextgenError, config_from_options


def test_config_round_trips_through_plain_dicts():
    config = config_from_options(units=32, level="word", max_minutes=1.5).replace(name="x")
    assert Config.from_dict(config.to_dict()) == config


def test_unknown_top_level_and_section_keys_are_refused():
    data = Config().to_dict()
    with pytest.raises(ConfigError, match="unknown config key 'extra'"):
        Config.from_dict({**data, "extra": 1})
    data["model"]["layer_type"] = "Lambda"
    with pytest.raises(ConfigError, match="model.layer_type"):
        Config.from_dict(data)


def test_wrong_types_and_ranges_are_refused():
    data = Config().to_dict()
    data["model"]["units"] = "256"
    with pytest.raises(ConfigError, match="wrong type"):
        Config.from_dict(data)
    with pytest.raises(ConfigError, match="dropout"):
        config_from_options(dropout=1.0)
    with pytest.raises(ConfigError, match="level"):
        config_from_options(level="byte")
    data = Config().to_dict()
    data["tokenizer"]["lowercase"] = "yes"
    with pytest.raises(ConfigError, match="tokenizer.lowercase has the wrong type"):
        Config.from_dict(data)


@pytest.mark.parametrize("key, today, before, bad", [
    ("dropout_min_epochs", 6.0, 0.0, -1.0),  # dropout ran in every run
    ("final_lr_fraction", 0.0, 0.1, 1.5),  # the rate decayed to 0.1x
])
def test_a_config_from_before_a_train_field_keeps_what_it_meant(key, today, before, bad):
    data = Config().to_dict()
    assert data["train"][key] == today
    del data["train"][key]
    assert getattr(Config.from_dict(data).train, key) == before
    with pytest.raises(ConfigError, match=key):
        config_from_options(**{key: bad})


def test_unknown_option_is_a_user_error():
    with pytest.raises(TextgenError, match="unknown option 'colour'"):
        config_from_options(colour="red")


def test_vocab_size_option_caps_the_tokenizer_not_the_model():
    config = config_from_options(vocab_size=500)
    assert config.tokenizer.vocab_size == 500 and config.model.vocab_size == 0


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_parameter_count_per_cell_equals_keras_count(cell):
    from textgen.model import build_model

    model = config_from_options(cell=cell, units=12, layers=3, embedding_dim=5).model
    model = type(model)(**{**model.__dict__, "vocab_size": 17})
    assert model.parameter_count() == build_model(model).count_params()


def test_a_config_without_a_cell_loads_as_lstm_and_unknown_cells_are_refused():
    data = Config().to_dict()
    del data["model"]["cell"]  # bundles written before the choice of cell
    assert Config.from_dict(data).model.cell == "lstm"
    with pytest.raises(ConfigError, match="cell must be one of lstm, gru, rnn"):
        config_from_options(cell="transformer")


def test_a_resumed_run_may_change_only_its_budget():
    from textgen.config import resumed_config, train_options

    assert {o.name for o in train_options() if o.resumable} == {
        "epochs", "max_steps", "max_minutes", "patience", "checkpoint_every",  # the budget
        "name", "overwrite", "resume", "init_from", "checkpoint_dir", "log_dir", "sample_every", "histograms"}
    saved = config_from_options(units=32, max_steps=10).replace(name="run")
    longer = resumed_config(saved, {"max_steps": 50, "units": 32, "patience": 9})  # units as saved: fine
    assert longer == config_from_options(units=32, max_steps=50, patience=9).replace(name="run")
    with pytest.raises(ConfigError, match="--units 64 differs from the run's 32"):
        resumed_config(saved, {"units": 64})


def test_a_resumed_run_keeps_the_settings_that_shape_its_data_and_training():
    from textgen.config import RunConfig, kept_settings, resumed_run

    assert set(kept_settings(RunConfig())) == {"glob", "val_file", "strategy", "mixed_precision"}
    saved = {"glob": "*.md", "val_file": "v.txt", "strategy": "default", "mixed_precision": True}
    resumed = resumed_run(RunConfig(resume=True, log_dir="elsewhere"), saved, {"resume", "log_dir"})
    assert kept_settings(resumed) == saved and resumed.log_dir == "elsewhere"  # kept, the rest may change
    with pytest.raises(ConfigError, match="--val-file w.txt differs from the run's v.txt"):
        resumed_run(RunConfig(val_file="w.txt"), saved, {"val_file"})
    # a resume state saved before these were kept means the defaults
    assert resumed_run(RunConfig(), {}, set()) == RunConfig()
    with pytest.raises(ConfigError, match="--glob \\*.md differs from the run's \\*.txt"):
        resumed_run(RunConfig(glob="*.md"), {}, {"glob"})
    with pytest.raises(ConfigError, match="wrong type"):
        resumed_run(RunConfig(), {"mixed_precision": "yes"}, set())


def test_fine_tuning_keeps_the_bundles_model_and_tokenizer():
    from textgen.config import fine_tune_config

    base = config_from_options(units=32, level="word").replace(name="old", corpus={"sha256": "x"})
    tuned = fine_tune_config(base, {"learning_rate": 1e-3, "units": 32})
    assert tuned.model == base.model and tuned.tokenizer == base.tokenizer
    assert tuned.train.learning_rate == 1e-3 and tuned.name == "" and tuned.corpus == {}
    with pytest.raises(ConfigError, match=r"cannot change \['level', 'units'\]"):
        fine_tune_config(base, {"units": 64, "level": "char"})


def test_train_keywords_split_into_run_settings_and_config_options():
    from textgen.config import RunConfig, split_options

    run, options = split_options({"strategy": "mirrored", "sample_every": 5, "units": 8, "name": "x"})
    assert run == RunConfig(strategy="mirrored", sample_every=5, name="x") and options == {"units": 8}
    assert split_options({})[0] == RunConfig()
    with pytest.raises(ConfigError, match="sample_every must be at least 1, not 0"):
        split_options({"sample_every": 0})
