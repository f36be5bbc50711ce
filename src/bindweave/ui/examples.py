"""Example inputs for the embedded model: scenes of the toy world it was trained on.

The embedded toy BindWeave knows only the toy world (sprites on white as references, prompts that place
and move them over a plain background); a photo is outside anything it has seen. The page offers a few
scenes of the world's ``demo`` split, which training never sees: the demo's own scene first, then one to
four subjects.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..default_model import DEMO_SCENE, SHIPPED_MODEL
from ..generate_config import ModelConfig
from ..io.files import atomic_write
from ..toy.sprites import reference_image
from ..toy.world import toy_scene

# (world seed, split, index) of each example: the demo scene (2 subjects), then 1, 3 and 4 subjects on
# other backgrounds.
EXAMPLE_SCENES = (DEMO_SCENE, (0, "demo", 2), (0, "demo", 4), (0, "demo", 12))


@dataclass(frozen=True)
class Example:
    references: tuple[Path, ...]  # PNG files, in the prompt's order
    prompt: str


def uses_embedded_model(config: ModelConfig) -> bool:
    """The embedded toy model: the default, or the shipped folder given as ``--model``."""
    if config.uses_default_model:
        return True
    return config.model is not None and Path(config.model).resolve() == SHIPPED_MODEL.resolve()


def toy_examples(folder: Path) -> list[Example]:
    """Write the example scenes' reference images under ``folder`` (once) and return the examples."""
    examples = []
    for seed, split, index in EXAMPLE_SCENES:
        scene = toy_scene(seed, split, index)
        paths = []
        for k, subject in enumerate(scene.subjects):
            path = Path(folder) / f"{split}-{seed}-{index}" / f"subject{k + 1}.png"
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_write(path) as tmp:
                    reference_image(subject.sprite)[0].save(tmp, format="PNG")
            paths.append(path)
        examples.append(Example(tuple(paths), scene.prompt))
    return examples
