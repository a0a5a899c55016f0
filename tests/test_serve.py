"""textgen serve through real HTTP on loopback: JSON, server-sent events, limits, fairness."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

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
    proc = subprocess.Popen([sys.executable, "-m", "textgen", "serve", str(tiny_bundle), "--port", "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    try:
        line = proc.stdout.readline()  # "Serving BUNDLE at http://127.0.0.1:PORT/  (Ctrl-C stops)"
        url = line.split(" at ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url + "health", timeout=30) as response:
            assert json.loads(response.read())["status"] == "ok"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130  # like every command: uvicorn shuts down, then re-raises SIGINT
        assert proc.stderr.read().strip().splitlines() == ["textgen: interrupted"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
