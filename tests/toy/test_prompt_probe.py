"""scripts/toy_prompt_probe.py's word swaps: a swapped prompt is the prompt of the swapped scene."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from bindweave.toy.world import scene_prompt, toy_scene

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "toy_prompt_probe.py"
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up", "still": "still"}


def _probe():
    spec = importlib.util.spec_from_file_location("toy_prompt_probe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _swapped(subject, kind: str):
    if kind == "motion":
        return dataclasses.replace(subject, direction=OPPOSITE[subject.direction])
    row, col = subject.cell
    return dataclasses.replace(subject, cell=(row, 2 - col))


@pytest.mark.parametrize("kind", ["motion", "cells"])
def test_a_swapped_prompt_is_the_swapped_scenes_prompt(kind):
    probe = _probe()
    table, swapped_any = probe.swaps(kind), 0
    for index in range(60):
        scene = toy_scene(0, "train", index)
        # The world's own prompt writer, with the same draws for both scenes (the phrase of each rank).
        prompt = scene_prompt(scene.background, scene.subjects, np.random.default_rng(index))
        mirrored = tuple(_swapped(s, kind) for s in scene.subjects)
        expected = scene_prompt(scene.background, mirrored, np.random.default_rng(index))
        if expected == prompt:  # only still subjects / only the middle column
            with pytest.raises(ValueError, match="nothing to swap"):
                probe.swap_words(prompt, table)
        else:
            assert probe.swap_words(prompt, table) == expected
            swapped_any += 1
    assert swapped_any > 30
    with pytest.raises(ValueError, match="nothing to swap"):
        probe.swap_words("On a sand background, the subject starts in the centre and stays still.", table)
