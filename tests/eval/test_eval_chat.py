"""The stdlib chat-completions client against a scripted server on 127.0.0.1."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from bindweave.eval.chat import ChatClient, ChatEndpointError, image_data_url, image_part, text_part


def _client(server, **kwargs) -> ChatClient:
    kwargs.setdefault("backoff", 0.0)
    kwargs.setdefault("timeout", 5.0)
    return ChatClient(server.url, "judge-model", **kwargs)


def test_request_shape_and_answer(chat_server, monkeypatch):
    monkeypatch.setenv("BW_TEST_KEY", "sk-test")
    server = chat_server(["  4  "])
    messages = [{"role": "user", "content": [text_part("hello")]}]
    assert _client(server, api_key_env="BW_TEST_KEY").complete(messages, temperature=0) == "  4  "
    (request,) = server.requests
    assert request == {"model": "judge-model", "messages": messages, "temperature": 0}
    assert server.headers[0]["Authorization"] == "Bearer sk-test"


def test_no_api_key_sends_no_authorization(chat_server, monkeypatch):
    monkeypatch.delenv("BW_TEST_KEY_UNSET", raising=False)
    server = chat_server(["x"])
    _client(server, api_key_env="BW_TEST_KEY_UNSET").complete([])
    assert "Authorization" not in server.headers[0]


def test_retries_on_500_then_succeeds(chat_server):
    server = chat_server([500, 503, "3"])
    waits: list[float] = []
    client = _client(server, retries=3, backoff=0.5, sleep=waits.append)
    assert client.complete([]) == "3"
    assert len(server.requests) == 3
    assert waits == [0.5, 1.0]  # exponential backoff


def test_error_after_retries_exhausted(chat_server):
    server = chat_server([500])
    with pytest.raises(ChatEndpointError, match="after 3 attempt"):
        _client(server, retries=2).complete([])
    assert len(server.requests) == 3


def test_client_error_is_not_retried(chat_server):
    server = chat_server([401])
    with pytest.raises(ChatEndpointError, match="HTTP 401"):
        _client(server, retries=3).complete([])
    assert len(server.requests) == 1


def test_timeout_is_retried_and_reported(chat_server):
    server = chat_server([{"content": "late", "delay": 1.0}])
    with pytest.raises(ChatEndpointError, match="after 2 attempt"):
        _client(server, retries=1, timeout=0.2).complete([])
    assert len(server.requests) == 2


def test_malformed_response_is_an_error(chat_server):
    server = chat_server([{"raw": b'{"unexpected": true}'}])
    with pytest.raises(ChatEndpointError, match="choices"):
        _client(server).complete([])


def test_invalid_endpoint():
    with pytest.raises(ValueError, match="http"):
        ChatClient("127.0.0.1:8000", "m")


def test_image_data_url_round_trip():
    image = np.zeros((20, 30, 3), np.uint8)
    image[..., 0] = 200
    url = image_data_url(image)
    assert url.startswith("data:image/jpeg;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.size == (30, 20)
    assert np.asarray(decoded)[..., 0].mean() == pytest.approx(200, abs=3)
    assert image_part(image)["image_url"]["url"] == url
