"""The shipped workflow in the real ComfyUI (``scripts/comfyui_e2e.py``): skipped unless a ComfyUI checkout with
bindweave installed in its Python is named by ``BINDWEAVE_COMFYUI`` (and ``BINDWEAVE_COMFYUI_PYTHON``, default
this Python). docs/comfyui.md says how to set one up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMFYUI = os.environ.get("BINDWEAVE_COMFYUI")


@pytest.mark.skipif(
    not (COMFYUI and (Path(COMFYUI) / "main.py").is_file()),
    reason="no ComfyUI checkout: set BINDWEAVE_COMFYUI (and BINDWEAVE_COMFYUI_PYTHON) to run the real workflow",
)
def test_real_comfyui_saves_the_frames_of_bindweave_generate_and_cancels():
    python = os.environ.get("BINDWEAVE_COMFYUI_PYTHON", sys.executable)
    result = subprocess.run(
        [python, str(REPO / "scripts" / "comfyui_e2e.py"), "--comfyui", COMFYUI, "--python", python],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "EQUAL to bindweave generate" in result.stdout
    assert "progress and Cancel: OK" in result.stdout
