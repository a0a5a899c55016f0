"""The decoding-control schema: one set of limits and defaults for the API, the CLI and the server."""

import argparse
import dataclasses

import pytest

from textgen.cli import build_parser
from textgen.config import TextgenError
from textgen.controls import GENERATE_LENGTH, RULES, Controls, documented


def test_defaults_are_the_documented_ones():
    c = Controls.of()
    assert (c.length, c.temperature, c.top_k, c.top_p, c.repetition_penalty, c.stop, c.max_chars, c.seed) == \
        (GENERATE_LENGTH, 1.0, None, None, None, (), None, None)
    assert GENERATE_LENGTH == 200


@pytest.mark.parametrize("options", [
    dict(top_k=0), dict(top_k=None), dict(top_k=10**6), dict(seed=0), dict(seed=2**63 - 1), dict(temperature=0),
    dict(temperature=3), dict(top_p=1), dict(top_p=1e-9), dict(repetition_penalty=1e-3), dict(length=1),
    dict(length=None, max_chars=1), dict(length=None, stop="\n"), dict(stop=["a", "b"]), dict(max_chars=10**9),
])
def test_values_inside_the_limits_are_accepted(options):
    Controls.of(**options)


@pytest.mark.parametrize("options, message", [
    (dict(top_k=-1), "top_k must be an integer of at least 0 or None, not -1"),
    (dict(seed=2**63), f"seed must be an integer in 0..{2**63 - 1} or None, not {2**63}"),
    (dict(seed=-1), "seed must be"),
    (dict(length=0), "length must be an integer of at least 1 or None, not 0"),
    (dict(length=2.0), "length must be an integer"),
    (dict(temperature=-0.1), "temperature must be a number of at least 0, not -0.1"),
    (dict(temperature=float("inf")), "temperature must be"),
    (dict(temperature=None), "temperature must be a number of at least 0, not None"),
    (dict(temperature=True), "temperature must be"),
    (dict(top_p=0), "top_p must be a number in (0, 1] or None, not 0"),
    (dict(top_p=1.01), "top_p must be"),
    (dict(repetition_penalty=0), "repetition_penalty must be a number above 0 or None, not 0"),
    (dict(repetition_penalty=float("nan")), "repetition_penalty must be"),
    (dict(max_chars=0), "max_chars must be"),
    (dict(stop=["a", 1]), "stop must be a string or a list of strings"),
    (dict(stop=3), "stop must be a string or a list of strings"),
    (dict(seed="1"), "seed must be"),
    (dict(length=None), "without a length, give max_chars or a stop string"),
])
def test_values_outside_the_limits_get_one_line_naming_the_control(options, message):
    with pytest.raises(TextgenError) as err:
        Controls.of(**options)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_unknown_names_are_refused_with_the_list_of_controls():
    with pytest.raises(TextgenError, match=r"unknown control 'temprature' \(the controls are length, .*seed\)"):
        Controls.of(temprature=0.5)


def test_a_stop_string_becomes_a_tuple_and_every_controls_is_valid():
    assert Controls.of(stop="\n").stop == ("\n",) and Controls.of(stop=None).stop == ()
    with pytest.raises(TextgenError):
        Controls(top_k=-1)  # the constructor checks too, not only `of`
    with pytest.raises(dataclasses.FrozenInstanceError):
        Controls().seed = 1


def _generate_flags() -> dict[str, argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["generate"]
    return {action.dest: action for action in sub._actions}


def test_every_control_is_a_generate_flag_with_the_schemas_help():
    flags = _generate_flags()
    for name, rule in RULES.items():
        action = flags[name]
        assert action.option_strings == ["--" + name.replace("_", "-")] and action.help.startswith(rule.help)
        assert action.default is argparse.SUPPRESS  # a flag not given leaves the schema's default


@pytest.mark.parametrize("flag, text, value", [
    ("top_k", "0", 0), ("seed", str(2**63 - 1), 2**63 - 1), ("temperature", "0", 0.0), ("top_p", "1", 1.0),
])
def test_generate_flags_take_what_the_schema_takes(flag, text, value):
    assert _generate_flags()[flag].type(text) == value


@pytest.mark.parametrize("flag, text, message", [
    ("top_k", "-1", "must be an integer of at least 0, not -1"),
    ("seed", str(2**63), f"must be an integer in 0..{2**63 - 1}, not {2**63}"),
    ("temperature", "nan", "must be a number of at least 0, not nan"),
    ("top_p", "0", "must be a number in (0, 1], not 0"),
    ("repetition_penalty", "inf", "must be a number above 0, not inf"),
    ("length", "0", "must be an integer of at least 1, not 0"),
])
def test_generate_flags_refuse_what_the_schema_refuses(flag, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message.replace("(", r"\(").replace("]", r"\]")):
        _generate_flags()[flag].type(text)


def test_the_documented_decorator_lists_every_control_with_its_default():
    @documented
    def f():
        """Generate."""

    for name, rule in RULES.items():
        assert f"{name} (default {rule.default!r}): {rule.help}" in f.__doc__
