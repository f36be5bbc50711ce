"""``bindweave extract-mllm``: the MLLM states of a manifest, saved once in the released ``.pt`` format.

Generating from saved states needs no Qwen2.5-VL (7B) in memory; a manifest copy points at the files. A
case whose two files exist is skipped, so an interrupted run resumes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .conditioning.mllm import MLLM_NEGATIVE_SUFFIX, encode_mllm, load_mllm_processor
from .conditioning.references import load_references
from .default_model import default_model_notice
from .generate import resolve_dtype
from .generate_config import ExtractMLLMConfig
from .interrupt import interrupt_message
from .io.files import atomic_torch_save, ensure_writable_dir, remove_stale_temporaries
from .io.manifest import load_manifest, resolve_images, save_manifest, with_fields
from .preflight import check_manifest_references, resolve_device

logger = logging.getLogger(__name__)


def _states_paths(out: Path, entry_id: str) -> tuple[Path, Path]:
    return out / f"{entry_id}_hidden_states.pt", out / f"{entry_id}_hidden_states_negative.pt"


def _extract_interrupted(config: ExtractMLLMConfig) -> str:
    entries = load_manifest(config.manifest)
    done = sum(all(p.is_file() for p in _states_paths(config.out, entry_id)) for entry_id in entries)
    return (
        f"the MLLM states of {done} of {len(entries)} cases are in {config.out}; run the same command again "
        "to make the rest (finished cases are skipped)"
    )


@interrupt_message(_extract_interrupted)
def run_extract_mllm(config: ExtractMLLMConfig) -> Path:
    """Save positive and negative MLLM states of every entry (released ``.pt`` format) and a manifest copy."""
    config.validate()
    entries = load_manifest(config.manifest)
    out_manifest = config.out_manifest or config.out / config.manifest.name
    ensure_writable_dir(config.out / "probe.pt")
    for folder in {config.out, out_manifest.parent}:
        remove_stale_temporaries(folder)
    images = {entry_id: resolve_images(entry, config.images_dir) for entry_id, entry in entries.items()}
    check_manifest_references(images)
    mllm, processor, device = _load_mllm(config)

    updated = {}
    for entry_id, entry in tqdm(entries.items(), desc="MLLM states", unit="case"):
        paths = _states_paths(config.out, entry_id)
        texts = (entry.prompt, config.negative_prompt + MLLM_NEGATIVE_SUFFIX)
        if not all(p.is_file() for p in paths):
            references = load_references(images[entry_id])
            for path, text in zip(paths, texts, strict=True):
                states = encode_mllm(mllm, processor, text, references)  # (1, L, 3584)
                atomic_torch_save(states.to(torch.bfloat16).cpu().contiguous(), path)
        relative = [os.path.relpath(p, out_manifest.parent) for p in paths]
        updated[entry_id] = with_fields(
            entry, hidden_states_path=relative[0], hidden_states_path_negative=relative[1]
        )
    save_manifest(updated, out_manifest)
    logger.info("wrote %s", out_manifest)
    return out_manifest


def _load_mllm(config: ExtractMLLMConfig):
    """Only the MLLM and its processor: from --mllm, else from a pipeline folder's subfolders."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    model_dir, processor_dir = config.mllm_folders()
    if config.mllm is None and config.model is None:
        print(default_model_notice())
    device = resolve_device(config.device)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        model_dir, dtype=resolve_dtype(config.dtype, device)
    )
    return model.to(device).eval(), load_mllm_processor(processor_dir), device
