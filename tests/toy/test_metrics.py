"""Toy metrics on synthetic clips with known answers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from bindweave.toy.dataset import toy_scene
from bindweave.toy.metrics import (
    STILL_THRESHOLD,
    best_matches,
    mean_scores,
    ncc_map,
    psnr,
    score_clip,
    template,
)
from bindweave.toy.world import Subject, render_clip

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up", "still": "still"}


def _moving_scene(index_from: int = 0):
    """A held-out scene whose subjects all move (so direction errors are visible)."""
    for index in range(index_from, 500):
        scene = toy_scene(0, "heldout", index)
        if len(scene.subjects) >= 2 and all(s.direction != "still" for s in scene.subjects):
            return scene
    raise AssertionError("no such scene")


def _reversed(scene):
    """The same subjects moving the opposite way, from the cell where the stated motion would start."""
    cells = {"left": (0, 2), "right": (0, 0), "up": (2, 0), "down": (0, 0)}
    flipped = []
    for s in scene.subjects:
        row, col = s.cell
        axis_cell = cells[OPPOSITE[s.direction]]
        cell = (row, axis_cell[1]) if s.direction in ("left", "right") else (axis_cell[0], col)
        flipped.append(Subject(s.sprite, cell, OPPOSITE[s.direction]))
    return dataclasses.replace(scene, subjects=tuple(flipped))


def test_ncc_map_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    video = torch.from_numpy(rng.uniform(size=(2, 3, 12, 10)))
    patch = torch.from_numpy(rng.uniform(size=(3, 4, 5)))
    scores = ncc_map(video, patch)
    assert scores.shape == (2, 9, 6)
    for f, y, x in [(0, 0, 0), (1, 8, 5), (0, 3, 2)]:
        window = video[f, :, y : y + 4, x : x + 5].numpy()
        a = (window - window.mean(axis=(1, 2), keepdims=True)).flatten()  # each channel centred alone
        b = (patch.numpy() - patch.numpy().mean(axis=(1, 2), keepdims=True)).flatten()
        expected = a @ b / np.sqrt((a @ a) * (b @ b))
        assert scores[f, y, x].item() == pytest.approx(expected, abs=1e-9)
    flat = torch.ones(1, 3, 12, 10) * torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1)
    assert ncc_map(flat.double(), patch).abs().max() == 0.0  # a flat window of any colour: no match


def test_best_match_finds_a_pasted_patch():
    rng = np.random.default_rng(1)
    video = torch.from_numpy(rng.uniform(size=(1, 3, 20, 20)))
    patch = video[0, :, 5:11, 9:15].clone()
    best, position = best_matches(video, patch)
    assert best.item() == pytest.approx(1.0)
    assert position.tolist() == [[5, 9]]


def test_perfect_clip_scores_the_ceiling():
    scene = _moving_scene()
    truth = render_clip(scene)
    scores = score_clip(truth, scene, truth)
    assert scores.direction_accuracy == 1.0
    assert scores.trajectory_error < 1.0
    assert scores.fidelity > 0.9 and scores.consistency > 0.9  # < 1 only where subjects overlap
    assert scores.psnr == 100.0
    as_floats = score_clip(truth.astype(np.float32) / 255, scene, truth)  # uint8 or [0, 1] floats
    assert as_floats.to_dict() == pytest.approx(scores.to_dict(), abs=1e-4)


def test_wrong_direction_scores_lower():
    scene = _moving_scene()
    truth = render_clip(scene)
    wrong = render_clip(_reversed(scene))
    perfect, scores = score_clip(truth, scene, truth), score_clip(wrong, scene, truth)
    assert scores.direction_accuracy == 0.0
    assert scores.trajectory_error > perfect.trajectory_error + STILL_THRESHOLD
    assert scores.psnr < perfect.psnr - 10
    assert scores.fidelity > 0.9  # the right subjects, on the wrong paths


def test_shuffled_frames_score_lower():
    scene = _moving_scene()
    truth = render_clip(scene)
    shuffled = truth[np.random.default_rng(0).permutation(len(truth))]
    perfect, scores = score_clip(truth, scene, truth), score_clip(shuffled, scene, truth)
    assert scores.trajectory_error > perfect.trajectory_error + 5
    assert scores.psnr < perfect.psnr - 10


def test_wrong_subjects_score_lower_fidelity():
    scene = _moving_scene()
    other = _moving_scene(index_from=50)  # other subjects, same paths
    sprites = [o.sprite for o in other.subjects] * 4
    swapped = tuple(dataclasses.replace(s, sprite=sprites[k]) for k, s in enumerate(scene.subjects))
    impostor = dataclasses.replace(scene, subjects=swapped)
    truth = render_clip(scene)
    perfect, scores = score_clip(truth, scene, truth), score_clip(render_clip(impostor), scene, truth)
    assert scores.fidelity < perfect.fidelity - 0.15


def test_blank_clip_scores_near_zero():
    scene = _moving_scene()
    truth = render_clip(scene)
    blank = np.broadcast_to(np.array(scene.background_rgb, np.uint8), truth.shape).copy()
    scores = score_clip(blank, scene, truth)
    assert scores.fidelity == 0.0 and scores.consistency == 0.0  # flat windows have no correlation


def test_template_is_the_sprite_on_the_background():
    scene = _moving_scene()
    patch = template(scene, 0)
    assert patch.shape == (3, scene.subjects[0].sprite.size, scene.subjects[0].sprite.size)
    corner = patch[:, 0, 0] * 255
    if scene.subjects[0].sprite.shape in ("disc", "diamond", "star", "triangle", "hexagon", "cross"):
        assert torch.allclose(corner, torch.tensor(scene.background_rgb, dtype=corner.dtype))


def test_psnr_and_means():
    a = np.zeros((2, 4, 4, 3), np.float32)
    b = np.full_like(a, 0.1)
    assert psnr(a, b) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, b[:1])
    scene = _moving_scene()
    truth = render_clip(scene)
    s1, s2 = score_clip(truth, scene, truth), score_clip(truth[::-1].copy(), scene, truth)
    means = mean_scores([s1, s2])
    assert means["psnr"] == pytest.approx((s1.psnr + s2.psnr) / 2)
    with pytest.raises(ValueError, match="no clip scores"):
        mean_scores([])
