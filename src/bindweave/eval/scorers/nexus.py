"""NexusScore: is each reference subject really in the video? Detection + retrieval consistency.

As in the released ``eval/get_nexusscore.py`` of OpenS2V-Nexus, on 32 uniformly sampled frames:

1. For every frame and every reference (with its class label), an open-vocabulary detector prompted with
   the *reference image* (YOLO-World image prompt; its own NMS at IoU 0.7, boxes with score > 0.5, at most
   100) returns boxes; each box is cropped from the frame.
   Human references are skipped in face categories (``...face...``: FaceSim covers them), and their label
   becomes ``human`` in human categories (``...human...``).
2. GME embeds the crops, the references and the labels (as text queries). A crop is kept when its
   detection score > 0.6 **and** its GME text-crop similarity > 0.30 (and the reference-crop similarity
   is not exactly 0).
3. **(quirk)** The video score is the mean GME reference-crop similarity of the kept crops **divided by
   the number of frames with at least one detection**, 0 when nothing is kept. This is why the benchmark
   caps the per-video value at 0.05 before normalising, and why videos scoring exactly 0 are left out of
   the mean (see :func:`bindweave.eval.scores.normalize_metric`).
4. A video whose computation fails (an unreadable reference, a detector error, ...) is dropped, as the
   benchmark drops it (:class:`~bindweave.eval.scorers.base.SkipVideo`, the error kept as the reason and
   counted in the summary). The benchmark also drops a video without any detection (its GME call on an
   empty list fails); we score it 0, which its aggregation leaves out just the same.

The detector is the :class:`ImagePromptDetector` interface; :class:`YoloWorldImagePromptDetector` is a thin
adapter to the released YOLO-World v2-L image-prompt checkpoint (NOT VERIFIED here: it needs mmyolo /
mmdet / mmengine, the YOLO-World config and the weights, none of which are available in this repository).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image

from bindweave.eval.scorers.base import (
    DEFAULT_NUM_FRAMES,
    Scored,
    SkipVideo,
    VideoSample,
    require_files,
    require_weights,
)
from bindweave.eval.scorers.gme import GME_TEXT_INSTRUCTION, GmeEmbedder

__all__ = [
    "DETECTION_THRESHOLD",
    "TEXT_THRESHOLD",
    "Detection",
    "ImagePromptDetector",
    "NexusScorer",
    "YoloWorldImagePromptDetector",
    "filter_detections",
    "nexus_label",
    "nms",
]

DETECTION_THRESHOLD = 0.6
TEXT_THRESHOLD = 0.30
DETECTOR_SCORE_THRESHOLD = 0.5
DETECTOR_NMS_IOU = 0.7
DETECTOR_MAX_BOXES = 100
HUMAN_CLASS_LABELS = frozenset({"Man", "Woman"})
YOLO_WORLD_SOURCE = "BestWishYsh/OpenS2V-Weight/yolo_world_v2_l_image_prompt_adapter-719a7afb.pth"
YOLO_CLIP_SOURCE = "openai/clip-vit-base-patch32"
YOLO_CONFIG_SOURCE = "OpenS2V-Nexus eval/utils/yoloworld/configs (YOLO-World image-prompt demo config)"


@dataclass(frozen=True)
class Detection:
    """A box ``(x1, y1, x2, y2)`` in frame pixels and its detection score."""

    box: tuple[float, float, float, float]
    score: float


class ImagePromptDetector(Protocol):
    """Finds instances of the subject shown in ``prompt_image`` in ``frame``.

    Returns the detector's final boxes (after its NMS and its own score threshold, see
    :func:`filter_detections`); NexusScore applies the stricter 0.6 threshold itself.
    """

    def __call__(self, frame: Image.Image, prompt_image: Image.Image) -> Sequence[Detection]: ...


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression; indices of the kept boxes, highest score first."""
    order = torch.argsort(scores, descending=True)
    boxes = boxes.float()
    areas = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    keep: list[int] = []
    while order.numel():
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        lt = torch.maximum(boxes[i, :2], boxes[rest, :2])
        rb = torch.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = (rb - lt).clamp(min=0).prod(-1)
        iou = inter / (areas[i] + areas[rest] - inter).clamp(min=1e-12)
        order = rest[iou <= iou_threshold]
    return torch.tensor(keep, dtype=torch.long)


def filter_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    score_threshold: float = DETECTOR_SCORE_THRESHOLD,
    nms_iou: float = DETECTOR_NMS_IOU,
    max_boxes: int = DETECTOR_MAX_BOXES,
) -> list[Detection]:
    """The released post-processing of YOLO-World outputs: NMS, then score > threshold, then top-k."""
    if boxes.numel() == 0:
        return []
    keep = nms(boxes, scores, nms_iou)
    boxes, scores = boxes[keep], scores[keep]
    mask = scores.float() > score_threshold
    boxes, scores = boxes[mask], scores[mask]
    if len(scores) > max_boxes:
        top = scores.float().topk(max_boxes).indices
        boxes, scores = boxes[top], scores[top]
    return [
        Detection(tuple(float(v) for v in b), float(s))
        for b, s in zip(boxes.tolist(), scores.tolist(), strict=True)
    ]


def nexus_label(category: str, class_label: str) -> str | None:
    """The text label NexusScore uses for a reference, or ``None`` when the reference is skipped."""
    if "face" in category and class_label in HUMAN_CLASS_LABELS:
        return None
    if "human" in category and class_label in HUMAN_CLASS_LABELS:
        return "human"
    return class_label


class NexusScorer:
    """Per-video NexusScore (raw; aggregation caps at 0.05, divides by 0.05 and drops exact zeros)."""

    name = "nexus"

    def __init__(
        self,
        detector: ImagePromptDetector,
        gme: GmeEmbedder,
        num_frames: int = DEFAULT_NUM_FRAMES,
        detection_threshold: float = DETECTION_THRESHOLD,
        text_threshold: float = TEXT_THRESHOLD,
    ) -> None:
        self.detector = detector
        self.gme = gme
        self.num_frames = num_frames
        self.detection_threshold = detection_threshold
        self.text_threshold = text_threshold

    def applies_to(self, sample: VideoSample) -> bool:
        """False when every reference is skipped (e.g. ``singleface``: its only reference is a face)."""
        if len(sample.class_labels) < len(sample.reference_paths):
            return True  # let __call__ report the missing labels
        return any(nexus_label(sample.category, label) is not None for label in sample.class_labels)

    def subjects(self, sample: VideoSample) -> list[tuple[Image.Image, str]]:
        """(reference image, text label) pairs that NexusScore checks."""
        if len(sample.class_labels) < len(sample.reference_paths):
            raise ValueError(
                f"{sample.id}: NexusScore needs a class_label per reference "
                f"({len(sample.reference_paths)} images, {len(sample.class_labels)} labels)"
            )
        pairs = []
        for image, label in zip(sample.reference_images(), sample.class_labels, strict=False):
            text = nexus_label(sample.category, label)
            if text is not None:
                pairs.append((image, text))
        return pairs

    def __call__(self, sample: VideoSample) -> Scored:
        """The video's NexusScore; a video whose computation fails is dropped (:class:`SkipVideo`, with the
        error), as the benchmark drops it."""
        try:
            return self.score(sample)
        except Exception as exc:  # noqa: BLE001 - the benchmark's rule; the error is kept as the reason
            raise SkipVideo(f"computation failed: {type(exc).__name__}: {exc}") from exc

    @torch.no_grad()
    def score(self, sample: VideoSample) -> Scored:
        subjects = self.subjects(sample)
        frames = sample.sampled_images(self.num_frames)
        crops: list[Image.Image] = []
        subject_of_crop: list[int] = []
        confidences: list[float] = []
        frames_with_detection = 0
        for frame in frames:
            found = False
            for j, (reference, _) in enumerate(subjects):
                detections = self.detector(frame, reference)
                found = found or len(detections) > 0
                for det in detections:
                    crops.append(frame.crop(det.box))
                    subject_of_crop.append(j)
                    confidences.append(det.score)
            frames_with_detection += int(found)
        details = {"frames": len(frames), "frames_with_detection": frames_with_detection, "crops": len(crops)}
        if not crops:
            return Scored(0.0, {**details, "kept": 0})

        labels = sorted({text for _, text in subjects})
        label_index = {text: i for i, text in enumerate(labels)}
        # Products in the embeddings' dtype (fp16 for GME), as the benchmark computes them.
        crop_emb = self.gme.embed_images(crops)
        ref_emb = self.gme.embed_images([ref for ref, _ in subjects]).to(crop_emb.dtype)
        text_emb = self.gme.embed_texts(labels, GME_TEXT_INSTRUCTION).to(crop_emb.dtype)
        idx = torch.tensor(subject_of_crop)
        image_sim = (ref_emb[idx] * crop_emb).sum(-1)
        text_idx = torch.tensor([label_index[subjects[j][1]] for j in subject_of_crop])
        text_sim = (text_emb[text_idx] * crop_emb).sum(-1)
        conf = torch.tensor(confidences)
        kept = (conf > self.detection_threshold) & (text_sim > self.text_threshold) & (image_sim != 0)
        value = float(image_sim[kept].mean()) / frames_with_detection if bool(kept.any()) else 0.0
        return Scored(value, {**details, "kept": int(kept.sum())})


class YoloWorldImagePromptDetector:
    """Adapter to YOLO-World v2-L with an image-prompt adapter. NOT VERIFIED HERE.

    Needs ``mmengine``, ``mmdet``, ``mmyolo`` and the YOLO-World repository on the path, its config
    ``yolo_world_v2_l_vlpan_bn_2e-4_80e_8gpus_image_prompt_demo.py``, the checkpoint and CLIP ViT-B/32.
    Mirrors the released ``run_image``: the prompt image's CLIP embedding (normalised, passed through the
    model's image-prompt projector when it has one, normalised again) is the single class embedding.
    """

    def __init__(self, config: str | Path, weights: str | Path, clip_path: str | Path, device: str = "cuda"):
        config, weights, clip_path = Path(config), Path(weights), Path(clip_path)
        require_files("nexus", [(config, YOLO_CONFIG_SOURCE), (weights, YOLO_WORLD_SOURCE)])
        require_weights("nexus", clip_path, YOLO_CLIP_SOURCE)
        try:
            from mmengine.config import Config
            from mmengine.dataset import Compose
            from mmengine.runner import Runner
        except ImportError as exc:
            raise ImportError("nexus needs mmengine/mmdet/mmyolo and the YOLO-World code") from exc
        from transformers import AutoProcessor, CLIPVisionModelWithProjection

        cfg = Config.fromfile(str(config))
        cfg.work_dir = str(Path(weights).parent / "yolo_world_work_dir")
        cfg.load_from = str(weights)
        cfg.text_model_name = str(clip_path)
        cfg.model.vision_model = str(clip_path)
        cfg.model.backbone.text_model.model_name = str(clip_path)
        runner = (
            Runner.from_cfg(cfg)
            if "runner_type" not in cfg
            else __import__("mmyolo.registry", fromlist=["RUNNERS"]).RUNNERS.build(cfg)
        )
        runner.call_hook("before_run")
        runner.load_or_resume()
        pipeline = cfg.test_dataloader.dataset.pipeline
        pipeline[0].type = "mmdet.LoadImageFromNDArray"
        runner.pipeline = Compose(pipeline)
        runner.model.eval()
        self.runner = runner
        self.device = device
        self.processor = AutoProcessor.from_pretrained(clip_path)
        self.vision = CLIPVisionModelWithProjection.from_pretrained(clip_path).to(device).eval()

    @torch.no_grad()
    def _prompt_embedding(self, prompt_image: Image.Image) -> torch.Tensor:
        inputs = self.processor(images=[prompt_image.convert("RGB")], return_tensors="pt").to(self.device)
        feats = self.vision(**inputs).image_embeds.view(1, -1)
        feats = feats / feats.norm(p=2, dim=-1, keepdim=True)
        encoder = getattr(self.runner.model, "image_prompt_encoder", None)
        if encoder is not None:
            feats = encoder.projector(feats)
        return feats / feats.norm(p=2, dim=-1, keepdim=True)

    @torch.no_grad()
    def __call__(self, frame: Image.Image, prompt_image: Image.Image) -> list[Detection]:
        import numpy as np

        embeddings = self._prompt_embedding(prompt_image)
        self.runner.model.num_test_classes = embeddings.shape[0]
        self.runner.model.setembeddings(embeddings[None])
        data = self.runner.pipeline(
            {"img_id": 0, "img": np.array(frame.convert("RGB")), "texts": [["object"], [" "]]}
        )
        sample = data["data_samples"]
        if "texts" in sample:
            del sample["texts"]
        output = self.runner.model.test_step(
            {"inputs": data["inputs"].unsqueeze(0), "data_samples": [sample]}
        )[0]
        pred = output.pred_instances
        return filter_detections(pred.bboxes.float().cpu(), pred.scores.float().cpu())
