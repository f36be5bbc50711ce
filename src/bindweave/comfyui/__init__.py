"""BindWeave as a ComfyUI node pack (see docs/comfyui.md).

ComfyUI loads ``examples/comfyui/bindweave_nodes.py`` (copied or linked into its ``custom_nodes``), which
re-exports :data:`NODE_CLASS_MAPPINGS` and :data:`NODE_DISPLAY_NAME_MAPPINGS` from here. Nothing here needs
ComfyUI to import: its hooks are optional (:mod:`bindweave.comfyui.hooks`).
"""

from __future__ import annotations

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
