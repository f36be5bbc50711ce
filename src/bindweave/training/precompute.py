"""``bindweave precompute``: run the frozen encoders once per clip and cache the features.

The encoders (a 7B MLLM, umT5-XXL, CLIP, the VAE) cost about as much per clip as a training step of the
DiT, and their output for a clip never changes: caching it makes every later epoch, stage and
experiment cheaper. Features are made by the same :class:`~bindweave.training.features.FeatureEncoder`
as online training, from the same seeded clip window and augmentation (those of epoch 0), so training
from the cache equals training with online encoding.

Launch with ``torchrun --nproc_per_node N`` to shard: rank ``r`` takes the clips ``i`` with
``i % world_size == r``. A rerun skips every clip already written, so an interrupted job just restarts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .cache import INDEX_NAME, FeatureCacheWriter, feature_settings
from .config import PrecomputeConfig, TrainConfig, load_train_config
from .data import ClipDataset, RawClip, SampleError
from .distributed import DistributedContext, all_reduce_sum, barrier, init_distributed, shutdown_distributed
from .features import FeatureEncoder
from .manifest import read_clip_manifest
from .model import load_pipeline

logger = logging.getLogger(__name__)

__all__ = ["PrecomputeSummary", "run_precompute"]


@dataclass(frozen=True)
class PrecomputeSummary:
    output_dir: Path
    clips: int  # clips in the finished cache
    encoded: int  # encoded by this run, all ranks
    reused: int  # already in the cache before this run, all ranks
    skipped: int  # bad lines and bad clips, in the final index


class _ClipsToEncode(Dataset):
    """Decodes clips for the encoder (in loader workers); a bad clip comes back as its error message."""

    def __init__(self, dataset: ClipDataset, indices: list[int]):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, RawClip | None, str | None]:
        index = self.indices[i]
        line = self.dataset.line(index)
        try:
            return line, self.dataset.load(index, epoch=0), None
        except self.dataset.data_errors as err:
            return line, None, f"{self.dataset.source}:{line}: {err}"


def _first(items: list) -> object:
    return items[0]


def run_precompute(config: PrecomputeConfig) -> PrecomputeSummary:
    """Encode every clip of ``config.manifest`` into the cache at ``config.output_dir``."""
    train = load_train_config(config.config)
    ctx = init_distributed()
    try:
        return _precompute(config, train, ctx)
    finally:
        if ctx.owns_process_group:
            shutdown_distributed()


def _precompute(config: PrecomputeConfig, train: TrainConfig, ctx: DistributedContext) -> PrecomputeSummary:
    device = torch.device(config.device) if config.device else ctx.device
    manifest = read_clip_manifest(config.manifest, train.data.on_bad_sample)
    writer = FeatureCacheWriter(config.output_dir, feature_settings(train.data, train.seed))

    dataset = ClipDataset(manifest, train.data, train.seed)
    mine = [i for i in range(len(dataset)) if i % ctx.world_size == ctx.rank]
    todo = [i for i in mine if not writer.is_done(dataset.line(i))]
    reused = len(mine) - len(todo)
    logger.info(
        "rank %d: %d of its %d clips to encode (%d already cached) into %s",
        ctx.rank, len(todo), len(mine), reused, config.output_dir,
    )  # fmt: skip

    encoded = 0
    if todo:
        pipe = load_pipeline(train.model, torch.float32, load_transformer=False)
        encoder = FeatureEncoder(pipe, train.data, device)
        loader = DataLoader(
            _ClipsToEncode(dataset, todo), batch_size=1, num_workers=train.data.num_workers, collate_fn=_first
        )
        for line, clip, error in tqdm(loader, desc=f"precompute rank {ctx.rank}", disable=not ctx.is_main):
            if error is not None:
                if train.data.on_bad_sample == "error":
                    raise SampleError(f"{error} (set data.on_bad_sample: skip to skip bad clips)")
                logger.warning("skipping bad clip %s", error)
                writer.write_skip(line, error)
                continue
            features = encoder.encode(clip)
            writer.write(line, features, metadata={"line": str(line), "prompt": clip.prompt})
            encoded += 1

    barrier(ctx)
    encoded, reused = all_reduce_sum(encoded, ctx), all_reduce_sum(reused, ctx)
    if ctx.is_main:
        index = writer.write_index(manifest)
        logger.info(
            "feature cache %s: %d clips (%d encoded now, %d reused), %d skipped",
            config.output_dir, len(index["clips"]), encoded, reused, len(index["skipped"]),
        )  # fmt: skip
    barrier(ctx)
    index = json.loads((Path(config.output_dir) / INDEX_NAME).read_text(encoding="utf-8"))
    return PrecomputeSummary(
        output_dir=Path(config.output_dir),
        clips=len(index["clips"]),
        encoded=encoded,
        reused=reused,
        skipped=len(index["skipped"]),
    )
