"""The retrieval-server client against a real local HTTP server (up, down, slow, failing)."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from arpo_jax.tools import RetrievalClient, SearchConfig, SearchTool, SearchUnavailable


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def do_POST(self):
        srv = self.server
        srv.requests += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv.last = body
        if srv.delay_s:
            time.sleep(srv.delay_s)
        if srv.fail_first > 0:
            srv.fail_first -= 1
            self.send_response(503)
            self.end_headers()
            return
        if self.path != "/retrieve":
            self.send_response(404)
            self.end_headers()
            return
        result = [[{"document": {"id": str(i), "contents": f'"Title {i}"\nText for {q} number {i}.'},
                    "score": 1.0 / (i + 1)} for i in range(body["topk"])] for q in body["queries"]]
        data = json.dumps({"result": result}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):  # timeout tests hang up
            super().handle_error(request, client_address)


@pytest.fixture
def server():
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.requests, srv.delay_s, srv.fail_first, srv.last = 0, 0.0, 0, None
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(srv, path="/retrieve"):
    return f"http://127.0.0.1:{srv.server_address[1]}{path}"


def _tool(url, **kw):
    return SearchTool(SearchConfig(backend="http", url=url, **kw))


def test_search_r1_protocol_and_release_format(server):
    out = _tool(_url(server), top_k=3).run(" who wrote hamlet ")
    assert out.status == "ok"
    assert server.last == {"queries": ["who wrote hamlet"], "topk": 3, "return_scores": True}
    expected = [f"Page {i + 1}: Title {i}: Text for who wrote hamlet number {i}." for i in range(3)]
    assert out.content.splitlines() == expected


def test_batch_retrieval(server):
    client = RetrievalClient(_url(server))
    res = client.retrieve(["a", "b"], k=2)
    assert len(res) == 2 and res[1][0] == "Title 0: Text for b number 0."


def test_server_down_is_an_observation_not_an_exception():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    t0 = time.monotonic()
    out = _tool(f"http://127.0.0.1:{port}/retrieve", retries=2, backoff_s=0.05).run("q")
    assert out.status == "unavailable" and "unavailable after 3 attempts" in out.content
    assert time.monotonic() - t0 < 3


def test_slow_server_times_out_with_bounded_retries(server):
    server.delay_s = 1.0
    t0 = time.monotonic()
    out = _tool(_url(server), timeout_s=0.3, retries=1, backoff_s=0.05).run("q")
    elapsed = time.monotonic() - t0
    assert out.status == "unavailable" and "timed out" in out.content
    assert 0.6 <= elapsed < 2.0
    assert server.requests == 2


def test_slow_but_in_time_succeeds(server):
    server.delay_s = 0.2
    out = _tool(_url(server), timeout_s=2.0, retries=0).run("q")
    assert out.status == "ok"


def test_call_deadline_bounds_all_retries(server):
    server.delay_s = 1.0
    t0 = time.monotonic()
    out = _tool(_url(server), timeout_s=5.0, retries=5, backoff_s=0.5).run("q", timeout_s=0.5)
    assert out.status == "unavailable"
    assert time.monotonic() - t0 < 1.5


def test_server_errors_are_retried_with_backoff(server):
    server.fail_first = 2
    out = _tool(_url(server), retries=2, backoff_s=0.05).run("q")
    assert out.status == "ok" and server.requests == 3


def test_client_errors_are_not_retried(server):
    out = _tool(_url(server, "/wrong"), retries=3, backoff_s=0.05).run("q")
    assert out.status == "unavailable" and "HTTP 404" in out.content
    assert server.requests == 1


def test_client_raises_typed_error():
    with pytest.raises(SearchUnavailable):
        RetrievalClient("http://127.0.0.1:9/retrieve", timeout_s=0.2, retries=0).retrieve(["q"], 1)
