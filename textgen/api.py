"""The body of `textgen serve`'s POST requests: its fields, their checks and caps, its errors.

The decoding controls are checked by the schema every entry point shares
(`textgen.controls`); this module adds the server's own fields (prime, num_samples) and
caps that bound the work and memory one request can ask for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from textgen.config import TextgenError, fits_type, require
from textgen.controls import Controls
from textgen.generate import TextGenerator
from textgen.tokenizer import is_panic

MAX_BODY_BYTES = 64 * 1024
MAX_PRIME_CHARS = 2000
MAX_LENGTH = 2000  # tokens per sample
MAX_SAMPLES = 8
MAX_TEMPERATURE = 5.0


class ApiError(Exception):
    """A request the server refuses or fails: its status, one-line message and extra headers."""

    def __init__(self, message: str, status: int = 400, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


# The decoding controls a request may set: checked by `Controls` like everywhere else.
# Serving one more is a word here, once its cost on a shared server is bounded (stop
# strings of any size would make stop matching quadratic).
SERVED = ("length", "temperature", "top_k", "top_p", "seed")


@dataclass(frozen=True)
class GenerateRequest:
    """A validated /generate body: the server's own fields, the decoding controls, the prime's ids."""

    prime: str = ""
    num_samples: int = 1
    controls: Controls = Controls()
    ids: Any = field(default=None, compare=False)  # (time,) token ids of the prime


def parse_request(body: bytes, generator: TextGenerator) -> GenerateRequest:
    """Check a JSON body (the controls by their schema, then this server's caps) and encode
    its prime. CPU work: the server runs it off the event loop.

    The first problem raises ApiError with a one-line message.
    """
    try:
        data = json.loads(body or b"{}")
    except (ValueError, RecursionError):  # not JSON, not UTF-8, past 4,300 digits, nested too deep
        raise ApiError("body must be a JSON object") from None
    if not isinstance(data, dict):
        raise ApiError("body must be a JSON object")
    unknown = sorted(set(data) - {"prime", "num_samples", *SERVED})
    if unknown:
        raise ApiError(f"unknown field {unknown[0]!r}")
    try:
        request = GenerateRequest(data.pop("prime", ""), data.pop("num_samples", 1), Controls.of(**data))
        _check_caps(request)
        return GenerateRequest(request.prime, request.num_samples, request.controls,
                               _tokenizer_call(generator.encode_prime, request.prime))
    except TextgenError as err:
        raise ApiError(str(err)) from None


def _tokenizer_call(function, *args):
    """Call into `tokenizers`, its panics (BaseExceptions) turned into a 500 ApiError."""
    try:
        return function(*args)
    except BaseException as err:
        if not is_panic(err):
            raise
        raise ApiError(f"the tokenizer failed ({str(err).splitlines()[0] if str(err) else 'panic'})", 500) from None


def _check_caps(r: GenerateRequest) -> None:
    """This server's limits on top of the schema's: bounded work and memory per request."""
    require(isinstance(r.prime, str) and len(r.prime) <= MAX_PRIME_CHARS,
            f"prime must be a string of at most {MAX_PRIME_CHARS} characters")
    require(fits_type("int", r.num_samples) and 1 <= r.num_samples <= MAX_SAMPLES,
            f"num_samples must be an integer in 1..{MAX_SAMPLES}")
    length = r.controls.length
    require(length is not None and length <= MAX_LENGTH, f"length must be an integer in 1..{MAX_LENGTH}")
    require(r.controls.temperature <= MAX_TEMPERATURE, f"temperature must be a number in 0..{MAX_TEMPERATURE:g}")


def defaults() -> dict:
    """What a request gets for each field it leaves out."""
    r = GenerateRequest()
    return {"prime": r.prime, **{name: getattr(r.controls, name) for name in SERVED}, "num_samples": r.num_samples}
