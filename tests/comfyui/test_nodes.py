"""The ComfyUI nodes, called as ComfyUI calls them (``INPUT_TYPES``, ``FUNCTION`` with the declared inputs,
``RETURN_TYPES``), without ComfyUI installed; its hooks (model folders, progress bar, Cancel) through a
stand-in ComfyUI of three small modules put on ``sys.path``."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from bindweave import cli
from bindweave.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from bindweave.comfyui.sampling import SamplerInputs, references_from_images
from bindweave.default_model import demo_prompt, demo_references
from bindweave.lora.config import LoraSpec
from bindweave.testing import assert_close_to_float32_rounding
from bindweave.testing.capture import captured_generate_frames

Loader, LoraSelect, Sampler = (NODE_CLASS_MAPPINGS[n] for n in ("BindWeaveLoader", "BindWeaveLoraSelect", "BindWeaveSampler"))  # fmt: skip
ENTRY_FILE = Path(__file__).resolve().parents[2] / "examples" / "comfyui" / "bindweave_nodes.py"
SMALL = dict(steps=2, num_frames=5, width=0, height=0, guidance=0.0, sampler="unipc", fps=16)


def comfy_image(path) -> torch.Tensor:
    """What ComfyUI's LoadImage gives for an RGB file: ``(1, H, W, 3)`` float32, ``uint8 / 255``."""
    return torch.from_numpy(np.asarray(PIL.Image.open(path).convert("RGB"), dtype=np.float32) / 255.0)[None]


@pytest.fixture(scope="module")
def reference_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refs")
    paths = []
    for index, image in enumerate(demo_references(), start=1):
        image.save(folder / f"ref{index}.png")
        paths.append(folder / f"ref{index}.png")
    return paths


@pytest.fixture(scope="module")
def toy_pipeline():
    (pipe,) = Loader().load("embedded toy model", "none", False, "float32", "auto")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def fake_comfyui(tmp_path, monkeypatch):
    """ComfyUI's ``folder_paths``, ``comfy.utils.ProgressBar`` and ``comfy.model_management``'s interrupt
    flag, as small modules with ComfyUI's signatures that record what the nodes do with them."""
    (tmp_path / "comfy").mkdir()
    (tmp_path / "comfy" / "__init__.py").write_text("")
    (tmp_path / "folder_paths.py").write_text(
        textwrap.dedent(f"""
        import os
        ROOT = {str(tmp_path / "models")!r}
        def get_filename_list(folder):
            path = os.path.join(ROOT, folder)
            return sorted(os.listdir(path)) if os.path.isdir(path) else []
        def get_full_path(folder, name):
            path = os.path.join(ROOT, folder, name)
            return path if os.path.isfile(path) else None
        def get_folder_paths(folder):
            return [os.path.join(ROOT, folder)]
    """)
    )
    (tmp_path / "comfy" / "utils.py").write_text(
        textwrap.dedent("""
        UPDATES = []
        class ProgressBar:
            def __init__(self, total, node_id=None):
                self.total, self.current = total, 0
            def update(self, value):
                self.current += value
                UPDATES.append((self.current, self.total))
    """)
    )
    (tmp_path / "comfy" / "model_management.py").write_text(
        textwrap.dedent("""
        import torch
        CANCEL_AFTER_CHECKS = None  # the Cancel button, pressed before this many checks have passed
        CHECKS = 0
        class InterruptProcessingException(Exception):
            pass
        def get_torch_device():
            return torch.device("cpu")
        def throw_exception_if_processing_interrupted():
            global CHECKS
            CHECKS += 1
            if CANCEL_AFTER_CHECKS is not None and CHECKS > CANCEL_AFTER_CHECKS:
                raise InterruptProcessingException()
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("folder_paths", "comfy.utils", "comfy.model_management", "comfy"):
        sys.modules.pop(name, None)


# ------------------------------------------------------------------------------------- the node API


@pytest.mark.parametrize("name", sorted(NODE_CLASS_MAPPINGS))
def test_node_declares_what_comfyui_calls(name):
    node = NODE_CLASS_MAPPINGS[name]
    inputs = node.INPUT_TYPES()
    declared = {**inputs["required"], **inputs.get("optional", {})}
    for input_name, spec in declared.items():
        kind = spec[0]
        assert isinstance(kind, (str, list)), input_name  # a type name, or a combo's choices
        options = spec[1] if len(spec) > 1 else {}
        if isinstance(kind, list) and "default" in options:
            assert options["default"] in kind, input_name
    method = getattr(node(), node.FUNCTION)
    # ComfyUI passes every connected input by name: the method must take each declared one...
    signature = inspect.signature(method)
    signature.bind(**dict.fromkeys(declared))
    # ...and need no input beyond the required ones.
    signature.bind(**dict.fromkeys(inputs["required"]))
    assert isinstance(node.RETURN_TYPES, tuple) and all(isinstance(t, str) for t in node.RETURN_TYPES)
    assert len(node.RETURN_NAMES) == len(node.RETURN_TYPES)
    assert name in NODE_DISPLAY_NAME_MAPPINGS


def test_pack_and_entry_file_import_without_comfyui_or_torch():
    code = textwrap.dedent(f"""
        import runpy, sys
        module = runpy.run_path({str(ENTRY_FILE)!r})
        assert sorted(module["NODE_CLASS_MAPPINGS"]) == ["BindWeaveLoader", "BindWeaveLoraSelect", "BindWeaveSampler"]
        for heavy in ("torch", "diffusers", "transformers", "folder_paths", "comfy"):
            assert heavy not in sys.modules, heavy
        # Outside ComfyUI the model-folder inputs offer only "none".
        optional = module["NODE_CLASS_MAPPINGS"]["BindWeaveLoader"].INPUT_TYPES()["optional"]
        names = ("diffusion_model", "text_encoder", "clip_vision", "vae", "mllm")
        assert [optional[name][0] for name in names] == [["none"]] * 5
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------- sampling


def test_sampler_node_equals_bindweave_generate(toy_pipeline, reference_files, tmp_path):
    """The loader's default (the embedded toy model) and the sampler, against the command on the same files."""
    frames, fps = Sampler().generate(
        toy_pipeline,
        comfy_image(reference_files[0]),
        demo_prompt(),
        image_2=comfy_image(reference_files[1]),
        negative_prompt="blurry",
        seed=7,
        **{**SMALL, "fps": 12},
    )
    args = ["generate", "--refs", *map(str, reference_files), "--prompt", demo_prompt(), "--negative-prompt",
            "blurry", "--seed", "7", "--steps", "2", "--num-frames", "5", "--fps", "12", "--out", str(tmp_path / "v.mp4")]  # fmt: skip
    with captured_generate_frames() as captured:
        assert cli.main(args) == 0
    (expected,) = captured
    assert frames.dtype == torch.float32 and frames.shape == (5, 64, 64, 3) and fps == 12.0
    assert_close_to_float32_rounding(frames.numpy(), expected)
    # The seed reaches the noise: another seed is another video.
    other, _ = Sampler().generate(
        toy_pipeline, comfy_image(reference_files[0]), demo_prompt(), image_2=comfy_image(reference_files[1]),
        negative_prompt="blurry", seed=8, **SMALL,
    )  # fmt: skip
    assert np.abs(other.numpy() - expected).max() > 1e-3


def test_zero_number_inputs_mean_the_models_own_and_cli_rules_apply():
    image = torch.rand(1, 8, 8, 3)
    inputs = SamplerInputs.from_node([image], "a cat", negative_prompt="", seed=3, **{**SMALL, "steps": 0})
    sampling = inputs.sampling
    assert (sampling.height, sampling.width, sampling.num_frames, sampling.steps, sampling.guidance) == (
        None, None, 5, None, None,
    )  # fmt: skip
    assert (sampling.seed, sampling.fps, sampling.negative_prompt) == (3, 16, "")
    with pytest.raises(ValueError, match=r"--num-frames must be 4k \+ 1"):
        SamplerInputs.from_node([image], "a cat", negative_prompt="", seed=3, **{**SMALL, "num_frames": 6})
    with pytest.raises(ValueError, match="prompt is empty"):
        SamplerInputs.from_node([image], "  ", negative_prompt="", seed=3, **SMALL)


def test_each_image_of_each_input_is_one_reference_in_order():
    batch, single = torch.rand(2, 8, 10, 3), torch.rand(1, 6, 6, 3)
    references = references_from_images([batch, None, single, None])
    assert len(references) == 3
    for got, want in zip(references, [batch[0], batch[1], single[0]], strict=True):
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="1-4 reference images, got 5"):
        references_from_images([torch.rand(3, 4, 4, 3), torch.rand(2, 4, 4, 3)])
    with pytest.raises(ValueError, match=r"image_2: expected a ComfyUI IMAGE .* got \(1, 4, 4, 4\)"):
        references_from_images([single, torch.rand(1, 4, 4, 4)])


def test_progress_bar_moves_per_step_and_cancel_stops_the_run(fake_comfyui, toy_pipeline):
    import comfy.model_management
    import comfy.utils

    image = torch.rand(1, 16, 16, 3)
    Sampler().generate(toy_pipeline, image, "a cat", negative_prompt="", seed=0, **{**SMALL, "steps": 3})
    assert comfy.utils.UPDATES == [(1, 3), (2, 3), (3, 3)]

    comfy.utils.UPDATES.clear()
    comfy.model_management.CHECKS = 0
    # One check before the run starts, then one per step: Cancel pressed during step 2.
    comfy.model_management.CANCEL_AFTER_CHECKS = 2
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        Sampler().generate(toy_pipeline, image, "a cat", negative_prompt="", seed=0, **{**SMALL, "steps": 5})
    assert comfy.utils.UPDATES == [(1, 5), (2, 5)]


# ------------------------------------------------------------------------------------- loading


def test_model_inputs_list_comfyui_folders_and_loras_chain_by_path(fake_comfyui):
    loras = fake_comfyui / "models" / "loras"
    loras.mkdir(parents=True)
    for name in ("b.safetensors", "a.safetensors"):
        (loras / name).write_bytes(b"")
    (fake_comfyui / "models" / "vae").mkdir()
    (fake_comfyui / "models" / "vae" / "wan_2.1_vae.safetensors").write_bytes(b"")

    assert Loader.INPUT_TYPES()["optional"]["vae"][0] == ["none", "wan_2.1_vae.safetensors"]
    assert Loader.INPUT_TYPES()["optional"]["clip_vision"][0] == ["none"]
    assert LoraSelect.INPUT_TYPES()["required"]["lora"][0] == ["a.safetensors", "b.safetensors"]
    (first,) = LoraSelect().select("b.safetensors", 0.25)
    (chain,) = LoraSelect().select("a.safetensors", -1.5, previous=first)
    assert chain == (LoraSpec(loras / "b.safetensors", 0.25), LoraSpec(loras / "a.safetensors", -1.5))
    with pytest.raises(FileNotFoundError, match="missing.safetensors is not in ComfyUI's models/loras"):
        LoraSelect().select("missing.safetensors", 1.0)


def test_loader_refuses_inputs_its_source_does_not_use(tmp_path):
    with pytest.raises(ValueError, match="does not use the model files vae"):
        Loader().load("embedded toy model", "none", False, "float32", "auto", vae="wan_2.1_vae.safetensors")
    with pytest.raises(ValueError, match="does not use model"):
        Loader().load("embedded toy model", "none", False, "float32", "auto", model_folder=str(tmp_path))
    with pytest.raises(ValueError, match="needs model_folder"):
        Loader().load("diffusers folders", "none", False, "float32", "auto")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        Loader().load("diffusers folders", "none", False, "float32", "auto", model_folder=str(tmp_path / "x"))


def _tiny_lora(path, seed: int):
    """An original-format LoRA (ComfyUI keys) on the tiny DiT's first self-attention query (width 16)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    save_file(
        {
            "diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.randn(4, 16, generator=g),
            "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.randn(16, 4, generator=g),
            "diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(4.0),
        },
        path,
    )
    return path


def test_lora_chain_on_a_folder_equals_generate_with_the_same_loras(
    tiny_model_dir, reference_files, tmp_path
):
    """Two LoRAs with strengths, chained in ComfyUI's way, fuse as `generate --lora A:s --lora B:t` does."""
    first, second = _tiny_lora(tmp_path / "a.safetensors", 0), _tiny_lora(tmp_path / "b.safetensors", 1)
    (chain,) = LoraSelect().select(str(first), 0.5)
    (chain,) = LoraSelect().select(str(second), -0.25, previous=chain)
    images = [comfy_image(path) for path in reference_files]
    sampling = dict(negative_prompt="", seed=5, **{**SMALL, "width": 48, "height": 32})

    def node_video(loras) -> np.ndarray:
        (pipe,) = Loader().load("diffusers folders", "none", False, "float32", "auto", loras=loras,
                                model_folder=str(tiny_model_dir))  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        return Sampler().generate(pipe, images[0], "a cat", image_2=images[1], **sampling)[0].numpy()

    args = ["generate", "--model", str(tiny_model_dir), "--refs", *map(str, reference_files), "--prompt", "a cat",
            "--negative-prompt", "", "--seed", "5", "--steps", "2", "--num-frames", "5", "--height", "32",
            "--width", "48", "--lora", f"{first}:0.5", "--lora", f"{second}:-0.25", "--out", str(tmp_path / "v.mp4")]  # fmt: skip
    with captured_generate_frames() as captured:
        assert cli.main(args) == 0
    with_loras = node_video(chain)
    assert_close_to_float32_rounding(with_loras, captured[0])
    assert np.abs(with_loras - node_video(())).max() > 1e-4  # the LoRAs change the video
