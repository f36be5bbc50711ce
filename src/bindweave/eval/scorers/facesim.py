"""FaceSim-Cur: identity similarity between the human reference and the faces in the video.

As in the released ``eval/get_facesim.py`` of OpenS2V-Nexus:

* only the categories ``singleface``, ``singlehuman``, ``faceobj`` and ``humanobj`` are scored (the
  multi-person categories are not: which face to compare with which reference would be ambiguous);
* the reference is the case's first human image (path under ``man/``, ``woman/``, ``crop_man/`` or
  ``crop_woman/``; for other manifests, the first reference labelled Man/Woman/...);
* face detection (insightface, images in BGR): the largest face; if none, the image is padded by 25 % on
  each side with grey (128) and detection retried, the keypoints shifted back;
* alignment: ``norm_crop`` to 224x224 with the ArcFace 5-point template (least-squares similarity, the
  Umeyama estimate scikit-image uses), converted to RGB, resized to 112x112, ``(x / 255 - 0.5) / 0.5``;
* CurricularFace IR-101 embedding, L2-normalised; per frame ``max(0, cos)``, frames without a face (or
  with similarity exactly 0) are skipped; the video score is the mean over the 32 benchmark frames, 0.0
  when no frame has a usable face;
* a video whose human reference is missing or shows no face is skipped (:class:`SkipVideo`), as the
  benchmark skips it: it has no FaceSim, and the summary counts it.

The detector and the embedder are small callable interfaces; :class:`InsightFaceDetector` is the thin
adapter to insightface's ``FaceAnalysis`` (NOT VERIFIED here: neither insightface nor its model files are
available in this repository).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from bindweave.eval.scorers.base import DEFAULT_NUM_FRAMES, Scored, SkipVideo, VideoSample, require_files

__all__ = [
    "ARCFACE_TEMPLATE",
    "FACE_CATEGORIES",
    "Face",
    "FaceDetector",
    "FaceSimScorer",
    "InsightFaceDetector",
    "detect_face",
    "face_tensor",
    "human_reference_index",
    "norm_crop",
    "similarity_transform",
]

FACE_CATEGORIES = frozenset({"singleface", "singlehuman", "faceobj", "humanobj"})
HUMAN_PATH_MARKERS = ("/man/", "/woman/", "/crop_woman/", "/crop_man/")
HUMAN_LABELS = frozenset({"man", "woman", "human", "person", "boy", "girl"})
INSIGHTFACE_SOURCE = "BestWishYsh/OpenS2V-Weight/face_extractor (insightface antelopev2 models)"

#: ArcFace five-point template (eyes, nose tip, mouth corners) for a 112x112 crop.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
ALIGN_SIZE = 224
EMBED_SIZE = 112
PAD_SCALE = 1.25


@dataclass(frozen=True)
class Face:
    """A detected face: ``bbox`` (x1, y1, x2, y2) and five keypoints ``kps`` (5, 2), in pixels."""

    bbox: np.ndarray
    kps: np.ndarray

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = (float(v) for v in self.bbox[:4])
        return (x2 - x1) * (y2 - y1)


class FaceDetector(Protocol):
    """Detects faces in a BGR uint8 image."""

    def __call__(self, image_bgr: np.ndarray) -> Sequence[Face]: ...


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The least-squares similarity (rotation, uniform scale, translation) mapping ``src`` to ``dst``.

    Umeyama's closed form (1991); returns the 2x3 matrix for ``cv2.warpAffine``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    n, dim = src.shape
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / n
    u, s, vt = np.linalg.svd(cov)
    if np.linalg.matrix_rank(cov) < dim:
        raise ValueError("degenerate keypoints: cannot estimate a similarity transform")
    d = np.ones(dim)
    if np.linalg.det(cov) < 0:
        d[-1] = -1.0
    rotation = u @ np.diag(d) @ vt
    scale = (s @ d) / src_c.var(axis=0).sum()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def norm_crop(image: np.ndarray, kps: np.ndarray, size: int = ALIGN_SIZE) -> np.ndarray:
    """Warp ``image`` so the five keypoints land on the ArcFace template scaled to ``size`` (insightface)."""
    import cv2

    if size % 112 == 0:
        template = ARCFACE_TEMPLATE * (size / 112.0)
    elif size % 128 == 0:
        ratio = size / 128.0
        template = ARCFACE_TEMPLATE * ratio
        template[:, 0] += 8.0 * ratio
    else:
        raise ValueError(f"alignment size must be a multiple of 112 or 128, got {size}")
    matrix = similarity_transform(np.asarray(kps, dtype=np.float64).reshape(5, 2), template)
    return cv2.warpAffine(image, matrix, (size, size), borderValue=0.0)


def _largest(faces: Sequence[Face]) -> Face | None:
    return max(faces, key=lambda f: f.area) if faces else None


def detect_face(detector: FaceDetector, image_bgr: np.ndarray) -> Face | None:
    """The largest face; retried on a grey-padded copy (keypoints mapped back) if none is found."""
    import cv2

    face = _largest(detector(image_bgr))
    if face is not None:
        return face
    h, w = image_bgr.shape[:2]
    pad_y, pad_x = int(h * (PAD_SCALE - 1)), int(w * (PAD_SCALE - 1))
    padded = cv2.copyMakeBorder(
        image_bgr, pad_y, pad_y, pad_x, pad_x, cv2.BORDER_CONSTANT, value=(128, 128, 128)
    )
    face = _largest(detector(padded))
    if face is None:
        return None
    offset = np.array([pad_x, pad_y], dtype=np.float64)
    return Face(
        bbox=np.asarray(face.bbox, np.float64) - np.tile(offset, 2), kps=np.asarray(face.kps) - offset
    )


def aligned_face(detector: FaceDetector, image_rgb: np.ndarray) -> np.ndarray | None:
    """The aligned 224x224 RGB face crop of an RGB image, or ``None`` when no face is found."""
    import cv2

    image_bgr = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2BGR)
    face = detect_face(detector, image_bgr)
    if face is None:
        return None
    return cv2.cvtColor(norm_crop(image_bgr, face.kps), cv2.COLOR_BGR2RGB)


def face_tensor(aligned_rgb: np.ndarray) -> torch.Tensor:
    """``(1, 3, 112, 112)`` float in [-1, 1] from an aligned RGB crop (resized with bilinear, as cv2)."""
    import cv2

    small = cv2.resize(aligned_rgb, (EMBED_SIZE, EMBED_SIZE))
    tensor = torch.from_numpy(np.ascontiguousarray(small.transpose(2, 0, 1))).float().unsqueeze(0)
    return tensor.div(255).sub(0.5).div(0.5)


def human_reference_index(img_paths: Sequence[str | Path], class_labels: Sequence[str] = ()) -> int | None:
    """Index of the first human reference: by OpenS2V folder name first, else by class label."""
    for i, p in enumerate(img_paths):
        posix = "/" + Path(p).as_posix()
        if any(marker in posix for marker in HUMAN_PATH_MARKERS):
            return i
    for i, label in enumerate(class_labels[: len(img_paths)]):
        if label.strip().lower() in HUMAN_LABELS:
            return i
    return None


class FaceSimScorer:
    """Per-video FaceSim-Cur (raw cosine in [0, 1])."""

    name = "facesim_cur"

    def __init__(
        self,
        detector: FaceDetector,
        embedder: torch.nn.Module,
        num_frames: int = DEFAULT_NUM_FRAMES,
        device: str | torch.device = "cpu",
        categories: frozenset[str] = FACE_CATEGORIES,
    ) -> None:
        self.detector = detector
        self.embedder = embedder.eval().to(device) if isinstance(embedder, torch.nn.Module) else embedder
        self.num_frames = num_frames
        self.device = torch.device(device)
        self.categories = categories

    def applies_to(self, sample: VideoSample) -> bool:
        return sample.category in self.categories

    @torch.no_grad()
    def embed(self, aligned_rgb: np.ndarray) -> torch.Tensor:
        emb = self.embedder(face_tensor(aligned_rgb).to(self.device)).float()[0]
        return emb / torch.linalg.vector_norm(emb)

    def __call__(self, sample: VideoSample) -> Scored:
        index = human_reference_index([str(p) for p in sample.reference_paths], sample.class_labels)
        if index is None:  # the benchmark skips such a video
            raise SkipVideo(f"no human reference: none of {[str(p) for p in sample.reference_paths]}")
        reference = np.asarray(sample.reference_images()[index])
        ref_face = aligned_face(self.detector, reference)
        if ref_face is None:  # the benchmark skips such a video
            raise SkipVideo(f"no face in the human reference: {sample.reference_paths[index]}")
        ref = self.embed(ref_face)
        scores = []
        frames = sample.sampled_frames(self.num_frames)
        for frame in frames:
            crop = aligned_face(self.detector, frame)
            if crop is None:
                continue
            score = max(0.0, float(ref @ self.embed(crop)))
            if score != 0.0:
                scores.append(score)
        value = float(np.mean(scores)) if scores else 0.0
        return Scored(value, {"frames_with_face": len(scores), "frames": len(frames)})


class InsightFaceDetector:
    """Adapter to insightface ``FaceAnalysis`` (det_size 320x320, as released). NOT VERIFIED HERE: needs
    the ``insightface`` and ``onnxruntime`` packages and the ``face_extractor`` model folder."""

    def __init__(
        self, root: str | Path, providers: Sequence[str] = ("CUDAExecutionProvider", "CPUExecutionProvider")
    ):
        root = Path(root)
        require_files("facesim_cur", [(root, INSIGHTFACE_SOURCE)])
        try:
            from insightface.app import FaceAnalysis
        except ImportError as exc:
            raise ImportError(
                "facesim_cur needs the insightface package (pip install insightface onnxruntime)"
            ) from exc
        self.app = FaceAnalysis(root=str(root), providers=list(providers))
        self.app.prepare(ctx_id=0, det_size=(320, 320))

    def __call__(self, image_bgr: np.ndarray) -> list[Face]:
        return [Face(bbox=np.asarray(f["bbox"]), kps=np.asarray(f["kps"])) for f in self.app.get(image_bgr)]
