"""Toy subject-to-video scenes: 1-4 sprites move over a plain background as the prompt says.

A :class:`Scene` is the whole ground truth of a sample: background, and per subject its sprite, start
cell (a 3 x 3 grid) and motion (left, right, up, down or still, at a fixed speed). The prompt states the
background colour and, per subject *by its position in the reference list* ("the first subject", "the
one in the second image"), where it starts and how it moves; it never describes the subject. So the
clip is determined by prompt + references, and drawing it needs both:

- the appearance comes only from the reference images;
- the placement and motion come only from the prompt, bound to the right reference by an ordinal.

Everything is seeded: :func:`sample_scene` with the same ``(seed, split, index)`` gives the same scene.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .sprites import RGB, Sprite, draw_sprite, random_sprite

__all__ = [
    "BACKGROUNDS",
    "DIRECTIONS",
    "CELL_NAMES",
    "FRAME_SIZE",
    "MOTION_PHRASES",
    "NUM_FRAMES",
    "SPEED",
    "Scene",
    "Subject",
    "render_clip",
    "sample_scene",
    "scene_prompt",
    "toy_scene",
    "trajectory",
]

FRAME_SIZE = 64  # frames are FRAME_SIZE x FRAME_SIZE
NUM_FRAMES = 17  # 4k + 1, 16 fps: about one second
SPEED = 2.0  # pixels per frame: a moving subject travels 32 px over the clip

BACKGROUNDS: dict[str, RGB] = {
    "grey": (128, 128, 128),
    "dark blue": (36, 48, 112),
    "green": (58, 124, 60),
    "sand": (206, 186, 136),
    "maroon": (112, 38, 52),
    "teal": (38, 122, 124),
}
DIRECTIONS: dict[str, tuple[float, float]] = {  # (dy, dx) per frame, in units of SPEED
    "left": (0.0, -1.0),
    "right": (0.0, 1.0),
    "up": (-1.0, 0.0),
    "down": (1.0, 0.0),
    "still": (0.0, 0.0),
}
_DIRECTION_WEIGHTS = (0.22, 0.22, 0.22, 0.22, 0.12)
_SUBJECT_COUNT_WEIGHTS = (0.3, 0.35, 0.2, 0.15)  # 1, 2, 3, 4 subjects
_CELL_CENTRES = (FRAME_SIZE / 6, FRAME_SIZE / 2, 5 * FRAME_SIZE / 6)
_MIN_CONTRAST = 90.0  # min RGB distance between a sprite's body colour and the background
_SPLIT_IDS = {"train": 0, "heldout": 1, "demo": 2}

_ORDINALS = ("first", "second", "third", "fourth")

#: How a prompt names each start cell (row, col) of the 3 x 3 grid.
CELL_NAMES = {
    (0, 0): "in the top left corner",
    (0, 1): "at the top",
    (0, 2): "in the top right corner",
    (1, 0): "on the left",
    (1, 1): "in the centre",
    (1, 2): "on the right",
    (2, 0): "in the bottom left corner",
    (2, 1): "at the bottom",
    (2, 2): "in the bottom right corner",
}

#: The phrases a prompt states each direction with (one drawn per subject).
MOTION_PHRASES = {
    "left": ("moves to the left", "slides left", "drifts left"),
    "right": ("moves to the right", "slides right", "drifts right"),
    "up": ("rises", "moves up", "floats upward"),
    "down": ("falls", "moves down", "drops"),
    "still": ("stays still", "does not move", "rests in place"),
}


@dataclass(frozen=True)
class Subject:
    sprite: Sprite
    cell: tuple[int, int]  # (row, col) of the start cell in the 3 x 3 grid
    direction: str  # a key of DIRECTIONS

    def to_dict(self) -> dict:
        return {"sprite": self.sprite.to_dict(), "cell": list(self.cell), "direction": self.direction}

    @classmethod
    def from_dict(cls, data: dict) -> Subject:
        return cls(Sprite.from_dict(data["sprite"]), tuple(data["cell"]), data["direction"])


@dataclass(frozen=True)
class Scene:
    """A toy sample's ground truth. Subjects are in reference order (the order the prompt counts)."""

    background: str  # a key of BACKGROUNDS
    subjects: tuple[Subject, ...]
    prompt: str

    @property
    def background_rgb(self) -> RGB:
        return BACKGROUNDS[self.background]

    def to_dict(self) -> dict:
        return {
            "background": self.background,
            "subjects": [s.to_dict() for s in self.subjects],
            "prompt": self.prompt,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        return cls(data["background"], tuple(Subject.from_dict(s) for s in data["subjects"]), data["prompt"])


_START_ROW = {"down": 0, "up": 2}  # a vertical move starts at the top or bottom row ...
_START_COLUMN = {"right": 0, "left": 2}  # ... a horizontal one in the left or right column


def _allowed_cells(direction: str) -> list[tuple[int, int]]:
    """Start cells from which the whole motion stays inside the frame."""
    return [
        (row, col)
        for row in range(3)
        for col in range(3)
        if _START_ROW.get(direction, row) == row and _START_COLUMN.get(direction, col) == col
    ]


def _contrasting_sprite(rng: np.random.Generator, background: RGB) -> Sprite:
    while True:
        sprite = random_sprite(rng)
        if np.linalg.norm(np.subtract(sprite.body, background)) >= _MIN_CONTRAST:
            return sprite


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of ``split``: independent of every other sample and split."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(_SPLIT_IDS)}")
    return np.random.default_rng([seed, _SPLIT_IDS[split], index])


def sample_scene(rng: np.random.Generator, num_subjects: int | None = None) -> Scene:
    """A random scene with ``num_subjects`` (1-4; random when ``None``) subjects in distinct start cells."""
    if num_subjects is None:
        num_subjects = int(rng.choice(4, p=_SUBJECT_COUNT_WEIGHTS)) + 1
    if not 1 <= num_subjects <= 4:
        raise ValueError(f"num_subjects must be 1-4, got {num_subjects}")
    background = str(rng.choice(list(BACKGROUNDS)))
    subjects: list[Subject] = []
    used: set[tuple[int, int]] = set()
    while len(subjects) < num_subjects:
        direction = str(rng.choice(list(DIRECTIONS), p=_DIRECTION_WEIGHTS))
        cells = [c for c in _allowed_cells(direction) if c not in used]
        if not cells:
            continue
        cell = cells[int(rng.integers(len(cells)))]
        used.add(cell)
        subjects.append(Subject(_contrasting_sprite(rng, BACKGROUNDS[background]), cell, direction))
    subjects_t = tuple(subjects)
    return Scene(background, subjects_t, scene_prompt(background, subjects_t, rng))


def scene_prompt(background: str, subjects: tuple[Subject, ...], rng: np.random.Generator) -> str:
    """The prompt: background, then each subject by its reference position, start cell and motion."""
    clauses = []
    for i, subject in enumerate(subjects):
        if i == 0:
            name = "the subject" if len(subjects) == 1 else "the first subject"
        else:
            name = str(rng.choice([f"the {_ORDINALS[i]} subject", f"the {_ORDINALS[i]} one"]))
        if rng.uniform() < 0.3:
            name = f"the subject from image {i + 1}" if len(subjects) > 1 else "the subject from the image"
        verb = str(rng.choice(MOTION_PHRASES[subject.direction]))
        clauses.append(f"{name} starts {CELL_NAMES[subject.cell]} and {verb}")
    body = clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " while " + clauses[-1]
    return f"On a {background} background, {body}."


def trajectory(subject: Subject, num_frames: int = NUM_FRAMES) -> np.ndarray:
    """Top-left corner ``(y, x)`` of the subject's sprite in each frame: ``(num_frames, 2)`` int."""
    size = subject.sprite.size
    row, col = subject.cell
    start = np.array([_CELL_CENTRES[row], _CELL_CENTRES[col]]) - size / 2
    step = SPEED * np.array(DIRECTIONS[subject.direction])
    positions = start[None] + np.arange(num_frames)[:, None] * step[None]
    return np.rint(positions).astype(int)


def render_clip(scene: Scene, num_frames: int = NUM_FRAMES) -> np.ndarray:
    """The ground-truth clip ``(num_frames, FRAME_SIZE, FRAME_SIZE, 3)`` uint8; later subjects on top."""
    frames = np.empty((num_frames, FRAME_SIZE, FRAME_SIZE, 3), np.uint8)
    frames[:] = np.array(scene.background_rgb, np.uint8)
    for subject in scene.subjects:
        rgb, mask = draw_sprite(subject.sprite)
        for frame, (y, x) in zip(frames, trajectory(subject, num_frames), strict=True):
            _paste(frame, rgb, mask, y, x)
    return frames


def render_subject_mask(scene: Scene, num_frames: int = NUM_FRAMES) -> np.ndarray:
    """Where the clip's subjects are: ``(num_frames, FRAME_SIZE, FRAME_SIZE)`` bool, the union of their masks."""
    masks = np.zeros((num_frames, FRAME_SIZE, FRAME_SIZE), bool)
    for subject in scene.subjects:
        _, mask = draw_sprite(subject.sprite)
        for frame, (y, x) in zip(masks, trajectory(subject, num_frames), strict=True):
            _paste(frame, mask, mask, y, x)
    return masks


def _paste(frame: np.ndarray, rgb: np.ndarray, mask: np.ndarray, y: int, x: int) -> None:
    """Paste a masked sprite at top-left ``(y, x)``, clipped to the frame."""
    h, w = mask.shape
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + h, frame.shape[0]), min(x + w, frame.shape[1])
    if y0 >= y1 or x0 >= x1:
        return
    m = mask[y0 - y : y1 - y, x0 - x : x1 - x]
    frame[y0:y1, x0:x1][m] = rgb[y0 - y : y1 - y, x0 - x : x1 - x][m]


def toy_scene(seed: int, split: str, index: int) -> Scene:
    """Sample ``index`` of ``split``: the same scene every time."""
    return sample_scene(scene_rng(seed, split, index))
