"""ComfyUI entry file of the BindWeave nodes: copy or link it into ComfyUI's custom_nodes folder.

The nodes themselves live in the bindweave package (``pip install -e <this checkout>`` into ComfyUI's Python).
"""

from bindweave.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
