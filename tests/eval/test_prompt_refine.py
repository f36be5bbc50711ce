"""Prompt refinement: endpoint backend against a mock server, fallbacks, the manifest runner, local Qwen."""

from __future__ import annotations

import base64
import io
import json
import logging

import pytest
from PIL import Image

from bindweave.eval.chat import ChatClient
from bindweave.io.manifest import load_manifest
from bindweave.refine import (
    REFINE_INSTRUCTION,
    EndpointRefiner,
    LocalQwenRefiner,
    RefineConfig,
    check_refinement,
    clean_answer,
    refine_prompt,
    run_refine,
)

REFINED = "A man in a red jacket throws a ball to his brown dog on a sunny lawn; the camera pans slowly."


def _images(*colours):
    return [Image.new("RGB", (40, 30), c) for c in colours]


def _refiner(server, retries=2, timeout=5.0):
    client = ChatClient(
        server.url, "refiner-model", "BW_REFINE_KEY", timeout=timeout, retries=retries, backoff=0
    )
    return EndpointRefiner(server.url, "refiner-model", client=client, max_image_side=16)


def test_endpoint_request_shape(chat_server):
    server = chat_server([REFINED])
    result = refine_prompt(_refiner(server), "a man plays with his dog", _images("red", "blue"))
    assert result.accepted and result.prompt == REFINED
    (request,) = server.requests
    assert request["model"] == "refiner-model"
    system, user = request["messages"]
    assert system == {"role": "system", "content": REFINE_INSTRUCTION}
    parts = user["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"]
    assert "a man plays with his dog" in parts[-1]["text"]
    first = parts[0]["image_url"]["url"]
    assert first.startswith("data:image/jpeg;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(first.split(",", 1)[1])))
    assert max(decoded.size) == 16  # shrunk to max_image_side
    assert decoded.getpixel((8, 6))[0] > 200  # the first reference (red) comes first


def test_instruction_covers_the_spec():
    text = REFINE_INSTRUCTION.lower()
    for needle in (
        "english",
        "single paragraph",
        "split screen",
        "duplicated",
        "clothing",
        "camera",
        "only the",
    ):
        assert needle in text, needle


def test_retries_on_500(chat_server):
    server = chat_server([500, REFINED])
    assert refine_prompt(_refiner(server), "p", _images("red")).prompt == REFINED
    assert len(server.requests) == 2


def test_failure_after_retries_falls_back_with_warning(chat_server, caplog):
    server = chat_server([502])
    with caplog.at_level(logging.WARNING, logger="bindweave.refine"):
        result = refine_prompt(_refiner(server, retries=1), "original prompt", _images("red"))
    assert result.prompt == "original prompt" and not result.accepted and result.failed
    assert len(server.requests) == 2
    assert "keeping the original prompt" in caplog.text


def test_timeout_falls_back(chat_server):
    server = chat_server([{"content": REFINED, "delay": 1.0}])
    result = refine_prompt(_refiner(server, retries=0, timeout=0.2), "original", _images("red"))
    assert result.prompt == "original" and result.failed


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "   \n ",
        "一个穿红色夹克的男人和他的狗在草地上玩耍，镜头缓慢平移。",
        "Человек играет с собакой на лужайке",
    ],
)
def test_empty_or_non_english_answer_falls_back(chat_server, caplog, answer):
    server = chat_server([answer])
    with caplog.at_level(logging.WARNING, logger="bindweave.refine"):
        result = refine_prompt(_refiner(server), "original", _images("red"))
    assert result.prompt == "original" and not result.accepted and not result.failed
    assert "rejected" in caplog.text


def test_answer_cleanup_and_checks():
    assert clean_answer('  "A dog runs.\nThe camera follows."  ') == "A dog runs. The camera follows."
    assert check_refinement("A café scene with a naïve dog") is None  # a few accents are fine
    assert "not English" in check_refinement(
        "Ein Mann spielt 和他的狗在草地上玩耍玩耍玩耍玩耍玩耍玩耍玩耍玩耍"
    )
    assert check_refinement("1234 ...") == "empty answer"


@pytest.fixture
def manifest_case(tmp_path):
    images = tmp_path / "Images"
    images.mkdir()
    for name, colour in [("man.png", "red"), ("dog.png", "blue")]:
        Image.new("RGB", (20, 20), colour).save(images / name)
    manifest = tmp_path / "cases.json"
    manifest.write_text(
        json.dumps(
            {
                "faceobj_1": {
                    "img_paths": ["Images/man.png", "Images/dog.png"],
                    "prompt": "a man with his dog",
                    "class_label": ["Man", "Dog"],
                },
                "singleobj_1": {"img_paths": ["Images/dog.png"], "prompt": "a dog", "class_label": ["Dog"]},
            }
        )
    )
    return tmp_path, manifest


def test_run_refine_writes_a_resumable_manifest(manifest_case, chat_server):
    root, manifest = manifest_case
    server = chat_server([REFINED, 503])  # second case: endpoint keeps failing
    out = root / "refined.json"
    config = RefineConfig(manifest=manifest, output=out, endpoint=server.url, retries=0)
    stats = run_refine(config)
    assert stats == {"output": str(out), "refined": 1, "kept_original": 0, "failed": 1, "skipped": 0}
    entries = load_manifest(out)
    assert entries["faceobj_1"].prompt == REFINED
    assert entries["faceobj_1"].extra["prompt_original"] == "a man with his dog"
    assert entries["faceobj_1"].img_paths == ("Images/man.png", "Images/dog.png")
    assert entries["singleobj_1"].prompt == "a dog" and "prompt_original" not in entries["singleobj_1"].extra
    assert len(server.requests[0]["messages"][1]["content"]) == 3  # two references + text

    # Re-running retries only the failed case.
    retry = chat_server(["A brown dog trots across a lawn toward the camera."])
    stats = run_refine(RefineConfig(manifest=manifest, output=out, endpoint=retry.url))
    assert stats["refined"] == 1 and stats["skipped"] == 1
    assert len(retry.requests) == 1
    entries = load_manifest(out)
    assert entries["singleobj_1"].extra["prompt_original"] == "a dog"
    assert entries["faceobj_1"].prompt == REFINED

    assert run_refine(RefineConfig(manifest=manifest, output=out, endpoint=retry.url))["skipped"] == 2
    assert len(retry.requests) == 1


def test_refine_config_validation(tmp_path):
    with pytest.raises(ValueError, match="endpoint"):
        RefineConfig(manifest=tmp_path / "m.json", output=tmp_path / "o.json")
    with pytest.raises(ValueError, match="mllm_path"):
        RefineConfig(manifest=tmp_path / "m.json", output=tmp_path / "o.json", backend="local")


def test_local_qwen_refiner_generates_text(tiny_release):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from bindweave.conditioning.mllm import load_mllm_processor

    folders = tiny_release
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folders.mllm).eval()
    processor = load_mllm_processor(folders.mllm)
    refiner = LocalQwenRefiner(model, processor, max_new_tokens=6, max_image_side=64)
    answer = refiner.generate("a man plays with his dog", _images("red", "blue"))
    assert isinstance(answer, str)
    # The tiny random model babbles; refine_prompt then applies the usual checks on the text.
    result = refine_prompt(refiner, "a man plays with his dog", _images("red"))
    assert isinstance(result.prompt, str) and result.prompt


def test_run_refine_local_backend(manifest_case, tiny_release):
    root, manifest = manifest_case
    folders = tiny_release
    out = root / "refined_local.json"
    stats = run_refine(
        RefineConfig(
            manifest=manifest,
            output=out,
            backend="local",
            mllm_path=folders.mllm,
            device="cpu",
            max_new_tokens=4,
            max_image_side=32,
        )
    )
    assert stats["refined"] + stats["kept_original"] == 2 and stats["failed"] == 0
    entries = load_manifest(out)
    assert {e.extra["prompt_original"] for e in entries.values()} == {"a man with his dog", "a dog"}
