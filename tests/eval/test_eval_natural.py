"""NaturalScore: the judge request, rating parsing and run averaging, against a local mock endpoint."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from bindweave.eval.chat import ChatClient, ChatEndpointError
from bindweave.eval.scorers.base import VideoSample
from bindweave.eval.scorers.natural import (
    JUDGE_PROMPT,
    PARAPHRASED_PROMPT,
    JudgeAnswerError,
    NaturalScorer,
    judge_frame_indices,
    load_judge_prompt,
    parse_rating,
    read_judge_frames,
)
from bindweave.io.video import write_video


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


# --------------------------------------------------------------------------- the benchmark's frames


def test_judge_frames_are_i_times_n_div_16():
    assert judge_frame_indices(81) == [5 * i for i in range(16)]  # 81 // 16 = 5: frames 0..75
    # Not 16 frames spread over the whole clip: the last frames (76-80) are never shown.
    assert judge_frame_indices(81) != [int(i) for i in np.rint(np.linspace(0, 80, 16))]
    assert judge_frame_indices(10) == list(range(10))  # step 1; reads past the end are left out
    assert judge_frame_indices(32) == [2 * i for i in range(16)]


def _numbered_video(path, n):
    """A video whose frame t is uniformly grey at level 8 * t (decodes back within a few levels)."""
    frames = np.stack([np.full((64, 96, 3), 8 * t, np.uint8) for t in range(n)])
    write_video(frames, path, fps=16, quality=10)
    return frames


def test_file_frames_are_read_with_opencv_at_the_benchmark_indices(tmp_path):
    _numbered_video(tmp_path / "singleobj_1.mp4", 20)  # 20 // 16 = 1: frames 0..15
    frames = read_judge_frames(tmp_path / "singleobj_1.mp4")
    assert len(frames) == 16
    levels = [float(f.mean()) / 8 for f in frames]
    assert levels == pytest.approx(list(range(16)), abs=0.5)
    sample = VideoSample(id="singleobj_1", video_path=tmp_path / "singleobj_1.mp4")
    scorer = NaturalScorer(ChatClient("http://127.0.0.1:9/v1", "m"))
    assert [float(f.mean()) / 8 for f in scorer.frames(sample)] == pytest.approx(levels, abs=1e-6)


def test_in_memory_frames_use_the_same_rule():
    frames = np.stack([np.full((8, 8, 3), t, np.uint8) for t in range(40)])
    scorer = NaturalScorer(ChatClient("http://127.0.0.1:9/v1", "m"))
    picked = scorer.frames(VideoSample.from_frames("singleobj_1", frames))
    assert [int(f[0, 0, 0]) for f in picked] == [2 * i for i in range(16)]


# --------------------------------------------------------------------------------- the judge prompt

BENCHMARK_LIKE = '''import cv2
from openai import OpenAI  # not installed here: the file must be parsed, never imported


prompt = """
Your task is to rate realism.

Please only return the score (1-5), no additional explanation.
"""


def extract_frames(video_path, num_frames=16):
    return []
'''


def test_judge_prompt_read_from_the_benchmark_script_without_running_it(tmp_path):
    script = tmp_path / "get_naturalscore.py"
    script.write_text(BENCHMARK_LIKE)
    prompt = load_judge_prompt(script)
    assert (
        prompt
        == "\nYour task is to rate realism.\n\nPlease only return the score (1-5), no additional explanation.\n"
    )


def test_judge_prompt_text_file_is_taken_verbatim_and_bad_files_fail(tmp_path):
    text = tmp_path / "prompt.txt"
    text.write_text("Rate it 1-5.\n")
    assert load_judge_prompt(text) == "Rate it 1-5.\n"
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        load_judge_prompt(tmp_path / "empty.txt")
    (tmp_path / "other.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="prompt"):
        load_judge_prompt(tmp_path / "other.py")
    with pytest.raises(FileNotFoundError, match="nowhere.py"):
        load_judge_prompt(tmp_path / "nowhere.py")


def test_the_prompt_used_is_recorded(chat_server, tmp_path):
    server = chat_server(["4"])
    paraphrased = _scorer(server, runs=1)(_sample(4))
    assert paraphrased.details["judge_prompt"] == PARAPHRASED_PROMPT
    own = _scorer(server, runs=1, prompt="Rate it 1-5.\n")(_sample(4))
    assert own.details["judge_prompt"].startswith("sha256:")
    assert server.requests[-1]["messages"][0]["content"][-1]["text"] == "Rate it 1-5.\n"
