"""textgen serve through real HTTP on loopback: JSON, server-sent events, limits, fairness."""

import asyncio
import json
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import Child
from textgen.cli import main
from textgen.serve import BackgroundServer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server_url(tiny_generator):
    with BackgroundServer(tiny_generator) as url:
        yield url


def post(url, body, raw=False, timeout=60):
    """POST JSON (or raw bytes); return (status, parsed JSON body)."""
    data = body if raw else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def read_events(url, body, timeout=60):
    """POST to the stream endpoint; return [(event name, data)] in order."""
    request = urllib.request.Request(url + "generate/stream", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        blocks = response.read().decode().split("\n\n")
    events = []
    for block in filter(None, blocks):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields.get("event", "message"), json.loads(fields["data"])))
    return events


def test_generate_returns_seeded_samples_that_match_the_library(server_url, tiny_generator):
    body = {"prime": "The", "length": 25, "temperature": 0.8, "seed": 3, "num_samples": 2}
    status, result = post(server_url + "generate", body)
    assert status == 200 and len(result["samples"]) == 2
    assert result["samples"] == tiny_generator.sample("The", num_samples=2, length=25, temperature=0.8, seed=3)
    assert result["samples"][0] == tiny_generator.generate("The", length=25, temperature=0.8, seed=3)
    filtered = post(server_url + "generate", {**body, "top_k": 3, "top_p": 0.9})[1]["samples"]
    assert filtered == tiny_generator.sample("The", num_samples=2, length=25, temperature=0.8, top_k=3,
                                             top_p=0.9, seed=3)
    assert post(server_url + "generate", body)[1] == result


def test_stream_sends_the_prime_then_pieces_then_done(server_url):
    body = {"prime": "The", "length": 25, "temperature": 0.8, "seed": 3}
    events = read_events(server_url, body)
    assert events[-1] == ("done", {}) and all(name == "message" for name, _ in events[:-1])
    pieces = [data["text"] for _, data in events[:-1]]
    assert pieces[0] == "The" and len(pieces) > 10  # the prime, then token by token
    assert "".join(pieces) == post(server_url + "generate", body)[1]["samples"][0]


def test_health_describes_the_model_and_its_limits(server_url):
    with urllib.request.urlopen(server_url + "health", timeout=30) as response:
        health = json.loads(response.read())
    assert health["status"] == "ok" and health["name"] == "tiny" and health["limits"]["max_length"] >= 1


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "JSON object"),
    (b"[1, 2]", 400, "JSON object"),
    ({"prime": "The", "colour": "red"}, 400, "unknown field 'colour'"),
    ({"length": 0}, 400, "length"),
    ({"length": 10**6}, 400, "length"),
    ({"length": "ten"}, 400, "length"),
    ({"temperature": -0.5}, 400, "temperature"),
    ({"temperature": True}, 400, "temperature"),
    ({"num_samples": 9}, 400, "num_samples"),
    ({"seed": -1}, 400, "seed"),
    ({"seed": 2**63}, 400, "seed"),
    ({"top_k": -1}, 400, "top_k"),
    ({"num_samples": True}, 400, "num_samples"),
    ({"stop": "\n"}, 400, "unknown field 'stop'"),
    pytest.param(b'{"seed": 1' + b"0" * 5000 + b"}", 400, "JSON object", id="past-python-int-digits-limit"),
    ({"top_p": 0}, 400, "top_p"),
    ({"prime": "Q@"}, 400, "'Q'"),
    ({"prime": "x" * 5000}, 400, "prime"),
    (b"{" + b" " * 70_000 + b"}", 413, "larger than"),
])
def test_bad_requests_get_a_4xx_and_one_message(server_url, body, status, message):
    raw = isinstance(body, bytes)
    for endpoint in ("generate", "generate/stream"):
        got, result = post(server_url + endpoint, body, raw=raw)
        assert got == status and message in result["error"], result


def test_a_stalled_streaming_client_does_not_block_others(server_url):
    host, port = server_url.split("//")[1].rstrip("/").split(":")
    stalled = socket.create_connection((host, int(port)), timeout=30)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # it reads nothing, so buffers fill
    body = json.dumps({"prime": "The", "length": 2000, "seed": 1}).encode()
    stalled.sendall(b"POST /generate/stream HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (host.encode(), port.encode(), len(body), body))
    try:
        time.sleep(1.0)  # the long generation is under way
        start = time.perf_counter()
        status, result = post(server_url + "generate", {"prime": "A", "length": 10, "seed": 2}, timeout=30)
        with urllib.request.urlopen(server_url + "health", timeout=30) as response:
            assert response.status == 200
        assert status == 200 and result["samples"][0].startswith("A")
        assert time.perf_counter() - start < 20  # served alongside, not after, the 2000 tokens
    finally:
        stalled.close()


def test_serve_cli_refuses_bad_bundles_and_busy_ports(tiny_bundle, tmp_path, capsys):
    assert main(["serve", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().endswith("not a textgen bundle (no config.json)")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        assert main(["serve", str(tiny_bundle), "--port", str(busy.getsockname()[1])]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "cannot listen on 127.0.0.1:" in err[0]
    assert main(["serve", str(tiny_bundle), "--port", "70000"]) == 2


@pytest.mark.slow
def test_serve_command_runs_as_a_real_process_until_interrupted(tiny_bundle):
    with Child("serve", tiny_bundle, "--port", "0", cwd=ROOT) as child:
        line = child.proc.stdout.readline()  # "Serving BUNDLE at http://127.0.0.1:PORT/  (Ctrl-C stops)"
        url = line.split(" at ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url + "health", timeout=30) as response:
            assert json.loads(response.read())["status"] == "ok"
        child.proc.send_signal(signal.SIGINT)
        code, _, err = child.finish(timeout=30)
        assert code == 130  # like every command: uvicorn shuts down, then re-raises SIGINT
        assert err.strip().splitlines() == ["textgen: interrupted"]


# --- misuse and load: queue bound, deadlines, abandoned requests, other origins, shutdown, panics ---

from textgen.serve import Limits, served_hosts  # noqa: E402


@pytest.fixture
def slow_steps(tiny_generator, monkeypatch):
    """Every model step takes 2 ms more (the real step still runs), so a long request lasts
    seconds; returns the list of steps taken."""
    calls = []
    step = tiny_generator.step

    def slow(tokens, states):
        time.sleep(0.002)
        calls.append(len(tokens))
        return step(tokens, states)

    monkeypatch.setattr(tiny_generator, "step", slow)
    return calls


def raw_post(url, path, body, host=None):
    """Send a POST on a raw socket and return the socket, unread (a client that may walk away)."""
    addr, port = url.split("//")[1].rstrip("/").split(":")
    sock = socket.create_connection((addr, int(port)), timeout=30)
    data = json.dumps(body).encode()
    sock.sendall(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                 % (path.encode(), (host or f"{addr}:{port}").encode(), len(data), data))
    return sock


def wait_until(condition, timeout=30.0):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_an_abandoned_generate_stops_within_a_step(tiny_generator, slow_steps):
    server = BackgroundServer(tiny_generator)
    with server as url:
        client = raw_post(url, "/generate", {"prime": "The", "length": 2000, "num_samples": 8})
        wait_until(lambda: len(slow_steps) > 10)  # generating
        client.close()
        wait_until(lambda: not server.app.state.scheduler._slots)
        stopped_at = len(slow_steps)
        time.sleep(0.3)
        assert len(slow_steps) == stopped_at < 1000


def test_past_the_queue_bound_requests_get_503_with_retry_after(tiny_generator, slow_steps):
    with BackgroundServer(tiny_generator, limits=Limits(max_rows=1, max_queue=2)) as url:
        clients = [raw_post(url, "/generate", {"prime": "The", "length": 2000})]
        wait_until(lambda: slow_steps)  # the first is in the batch; two more fill the queue
        clients += [raw_post(url, "/generate", {"prime": "The", "length": 2000}) for _ in range(2)]
        time.sleep(0.3)
        request = urllib.request.Request(url + "generate", data=b"{}", headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 503 and refused.value.headers["Retry-After"] == "1"
        assert "busy" in json.loads(refused.value.read())["error"]
        for client in clients:
            client.close()


def test_a_request_past_its_deadline_gets_504(tiny_generator, slow_steps):
    with BackgroundServer(tiny_generator, limits=Limits(request_timeout=0.3)) as url:
        status, result = post(url + "generate", {"prime": "The", "length": 2000})
        assert status == 504 and "too long" in result["error"]
        events = read_events(url, {"prime": "The", "length": 2000})
        assert events[-1][0] == "error" and events[-1][1]["status"] == 504


def test_the_api_takes_json_only_from_served_hosts_and_allows_no_cors(server_url):
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"Content-Type": content_type} if content_type else {}
        request = urllib.request.Request(server_url + "generate", data=b'{"length": 5}', headers=headers)
        if content_type is None:
            request.remove_header("Content-type")  # urllib adds a form type to any body
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 415 and "application/json" in json.loads(refused.value.read())["error"]
    port = server_url.rstrip("/").rsplit(":", 1)[1]
    for host, status in ((f"evil.example:{port}", 400), (f"127.0.0.1.evil.example:{port}", 400),
                         (f"localhost:{port}", 200), (f"127.0.0.1:{port}", 200)):
        request = urllib.request.Request(server_url + "health", headers={"Host": host})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                got = response.status
        except urllib.error.HTTPError as err:
            got = err.code
            assert "not served here" in json.loads(err.read())["error"]
        assert got == status, host
    preflight = urllib.request.Request(server_url + "generate", method="OPTIONS",
                                       headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(preflight, timeout=30)
    assert "Access-Control-Allow-Origin" not in refused.value.headers


def test_served_hosts_are_loopback_the_bound_address_and_the_allowed_ones():
    assert served_hosts("127.0.0.1", 8000) == {"localhost:8000", "127.0.0.1:8000", "[::1]:8000"}
    assert "box.lan:80" in served_hosts("0.0.0.0", 80, ["Box.lan"]) and "box.lan" in served_hosts("0.0.0.0", 80, ["box.lan"])
    assert "[fe80::1]:9" in served_hosts("fe80::1", 9) and "0.0.0.0:9" not in served_hosts("0.0.0.0", 9, ["x"])


def test_serving_every_network_needs_allowed_hosts(tiny_bundle, capsys):
    assert main(["serve", str(tiny_bundle), "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--allowed-host" in err[0]


@pytest.mark.parametrize("body, message", [
    pytest.param(b"[" * 10_000 + b"]" * 10_000, "JSON object", id="nested-10000-deep"),
    pytest.param(b'{"prime": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "JSON object", id="nested-field"),
    pytest.param(b'{"seed": ' + b"7" * 5000 + b"}", "JSON object", id="5000-digit-integer"),
    pytest.param(b'{"temperature": ' + b"9" * 400 + b"}", "temperature", id="400-digit-temperature"),
    pytest.param(b'{"length": ' + b"9" * 400 + b"}", "length", id="400-digit-length"),
    pytest.param(b'{"top_p": ' + b"9" * 400 + b"}", "top_p", id="400-digit-top-p"),
])
def test_hostile_json_gets_400_and_the_json_error(server_url, body, message):
    for endpoint in ("generate", "generate/stream"):
        status, result = post(server_url + endpoint, body, raw=True)
        assert status == 400 and message in result["error"], result


def test_prime_encoding_runs_off_the_event_loop(tiny_generator, monkeypatch):
    on_loop = []
    encode = tiny_generator.encode_prime

    def spy(prime):
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return encode(prime)

    monkeypatch.setattr(tiny_generator, "encode_prime", spy)
    with BackgroundServer(tiny_generator) as url:
        assert post(url + "generate", {"prime": "The", "length": 3})[0] == 200
        assert read_events(url, {"prime": "The", "length": 3})[-1][0] == "done"
    assert on_loop == [False, False]


def test_a_tokenizer_panic_is_a_500_json_error_never_a_truncated_200(tiny_generator):
    from tokenizers import Regex, Tokenizer, normalizers

    from textgen.generate import TextGenerator

    hostile = Tokenizer.from_str(tiny_generator.tokenizer.to_str())
    generator = TextGenerator.from_model(tiny_generator.model, hostile, tiny_generator.config)
    # Loading refuses such a normalizer; set after load, it stands for any panic at run time.
    hostile.normalizer = normalizers.Sequence([normalizers.Replace(Regex("^"), " "), normalizers.BertNormalizer()])
    with BackgroundServer(generator) as url:
        status, result = post(url + "generate", {"prime": "", "length": 5})  # an empty prime encodes "\n"
        assert status == 500 and "PanicException" in result["error"]
        events = read_events(url, {"prime": "", "length": 5})
        assert events[-1][0] == "error" and events[-1][1]["status"] == 500
        assert post(url + "generate", {"prime": "The", "length": 5})[0] == 200  # the server goes on


@pytest.mark.slow
def test_sigterm_with_requests_in_flight_ends_within_seconds(tiny_bundle):
    from textgen.serve import SHUTDOWN_SECONDS

    with Child("serve", tiny_bundle, "--port", "0") as child:
        url = child.wait_for_line("Serving").split(" at ")[1].split()[0]
        body = {"prime": "The", "length": 2000, "num_samples": 8}
        busy = [raw_post(url, "/generate/stream", body) for _ in range(16)]  # never read
        addr, port = url.split("//")[1].rstrip("/").split(":")
        stalled = socket.create_connection((addr, int(port)), timeout=30)  # its body never comes
        stalled.sendall(b"POST /generate HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 99\r\n\r\n{" % (addr.encode(), port.encode()))
        time.sleep(1.0)
        start = time.monotonic()
        child.proc.send_signal(signal.SIGTERM)
        child.proc.wait(timeout=SHUTDOWN_SECONDS + 15)
        assert time.monotonic() - start < SHUTDOWN_SECONDS + 10
        for sock in [stalled, *busy]:
            sock.close()
