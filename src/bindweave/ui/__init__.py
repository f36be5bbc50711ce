"""``bindweave ui``: a Gradio web app for subject-to-video generation (optional extra ``bindweave[ui]``).

The logic needs no Gradio: :mod:`.inputs` checks and previews the page's inputs, :mod:`.settings` turns
them into a ``bindweave generate`` config, :mod:`.jobs` runs it, :mod:`.loader` holds the model and
:mod:`.refining` the prompt refiner. :mod:`.app` is the page layout, :mod:`.config` the launcher's options
and :mod:`.launch` the entry point. Importing this package does not import Gradio.
"""

from .config import UIConfig
from .launch import run_ui

__all__ = ["UIConfig", "run_ui"]
