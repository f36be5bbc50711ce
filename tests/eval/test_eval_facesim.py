"""FaceSim-Cur pre/post-processing with a stand-in detector and a tiny IR backbone."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

cv2 = pytest.importorskip("cv2")

from bindweave.eval.scorers.base import SkipVideo, VideoSample  # noqa: E402
from bindweave.eval.scorers.curricularface import IRBackbone, _infer_architecture, load_curricularface  # noqa: E402
from bindweave.eval.scorers.facesim import (  # noqa: E402
    ARCFACE_TEMPLATE,
    Face,
    FaceSimScorer,
    aligned_face,
    detect_face,
    face_tensor,
    human_reference_index,
    norm_crop,
    similarity_transform,
)


def _similarity(scale: float, angle_deg: float, tx: float, ty: float) -> np.ndarray:
    a = math.radians(angle_deg)
    rot = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return np.hstack([rot, [[tx], [ty]]])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def _texture(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)


def _photo(seed: int = 0):
    """A 'photo' containing a 224 template-space face warped by a known similarity, and its keypoints."""
    face = _texture(224, seed)
    to_photo = _similarity(0.8, 15.0, 60.0, 40.0)
    photo = cv2.warpAffine(face, to_photo, (320, 280))
    kps = _apply(to_photo, ARCFACE_TEMPLATE * 2.0)
    return face, photo, kps


class StandInDetector:
    """Returns one face with fixed keypoints unless the image centre is dark (dark frames: no face)."""

    def __init__(self, kps: np.ndarray, min_size: int = 0):
        self.kps = kps
        self.min_size = min_size
        self.calls = 0

    def __call__(self, image_bgr):
        self.calls += 1
        h, w = image_bgr.shape[:2]
        if image_bgr[h // 2 - 20 : h // 2 + 20, w // 2 - 20 : w // 2 + 20].mean() < 20 or h < self.min_size:
            return []
        offset = np.array([(w - 320) / 2, (h - 280) / 2]) if self.min_size else np.zeros(2)
        x1, y1 = self.kps.min(0) - 10
        x2, y2 = self.kps.max(0) + 10
        return [Face(bbox=np.array([x1, y1, x2, y2]) + np.tile(offset, 2), kps=self.kps + offset)]


def test_similarity_transform_recovers_a_known_transform():
    matrix = _similarity(1.7, -25.0, 12.0, -3.5)
    src = ARCFACE_TEMPLATE
    assert similarity_transform(src, _apply(matrix, src)) == pytest.approx(matrix, abs=1e-9)


def test_similarity_transform_is_least_squares_for_noisy_points():
    rng = np.random.default_rng(0)
    matrix = _similarity(1.2, 10.0, 5.0, 5.0)
    dst = _apply(matrix, ARCFACE_TEMPLATE) + rng.normal(0, 0.5, (5, 2))
    est = similarity_transform(ARCFACE_TEMPLATE, dst)
    err = np.square(_apply(est, ARCFACE_TEMPLATE) - dst).sum()
    for perturbed in (est + 1e-3, est - 1e-3):
        assert err <= np.square(_apply(perturbed, ARCFACE_TEMPLATE) - dst).sum()


def test_norm_crop_undoes_the_warp():
    face, photo, kps = _photo()
    aligned = norm_crop(photo, kps, 224)
    assert aligned.shape == (224, 224, 3)
    inner = (slice(30, 194), slice(30, 194))
    assert np.abs(aligned[inner].astype(int) - face[inner].astype(int)).mean() < 6


def test_detect_face_retries_on_grey_padding_and_shifts_keypoints_back():
    _, photo, kps = _photo()
    detector = StandInDetector(kps, min_size=300)  # only "finds" the face in the padded image
    face = detect_face(detector, photo)
    assert detector.calls == 2
    assert face.kps == pytest.approx(kps)


def test_face_tensor_range_and_shape():
    tensor = face_tensor(np.full((224, 224, 3), 255, np.uint8))
    assert tensor.shape == (1, 3, 112, 112)
    assert tensor.min().item() == pytest.approx(1.0) and tensor.max().item() == pytest.approx(1.0)
    assert face_tensor(np.zeros((224, 224, 3), np.uint8)).max().item() == pytest.approx(-1.0)


def test_human_reference_selection():
    assert (
        human_reference_index(["Images/humanobj/thing/ball/1.jpg", "Images/humanobj/human/crop_man/x/5.jpg"])
        == 1
    )
    assert human_reference_index(["Images/singlehuman/woman/3.png"]) == 0
    assert human_reference_index(["Images/human.jpg", "Images/dog.jpg"], ["Man", "Dog"]) == 0
    assert human_reference_index(["Images/dog.jpg", "Images/human.jpg"], ["Dog", "Woman"]) == 1
    assert human_reference_index(["Images/dog.jpg"], ["Dog"]) is None


def _tiny_ir(seed: int = 0) -> IRBackbone:
    torch.manual_seed(seed)
    return IRBackbone(units=(1, 2, 1, 1), widths=(8, 16, 24, 32), embedding_dim=16).eval()


def test_facesim_scorer_same_identity_scores_one(tmp_path):
    _, photo, kps = _photo()
    reference = tmp_path / "crop_man.png"
    Image.fromarray(photo).save(reference)
    dark = np.zeros_like(photo)
    frames = np.stack([photo, photo, dark, photo])
    sample = VideoSample.from_frames(
        "singleface_1", frames, reference_paths=[reference], class_labels=["Man"]
    )
    scorer = FaceSimScorer(StandInDetector(kps), _tiny_ir(), num_frames=32)
    assert scorer.applies_to(sample)
    result = scorer(sample)
    assert result.value == pytest.approx(1.0, abs=1e-5)
    # 32 samples of 4 frames, duplicates kept (linspace(0, 3, 32, dtype=int)): frame 2 (dark, no face)
    # is drawn 10 times, the others 22 times.
    assert result.details == {"frames_with_face": 22, "frames": 32}


def test_facesim_scorer_other_identity_and_no_face(tmp_path):
    _, photo, kps = _photo(seed=0)
    _, other, _ = _photo(seed=1)
    reference = tmp_path / "ref.png"
    Image.fromarray(other).save(reference)
    sample = VideoSample.from_frames(
        "faceobj_2", np.stack([photo] * 2), reference_paths=[reference], class_labels=["Woman"]
    )
    scorer = FaceSimScorer(StandInDetector(kps), _tiny_ir())
    value = scorer(sample).value
    assert 0.0 <= value < 0.999
    # Expected from the definition: max(0, cos) of the two L2-normalised embeddings.
    emb = [scorer.embed(aligned_face(StandInDetector(kps), img)) for img in (other, photo)]
    assert value == pytest.approx(max(0.0, float(emb[0] @ emb[1])), abs=1e-5)

    no_face = VideoSample.from_frames(
        "faceobj_3", np.zeros((2, 280, 320, 3), np.uint8), reference_paths=[reference], class_labels=["Woman"]
    )
    assert scorer(no_face).value == 0.0  # no face in the video: scored 0, as the benchmark


def test_facesim_skips_a_video_whose_reference_has_no_face(tmp_path):
    _, photo, kps = _photo(seed=0)
    dark = tmp_path / "crop_woman.png"
    Image.fromarray(np.zeros((280, 320, 3), np.uint8)).save(dark)
    sample = VideoSample.from_frames(
        "faceobj_4", np.stack([photo] * 2), reference_paths=[dark], class_labels=["Woman"]
    )
    scorer = FaceSimScorer(StandInDetector(kps), _tiny_ir())
    with pytest.raises(SkipVideo, match="no face in the human reference: .*crop_woman.png"):
        scorer(sample)
    no_human = VideoSample.from_frames(
        "humanobj_1", np.stack([photo] * 2), reference_paths=[dark], class_labels=["Ball"]
    )
    with pytest.raises(SkipVideo, match="no human reference"):
        scorer(no_human)


def test_facesim_only_for_face_categories():
    scorer = FaceSimScorer(StandInDetector(np.zeros((5, 2))), _tiny_ir())
    for category, expected in [
        ("singleface", True),
        ("singlehuman", True),
        ("faceobj", True),
        ("humanobj", True),
        ("multiface", False),
        ("singleobj", False),
    ]:
        assert (
            scorer.applies_to(VideoSample.from_frames(f"{category}_1", np.zeros((1, 8, 8, 3), np.uint8)))
            is expected
        )


class _TFaceBasicBlockIR(torch.nn.Module):
    """Written from TFace's public ``model_irse.py`` ``BasicBlockIR`` (names and order as there)."""

    def __init__(self, in_channel, depth, stride):
        super().__init__()
        nn = torch.nn
        if in_channel == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, (1, 1), stride, bias=False), nn.BatchNorm2d(depth)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
            nn.BatchNorm2d(depth),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        )

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


class _TFaceFlatten(torch.nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1)


class _TFaceIR(torch.nn.Module):
    """TFace ``Backbone(input_size=[112, 112], mode="ir")`` with its stage table as a parameter
    (``IR_101`` = units (3, 13, 30, 3) of widths (64, 128, 256, 512)); output BN1d without affine."""

    def __init__(self, units=(3, 13, 30, 3), widths=(64, 128, 256, 512), stem=64):
        super().__init__()
        nn = torch.nn
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, stem, (3, 3), 1, 1, bias=False), nn.BatchNorm2d(stem), nn.PReLU(stem)
        )
        modules, in_channel = [], stem
        for count, depth in zip(units, widths, strict=True):
            for i in range(count):
                modules.append(_TFaceBasicBlockIR(in_channel, depth, 2 if i == 0 else 1))
                in_channel = depth
        self.body = nn.Sequential(*modules)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(widths[-1]),
            nn.Dropout(0.4),
            _TFaceFlatten(),
            nn.Linear(widths[-1] * 7 * 7, 512),
            nn.BatchNorm1d(512, affine=False),
        )

    def forward(self, x):
        return self.output_layer(self.body(self.input_layer(x)))


def _randomise_statistics(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and affine terms and PReLU slopes (a fresh model has identity BNs,
    which would hide a missing or misplaced BN)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
                module.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                if module.affine:
                    module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                    module.bias.copy_(torch.randn(n, generator=gen) * 0.2)
            elif isinstance(module, torch.nn.PReLU):
                module.weight.copy_(torch.rand(module.weight.shape, generator=gen) * 0.5)


def test_ir101_has_tface_layout():
    """Every key and shape of TFace's IR_101 (the released file's layout), and nothing else."""
    with torch.device("meta"):
        ours = IRBackbone(affine_output=False).state_dict()
        reference = _TFaceIR().state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in reference.items()}
    assert "body.48.res_layer.2.running_var" in ours  # the BN after the first conv
    arch = _infer_architecture(reference)
    assert arch == {
        "units": (3, 13, 30, 3),
        "widths": (64, 128, 256, 512),
        "embedding_dim": 512,
        "input_size": 112,
        "affine_output": False,
    }


def test_curricularface_loads_a_tface_state_dict_strictly_and_embeds_the_same(tmp_path):
    reference = _TFaceIR(units=(1, 2, 1, 1), widths=(8, 16, 24, 32), stem=8)
    _randomise_statistics(reference)
    reference.eval()
    path = tmp_path / "glint360k_curricular_face_r101_backbone.bin"
    torch.save(reference.state_dict(), path)  # as released: a plain state dict
    loaded = load_curricularface(path)  # strict load
    x = torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        expected, got = reference(x), loaded(x)
    assert got.shape == (3, 512)
    # Same modules in the same order on the same inputs: equal to float32 rounding.
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_curricularface_loader_accepts_module_prefix_and_affine_output(tmp_path):
    model = _tiny_ir()
    _randomise_statistics(model, seed=3)
    path = tmp_path / "backbone.bin"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    loaded = load_curricularface(path)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)
    assert _infer_architecture(model.state_dict())["affine_output"] is True


def test_curricularface_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="glint360k_curricular_face_r101_backbone.bin"):
        load_curricularface(tmp_path / "glint360k_curricular_face_r101_backbone.bin")
