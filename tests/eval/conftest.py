"""Helpers for the evaluation tests: a scripted OpenAI-compatible chat server on 127.0.0.1.

The server answers POST ``/v1/chat/completions`` with the next scripted reply, records every request
(decoded JSON body and headers), serves a bounded number of requests, and is shut down when the test ends.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class Reply:
    """One scripted answer: HTTP ``status``; ``content`` (chat text) for 200s; optional ``delay`` first."""

    content: str | None = "ok"
    status: int = 200
    delay: float = 0.0
    raw: bytes | None = None  # a body sent as-is instead of a chat response


@dataclass
class MockChatServer:
    replies: list[Reply]
    max_requests: int = 32
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    url: str = ""

    def next_reply(self) -> Reply:
        if not self.replies:
            return Reply(content=None, status=500, raw=b'{"error": "no scripted reply left"}')
        return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]


def _handler(server_state: MockChatServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

        def do_POST(self) -> None:  # noqa: N802 - http.server API
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            if len(server_state.requests) >= server_state.max_requests:
                self.send_error(503, "request budget of the mock server exhausted")
                return
            server_state.requests.append(json.loads(body))
            server_state.headers.append(dict(self.headers))
            reply = server_state.next_reply()
            if reply.delay:
                time.sleep(reply.delay)
            if self.path != "/v1/chat/completions":
                payload, status = b'{"error": "wrong path"}', 404
            elif reply.raw is not None:
                payload, status = reply.raw, reply.status
            elif reply.status != 200:
                payload, status = b'{"error": "scripted failure"}', reply.status
            else:
                message = {"role": "assistant", "content": reply.content}
                payload, status = json.dumps({"choices": [{"index": 0, "message": message}]}).encode(), 200
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                pass

    return Handler


def _as_reply(value: Reply | str | int | dict) -> Reply:
    if isinstance(value, Reply):
        return value
    if isinstance(value, str):
        return Reply(content=value)
    if isinstance(value, int):
        return Reply(content=None, status=value)
    return Reply(**value)


@pytest.fixture
def chat_server() -> Iterator:
    """``chat_server(replies) -> MockChatServer``: start a scripted server on a free port of 127.0.0.1.

    A reply is a chat answer (``str``), an HTTP error status (``int``) or ``Reply`` keyword arguments
    (``dict``: content, status, delay, raw). The last reply is repeated once the others are used up.
    """
    started: list[ThreadingHTTPServer] = []

    def start(replies: list[Reply | str | int | dict], max_requests: int = 32) -> MockChatServer:
        state = MockChatServer([_as_reply(r) for r in replies], max_requests=max_requests)
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
        httpd.daemon_threads = True
        state.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        started.append(httpd)
        return state

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()
