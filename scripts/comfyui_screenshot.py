"""Screenshot the shipped BindWeave workflow in ComfyUI's web frontend, with headless Chromium.

    python scripts/comfyui_screenshot.py --url http://127.0.0.1:8188 --out docs/images/comfyui-graph.png

Needs a running ComfyUI with the BindWeave nodes installed (``scripts/comfyui_e2e.py`` says how), playwright
(the ``dev`` extra) and a Chromium (``--chromium``, default Debian's ``/usr/bin/chromium``). The workflow
(``examples/comfyui/bindweave_toy_api.json``, API format) is loaded with the frontend's own
``app.loadApiJson``, laid out with litegraph's ``arrange`` and fitted to the view (the "." shortcut).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "examples" / "comfyui" / "bindweave_toy_api.json"
VIEWPORT = {"width": 2600, "height": 1500}  # large enough that "fit view" keeps the nodes' text (zoom > 0.6)


# The nodes' bounding box (titles included) in page pixels: graph -> canvas with the view's offset and scale.
_NODES_ON_SCREEN = """() => {
  const ds = window.app.canvas.ds, rect = window.app.canvas.canvas.getBoundingClientRect();
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const node of window.app.graph._nodes) {
    const [x, y] = node.pos, [w, h] = node.size, title = LiteGraph.NODE_TITLE_HEIGHT;
    x0 = Math.min(x0, x); y0 = Math.min(y0, y - title); x1 = Math.max(x1, x + w); y1 = Math.max(y1, y + h);
  }
  const screen = (x, y) => [rect.left + (x + ds.offset[0]) * ds.scale, rect.top + (y + ds.offset[1]) * ds.scale];
  return [...screen(x0, y0), ...screen(x1, y1)];
}"""


def screenshot(url: str, out: Path, chromium: str) -> None:
    workflow = json.loads(WORKFLOW.read_text())
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(url, wait_until="networkidle", timeout=120_000)
        page.wait_for_function("window.app && window.app.graph", timeout=120_000)
        page.keyboard.press("Escape")  # the templates dialog a fresh frontend opens
        page.evaluate(
            "async (api) => { await window.app.loadApiJson(api, 'bindweave_toy_api.json'); }", workflow
        )
        page.keyboard.press("Escape")
        time.sleep(2)  # the nodes get their sizes when first drawn; arrange lays them out by those sizes
        page.evaluate("() => { window.app.graph.arrange(60); window.app.graph.setDirtyCanvas(true, true); }")
        page.mouse.click(VIEWPORT["width"] // 2, VIEWPORT["height"] - 100)  # focus the canvas, off the nodes
        page.keyboard.press(".")  # fit the view to the nodes
        time.sleep(2)
        types = page.evaluate("window.app.graph._nodes.map(n => n.type)")
        if "BindWeaveSampler" not in types:
            raise RuntimeError(f"the workflow did not load with the BindWeave nodes: {types}")
        x0, y0, x1, y1 = page.evaluate(_NODES_ON_SCREEN)
        margin = 24
        clip = {
            "x": x0 - margin,
            "y": y0 - margin,
            "width": x1 - x0 + 2 * margin,
            "height": y1 - y0 + 2 * margin,
        }
        page.screenshot(path=str(out), clip=clip)
        browser.close()
    Image.open(out).convert("RGB").save(out, optimize=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8188")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "comfyui-graph.png")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    screenshot(args.url, args.out, args.chromium)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
