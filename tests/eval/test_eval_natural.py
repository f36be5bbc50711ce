"""NaturalScore: the judge request, rating parsing and run averaging, against a local mock endpoint."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from bindweave.eval.chat import ChatClient, ChatEndpointError
from bindweave.eval.scorers.base import VideoSample
from bindweave.eval.scorers.natural import JUDGE_PROMPT, JudgeAnswerError, NaturalScorer, parse_rating


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("4", 4.0),
        (" 3\n", 3.0),
        ("Score: 2/5", 2.0),
        ("**5**", 5.0),
        ("I'd say 3.5.", 3.5),
        ("0, then 4", 4.0),
    ],
)
def test_parse_rating(answer, expected):
    assert parse_rating(answer) == expected


@pytest.mark.parametrize("answer", ["", "realistic", "10", "0"])
def test_parse_rating_rejects(answer):
    with pytest.raises(JudgeAnswerError):
        parse_rating(answer)


def _sample(num_frames=20):
    frames = np.random.default_rng(0).integers(0, 256, (num_frames, 96, 160, 3), dtype=np.uint8)
    return VideoSample.from_frames("singleobj_1", frames)


def _scorer(server, **kwargs):
    client = ChatClient(server.url, "gpt-judge", api_key_env="BW_JUDGE_KEY", timeout=5, retries=2, backoff=0)
    return NaturalScorer(client, **kwargs)


def test_three_runs_averaged_and_request_shape(chat_server, monkeypatch):
    monkeypatch.setenv("BW_JUDGE_KEY", "secret")
    server = chat_server(["4", "Score: 3", "5"])
    result = _scorer(server)(_sample())
    assert result.value == pytest.approx(4.0)
    assert result.details["runs"] == [4.0, 3.0, 5.0]
    assert len(server.requests) == 3
    request = server.requests[0]
    assert request["model"] == "gpt-judge"
    (message,) = request["messages"]
    parts = message["content"]
    assert [p["type"] for p in parts] == ["image_url"] * 16 + ["text"]
    assert parts[-1]["text"] == JUDGE_PROMPT
    url = parts[0]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert image.size == (512, 307)  # long side 512, int(96 * 512 / 160)
    assert server.headers[0]["Authorization"] == "Bearer secret"


def test_unparsable_answer_is_asked_again(chat_server):
    server = chat_server(["I cannot tell", "2"])
    assert _scorer(server, runs=1)(_sample(4)).value == 2.0
    assert len(server.requests) == 2


def test_persistently_unparsable_answer_fails(chat_server):
    server = chat_server(["no idea"])
    with pytest.raises(JudgeAnswerError):
        _scorer(server, runs=1, parse_attempts=2)(_sample(4))
    assert len(server.requests) == 2


def test_server_errors_are_retried_then_reported(chat_server):
    server = chat_server([500, "5"])
    assert _scorer(server, runs=1)(_sample(4)).value == 5.0
    failing = chat_server([503])
    with pytest.raises(ChatEndpointError):
        _scorer(failing, runs=1)(_sample(4))
    assert len(failing.requests) == 3  # 1 + 2 retries
