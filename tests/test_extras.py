"""Which extra a missing optional package belongs to, found through the errors raised from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bindweave.extras import OPTIONAL_PACKAGES, install_hint, missing_extra

REPO_ROOT = Path(__file__).resolve().parents[1]


def _raised_from(cause: BaseException) -> ImportError:
    try:
        try:
            raise cause
        except ImportError as err:
            raise ImportError("MotionAmplitude needs OpenCV: install the 'eval' extra") from err
    except ImportError as outer:
        return outer


def test_a_missing_optional_package_is_named_with_its_extra():
    assert missing_extra(ModuleNotFoundError("No module named 'peft'", name="peft")) == ("peft", "train")
    assert missing_extra(ModuleNotFoundError(name="peft.tuners")) == ("peft", "train")
    # Wrapped by the code that needed it, as the OpenS2V motion metric does.
    assert missing_extra(_raised_from(ModuleNotFoundError(name="cv2"))) == ("cv2", "eval")
    # Anything else is not an install problem: the caller re-raises it.
    assert missing_extra(ModuleNotFoundError(name="bindweave.nothing")) is None
    assert missing_extra(ImportError("cannot import name 'x'")) is None
    assert install_hint("train") == 'pip install -e ".[train]"'


def test_every_optional_package_is_in_its_extra():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    distribution = {
        "peft": "peft",
        "yaml": "pyyaml",
        "tensorboard": "tensorboard",
        "cv2": "opencv",
        "gradio": "gradio",
    }
    for package, extra in OPTIONAL_PACKAGES.items():
        assert any(req.startswith(distribution[package]) for req in extras[extra]), (package, extra)
