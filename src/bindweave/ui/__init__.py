"""``bindweave ui``: a Gradio web app for subject-to-video generation (optional extra ``bindweave[ui]``).

:mod:`.handlers` holds the logic (no Gradio), :mod:`.app` the page layout and :mod:`.launch` the
launcher config and entry point. Importing this package does not import Gradio.
"""

from .launch import UIConfig, run_ui

__all__ = ["UIConfig", "run_ui"]
