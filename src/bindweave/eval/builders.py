"""Building each OpenS2V-Eval metric's scorer from the ``eval score`` config, and the up-front file checks.

Expected layout of ``models_dir`` (public names in brackets)::

    clip-vit-large-patch14/            [openai/clip-vit-large-patch14]            aesthetic
    aesthetic-model.pth                [BestWishYsh/OpenS2V-Weight]               aesthetic
    one-align/                         [q-future/one-align]                       motion_smoothness
    face_extractor/                    [BestWishYsh/OpenS2V-Weight]               facesim_cur
    glint360k_curricular_face_r101_backbone.bin  [BestWishYsh/OpenS2V-Weight]     facesim_cur
    gme-Qwen2-VL-7B-Instruct/          [Alibaba-NLP/gme-Qwen2-VL-7B-Instruct]     gme, nexus
    clip-vit-base-patch32/             [openai/clip-vit-base-patch32]             nexus
    yolo_world_v2_l_image_prompt_adapter-719a7afb.pth  [BestWishYsh/OpenS2V-Weight]  nexus
    yolo_world_v2_l_vlpan_bn_2e-4_80e_8gpus_image_prompt_demo.py  [YOLO-World configs]  nexus
"""

from __future__ import annotations

from pathlib import Path

from bindweave.eval.score_config import EvalScoreConfig

__all__ = ["MetricUnavailable", "ScorerBuilders", "preflight"]

# File names under models_dir.
AESTHETIC_CLIP = "clip-vit-large-patch14"
AESTHETIC_MLP = "aesthetic-model.pth"
QALIGN_DIR = "one-align"
FACE_DETECTOR_DIR = "face_extractor"
CURRICULARFACE_FILE = "glint360k_curricular_face_r101_backbone.bin"
GME_DIR = "gme-Qwen2-VL-7B-Instruct"
YOLO_CLIP_DIR = "clip-vit-base-patch32"
YOLO_WEIGHTS = "yolo_world_v2_l_image_prompt_adapter-719a7afb.pth"
YOLO_CONFIG = "yolo_world_v2_l_vlpan_bn_2e-4_80e_8gpus_image_prompt_demo.py"


class MetricUnavailable(Exception):
    """A metric cannot be computed in this run (not configured); it is reported missing, not failed."""


# --------------------------------------------------------------------------------------------- builders


def _device(config: EvalScoreConfig) -> str:
    if config.device:
        return config.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _models_dir(config: EvalScoreConfig, metric: str) -> Path:
    if config.models_dir is None:
        raise MetricUnavailable(f"{metric}: no models_dir given")
    if not config.models_dir.is_dir():
        raise FileNotFoundError(f"models_dir {config.models_dir} is not a folder")
    return config.models_dir


def _required_files(metric: str, root: Path) -> list[tuple[Path, str]]:
    """The files a metric needs under ``models_dir`` (checked for all metrics before any scoring)."""
    from bindweave.eval.scorers.aesthetic import CLIP_SOURCE, MLP_SOURCE
    from bindweave.eval.scorers.curricularface import CURRICULARFACE_SOURCE
    from bindweave.eval.scorers.facesim import INSIGHTFACE_SOURCE
    from bindweave.eval.scorers.gme import GME_SOURCE
    from bindweave.eval.scorers.nexus import YOLO_CLIP_SOURCE, YOLO_CONFIG_SOURCE, YOLO_WORLD_SOURCE
    from bindweave.eval.scorers.smoothness import QALIGN_SOURCE

    table = {
        "aesthetic": [(AESTHETIC_CLIP, CLIP_SOURCE), (AESTHETIC_MLP, MLP_SOURCE)],
        "motion_smoothness": [(QALIGN_DIR, QALIGN_SOURCE)],
        "facesim_cur": [
            (FACE_DETECTOR_DIR, INSIGHTFACE_SOURCE),
            (CURRICULARFACE_FILE, CURRICULARFACE_SOURCE),
        ],
        "gme": [(GME_DIR, GME_SOURCE)],
        "nexus": [
            (GME_DIR, GME_SOURCE),
            (YOLO_CLIP_DIR, YOLO_CLIP_SOURCE),
            (YOLO_WEIGHTS, YOLO_WORLD_SOURCE),
            (YOLO_CONFIG, YOLO_CONFIG_SOURCE),
        ],
    }
    return [(root / rel, source) for rel, source in table.get(metric, [])]


def preflight(config: EvalScoreConfig) -> None:
    """Fail before any scoring if a configured metric's model files are absent (all named at once)."""
    if config.models_dir is None:
        return
    from bindweave.eval.scorers.base import MissingModelFileError

    problems = []
    for metric in config.metrics:
        missing = [(p, s) for p, s in _required_files(metric, config.models_dir) if not p.exists()]
        if missing:
            problems.append(f"{metric}: " + "; ".join(f"{p} (from {s})" for p, s in missing))
    if problems:
        raise MissingModelFileError("missing model file(s) under models_dir:\n  " + "\n  ".join(problems))


class ScorerBuilders:
    """Builds each metric's scorer from the config; shares the GME model between GmeScore and Nexus."""

    def __init__(self, config: EvalScoreConfig) -> None:
        self.config = config
        self._gme = None

    def gme_model(self):
        if self._gme is None:
            from bindweave.eval.scorers.gme import GmeQwen2VLEmbedder

            self._gme = GmeQwen2VLEmbedder(
                _models_dir(self.config, "gme") / GME_DIR, device=_device(self.config)
            )
        return self._gme

    def release_gme(self) -> None:
        self._gme = None

    def build(self, metric: str):
        c = self.config
        if metric == "motion_amplitude":
            from bindweave.eval.motion import MotionAmplitudeScorer

            return MotionAmplitudeScorer()
        if metric == "natural":
            if not c.judge_endpoint:
                raise MetricUnavailable("natural: no judge_endpoint given")
            from bindweave.eval.chat import ChatClient
            from bindweave.eval.scorers.natural import JUDGE_PROMPT, NaturalScorer, load_judge_prompt

            prompt = JUDGE_PROMPT if c.judge_prompt_file is None else load_judge_prompt(c.judge_prompt_file)
            client = ChatClient(
                c.judge_endpoint,
                c.judge_model,
                c.judge_api_key_env,
                timeout=c.judge_timeout,
                retries=c.judge_retries,
            )
            return NaturalScorer(client, runs=c.judge_runs, num_frames=c.judge_frames, prompt=prompt)
        root = _models_dir(c, metric)
        device = _device(c)
        if metric == "aesthetic":
            from bindweave.eval.scorers.aesthetic import load_aesthetic_scorer

            return load_aesthetic_scorer(root / AESTHETIC_CLIP, root / AESTHETIC_MLP, device, c.num_frames)
        if metric == "motion_smoothness":
            from bindweave.eval.scorers.smoothness import MotionSmoothnessScorer, QAlignQualityModel

            return MotionSmoothnessScorer(QAlignQualityModel(root / QALIGN_DIR, device=device))
        if metric == "facesim_cur":
            from bindweave.eval.scorers.base import require_files
            from bindweave.eval.scorers.curricularface import CURRICULARFACE_SOURCE, load_curricularface
            from bindweave.eval.scorers.facesim import INSIGHTFACE_SOURCE, FaceSimScorer, InsightFaceDetector

            require_files(
                "facesim_cur",
                [
                    (root / FACE_DETECTOR_DIR, INSIGHTFACE_SOURCE),
                    (root / CURRICULARFACE_FILE, CURRICULARFACE_SOURCE),
                ],
            )
            return FaceSimScorer(
                InsightFaceDetector(root / FACE_DETECTOR_DIR),
                load_curricularface(root / CURRICULARFACE_FILE),
                num_frames=c.num_frames,
                device=device,
            )
        if metric == "gme":
            from bindweave.eval.scorers.gme import GmeScorer

            return GmeScorer(self.gme_model(), num_frames=c.num_frames)
        if metric == "nexus":
            from bindweave.eval.scorers.nexus import NexusScorer, YoloWorldImagePromptDetector

            detector = YoloWorldImagePromptDetector(
                root / YOLO_CONFIG, root / YOLO_WEIGHTS, root / YOLO_CLIP_DIR, device=device
            )
            return NexusScorer(detector, self.gme_model(), num_frames=c.num_frames)
        raise KeyError(metric)
