"""NaturalScore: a VLM judge rates how real the video looks, 1-5, on 16 frames; three runs averaged.

Frames are sampled uniformly, resized so the long side is 512 (area interpolation), JPEG-encoded and sent
as base64 data URLs, followed by the rating instruction, to an OpenAI-compatible chat-completions
endpoint (OpenS2V used ``gpt-4o-2024-11-20``). The first number in [1, 5] of the answer is the rating.

The instruction below is our own wording of the released criteria (common-sense consistency, physical
plausibility, natural appearance, generation artifacts, human anatomy when people are present, and the
five-level scale). Use ``prompt=`` (or ``judge_prompt_file`` in the eval config) to supply a different
text, e.g. the released one, when exact comparability with the leaderboard matters.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import numpy as np

from bindweave.eval.chat import ChatClient, image_part, text_part
from bindweave.eval.scorers.base import Scored, VideoSample

log = logging.getLogger(__name__)

__all__ = ["JUDGE_PROMPT", "JudgeAnswerError", "NaturalScorer", "parse_rating", "resize_long_side"]

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

    def messages(self, frames: Sequence[np.ndarray]) -> list[dict]:
        content = [image_part(resize_long_side(f)) for f in frames]
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
        messages = self.messages(sample.sampled_frames(self.num_frames))
        ratings = [self.rate(messages) for _ in range(self.runs)]
        return Scored(float(np.mean(ratings)), {"runs": ratings, "judge_model": self.client.model})
