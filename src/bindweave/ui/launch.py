"""``bindweave ui``: :func:`run_ui`, which serves the app of :class:`~bindweave.ui.config.UIConfig`.

Importing this module needs no Gradio (the CLI lists every subcommand on a machine without the ``ui``
extra); :func:`run_ui` says how to install it when it is missing.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any

from ..default_model import default_model_notice
from ..extras import install_hint
from .config import UIConfig

logger = logging.getLogger(__name__)

MAX_UPLOAD = "50mb"  # reference images; a bigger upload is refused by Gradio before it reaches the app
INSTALL_HINT = f"the web app needs Gradio 5 or newer, of the 'ui' extra: {install_hint('ui')}"


def _require_gradio() -> Any:
    try:
        import gradio
    except ImportError as err:
        raise OSError(INSTALL_HINT) from err
    return gradio


def launch_app(
    app: Any, host: str, port: int, out_dir: Path, share: bool = False, block: bool = True
) -> tuple[Any, str]:
    """Start serving ``app`` (from :func:`bindweave.ui.app.build_app`); returns (FastAPI app, local URL).

    The result folder is the only extra folder Gradio may serve files from. With ``block=False`` the
    server runs in a background thread until ``app.close()`` (tests use this).
    """
    from .app import CSS, THEME

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    fastapi_app, local_url, _share_url = app.launch(
        server_name=host,
        server_port=port,
        share=share,
        allowed_paths=[str(out_dir)],
        max_file_size=MAX_UPLOAD,
        show_error=True,  # an unexpected error shows its message in the page instead of a bare "Error"
        prevent_thread_lock=True,
        # Gradio's start-up lines name its launch() arguments ("set share=True in launch()"): ours name
        # the command's options. A share link is still printed by Gradio.
        quiet=True,
        theme=THEME,
        css=CSS,
        ssr_mode=False,
    )
    print(startup_message(local_url, share))
    if block:
        app.block_thread()  # until Ctrl-C
    return fastapi_app, local_url


def startup_message(local_url: str, share: bool) -> str:
    public = "" if share else "; --share also opens a public Gradio link"
    return f"Serving the web app on {local_url} (Ctrl-C stops it{public})"


def run_ui(config: UIConfig) -> None:
    """Load the model, build the page and serve it until Ctrl-C."""
    _require_gradio()
    from .app import build_app
    from .loader import PipelineLoader, model_config_of
    from .refining import make_refiner

    if not _is_loopback(config.host):
        logger.warning("listening on %s: anyone who can reach this machine can use the app", config.host)
    config.validate()
    model = model_config_of(config)
    loader = PipelineLoader(model)
    if model.uses_default_model:
        print(default_model_notice())
    loader()  # wrong model paths fail here, before the page is served
    app = build_app(loader, out_dir=config.out, refiner=make_refiner(config, loader))
    launch_app(app, config.host, config.port, config.out, share=config.share)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
