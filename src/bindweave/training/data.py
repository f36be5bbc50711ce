"""Training data: clip loading, the bad-sample policy, and a resumable, layout-independent sample order.

Determinism is by construction rather than by saved iterator state. A stage visits its clips as an
endless *stream*: epoch after epoch, each a permutation seeded by (run seed, stage, epoch). Every
randomness of a sample (frame window, reference augmentation, and in the trainer its noise and
timestep) is keyed by the clip and epoch or by its stream position, never by a process-global RNG. So:

- resuming only needs the stream position (samples consumed), not the loader's internals;
- any number of processes and data-loader workers see the same samples with the same randomness, so a
  2-GPU run and a 1-GPU run with the same global batch train on identical inputs.

A step's global batch is ``world_size * micro_batch_size * accumulation`` consecutive stream positions;
micro-step ``m`` covers ``world_size * micro_batch_size`` of them and rank ``r`` takes its contiguous
``micro_batch_size`` slice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import PIL.Image
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from bindweave.conditioning.references import ReferenceError

from .augment import augment_reference, augment_rng
from .config import DataConfig
from .manifest import ClipManifest, ClipRecord
from .subjects import BACKGROUND_RGB, load_subject
from .video import ClipError, read_subject_mask, read_training_clip

logger = logging.getLogger(__name__)

__all__ = [
    "ClipDataset",
    "RawClip",
    "Sample",
    "SampleError",
    "SampleKey",
    "SampleStream",
    "StageDataset",
    "StreamBatchSampler",
    "make_loader",
]

Item = TypeVar("Item")


class SampleError(ValueError):
    """A clip that cannot be loaded under ``on_bad_sample: error``; names the manifest line and file."""


@dataclass
class RawClip:
    """A decoded clip before encoding."""

    line: int
    prompt: str
    video: torch.Tensor  # (3, F, H, W) in [-1, 1]
    references: list[PIL.Image.Image]  # 1-4 subject cut-outs, augmented, RGB
    subject_mask: torch.Tensor | None = None  # (F, H, W) bool, True where a subject is


@dataclass(frozen=True)
class SampleKey:
    position: int  # position in the stage's sample stream
    index: int  # index of the clip in the stage's dataset
    epoch: int


@dataclass
class Sample(Generic[Item]):
    key: SampleKey
    line: int  # manifest line of the clip actually loaded
    item: Item
    skipped: list[str] = field(default_factory=list)  # bad clips this sample replaced


class SampleStream:
    """Position -> clip: endless epochs, each a permutation seeded by (seed, stage, epoch)."""

    def __init__(self, size: int, seed: int, stage: int):
        if size < 1:
            raise ValueError("a sample stream needs at least one clip")
        self.size, self.seed, self.stage = size, seed, stage
        self._epoch, self._order = -1, np.arange(0)

    def key(self, position: int) -> SampleKey:
        epoch, offset = divmod(position, self.size)
        if epoch != self._epoch:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.stage, epoch, 0xDA7A]))
            self._epoch, self._order = epoch, rng.permutation(self.size)
        return SampleKey(position=position, index=int(self._order[offset]), epoch=epoch)


class StreamBatchSampler(Sampler[list[SampleKey]]):
    """This rank's micro-batches from ``start`` onwards, forever (the trainer decides when to stop)."""

    def __init__(self, stream: SampleStream, start: int, micro_batch_size: int, world_size: int, rank: int):
        stride = micro_batch_size * world_size
        if start % stride:
            raise ValueError(f"stream position {start} is not a multiple of the micro-step size {stride}")
        self.stream, self.start = stream, start
        self.micro_batch_size, self.world_size, self.rank = micro_batch_size, world_size, rank

    def __iter__(self) -> Iterator[list[SampleKey]]:
        base = self.start + self.rank * self.micro_batch_size
        while True:
            yield [self.stream.key(base + j) for j in range(self.micro_batch_size)]
            base += self.micro_batch_size * self.world_size


class StageDataset(Dataset, Generic[Item]):
    """A stage's clips, indexed by :class:`SampleKey`, with the bad-sample policy applied.

    Subclasses implement :meth:`load` and :meth:`line`. Under ``on_bad_sample: skip`` a clip that fails
    with a data error is logged and replaced by the next clip of the dataset (so batch shapes, and the
    collective calls of every rank, stay the same); the replaced clips are reported in
    :attr:`Sample.skipped` so the trainer can count them across worker processes.

    Only the errors in :attr:`data_errors` count as bad data; anything else is a bug and propagates.
    """

    data_errors: tuple[type[Exception], ...] = (ClipError, ReferenceError)

    def __init__(self, on_bad_sample: str, source: str):
        self.on_bad_sample = on_bad_sample
        self.source = source  # the manifest or cache, for messages

    def __len__(self) -> int:
        raise NotImplementedError

    def line(self, index: int) -> int:
        raise NotImplementedError

    def load(self, index: int, epoch: int) -> Item:
        raise NotImplementedError

    def __getitem__(self, key: SampleKey) -> Sample[Item]:
        skipped: list[str] = []
        index = key.index
        for _ in range(len(self)):
            try:
                return Sample(
                    key=key, line=self.line(index), item=self.load(index, key.epoch), skipped=skipped
                )
            except self.data_errors as err:
                message = f"{self.source}:{self.line(index)}: {err}"
                if self.on_bad_sample == "error":
                    raise SampleError(f"{message} (set data.on_bad_sample: skip to skip bad clips)") from err
                logger.warning("skipping bad clip %s", message)
                skipped.append(message)
                index = (index + 1) % len(self)
        raise SampleError(
            f"{self.source}: none of its {len(self)} clips could be loaded:\n  " + "\n  ".join(skipped)
        )


class ClipDataset(StageDataset[RawClip]):
    """Raw clips of a manifest: decoded video window and augmented reference cut-outs."""

    def __init__(self, manifest: ClipManifest, data: DataConfig, seed: int):
        super().__init__(data.on_bad_sample, str(manifest.path))
        self.records: list[ClipRecord] = manifest.clips
        self.data, self.seed = data, seed

    def __len__(self) -> int:
        return len(self.records)

    def line(self, index: int) -> int:
        return self.records[index].line

    def load(self, index: int, epoch: int) -> RawClip:
        record, data = self.records[index], self.data
        window = np.random.default_rng(np.random.SeedSequence([self.seed, record.line, epoch, 0xF4A3]))
        start = window.random() if data.frame_start == "random" else 0.0
        window_args = (data.num_frames, data.fps, data.height, data.width, start)
        try:
            video = read_training_clip(record.video, *window_args)
        except ClipError as err:
            raise ClipError(f"{record.video}: {err}") from err
        subject_mask = None
        if record.subject_mask is not None:
            subject_mask = read_subject_mask(record.subject_mask, record.video, *window_args)
        fill = BACKGROUND_RGB[data.subject_background]
        references = [
            augment_reference(
                load_subject(ref.image, ref.mask, data.subject_background),
                data.augment,
                augment_rng(self.seed, record.line, epoch, i),
                data.height,
                data.width,
                fill=fill,
            )
            for i, ref in enumerate(record.references)
        ]
        return RawClip(
            line=record.line,
            prompt=record.prompt,
            video=video,
            references=references,
            subject_mask=subject_mask,
        )


def _keep_list(samples: list[Any]) -> list[Any]:
    return samples


def make_loader(
    dataset: StageDataset, sampler: StreamBatchSampler, num_workers: int, seed: int
) -> DataLoader:
    """A loader of lists of :class:`Sample` (encoding and stacking happen in the trainer).

    The loader gets its own generator so creating it never draws from the global torch RNG.
    """
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=_keep_list,
        generator=torch.Generator().manual_seed(seed),
        prefetch_factor=2 if num_workers > 0 else None,
    )
