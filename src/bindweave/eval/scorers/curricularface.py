"""The IR-101 face-recognition backbone CurricularFace weights are stored for.

``glint360k_curricular_face_r101_backbone.bin`` (distributed by OpenS2V as
``BestWishYsh/OpenS2V-Weight``, originally from ConsisID / CurricularFace) is a state dict of TFace's
"improved residual" ResNet (``torchkit/backbone/model_irse.py``, ``IR_101``), which the benchmark loads
strictly: a 3x3 stem (conv-BN-PReLU), four stages of basic IR units (3, 13, 30, 3 units of 64, 128, 256,
512 channels, the first unit of each stage strided) whose residual branch is
BN - conv3x3 - BN - PReLU - conv3x3 (strided) - BN, and an output head
BN2d -> Dropout -> Flatten -> Linear(512*7*7, 512) -> BN1d (no affine), for 112x112 inputs in [-1, 1].

The architecture is inferred from the state dict (unit counts, widths, whether the last BatchNorm has
affine parameters), so the same code loads IR-18/34/50/101 and the tiny variants the tests build; the
load is strict, so a state dict of another layout fails with its missing/unexpected keys named. The
layout is checked against an independent model written from TFace's public definition
(tests/eval/test_eval_facesim.py); the released file itself is not available here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = ["IRBackbone", "load_curricularface", "CURRICULARFACE_SOURCE"]

CURRICULARFACE_SOURCE = "BestWishYsh/OpenS2V-Weight/glint360k_curricular_face_r101_backbone.bin"
IR101_UNITS = (3, 13, 30, 3)
IR_WIDTHS = (64, 128, 256, 512)


class _Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)


class _BasicBlockIR(nn.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3 (strided) -> BN, plus a (pooled or projected) shortcut."""

    def __init__(self, in_channels: int, depth: int, stride: int) -> None:
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, 1, stride, bias=False), nn.BatchNorm2d(depth)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.BatchNorm2d(depth),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRBackbone(nn.Module):
    """IR ResNet face embedder: ``(N, 3, S, S)`` in [-1, 1] -> ``(N, embedding_dim)`` (not normalised)."""

    def __init__(
        self,
        units: Sequence[int] = IR101_UNITS,
        widths: Sequence[int] = IR_WIDTHS,
        embedding_dim: int = 512,
        input_size: int = 112,
        affine_output: bool = True,
    ) -> None:
        super().__init__()
        if len(units) != len(widths):
            raise ValueError("units and widths must have the same length")
        stem = widths[0]
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.PReLU(stem)
        )
        blocks: list[nn.Module] = []
        in_channels = stem
        for count, depth in zip(units, widths, strict=True):
            for i in range(count):
                blocks.append(_BasicBlockIR(in_channels, depth, 2 if i == 0 else 1))
                in_channels = depth
        self.body = nn.Sequential(*blocks)
        side = input_size // (2 ** len(units))
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Dropout(0.4),
            _Flatten(),
            nn.Linear(in_channels * side * side, embedding_dim),
            nn.BatchNorm1d(embedding_dim, affine=affine_output),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.body(self.input_layer(x)))


def _infer_architecture(state: Mapping[str, torch.Tensor]) -> dict:
    """Unit counts, widths, embedding size and output-BN affinity from a state dict's keys and shapes."""
    unit_ids = sorted({int(m.group(1)) for k in state if (m := re.match(r"body\.(\d+)\.", k))})
    if not unit_ids or "input_layer.0.weight" not in state or "output_layer.3.weight" not in state:
        raise KeyError("not an IR backbone state dict (expected input_layer.*, body.N.*, output_layer.*)")
    units: list[int] = []
    widths: list[int] = []
    for i in unit_ids:
        depth = int(state[f"body.{i}.res_layer.1.weight"].shape[0])
        # A stage starts where the width changes; the stem-width first stage starts at unit 0.
        if not widths or depth != widths[-1]:
            widths.append(depth)
            units.append(1)
        else:
            units[-1] += 1
    linear = state["output_layer.3.weight"]
    spatial = linear.shape[1] // widths[-1]
    side = int(round(spatial**0.5))
    return {
        "units": tuple(units),
        "widths": tuple(widths),
        "embedding_dim": int(linear.shape[0]),
        "input_size": side * 2 ** len(units),
        "affine_output": "output_layer.4.weight" in state,
    }


def load_curricularface(path: str | Path, device: str | torch.device = "cpu") -> IRBackbone:
    """Build the IR backbone a CurricularFace state dict describes and load it (strict)."""
    path = Path(path)
    if not path.is_file():
        from bindweave.eval.scorers.base import MissingModelFileError

        raise MissingModelFileError(f"facesim_cur: missing model file {path} (from {CURRICULARFACE_SOURCE})")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = IRBackbone(**_infer_architecture(state))
    model.load_state_dict(state, strict=True)
    return model.eval().to(device)
