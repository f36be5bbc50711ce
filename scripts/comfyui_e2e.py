"""End to end in the real ComfyUI: queue the shipped workflow on the embedded toy model through ComfyUI's HTTP
API and check that the frames ComfyUI saves are ``bindweave generate``'s.

    python scripts/comfyui_e2e.py --comfyui /path/to/ComfyUI [--python /path/to/comfyui/venv/bin/python]

``--python`` is the Python ComfyUI runs in (bindweave installed into it); this script runs in any Python
with bindweave. The script links ``examples/comfyui/bindweave_nodes.py`` into ComfyUI's ``custom_nodes``
when it is not there, writes the two reference images of the toy demo scene into ComfyUI's ``input``
folder, starts ``main.py --cpu`` on a loopback port, queues ``examples/comfyui/bindweave_toy_api.json``
(``POST /prompt``), polls ``/history`` until it is done; then queues it again at 400 steps, watches the
progress messages on ComfyUI's websocket and presses Cancel at step 3 (``POST /interrupt``); and stops the
server.

The comparison: ComfyUI's ``SaveImage`` stores each frame as ``uint8(clip(255 * x))`` (truncated). The
same inputs and seed are run through ``bindweave generate`` (its CLI entry point, in this process), its float
frames quantised the same way, and the two compared: a value may differ only by one level and only where
``255 * x`` lies within float32 rounding of an integer (the two runs are separate processes, so their
floats agree to rounding, not bitwise). The cancelled run must report one progress message per step and
stop within two steps of the Cancel, as ``execution_interrupted`` in the sampler node. Exit status 0 when
both hold, 1 when not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import PIL.Image

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "examples" / "comfyui" / "bindweave_toy_api.json"
ENTRY_FILE = REPO / "examples" / "comfyui" / "bindweave_nodes.py"
SAVE_FRAMES_NODE, SAVE_VIDEO_NODE, SAMPLER_NODE = "5", "7", "4"
#: float32 rounding of frames in [0, 1], in 8-bit levels (bindweave.testing.tolerance: 64 ulps of 1).
ROUNDING_LEVELS = 255 * 64 * float(np.finfo(np.float32).eps)


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def start_server(comfyui: Path, python: str, port: int, log: Path) -> subprocess.Popen:
    """ComfyUI on the CPU, one torch thread (the machine is shared), listening on loopback only."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port)]
    with log.open("w") as out:
        return subprocess.Popen(command, cwd=comfyui, stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_until_up(base: str, server: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            _get(f"{base}/system_stats")
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"ComfyUI did not answer on {base} within {timeout:.0f} s")


def run_workflow(base: str, workflow: dict, timeout: float = 900) -> dict:
    """Queue ``workflow`` and return its ``/history`` entry once ComfyUI has finished it."""
    answer = _post(f"{base}/prompt", {"prompt": workflow, "client_id": "bindweave-e2e"})
    if answer.get("node_errors"):
        raise RuntimeError(f"ComfyUI refused the workflow: {answer['node_errors']}")
    prompt_id = answer["prompt_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = _get(f"{base}/history/{prompt_id}")
        if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
            entry = history[prompt_id]
            if entry["status"]["status_str"] != "success":
                raise RuntimeError(f"ComfyUI ran the workflow with errors: {entry['status']['messages']}")
            return entry
        time.sleep(1)
    raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")


def saved_files(comfyui: Path, node_outputs: dict) -> list[Path]:
    """The files one output node saved, whatever ComfyUI files them under ("images", "videos"...)."""
    items = [item for value in node_outputs.values() if isinstance(value, list) for item in value]
    return [
        comfyui / "output" / item["subfolder"] / item["filename"]
        for item in items
        if isinstance(item, dict) and "filename" in item
    ]


def check_progress_and_cancel(
    base: str, workflow: dict, steps: int = 400, cancel_at: int = 3
) -> tuple[bool, str]:
    """Queue the workflow at ``steps`` steps, watch ComfyUI's progress messages on its websocket, press Cancel
    (``POST /interrupt``) once step ``cancel_at`` is reported, and check that the sampler stopped within a
    step or two and ComfyUI reported the prompt as interrupted. aiohttp is ComfyUI's own dependency."""
    import asyncio
    import uuid

    import aiohttp

    long_run = json.loads(json.dumps(workflow))
    long_run[SAMPLER_NODE]["inputs"]["steps"] = steps

    async def watch() -> tuple[list[tuple[int, int]], dict]:
        client = str(uuid.uuid4())
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"{base}/ws?clientId={client}") as ws,
        ):
            answer = await session.post(f"{base}/prompt", json={"prompt": long_run, "client_id": client})
            prompt_id = (await answer.json())["prompt_id"]
            progress: list[tuple[int, int]] = []
            while True:
                message = await ws.receive(timeout=300)
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                event = json.loads(message.data)
                data = event.get("data", {})
                if data.get("prompt_id") != prompt_id:
                    continue
                if event["type"] == "progress":
                    progress.append((data["value"], data["max"]))
                    if data["value"] == cancel_at:
                        await session.post(f"{base}/interrupt")
                elif event["type"] in ("execution_interrupted", "execution_error", "execution_success"):
                    return progress, event

    progress, event = asyncio.run(watch())
    values = [value for value, _ in progress]
    ok = (
        event["type"] == "execution_interrupted"
        and event["data"].get("node_id") == SAMPLER_NODE
        and values == list(range(1, len(values) + 1))
        and all(total == steps for _, total in progress)
        and cancel_at <= len(values) <= cancel_at + 2
    )
    report = (
        f"progress: {len(values)} messages {progress[:2]} ... {progress[-1:]}; Cancel pressed at step {cancel_at} "
        f"of {steps}; ComfyUI reported {event['type']} in node {event['data'].get('node_id')} "
        f"({event['data'].get('node_type')})"
    )
    return ok, report


#: The sampler node's number inputs and the ``generate`` flags they stand for (0 in the node: flag left out).
NUMBER_FLAGS = {"steps": "--steps", "guidance": "--guidance", "width": "--width", "height": "--height",
                "num_frames": "--num-frames"}  # fmt: skip


def generate_frames(workflow: dict, references: list[Path], out: Path) -> np.ndarray:
    """``bindweave generate`` with the sampler node's inputs, on the embedded model as the workflow's loader."""
    import torch

    from bindweave import cli
    from bindweave.testing.capture import captured_generate_frames

    inputs = workflow[SAMPLER_NODE]["inputs"]
    args = ["generate", "--refs", *map(str, references), "--prompt", inputs["prompt"],
            "--negative-prompt", inputs["negative_prompt"], "--seed", str(inputs["seed"]),
            "--sampler", inputs["sampler"], "--fps", str(inputs["fps"]), "--out", str(out)]  # fmt: skip
    for name, flag in NUMBER_FLAGS.items():
        if inputs[name] != 0:
            args += [flag, str(inputs[name])]
    torch.set_num_threads(1)  # as the server runs
    with captured_generate_frames() as frames:
        status = cli.main(args)
    if status != 0:
        raise RuntimeError(f"bindweave {' '.join(args)} exited with {status}")
    return frames[0]


def compare(comfy_frames: np.ndarray, generated: np.ndarray) -> tuple[bool, str]:
    """ComfyUI's 8-bit frames against ``SaveImage``'s quantisation of ``bindweave generate``'s float frames."""
    scaled = 255.0 * generated.astype(np.float64)
    expected = np.clip(scaled, 0, 255).astype(np.uint8)
    differ = comfy_frames != expected
    levels = np.abs(comfy_frames.astype(int) - expected.astype(int))
    near_integer = np.abs(scaled - np.round(scaled)) <= ROUNDING_LEVELS
    ok = comfy_frames.shape == expected.shape and levels.max() <= 1 and bool(near_integer[differ].all())
    report = (
        f"ComfyUI frames {comfy_frames.shape} uint8, bindweave generate frames {generated.shape} float32; "
        f"{int(differ.sum())} of {differ.size} 8-bit values differ (max {int(levels.max())} level), "
        f"{int((differ & ~near_integer).sum())} of them away from a rounding boundary"
    )
    return ok, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", type=Path, required=True, help="a ComfyUI checkout")
    parser.add_argument("--python", default=sys.executable, help="the Python ComfyUI runs in")
    parser.add_argument("--port", type=int, default=8199)
    args = parser.parse_args(argv)
    comfyui = args.comfyui.resolve()
    entry = comfyui / "custom_nodes" / ENTRY_FILE.name
    if not entry.exists():
        entry.symlink_to(ENTRY_FILE)
    from bindweave.default_model import demo_references

    references = []
    for index, image in enumerate(demo_references(), start=1):
        path = comfyui / "input" / f"bindweave_ref_{index}.png"
        image.save(path)
        references.append(path)
    workflow = json.loads(WORKFLOW.read_text())
    base = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "comfyui.log"
        server = start_server(comfyui, args.python, args.port, log)
        try:
            wait_until_up(base, server, log)
            start = time.perf_counter()
            entry_history = run_workflow(base, workflow)
            print(f"ComfyUI ran the workflow in {time.perf_counter() - start:.1f} s")
            cancel_ok, cancel_report = check_progress_and_cancel(base, workflow)
            print(cancel_report)
        finally:
            server.terminate()
            server.wait(timeout=60)
        outputs = entry_history["outputs"]
        pngs = sorted(saved_files(comfyui, outputs.get(SAVE_FRAMES_NODE, {})))
        videos = saved_files(comfyui, outputs.get(SAVE_VIDEO_NODE, {}))
        print(
            f"ComfyUI saved {len(pngs)} frames ({pngs[0].parent}) and the video {', '.join(map(str, videos))}"
        )
        comfy_frames = np.stack([np.asarray(PIL.Image.open(p).convert("RGB")) for p in pngs])
        generated = generate_frames(workflow, references, Path(tmp) / "generate.mp4")
    ok, report = compare(comfy_frames, generated)
    print(report)
    print(
        "EQUAL to bindweave generate (up to float32 rounding)" if ok else "DIFFERENT from bindweave generate"
    )
    print("progress and Cancel: OK" if cancel_ok else "progress and Cancel: NOT as expected")
    return 0 if ok and cancel_ok else 1


if __name__ == "__main__":
    sys.exit(main())
