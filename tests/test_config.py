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
