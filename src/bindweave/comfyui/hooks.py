"""ComfyUI's runtime hooks, each optional: the nodes import and run without ComfyUI (in tests, in scripts).

Inside ComfyUI the pack uses its model folders (``folder_paths``), its progress bar
(``comfy.utils.ProgressBar``), its Cancel button (``comfy.model_management``'s interrupt flag) and its
torch device (``--cpu`` included). Outside it, a folder list is empty, progress is not reported, nothing
cancels a run, and the device is CUDA when there is one.

Only a *missing* ComfyUI module counts as "not in ComfyUI": an error raised while importing one that
exists propagates.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

__all__ = [
    "StepReporter",
    "comfy_device",
    "model_file_list",
    "model_file_path",
    "raise_if_cancelled",
]


def _comfy_module(name: str) -> ModuleType | None:
    """ComfyUI's module ``name``, or None when ComfyUI is not what is running."""
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:  # raised for a dotted name whose parent package is absent: not in ComfyUI
        return None
    return None if spec is None else importlib.import_module(name)


def model_file_list(folder: str) -> list[str]:
    """The files in ComfyUI's model folder ``folder`` (e.g. ``"loras"``); empty outside ComfyUI."""
    folder_paths = _comfy_module("folder_paths")
    return [] if folder_paths is None else list(folder_paths.get_filename_list(folder))


def model_file_path(folder: str, name: str) -> str:
    """The full path of ``name`` in ComfyUI's model folder ``folder``.

    Outside ComfyUI ``name`` is taken as a path, so scripts and tests can pass files directly.
    """
    folder_paths = _comfy_module("folder_paths")
    if folder_paths is None:
        return name
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise FileNotFoundError(
            f"{name} is not in ComfyUI's models/{folder} folder ({', '.join(folder_paths.get_folder_paths(folder))})"
        )
    return path


def comfy_device():
    """ComfyUI's torch device (CPU under ``--cpu``); None outside ComfyUI."""
    model_management = _comfy_module("comfy.model_management")
    return None if model_management is None else model_management.get_torch_device()


def raise_if_cancelled() -> None:
    """Raise ComfyUI's ``InterruptProcessingException`` if its Cancel button was pressed; no-op outside it."""
    model_management = _comfy_module("comfy.model_management")
    if model_management is not None:
        model_management.throw_exception_if_processing_interrupted()


class StepReporter:
    """A pipeline ``callback_on_step_end`` that moves ComfyUI's progress bar one step and honours Cancel.

    Cancel is checked after every step, so a cancelled run stops within one DiT step: the exception leaves
    the pipeline and ComfyUI reports the prompt as interrupted.
    """

    def __init__(self, total_steps: int):
        utils = _comfy_module("comfy.utils")
        self.bar = None if utils is None else utils.ProgressBar(total_steps)

    def __call__(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        if self.bar is not None:
            self.bar.update(1)
        raise_if_cancelled()
        return {}
