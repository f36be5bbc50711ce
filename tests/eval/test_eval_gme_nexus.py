"""GmeScore and NexusScore with colour-based stand-ins for GME and the image-prompt detector."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bindweave.eval.scorers.base import SkipVideo, VideoSample
from bindweave.eval.scorers.gme import GME_TEXT_INSTRUCTION, GmeScorer
from bindweave.eval.scorers.nexus import Detection, NexusScorer, filter_detections, nexus_label, nms

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


class ColourGme:
    """Stand-in for GME: an image embeds as its normalised mean RGB; a colour word as that colour."""

    def __init__(self):
        self.instructions: list[str] = []

    def embed_texts(self, texts, instruction):
        self.instructions.append(instruction)
        vectors = torch.tensor([COLOURS[t.lower()] for t in texts], dtype=torch.float32)
        return vectors / vectors.norm(dim=-1, keepdim=True)

    def embed_images(self, images):
        vectors = torch.tensor(np.stack([np.asarray(i, np.float32).reshape(-1, 3).mean(0) for i in images]))
        return vectors / vectors.norm(dim=-1, keepdim=True).clamp(min=1e-6)


class ColourDetector:
    """Stand-in for YOLO-World: boxes the pixels of the prompt image's colour, with a fixed score."""

    def __init__(self, scores):
        self.scores = scores

    def __call__(self, frame, prompt_image):
        colour = np.asarray(prompt_image).reshape(-1, 3)[0]
        mask = np.all(np.asarray(frame) == colour, axis=-1)
        if not mask.any():
            return []
        ys, xs = np.nonzero(mask)
        name = next(k for k, v in COLOURS.items() if tuple(colour) == v)
        return [Detection((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), self.scores[name])]


def _solid(colour: str, size=(16, 16)) -> np.ndarray:
    return np.broadcast_to(np.array(COLOURS[colour], np.uint8), (*size, 3)).copy()


def test_gme_score_is_mean_text_frame_similarity():
    frames = np.stack([_solid("red")] * 3 + [_solid("green")])
    gme = ColourGme()
    sample = VideoSample.from_frames("singleobj_1", frames, prompt="red")
    assert GmeScorer(gme, num_frames=4)(sample) == pytest.approx(0.75)
    # 32 benchmark samples of 4 frames (linspace(0, 3, 32, dtype=int)): frame 3, the green one, once.
    assert GmeScorer(gme, num_frames=32)(sample) == pytest.approx(31 / 32)
    assert gme.instructions == [GME_TEXT_INSTRUCTION] * 2


def test_gme_needs_a_prompt():
    with pytest.raises(ValueError, match="prompt"):
        GmeScorer(ColourGme())(VideoSample.from_frames("a_1", np.zeros((2, 8, 8, 3), np.uint8)))


def _scene(num_frames: int, red_until: int) -> np.ndarray:
    frames = np.zeros((num_frames, 64, 64, 3), np.uint8)
    frames[:, 40:56, 40:56] = COLOURS["green"]  # green subject in every frame
    frames[:red_until, 8:24, 8:24] = COLOURS["red"]  # red subject only in the first frames
    return frames


@pytest.fixture
def references(tmp_path):
    paths = {}
    for colour in ("red", "green"):
        paths[colour] = tmp_path / f"{colour}.png"
        Image.fromarray(_solid(colour, (32, 32))).save(paths[colour])
    return paths


def test_nexus_score_divides_by_frames_with_detections(references):
    # Red: score 0.9 (> 0.6, kept) in frames 0-3. Green: 0.55 (> the detector's 0.5, so returned, but
    # < 0.6: not kept) in all 8 frames. Kept crops are pure red: GME ref-crop similarity 1, text "Red"
    # similarity 1. The (quirk) released formula: mean(kept similarity) / frames with any detection.
    sample = VideoSample.from_frames(
        "multiobject_1",
        _scene(8, red_until=4),
        reference_paths=[references["red"], references["green"]],
        class_labels=["Red", "Green"],
    )
    scorer = NexusScorer(ColourDetector({"red": 0.9, "green": 0.55}), ColourGme(), num_frames=8)
    result = scorer(sample)
    assert result.value == pytest.approx(1.0 / 8)
    assert result.details == {"frames": 8, "frames_with_detection": 8, "crops": 12, "kept": 4}


def test_nexus_text_check_rejects_wrong_subjects(references):
    sample = VideoSample.from_frames(
        "singleobj_2", _scene(4, red_until=4), reference_paths=[references["red"]], class_labels=["Blue"]
    )
    result = NexusScorer(ColourDetector({"red": 0.9}), ColourGme())(sample)
    assert result.value == 0.0 and result.details["kept"] == 0


def test_nexus_no_detection_scores_zero(references):
    sample = VideoSample.from_frames(
        "singleobj_3",
        np.zeros((4, 32, 32, 3), np.uint8),
        reference_paths=[references["red"]],
        class_labels=["Red"],
    )
    assert NexusScorer(ColourDetector({"red": 0.9}), ColourGme())(sample).value == 0.0


def test_nexus_skips_faces_in_face_categories(references):
    sample = VideoSample.from_frames(
        "faceobj_1",
        _scene(4, red_until=4),
        reference_paths=[references["green"], references["red"]],
        class_labels=["Man", "Red"],
    )
    scorer = NexusScorer(ColourDetector({"red": 0.9, "green": 0.9}), ColourGme(), num_frames=4)
    assert [label for _, label in scorer.subjects(sample)] == ["Red"]
    assert scorer(sample).value == pytest.approx(1.0 / 4)  # the green "Man" is never searched
    face_only = VideoSample.from_frames(
        "singleface_1", _scene(2, 0), reference_paths=[references["green"]], class_labels=["Woman"]
    )
    assert not scorer.applies_to(face_only)
    assert scorer.applies_to(sample)


def test_nexus_labels():
    assert nexus_label("singleface", "Man") is None
    assert nexus_label("multiface", "Woman") is None
    assert nexus_label("multiface", "Bedroom") == "Bedroom"
    assert nexus_label("humanobj", "Woman") == "human"
    assert nexus_label("singlehuman", "Man") == "human"
    assert nexus_label("multiobject", "Cup") == "Cup"


def test_nexus_needs_a_label_per_reference(references):
    sample = VideoSample.from_frames("singleobj_4", _scene(2, 2), reference_paths=[references["red"]])
    scorer = NexusScorer(ColourDetector({"red": 0.9}), ColourGme())
    assert scorer.applies_to(sample)
    with pytest.raises(SkipVideo, match="computation failed: ValueError: .*class_label") as info:
        scorer(sample)
    assert isinstance(info.value.__cause__, ValueError)


def test_nexus_drops_a_video_whose_computation_fails(references, tmp_path):
    """The benchmark wraps each video in try/except and leaves failed ones out: so do we, with the reason."""
    sample = VideoSample.from_frames(
        "singleobj_5", _scene(2, 2), reference_paths=[tmp_path / "gone.png"], class_labels=["Red"]
    )
    with pytest.raises(SkipVideo, match="computation failed: FileNotFoundError: .*gone.png"):
        NexusScorer(ColourDetector({"red": 0.9}), ColourGme())(sample)


def test_detection_post_processing():
    boxes = torch.tensor(
        [[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [40, 40, 50, 50]], dtype=torch.float32
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.4])
    assert nms(boxes, scores, 0.7).tolist() == [0, 2, 3]  # box 1 overlaps box 0 with IoU 0.82
    dets = filter_detections(boxes, scores)
    assert [d.score for d in dets] == pytest.approx([0.9, 0.7])  # NMS, then score > 0.5
    assert dets[0].box == (0.0, 0.0, 10.0, 10.0)
    top1 = filter_detections(boxes, scores, max_boxes=1)
    assert [d.score for d in top1] == pytest.approx([0.9])
    assert filter_detections(torch.zeros(0, 4), torch.zeros(0)) == []
