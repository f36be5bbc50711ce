"""The optional extras of pyproject.toml: which packages they bring, and the line that says how to install one.

The base install (``pip install -e .``) runs every ``--help`` and every inference command; a command that
needs more names the extra when its package is missing.
"""

from __future__ import annotations

# Import name of each optional package -> the extra that installs it.
OPTIONAL_PACKAGES = {"peft": "train", "yaml": "train", "tensorboard": "train", "cv2": "eval", "gradio": "ui"}


def install_hint(extra: str) -> str:
    return f'pip install -e ".[{extra}]"'


def missing_extra(err: BaseException | None) -> tuple[str, str] | None:
    """``(package, extra)`` when ``err``, or an error it was raised from, is a missing optional package."""
    while err is not None:
        if isinstance(err, ModuleNotFoundError) and err.name:
            package = err.name.split(".")[0]
            if package in OPTIONAL_PACKAGES:
                return package, OPTIONAL_PACKAGES[package]
        err = err.__cause__ or err.__context__
    return None
