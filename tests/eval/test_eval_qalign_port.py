"""The native Q-Align (mPLUG-Owl2) port against the benchmark's own code (cross-version fixture).

``fixtures/qalign_tiny`` was made by ``fixtures/make_qalign_fixture.py``: a tiny random mPLUG-Owl2 in the
one-align folder layout, built and saved by the ``q_align`` package under transformers 4.36.1 (its pin),
and what the benchmark's ``QAlignVideoScorer`` computed from it in fp16 on a 7-frame video: the prompt
ids, the level-word ids, the 3-frame windows, the five level logits per window, the window scores and the
video's MotionSmoothness. Here our port runs on transformers 5 and must give the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bindweave.eval.scorers.base import VideoSample
from bindweave.eval.scorers.mplug_owl2_vision import sincos_1d, sincos_2d
from bindweave.eval.scorers.qalign import MplugOwl2QualityModel
from bindweave.eval.scorers.smoothness import MotionSmoothnessScorer, QAlignQualityModel, sliding_windows

FIXTURE = Path(__file__).parent / "fixtures" / "qalign_tiny"
# fp16 logits of magnitude < 4: one ulp is 0.002 (measured: bit-identical on this machine).
LOGIT_ATOL = 4e-3


@pytest.fixture(scope="module")
def expected():
    from safetensors.torch import load_file

    tensors = load_file(FIXTURE / "expected.safetensors")
    return tensors, json.loads((FIXTURE / "expected.json").read_text())


@pytest.fixture(scope="module")
def qalign():
    return QAlignQualityModel(FIXTURE / "model", device="cpu")


def test_prompt_and_level_ids_are_the_benchmarks(qalign, expected):
    tensors, _ = expected
    assert qalign.input_ids.tolist() == tensors["input_ids"].tolist()
    assert -200 in qalign.input_ids.tolist()
    assert qalign.level_ids == tensors["preferential_ids"].tolist()
    assert len(set(qalign.level_ids)) == 5  # the fixture's words are distinguishable


def test_window_logits_and_scores_equal_the_benchmark_code(qalign, expected):
    tensors, meta = expected
    frames = tensors["frames"].numpy()
    assert sliding_windows(len(frames), 3) == meta["window_indices"]
    windows = [[Image.fromarray(frames[i]) for i in w] for w in meta["window_indices"]]
    logits = qalign.level_logits(windows)
    assert logits.dtype == torch.float16  # the benchmark's precision
    torch.testing.assert_close(logits, tensors["logits"], rtol=0, atol=LOGIT_ATOL)
    assert qalign(windows) == pytest.approx(meta["scores"], abs=2e-3)


def test_video_motion_smoothness_equals_the_benchmark(qalign, expected):
    tensors, meta = expected
    sample = VideoSample.from_frames("singleobj_1", tensors["frames"].numpy())
    value = MotionSmoothnessScorer(qalign)(sample)
    assert value == pytest.approx(meta["motion_smoothness"]) == pytest.approx(1 - 4 / 7)


def test_abstractor_positions_are_the_stored_ones(expected):
    """Our sin-cos formulas reproduce the position buffers q_align saved in the checkpoint."""
    from safetensors.torch import load_file

    state = load_file(FIXTURE / "model" / "model.safetensors")
    prefix = "model.visual_abstractor.encoder.layers.0.crossattention.attention."
    q = torch.from_numpy(sincos_1d(32, np.arange(4))).float()
    k = torch.from_numpy(sincos_2d(32, 4)).float()
    torch.testing.assert_close(q, state[prefix + "q_pos_embed"], rtol=0, atol=1e-6)
    torch.testing.assert_close(k, state[prefix + "k_pos_embed"], rtol=0, atol=1e-6)


def test_a_checkpoint_of_another_layout_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "one-align"
    folder.mkdir()
    for f in (FIXTURE / "model").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    state = load_file(folder / "model.safetensors")
    state.pop("model.layers.0.self_attn.k_proj.multiway.1.weight")
    save_file(state, folder / "model.safetensors")
    with pytest.raises(KeyError, match="k_proj.multiway.1.weight"):
        MplugOwl2QualityModel.from_folder(folder)
