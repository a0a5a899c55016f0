"""`textgen serve BUNDLE`: generate over HTTP, with one small page to try a model.

    POST /generate          JSON in, {"samples": [...]} out
    POST /generate/stream   same JSON in; server-sent events with text pieces as produced
    GET  /health            {"status": "ok", ...} and the request limits
    GET  /                  the page: type a prime, move the temperature, watch text stream in

Starlette + uvicorn: Starlette is the small, well-kept ASGI toolkit FastAPI is built on,
with streaming responses built in; uvicorn is its reference server. FastAPI's extra
(pydantic models, OpenAPI) buys little for one small request: its decoding controls are
checked by the schema every entry point shares (`textgen.controls`), its caps in `textgen.api`.

Generation is CPU-bound: one scheduler thread owns the model and advances every request
under way by one token per batched step (`textgen.batching`); prime encoding runs in a
thread pool; the event loop only moves bytes. A worker never waits on a client (pieces go
to a queue the event loop drains), so a slow or stalled client cannot hold the model.

Misuse it holds against: a bounded queue (503 with Retry-After past it), a deadline per
request (504), abandoned requests stopped within a step, JSON bodies only (415 otherwise,
so no page elsewhere can post without a CORS preflight, and no CORS is allowed), a Host
check against DNS rebinding (400), and a shutdown that ends within SHUTDOWN_SECONDS.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from textgen.api import (MAX_BODY_BYTES, MAX_LENGTH, MAX_PRIME_CHARS, MAX_SAMPLES, MAX_TEMPERATURE, ApiError,
                         GenerateRequest, defaults, parse_request)
from textgen.batching import MAX_ROWS, QUEUE_PER_BATCH, Job, QueueFull, RequestTimeout, Scheduler
from textgen.config import TextgenError, require
from textgen.generate import TextGenerator, load

REQUEST_TIMEOUT = 60.0  # seconds a request may wait and generate; past it: 504
RETRY_AFTER = 1  # seconds a refused (503) client is told to wait
SHUTDOWN_SECONDS = 3.0  # on SIGTERM/Ctrl-C, requests in flight get this long, then are cancelled
LOOPBACK = ("localhost", "127.0.0.1", "[::1]")  # Host names always served
PAGE = Path(__file__).with_name("page.html")


@dataclass(frozen=True)
class Limits:
    """How much the server takes on: the batch, the queue behind it, and each request's deadline."""

    max_rows: int = MAX_ROWS
    max_queue: int | None = None  # None: a small multiple of max_rows (textgen.batching)
    request_timeout: float = REQUEST_TIMEOUT


class Generations:
    """The bridge between the event loop and the scheduler thread."""

    def __init__(self, generator: TextGenerator, limits: Limits):
        self.scheduler = Scheduler(generator, limits.max_rows, limits.max_queue)
        self.timeout = limits.request_timeout

    def start(self, r: GenerateRequest) -> AsyncIterator[tuple[int, str]]:
        """Queue a request now (ApiError 503 if the queue is full); iterate the result for
        its (sample index, text piece) pairs as they are made. Leaving the iteration early
        (the client went away) stops the job before its next step."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()  # unbounded, but at most num_samples * length pieces

        def emit(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop is gone: the server is shutting down
                job.cancel()

        job = Job(r.ids, r.prime, r.num_samples, r.controls, emit, time.monotonic() + self.timeout)
        try:
            self.scheduler.submit(job)
        except QueueFull as err:
            raise _as_api_error(err) from None
        return self._pieces(job, queue)

    @staticmethod
    async def _pieces(job: Job, queue: asyncio.Queue) -> AsyncIterator[tuple[int, str]]:
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise _as_api_error(item)
                for pair in item:
                    yield pair
        finally:
            job.cancel()  # the client left or the request ended: the job stops at its next step

    @staticmethod
    async def collect(pieces: AsyncIterator[tuple[int, str]], num_samples: int) -> list[str]:
        """The whole text of every sample."""
        parts: list[list[str]] = [[] for _ in range(num_samples)]
        async for index, piece in pieces:
            parts[index].append(piece)
        return ["".join(p) for p in parts]

    def close(self) -> None:
        self.scheduler.close()


def _as_api_error(err: BaseException) -> ApiError:
    """The status and message a job's error is reported with."""
    if isinstance(err, RequestTimeout):
        return ApiError(str(err), 504)
    if isinstance(err, QueueFull):
        return ApiError(f"{err}; retry in a moment", 503, {"Retry-After": str(RETRY_AFTER)})
    if isinstance(err, TextgenError):
        return ApiError(str(err))
    return ApiError(f"internal error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", 500)


def make_app(generator: TextGenerator, hosts: set[str], limits: Limits = Limits()):
    """The Starlette application serving one loaded model to the Host header values `hosts`
    (see `served_hosts`)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.routing import Route

    work = Generations(generator, limits)
    page = PAGE.read_text(encoding="utf-8")

    def error(err: ApiError) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=err.status, headers=err.headers)

    async def parse(request) -> GenerateRequest:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise ApiError("send the body as JSON, with Content-Type: application/json", 415)
        body = await _read_body(request)
        return await run_in_threadpool(parse_request, body, generator)  # encoding is CPU work

    async def index(request):
        return HTMLResponse(page, headers={"Content-Security-Policy": _CSP})

    async def health(request):
        return JSONResponse(_health(generator, limits))

    async def generate(request):
        try:
            r = await parse(request)
            collecting = asyncio.ensure_future(work.collect(work.start(r), r.num_samples))
        except ApiError as err:
            return error(err)
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({collecting, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not collecting.done():  # the client went away: cancelling stops its job before the next step
                return JSONResponse({"error": "client disconnected"}, status_code=499)
            return JSONResponse({"samples": collecting.result()})
        except ApiError as err:
            return error(err)
        finally:
            collecting.cancel()
            gone.cancel()

    async def generate_stream(request):
        try:
            r = await parse(request)
            pieces = work.start(r)
        except ApiError as err:
            return error(err)
        return StreamingResponse(_sse(pieces), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @asynccontextmanager
    async def lifespan(app):
        yield
        work.close()

    routes = [Route("/", index), Route("/health", health),
              Route("/generate", generate, methods=["POST"]),
              Route("/generate/stream", generate_stream, methods=["POST"])]
    app = Starlette(routes=routes, middleware=[Middleware(HostCheck, hosts=hosts)], lifespan=lifespan)
    app.state.scheduler = work.scheduler
    return app


class HostCheck:
    """ASGI middleware: answer 400 to a request whose Host header is not one served.

    A page on another site can point its own host name at 127.0.0.1 (DNS rebinding) and
    then read this server's answers as same-origin; the Host header it sends still names
    its site, so checking it closes that door.
    """

    def __init__(self, app, hosts: set[str]):
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
            if host not in self.hosts:
                from starlette.responses import JSONResponse  # Starlette stays out of `import textgen`

                response = JSONResponse({"error": f"Host {host!r} is not served here (see --allowed-host)"},
                                        status_code=400)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def served_hosts(host: str, port: int, allowed: list[str] = ()) -> set[str]:
    """Host header values to serve: loopback names, the bound address itself (unless a
    wildcard), and `allowed`, each with the port and (port 80) without."""
    names = {*LOOPBACK, *(name.lower() for name in allowed)}
    if host not in ("0.0.0.0", "::", ""):
        names.add(f"[{host}]" if ":" in host else host)
    return {f"{name}:{port}" for name in names} | ({*names} if port == 80 else set())


async def _disconnected(request) -> None:
    """Return once the client has closed its connection (the body having been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# The page loads nothing from elsewhere; its one script and style are inline.
_CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'"


async def _read_body(request) -> bytes:
    """The request body, refused with 413 past MAX_BODY_BYTES without reading it all."""
    declared = request.headers.get("content-length", "0")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(f"body is larger than {MAX_BODY_BYTES:,} bytes", 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(f"body is larger than {MAX_BODY_BYTES:,} bytes", 413)
    return bytes(body)


async def _sse(pieces: AsyncIterator[tuple[int, str]]) -> AsyncIterator[str]:
    """Server-sent events: `data: {"sample": i, "text": ...}` per piece, then `event: done`
    (or `event: error` with the JSON error, when the generation fails midway)."""
    try:
        async for index, text in pieces:
            yield f"data: {json.dumps({'sample': index, 'text': text})}\n\n"
    except ApiError as err:
        yield f"event: error\ndata: {json.dumps({'error': str(err), 'status': err.status})}\n\n"
        return
    yield "event: done\ndata: {}\n\n"


def _health(generator: TextGenerator, limits: Limits) -> dict:
    cfg = generator.config
    limits = {"max_prime_chars": MAX_PRIME_CHARS, "max_length": MAX_LENGTH, "max_samples": MAX_SAMPLES,
              "max_temperature": MAX_TEMPERATURE, "max_body_bytes": MAX_BODY_BYTES,
              "request_timeout": limits.request_timeout}
    return {"status": "ok", "name": cfg.name, "level": cfg.tokenizer.level,
            "vocab_size": cfg.model.vocab_size, "step": generator.state.get("step"),
            "defaults": defaults(), "limits": limits}


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


def make_server(app, limits: Limits = Limits()):
    """A uvicorn server for `app`, to run on an already bound socket; it logs only problems.

    Shutdown is bounded: requests still running after SHUTDOWN_SECONDS are cancelled.
    uvicorn's own connection cap (its 503 is plain text and counts idle keep-alive
    connections) is a last resort only, far above what the queue admits.
    """
    import uvicorn

    queue = limits.max_queue if limits.max_queue is not None else QUEUE_PER_BATCH * limits.max_rows
    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                         timeout_graceful_shutdown=SHUTDOWN_SECONDS,
                                         limit_concurrency=max(1024, 8 * (limits.max_rows + queue))))


def serve(bundle: str | Path, host: str = "127.0.0.1", port: int = 8000, allowed_hosts: list[str] = (),
          limits: Limits = Limits()) -> None:
    """Load a bundle and serve it until Ctrl-C or SIGTERM.

    On SIGINT uvicorn finishes its graceful shutdown, then raises the signal again
    (uvicorn >= 0.29), so KeyboardInterrupt reaches the CLI: exit 130, as for any command.
    """
    require(host not in ("0.0.0.0", "::", "") or allowed_hosts,
            f"--host {host or '0.0.0.0'} serves every network: name the host names clients use with --allowed-host")
    generator = load(bundle)
    sock = bind(host, port)
    server = make_server(make_app(generator, served_hosts(host, sock.getsockname()[1], allowed_hosts), limits),
                         limits)
    print(f"Serving {bundle} at {url_of(sock)}  (Ctrl-C stops)", flush=True)
    server.run(sockets=[sock])


class BackgroundServer:
    """Serve a loaded model from a thread, e.g. in a notebook or a test.

        with BackgroundServer(generator) as url:
            ...  # http requests to url
    """

    def __init__(self, generator: TextGenerator, host: str = "127.0.0.1", port: int = 0,
                 limits: Limits = Limits()):
        self.sock = bind(host, port)
        self.app = make_app(generator, served_hosts(host, self.sock.getsockname()[1]), limits)
        self.server = make_server(self.app, limits)
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
