"""`textgen serve BUNDLE`: generate over HTTP, with one small page to try a model.

    POST /generate          JSON in, {"samples": [...]} out
    POST /generate/stream   same JSON in; server-sent events with text pieces as produced
    GET  /health            {"status": "ok", ...} and the request limits
    GET  /                  the page: type a prime, move the temperature, watch text stream in

Starlette + uvicorn: Starlette is the small, well-kept ASGI toolkit FastAPI is built on,
with streaming responses built in; uvicorn is its reference server. FastAPI's extra
(pydantic models, OpenAPI) buys little for one small request: its decoding controls are
checked by the schema every entry point shares (`textgen.controls`), its caps below.

Generation is CPU-bound, so it runs in a thread pool, never on the event loop. The
model is shared behind a lock taken for one token at a time: concurrent requests
interleave token by token, and a worker never waits on a client (pieces go to a queue
the event loop drains), so a slow or stalled client cannot hold the model.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from textgen.config import TextgenError, fits_type, require
from textgen.controls import Controls
from textgen.generate import TextGenerator, load

MAX_BODY_BYTES = 64 * 1024
MAX_PRIME_CHARS = 2000
MAX_LENGTH = 2000  # tokens per sample
MAX_SAMPLES = 8
MAX_TEMPERATURE = 5.0
WORKERS = 4  # generation threads; the lock makes them take turns on the model
PAGE = Path(__file__).with_name("page.html")


class BadRequest(Exception):
    """A request the server refuses with a 4xx status and a one-line message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# The decoding controls a request may set: checked by `Controls` like everywhere else.
# Serving one more is a word here, once its cost on a shared server is bounded (stop
# strings of any size would make stop matching quadratic).
SERVED = ("length", "temperature", "top_k", "top_p", "seed")


@dataclass(frozen=True)
class GenerateRequest:
    """A validated /generate body: the server's own fields and the decoding controls."""

    prime: str = ""
    num_samples: int = 1
    controls: Controls = Controls()


def parse_request(body: bytes, generator: TextGenerator) -> GenerateRequest:
    """Check a JSON body: the controls by their schema, then this server's caps.

    The first problem raises BadRequest with a one-line message.
    """
    try:
        data = json.loads(body or b"{}")
    except ValueError:  # not JSON, not UTF-8, or an integer past Python's 4,300 digits
        raise BadRequest("body must be a JSON object") from None
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    unknown = sorted(set(data) - {"prime", "num_samples", *SERVED})
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}")
    try:
        request = GenerateRequest(data.pop("prime", ""), data.pop("num_samples", 1), Controls.of(**data))
        _check_caps(request)
        generator.encode_prime(request.prime)
    except TextgenError as err:
        raise BadRequest(str(err)) from None
    return request


def _check_caps(r: GenerateRequest) -> None:
    """This server's limits on top of the schema's: bounded work and memory per request."""
    require(isinstance(r.prime, str) and len(r.prime) <= MAX_PRIME_CHARS,
            f"prime must be a string of at most {MAX_PRIME_CHARS} characters")
    require(fits_type("int", r.num_samples) and 1 <= r.num_samples <= MAX_SAMPLES,
            f"num_samples must be an integer in 1..{MAX_SAMPLES}")
    length = r.controls.length
    require(length is not None and length <= MAX_LENGTH, f"length must be an integer in 1..{MAX_LENGTH}")
    require(r.controls.temperature <= MAX_TEMPERATURE, f"temperature must be a number in 0..{MAX_TEMPERATURE:g}")


class ModelWorker:
    """Runs generation in a thread pool, one token at a time under the model lock."""

    def __init__(self, generator: TextGenerator, workers: int = WORKERS):
        self.generator = generator
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="textgen-generate")
        self.closing = threading.Event()

    def pieces(self, r: GenerateRequest) -> Iterator[list[tuple[int, str]]]:
        """Each step's new text as (sample index, piece) pairs, the prime first.

        All samples are generated as one batch (sample i uses the random stream
        (seed, i), as `TextGenerator.sample` does); one step is one token of each.
        """
        ids = self.generator.encode_prime(r.prime)
        if r.prime:
            yield [(i, r.prime) for i in range(r.num_samples)]
        for step in self.generator.steps(ids, r.num_samples, r.controls):
            yield [(i, piece) for i, piece in enumerate(step) if piece]

    async def stream(self, r: GenerateRequest) -> AsyncIterator[tuple[int, str]]:
        """(sample index, text piece) pairs as the worker thread produces them."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()  # unbounded, but at most num_samples * length pieces
        stop = threading.Event()

        def put(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop is gone: the server is shutting down
                stop.set()

        def work() -> None:
            try:
                steps = self.pieces(r)
                while not (stop.is_set() or self.closing.is_set()):
                    with self.lock:  # one token per turn: other requests interleave
                        pairs = next(steps, None)
                    if pairs is None:
                        break
                    for pair in pairs:
                        put(pair)
            except Exception as err:  # reported to the client as an error event
                put(err)
            finally:
                put(None)

        loop.run_in_executor(self.pool, work)
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            stop.set()  # the client left or the request ended: the worker stops at its next token

    async def generate(self, r: GenerateRequest) -> list[str]:
        samples = [""] * r.num_samples
        async for index, piece in self.stream(r):
            samples[index] += piece
        return samples

    def close(self) -> None:
        self.closing.set()
        self.pool.shutdown(wait=False, cancel_futures=True)


def make_app(generator: TextGenerator):
    """The Starlette application serving one loaded model."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.routing import Route

    worker = ModelWorker(generator)
    page = PAGE.read_text(encoding="utf-8")

    async def index(request):
        return HTMLResponse(page, headers={"Content-Security-Policy": _CSP})

    async def health(request):
        return JSONResponse(_health(generator))

    async def generate(request):
        try:
            r = parse_request(await _read_body(request), generator)
        except BadRequest as err:
            return JSONResponse({"error": str(err)}, status_code=err.status)
        return JSONResponse({"samples": await worker.generate(r)})

    async def generate_stream(request):
        try:
            r = parse_request(await _read_body(request), generator)
        except BadRequest as err:
            return JSONResponse({"error": str(err)}, status_code=err.status)
        return StreamingResponse(_sse(worker.stream(r)), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @asynccontextmanager
    async def lifespan(app):
        yield
        worker.close()

    routes = [Route("/", index), Route("/health", health),
              Route("/generate", generate, methods=["POST"]),
              Route("/generate/stream", generate_stream, methods=["POST"])]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.worker = worker
    return app


# The page loads nothing from elsewhere; its one script and style are inline.
_CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'"


async def _read_body(request) -> bytes:
    """The request body, refused with 413 past MAX_BODY_BYTES without reading it all."""
    declared = request.headers.get("content-length", "0")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BadRequest(f"body is larger than {MAX_BODY_BYTES:,} bytes", 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise BadRequest(f"body is larger than {MAX_BODY_BYTES:,} bytes", 413)
    return bytes(body)


async def _sse(pieces: AsyncIterator[tuple[int, str]]) -> AsyncIterator[str]:
    """Server-sent events: `data: {"sample": i, "text": ...}` per piece, then `event: done`."""
    try:
        async for index, text in pieces:
            yield f"data: {json.dumps({'sample': index, 'text': text})}\n\n"
    except TextgenError as err:
        yield f"event: error\ndata: {json.dumps({'error': str(err)})}\n\n"
        return
    yield "event: done\ndata: {}\n\n"


def _health(generator: TextGenerator) -> dict:
    cfg = generator.config
    limits = {"max_prime_chars": MAX_PRIME_CHARS, "max_length": MAX_LENGTH, "max_samples": MAX_SAMPLES,
              "max_temperature": MAX_TEMPERATURE, "max_body_bytes": MAX_BODY_BYTES}
    return {"status": "ok", "name": cfg.name, "level": cfg.tokenizer.level,
            "vocab_size": cfg.model.vocab_size, "step": generator.state.get("step"),
            "defaults": _defaults(), "limits": limits}


def _defaults() -> dict:
    """What a request gets for each field it leaves out."""
    r = GenerateRequest()
    return {"prime": r.prime, **{name: getattr(r.controls, name) for name in SERVED}, "num_samples": r.num_samples}


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket; port 0 picks a free port. Errors are one TextgenError line."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as err:
        raise TextgenError(f"cannot listen on {host}:{port} ({err.strerror or err})") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def make_server(app):
    """A uvicorn server for `app`, to run on an already bound socket; it logs only problems."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))


def serve(bundle: str | Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Load a bundle and serve it until Ctrl-C.

    On SIGINT uvicorn finishes its graceful shutdown, then raises the signal again
    (uvicorn >= 0.29), so KeyboardInterrupt reaches the CLI: exit 130, as for any command.
    """
    generator = load(bundle)
    sock = bind(host, port)
    server = make_server(make_app(generator))
    print(f"Serving {bundle} at {url_of(sock)}  (Ctrl-C stops)", flush=True)
    server.run(sockets=[sock])


class BackgroundServer:
    """Serve a loaded model from a thread, e.g. in a notebook or a test.

        with BackgroundServer(generator) as url:
            ...  # http requests to url
    """

    def __init__(self, generator: TextGenerator, host: str = "127.0.0.1", port: int = 0):
        self.sock = bind(host, port)
        self.server = make_server(make_app(generator))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.url = url_of(self.sock)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started and self.thread.is_alive():
            threading.Event().wait(0.02)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
