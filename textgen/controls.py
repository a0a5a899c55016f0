"""Every decoding control, defined once: its name, default, limits and help.

`Controls` is the one schema behind the three ways to generate: the keywords of
`TextGenerator.generate/sample/stream`, the flags of `textgen generate` (built from
`RULES`) and the JSON body of `textgen serve`. A control added here reaches all
three; the server only adds its own caps on top. Each field's `Rule` (its type from
the annotation, its limits from the field) is what every entry point checks values by.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from textgen.config import fits_type, require
from textgen.sampler import DEFAULT_PENALTY_WINDOW

GENERATE_LENGTH = 200  # tokens generated when no length (and no character cap) is given


def _control(default: Any, help: str, low: float | None = None, high: float | None = None, *,
             above: bool = False, none: str = "", group: str = "sampling", metavar: str = "N"):
    """A Controls field carrying its limits (low..high; `above`: low excluded) and its help."""
    return field(default=default, metadata=dict(help=help, low=low, high=high, above=above, none=none,
                                                group=group, metavar=metavar))


@dataclass(frozen=True)
class Controls:
    """Every decoding control, checked when made: a Controls is always valid.

    Make one from options with `Controls.of(**options)`, which refuses unknown names.
    """

    length: int | None = _control(GENERATE_LENGTH, "tokens to generate", 1, none="until max_chars or a stop string",
                                  group="length")
    max_chars: int | None = _control(None, "end each sample after this many characters", 1, none="no cap",
                                     group="length")
    stop: tuple[str, ...] = _control((), "end a sample where this string first appears (not included)",
                                     group="length", metavar="STRING")
    temperature: float = _control(1.0, "randomness; 0 = always the most likely token", 0, metavar="T")
    top_k: int | None = _control(None, "sample among the K most likely tokens (0 = off)", 0, none="off",
                                 metavar="K")
    top_p: float | None = _control(None, "sample among the most likely tokens whose probabilities add up to P "
                                   "(nucleus)", 0, 1, above=True, none="off", metavar="P")
    repetition_penalty: float | None = _control(
        None, f"> 1 discourages tokens seen in the last {DEFAULT_PENALTY_WINDOW} (CTRL's penalty); 1 = off",
        0, above=True, none="off", metavar="R")
    # NumPy seeds a stream from any non-negative int; 2^63-1 is the most an int64 client can send.
    seed: int | None = _control(None, "same seed, same text", 0, 2**63 - 1, none="a fresh random seed")

    def __post_init__(self):
        stops = self.stop  # a string, an iterable of them, or None; a bad value is refused below
        if stops is None or isinstance(stops, str):
            stops = () if stops is None else (stops,)
        elif isinstance(stops, Iterable):
            stops = tuple(stops)
        object.__setattr__(self, "stop", stops)  # frozen: normalised once, here
        for rule in RULES.values():
            rule.check(getattr(self, rule.name))
        require(self.length is not None or self.max_chars is not None or self.stop,
                "without a length, give max_chars or a stop string so generation ends")

    @classmethod
    def of(cls, **options: Any) -> "Controls":
        """Controls from keyword options; a name that is no control is refused."""
        for name in options:
            require(name in RULES, f"unknown control {name!r} (the controls are {', '.join(RULES)})")
        return cls(**options)


@dataclass(frozen=True)
class Rule:
    """What one control accepts: its type (from the annotation), limits, and help."""

    name: str
    annotation: str  # e.g. "int | None"
    default: Any
    help: str
    low: float | None
    high: float | None
    above: bool  # low itself is excluded
    none: str  # what None means ('' when None is not allowed)
    group: str  # the `textgen generate --help` section
    metavar: str

    @classmethod
    def of(cls, f: dataclasses.Field) -> "Rule":
        return cls(f.name, f.type, f.default, **f.metadata)

    @property
    def kind(self) -> type:
        """int, float or str: what one value (one stop string) is."""
        return {"int": int, "float": float}.get(self.annotation.split()[0], str)

    @property
    def repeated(self) -> bool:
        """A tuple of strings (stop): a string or a list of them is given."""
        return self.annotation.startswith("tuple")

    @property
    def optional(self) -> bool:
        """None is allowed (it means `none`)."""
        return "None" in self.annotation

    def accepts(self, value: Any) -> bool:
        """Whether `value` is allowed: type (a bool is no number), finiteness, limits."""
        if self.repeated:
            return isinstance(value, tuple) and all(isinstance(s, str) for s in value)
        if value is None or not fits_type(self.annotation, value):
            return value is None and self.optional
        if isinstance(value, float) and not math.isfinite(value):  # an int is finite, however large
            return False
        above_low = self.low is None or (value > self.low if self.above else value >= self.low)
        return above_low and (self.high is None or value <= self.high)

    def describe(self) -> str:
        """The rule in words, None aside: 'an integer in 0..9', 'a number in (0, 1]'."""
        if self.repeated:
            return "a string or a list of strings"
        noun = "an integer" if self.kind is int else "a number"
        if self.high is not None and self.kind is int:
            limits = f" in {self.low}..{self.high}"
        elif self.high is not None:
            limits = f" in {'(' if self.above else '['}{self.low}, {self.high}]"
        else:
            limits = "" if self.low is None else f" {'above' if self.above else 'of at least'} {self.low}"
        return noun + limits

    def check(self, value: Any) -> None:
        """Raise a one-line ConfigError naming the control unless `value` is allowed."""
        rule = self.describe() + (" or None" if self.optional else "")
        require(self.accepts(value), f"{self.name} must be {rule}, not {value!r}")


RULES: dict[str, Rule] = {f.name: Rule.of(f) for f in dataclasses.fields(Controls)}


def documented(function: Callable) -> Callable:
    """Append the list of controls (name, default, help, limits) to `function`'s docstring."""
    lines = []
    for r in RULES.values():
        none = f"; None: {r.none}" if r.none else ""
        lines.append(f"    {r.name} (default {r.default!r}): {r.help}{none}. {r.describe()[0].upper()}{r.describe()[1:]}.")
    indent = " " * 8  # a method's docstring body
    text = "\n".join(indent + line for line in ["", "Controls (keywords, see `textgen.controls.Controls`):", *lines])
    function.__doc__ = (function.__doc__ or "").rstrip() + "\n" + text + "\n" + indent[:-4]
    return function
