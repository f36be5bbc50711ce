"""Scores of a generated toy clip against its known ground truth.

Each reference subject is searched for in every frame by normalised cross-correlation (NCC) with its
*template*: the reference sprite composited on the scene's background colour (what the subject looks like
in the clip). Channels are centred separately but normalised together (:func:`ncc_map`), so a right
shape in the wrong colours scores lower than the right subject. From the per-frame best matches:

- ``fidelity``: the best NCC, averaged over frames and subjects (1: every subject found exactly);
- ``consistency``: NCC between each subject's best-match patch in every frame and in the first frame,
  averaged (1: the subject looks the same all clip long);
- ``direction_accuracy``: the fraction of subjects whose best-match trajectory moves in the stated
  direction (least-squares displacement over the clip; under :data:`STILL_THRESHOLD` pixels is "still");
- ``trajectory_error``: mean distance in pixels between the best match and the true position;
- ``psnr``: PSNR of the clip against the ground-truth clip, in dB (capped at 100).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .sprites import sprite_on
from .world import DIRECTIONS, Scene, trajectory

__all__ = [
    "METRICS",
    "STILL_THRESHOLD",
    "ClipScores",
    "best_matches",
    "mean_scores",
    "ncc_map",
    "psnr",
    "score_clip",
    "template",
]

#: A subject that moves less than this many pixels over the clip counts as still (a move is 32 px).
STILL_THRESHOLD = 8.0
#: Score names, and whether higher is better.
METRICS: dict[str, bool] = {
    "fidelity": True,
    "consistency": True,
    "direction_accuracy": True,
    "trajectory_error": False,
    "psnr": True,
}
_FLAT_VARIANCE = 1e-8
_PSNR_CAP = 100.0


@dataclass(frozen=True)
class ClipScores:
    fidelity: float
    consistency: float
    direction_accuracy: float
    trajectory_error: float
    psnr: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _as_float_video(video: np.ndarray) -> torch.Tensor:
    """``(F, H, W, 3)`` uint8 or float in [0, 1] -> ``(F, 3, H, W)`` float64."""
    array = np.asarray(video)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"video must be (F, H, W, 3), got shape {array.shape}")
    tensor = torch.from_numpy(array.astype(np.float64))
    if array.dtype == np.uint8:
        tensor = tensor / 255.0
    return tensor.permute(0, 3, 1, 2)


def template(scene: Scene, index: int) -> torch.Tensor:
    """Subject ``index`` as it should look in the clip: ``(3, s, s)`` float64, sprite on the background."""
    pixels, _ = sprite_on(scene.subjects[index].sprite, scene.background_rgb)
    return torch.from_numpy(pixels.astype(np.float64) / 255.0).permute(2, 0, 1)


def ncc_map(video: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
    """NCC of ``patch`` ``(3, h, w)`` at every valid top-left position of ``video`` ``(F, 3, H, W)``.

    Each channel is centred on its own mean (so a flat window of any colour has no signal), and the
    three channels are normalised together (so the contrast pattern across channels, i.e. the colours,
    must match too). Returns ``(F, H - h + 1, W - w + 1)``; flat windows or patches score 0.
    """
    channels, h, w = patch.shape
    height, width = video.shape[-2:]
    n = h * w
    centred = patch - patch.mean(dim=(1, 2), keepdim=True)
    patch_energy = centred.pow(2).sum()
    # sum_c sum(W_c * T0_c) = sum_c sum((W_c - mean W_c) * T0_c), since each T0_c sums to 0. The correlation
    # is a product of spectra (float64 conv2d is ~10x slower on CPU); the circular correlation over the whole
    # frame equals the plain one at every valid position, where no window wraps around.
    spectrum = (torch.fft.rfft2(video) * torch.fft.rfft2(centred, s=(height, width)).conj()).sum(dim=1)
    numerator = torch.fft.irfft2(spectrum, s=(height, width))[:, : height - h + 1, : width - w + 1]
    window_sum = _window_sums(video, h, w)  # (F, 3, H', W') per-channel sums
    window_sq = _window_sums(video * video, h, w)
    window_energy = (window_sq - window_sum * window_sum / n).clamp_min(0.0).sum(dim=1)
    # Flat windows (std under 1e-4 of the pixel range: rounding noise) and flat patches score 0.
    textured = (window_energy / (channels * n) > _FLAT_VARIANCE) & (
        patch_energy / (channels * n) > _FLAT_VARIANCE
    )
    denominator = (patch_energy * window_energy).sqrt().clamp_min(1e-12)
    return torch.where(textured, numerator / denominator, torch.zeros_like(numerator))


def _window_sums(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Sums of every ``h x w`` window of ``x`` ``(..., H, W)`` -> ``(..., H - h + 1, W - w + 1)``, from an
    integral image (exact to float64 rounding: ~1e-13 on the sums of [0, 1] pixels of a 64x64 frame)."""
    integral = F.pad(x.cumsum(-2).cumsum(-1), (1, 0, 1, 0))
    return integral[..., h:, w:] - integral[..., :-h, w:] - integral[..., h:, :-w] + integral[..., :-h, :-w]


def best_matches(video: torch.Tensor, patch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per frame, the best NCC ``(F,)`` and its top-left position ``(F, 2)`` as (y, x)."""
    scores = ncc_map(video, patch)
    width = scores.shape[-1]
    best, flat = scores.flatten(1).max(dim=1)
    return best, torch.stack([flat // width, flat % width], dim=1)


def _direction(positions: np.ndarray) -> str:
    """The stated direction that best explains a ``(F, 2)`` trajectory (least-squares displacement)."""
    frames = np.arange(len(positions), dtype=np.float64)
    slope = np.polyfit(frames, positions.astype(np.float64), 1)[0]  # (dy, dx) per frame
    displacement = slope * (len(positions) - 1)
    if np.abs(displacement).max() < STILL_THRESHOLD:
        return "still"
    axis = int(np.argmax(np.abs(displacement)))
    sign = float(np.sign(displacement[axis]))
    return next(name for name, step in DIRECTIONS.items() if step[axis] == sign and step[1 - axis] == 0)


def psnr(video: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB of two ``(F, H, W, 3)`` clips (uint8 or [0, 1] floats), capped at 100."""
    a, b = _as_float_video(video), _as_float_video(reference)
    if a.shape != b.shape:
        raise ValueError(f"clip shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    mse = float((a - b).pow(2).mean())
    return _PSNR_CAP if mse <= 10 ** (-_PSNR_CAP / 10) else -10.0 * np.log10(mse)


def score_clip(video: np.ndarray, scene: Scene, ground_truth: np.ndarray) -> ClipScores:
    """Score a generated clip ``(F, H, W, 3)`` against ``scene`` and its rendered ``ground_truth``."""
    frames = _as_float_video(video)
    fidelity, consistency, correct, distance = [], [], [], []
    for k, subject in enumerate(scene.subjects):
        patch = template(scene, k)
        size = patch.shape[-1]
        best, positions = best_matches(frames, patch)
        fidelity.append(float(best.mean()))
        crops = torch.stack(
            [frames[f, :, y : y + size, x : x + size] for f, (y, x) in enumerate(positions.tolist())]
        )
        consistency.append(float(ncc_map(crops[1:], crops[0]).mean()))  # (F - 1, 1, 1): one score per frame
        correct.append(_direction(positions.numpy()) == subject.direction)
        truth = np.clip(trajectory(subject, len(frames)), 0, np.array(frames.shape[-2:]) - size)
        distance.append(float(np.linalg.norm(positions.numpy() - truth, axis=1).mean()))
    return ClipScores(
        fidelity=float(np.mean(fidelity)),
        consistency=float(np.mean(consistency)),
        direction_accuracy=float(np.mean(correct)),
        trajectory_error=float(np.mean(distance)),
        psnr=psnr(video, ground_truth),
    )


def mean_scores(scores: list[ClipScores]) -> dict[str, float]:
    """The mean of each score over clips (each clip weighs the same)."""
    if not scores:
        raise ValueError("no clip scores to average")
    return {name: float(np.mean([getattr(s, name) for s in scores])) for name in METRICS}
