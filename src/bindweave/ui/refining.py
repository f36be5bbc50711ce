"""Prompt refinement in the page: the configured refiner and the "Refine prompt" button's handler."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..refine import PromptRefiner, refine_prompt
from .inputs import UIError, check_prompt, load_reference_images

if TYPE_CHECKING:
    from .config import UIConfig
    from .loader import PipelineLoader

RefinerFactory = Callable[[], PromptRefiner]


def make_refiner(config: UIConfig, pipe_loader: PipelineLoader) -> RefinerFactory | None:
    """A factory of the configured prompt refiner, or None (the page then hides the button).

    A factory, not a refiner: the local backend borrows the loaded pipeline's MLLM, which is only known
    once the pipeline is loaded in the chosen memory mode.
    """
    if config.refine == "none":
        return None
    config.check_refine()

    def factory() -> PromptRefiner:
        try:
            return config.make_refiner(pipe_loader())
        except ValueError as err:  # shown in the page
            raise UIError(str(err)) from err

    return factory


def refine(refiner: PromptRefiner, prompt: str | None, refs: Sequence[str | Path] | None) -> tuple[str, str]:
    """(prompt to show, status message). An unusable answer keeps the user's prompt and says why."""
    prompt = check_prompt(prompt)
    images = load_reference_images(refs)
    result = refine_prompt(refiner, prompt, images)
    if result.accepted:
        return result.prompt, "Prompt refined; edit it freely before generating."
    return prompt, f"Kept your prompt: the refiner's answer was not usable ({result.reason})."
