"""NaturalScore: a VLM judge rates how real the video looks, 1-5, on 16 frames; three runs averaged.

As the benchmark's ``eval/get_naturalscore.py``: frames ``i * (N // 16)`` for i = 0..15 (N from OpenCV's
frame count; a frame OpenCV cannot read is left out), read with OpenCV, resized so the long side is 512
(area interpolation), JPEG-encoded by OpenCV and sent as base64 data URLs, followed by the instruction, to
an OpenAI-compatible chat-completions endpoint (the benchmark used ``gpt-4o-2024-11-20``). The first
number in [1, 5] of the answer is the rating.

The instruction: comparable numbers need the benchmark's own text. :func:`load_judge_prompt` reads it
from the user's OpenS2V-Nexus checkout (the ``prompt`` string of ``eval/get_naturalscore.py``, read without
running that file) or from a text file (``--judge-prompt FILE``). Without it, :data:`JUDGE_PROMPT`, our
own paraphrase of the criteria, is used and the summary marks NaturalScore as not comparable to the
leaderboard.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bindweave.eval.chat import ChatClient, text_part
from bindweave.eval.scorers.base import Scored, VideoSample

log = logging.getLogger(__name__)

__all__ = [
    "JUDGE_PROMPT",
    "PARAPHRASED_PROMPT",
    "JudgeAnswerError",
    "NaturalScorer",
    "judge_frame_indices",
    "load_judge_prompt",
    "parse_rating",
    "read_judge_frames",
    "resize_long_side",
]

JUDGE_NUM_FRAMES = 16
JUDGE_RUNS = 3
JUDGE_LONG_SIDE = 512

JUDGE_PROMPT = """\
The images above are frames taken at regular intervals from one video clip. Judge how real the clip \
looks, i.e. how likely it is to be genuine camera footage rather than AI-generated.

Weigh these aspects:
- Common sense: do the people, objects and their interactions make sense together in this setting?
- Physics: are lighting, shadows, reflections and movement consistent with the real world?
- Appearance: do textures, details and proportions look like real life, without warping or distortion?
- Generation artifacts: any smearing, melting, flicker, objects morphing or changing between frames?
If people appear, look closely at faces (eyes, nose, mouth), hands and body proportions and how they \
move; if nobody appears, focus on the consistency of objects, motion and the environment.

Rate on this scale:
1 = clearly AI-generated: frequent, obvious artifacts, distorted shapes or impossible physics.
2 = probably AI-generated: noticeable cues such as unstable anatomy or textures, mild implausibility.
3 = undecided: mostly natural but with subtle flaws that raise doubt.
4 = probably real: natural and plausible, with only minor, explainable irregularities.
5 = clearly real: fully consistent with real footage, no visible sign of generation.

Answer with the score only: a single number from 1 to 5."""

#: The label of :data:`JUDGE_PROMPT` in per-video details and the summary.
PARAPHRASED_PROMPT = "paraphrase"

_NUMBER = re.compile(r"(?<![\d.])\d+(?:\.\d+)?")


class JudgeAnswerError(ValueError):
    """The judge's answer contains no rating between 1 and 5."""


def parse_rating(answer: str) -> float:
    """The first number in [1, 5] in ``answer`` (e.g. ``"4"``, ``"Score: 3.5"``, ``"**2**/5"``)."""
    for match in _NUMBER.finditer(answer):
        value = float(match.group())
        if 1.0 <= value <= 5.0:
            return value
    raise JudgeAnswerError(f"no rating between 1 and 5 in the judge's answer: {answer[:200]!r}")


def resize_long_side(frame: np.ndarray, long_side: int = JUDGE_LONG_SIDE) -> np.ndarray:
    """Resize so the longer side is ``long_side`` (aspect kept, ``int`` truncation, area interpolation)."""
    import cv2

    h, w = frame.shape[:2]
    if h >= w:
        size = (int(w * long_side / h), long_side)
    else:
        size = (long_side, int(h * long_side / w))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def load_judge_prompt(path: str | Path) -> str:
    """The judge instruction from ``path``: the module-level ``prompt = "..."`` of a ``.py`` file (the
    benchmark's ``eval/get_naturalscore.py``; parsed, never executed), else the whole text file verbatim."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"judge prompt file {path} not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".py":
        for node in ast.parse(text, filename=str(path)).body:
            if (
                isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "prompt" for t in node.targets)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                text = node.value.value
                break
        else:
            raise ValueError(f'{path}: no module-level string assignment `prompt = "..."` (the judge prompt)')
    if not text.strip():
        raise ValueError(f"judge prompt file {path} is empty")
    return text


def prompt_label(prompt: str) -> str:
    """How a prompt is recorded: ``paraphrase`` for ours, else ``sha256:<first 12 hex digits>``."""
    if prompt == JUDGE_PROMPT:
        return PARAPHRASED_PROMPT
    return "sha256:" + hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:12]


def judge_frame_indices(total: int, num_frames: int = JUDGE_NUM_FRAMES) -> list[int]:
    """The benchmark's judge frames: ``i * max(N // 16, 1)`` for i < 16, those past the end left out."""
    step = max(total // num_frames, 1)
    return [i * step for i in range(num_frames) if i * step < total]


def read_judge_frames(video_path: str | Path, num_frames: int = JUDGE_NUM_FRAMES) -> list[np.ndarray]:
    """The judge frames of a video file as the benchmark reads them: OpenCV, seek then read, BGR."""
    import cv2

    cap = cv2.VideoCapture(str(video_path))
    if not cap.isOpened():
        raise ValueError(f"OpenCV cannot open {video_path}")
    try:
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        step = max(total // num_frames, 1)
        frames = []
        for i in range(num_frames):
            cap.set(cv2.CAP_PROP_POS_FRAMES, i * step)
            ok, frame = cap.read()
            if ok:
                frames.append(frame)
    finally:
        cap.release()
    if not frames:
        raise ValueError(f"OpenCV read no frame of {video_path}")
    return frames


def _jpeg_part(frame_bgr: np.ndarray) -> dict:
    """A chat image part: the frame JPEG-encoded by OpenCV (its default quality 95), as the benchmark."""
    import cv2

    ok, buffer = cv2.imencode(".jpg", frame_bgr)
    if not ok:
        raise ValueError("OpenCV could not encode a frame as JPEG")
    url = "data:image/jpeg;base64," + base64.b64encode(buffer.tobytes()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": url}}


class NaturalScorer:
    """Per-video NaturalScore: mean of ``runs`` independent judge ratings (raw, 1-5)."""

    name = "natural"

    def __init__(
        self,
        client: ChatClient,
        runs: int = JUDGE_RUNS,
        num_frames: int = JUDGE_NUM_FRAMES,
        prompt: str = JUDGE_PROMPT,
        parse_attempts: int = 2,
    ) -> None:
        if runs < 1:
            raise ValueError("runs must be >= 1")
        self.client = client
        self.runs = runs
        self.num_frames = num_frames
        self.prompt = prompt
        self.parse_attempts = parse_attempts

    def frames(self, sample: VideoSample) -> list[np.ndarray]:
        """The judge frames, BGR: read from the file with OpenCV, or picked from in-memory frames."""
        if sample.video_path.is_file():
            return read_judge_frames(sample.video_path, self.num_frames)
        frames = sample.frames
        return [
            np.ascontiguousarray(frames[i][..., ::-1])
            for i in judge_frame_indices(len(frames), self.num_frames)
        ]

    def messages(self, frames_bgr: Sequence[np.ndarray]) -> list[dict]:
        content = [_jpeg_part(resize_long_side(f)) for f in frames_bgr]
        content.append(text_part(self.prompt))
        return [{"role": "user", "content": content}]

    def rate(self, messages: list[dict]) -> float:
        """One judge run; an unparsable answer is asked again up to ``parse_attempts`` times in total."""
        error: JudgeAnswerError | None = None
        for _ in range(self.parse_attempts):
            answer = self.client.complete(messages)
            try:
                return parse_rating(answer)
            except JudgeAnswerError as exc:
                log.warning("%s; asking again", exc)
                error = exc
        assert error is not None
        raise error

    def __call__(self, sample: VideoSample) -> Scored:
        messages = self.messages(self.frames(sample))
        ratings = [self.rate(messages) for _ in range(self.runs)]
        details = {
            "runs": ratings,
            "judge_model": self.client.model,
            "judge_prompt": prompt_label(self.prompt),
        }
        return Scored(float(np.mean(ratings)), details)
