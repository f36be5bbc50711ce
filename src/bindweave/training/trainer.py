"""``bindweave train``: the BindWeave trainer (spec 4).

One optimizer step::

    for each of the gradient_accumulation_steps micro-batches (micro_batch_size clips on this rank):
        features  <- the feature cache, or the frozen encoders run on decoded clips (inference code);
                     with condition dropout, some clips get the negative prompt's states (CFG's other branch)
        noise, t  <- drawn per sample, keyed by its stream position (layout-independent, resumable)
        with each clip's MLLM padding rows skipped in cross-attention (forward and backward):
            loss  <- weighted rectified-flow MSE of predict_velocity(DiT, x_t, t, cond) vs eps - x_0
            backward(loss / accumulation)
    grad norm (and clipping if configured); AdamW step; lr schedule step; EMA update (if configured)

The same code runs as one process (CPU or one GPU) or under ``torchrun`` on many GPUs and nodes, where the
DiT is sharded with FSDP2. Stages of the curriculum run in order, each with its own data, length and
learning rate. Checkpoints hold a loadable pipeline plus the exact training state; a killed run started
again with the same config continues from the newest checkpoint as if it had never stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from bindweave.interrupt import interrupt_message
from bindweave.io.files import atomic_write_json
from bindweave.perf.cross_attention import install_fast_cross_attention

from .cache import FeatureCache, FeatureCacheDataset, feature_settings
from .checkpoint import (
    TrainingState,
    load_checkpoint,
    resume_checkpoint,
    resume_hint,
    save_checkpoint,
    write_frozen_components,
)
from .config import ConfigError, StageConfig, TrainConfig, config_to_dict
from .data import ClipDataset, RawClip, Sample, SampleStream, StageDataset, StreamBatchSampler, make_loader
from .determinism import deterministic_kernels, seed_everything
from .distributed import (
    DistributedContext,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    global_grad_norm,
    has_fast_bf16,
    init_distributed,
    shard_transformer,
    shutdown_distributed,
)
from .ema import EMAWeights
from .features import DTYPES, FeatureBatch, FeatureEncoder, collate_features, condition_dropped
from .manifest import read_clip_manifest
from .metrics import MetricsLogger, setup_logging
from .model import configure_trainable, dit_tokens_per_clip, load_pipeline
from .objective import FlowMatchingObjective, build_lr_scheduler
from .validation import Validator

logger = logging.getLogger(__name__)

__all__ = ["TrainSummary", "Trainer", "run_train"]


@dataclass
class TrainSummary:
    """What one invocation of :func:`run_train` did."""

    output_dir: Path
    step: int  # optimizer steps done in total (all invocations)
    losses: list[float] = field(default_factory=list)  # per step of this invocation, mean over ranks
    checkpoints: list[Path] = field(default_factory=list)
    validation_videos: list[Path] = field(default_factory=list)
    skipped_samples: int = 0
    clips_per_second: float = 0.0  # mean over the steps of this invocation after the first
    tokens_per_second: float = 0.0
    stopped_early: bool = False  # left because of stop_after_steps


@dataclass(frozen=True)
class StepResult:
    loss: float  # weighted loss, mean over the global batch
    grad_norm: float  # global L2 norm of the gradients, before clipping
    lr: float  # learning rate the step used
    skipped: int  # bad clips skipped while loading this step's batch (all ranks)


@interrupt_message(
    lambda config: resume_hint(config.output_dir, config.resume, config.checkpoint.every_steps)
)
def run_train(config: TrainConfig) -> TrainSummary:
    """Train as ``config`` says (see :class:`~bindweave.training.config.TrainConfig`)."""
    config.validate()
    with deterministic_kernels(config.deterministic):
        ctx = init_distributed(group_of_one=config.distributed.shard_single_process)
        setup_logging(ctx)
        try:
            trainer = Trainer(config, ctx)
            try:
                return trainer.train()
            finally:
                trainer.close()
        finally:
            if ctx.owns_process_group:
                shutdown_distributed()


class Trainer:
    """Holds the run's model, optimizer, data and bookkeeping; :meth:`train` runs the curriculum."""

    def __init__(self, config: TrainConfig, ctx: DistributedContext):
        self.config, self.ctx = config, ctx
        self.output_dir = Path(config.output_dir)
        self.global_batch = config.micro_batch_size * config.gradient_accumulation_steps * ctx.world_size
        if config.global_batch_size is not None and config.global_batch_size != self.global_batch:
            raise ConfigError(
                f"global_batch_size {config.global_batch_size} != micro_batch_size {config.micro_batch_size} x "
                f"gradient_accumulation_steps {config.gradient_accumulation_steps} x {ctx.world_size} processes"
            )
        self.sharded = ctx.world_size > 1 or config.distributed.shard_single_process
        if self.sharded and config.trainable == "lora":
            raise ConfigError(
                "trainable: lora runs in a single process; use trainable: full for FSDP2 training"
            )
        self.compute_dtype = torch.bfloat16 if config.precision == "bf16" else None
        logger.info("training on %s, compute dtype %s", ctx.device, self.compute_dtype or torch.float32)
        if self.compute_dtype is not None and not has_fast_bf16(ctx.device):
            logger.warning("precision bf16: this CPU has no bf16 kernels, so it is emulated; fp32 is faster")
        seed_everything(config.seed + ctx.rank)

        # 1. Pretrained components. Trainable weights are float32 masters; a LoRA base stays in the
        #    compute dtype (it never changes, and bf16 halves the memory of a 14B base).
        lora_base_dtype = self.compute_dtype if config.trainable == "lora" and self.compute_dtype else None
        self.pipe = load_pipeline(config.model, lora_base_dtype or torch.float32)
        if ctx.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.output_dir / "train_config.json", config_to_dict(config))
            write_frozen_components(
                self.pipe, self.output_dir, include_transformer=config.trainable == "lora"
            )
        barrier(ctx)

        # 2. The model to train.
        self.transformer = self.pipe.transformer
        configure_trainable(self.transformer, config.trainable, config.lora)
        # Clips of a micro-batch have MLLM states of different lengths: this processor lets each one skip
        # its padding rows (and computes exactly the stock processor's result on an unpadded batch).
        install_fast_cross_attention(self.transformer)
        if config.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        self.transformer.train()
        if self.sharded:
            shard_transformer(self.transformer, ctx, config.distributed, self.compute_dtype)
        else:
            self.transformer.to(ctx.device)
        # Collected after sharding: FSDP2 replaces every parameter with its sharded DTensor.
        named = [(name, p) for name, p in self.transformer.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        adamw = config.optimizer
        self.optimizer = torch.optim.AdamW(
            self.params, config.stages[0].lr, tuple(adamw.betas), adamw.eps, adamw.weight_decay
        )
        self.objective = FlowMatchingObjective(
            shift=config.objective.shift,
            loss_weighting=config.objective.loss_weighting,
            subject_weight=config.objective.subject_weight,
        )
        self.ema = (
            None if config.ema.decay is None else EMAWeights(named, config.ema.decay, config.ema.warmup)
        )

        # 3. Frozen encoders: on the device when a stage encodes clips online or validation prompts need
        #    encoding; in a cache-only run they go back to the CPU once the validation prompts are encoded.
        online = any(stage.manifest is not None for stage in config.stages)
        needs_encoders = online or bool(config.validation.every_steps)
        self.encoder = FeatureEncoder(
            self.pipe, config.data, ctx.device if needs_encoders else torch.device("cpu")
        )
        self.validator = (
            Validator(self.pipe, config.validation, config.data, self.output_dir, ctx)
            if config.validation.every_steps
            else None
        )
        # Condition dropout's umT5 states: the negative prompt's, the same for every clip.
        self.negative_text = self.encoder.negative_text() if config.data.condition_dropout > 0 else None
        if not online:
            for name in ("text_encoder", "image_encoder", "mllm"):
                module = getattr(self.pipe, name, None)
                if module is not None:
                    module.to("cpu")

        # 4. Resume.
        self.state = TrainingState()
        self.scheduler_state: dict | None = None
        checkpoint = resume_checkpoint(self.output_dir, config.resume)
        if checkpoint is not None:
            loaded = load_checkpoint(checkpoint, self.transformer, self.optimizer, ctx, self.ema)
            self.state, self.scheduler_state = loaded.state, loaded.scheduler_state
            logger.info(
                "resumed from %s at step %d (stage %d)", checkpoint, self.state.step, self.state.stage
            )
        self.metrics = MetricsLogger(self.output_dir, ctx, config.logging.tensorboard, self.state.step)

        self.tokens_per_clip = dit_tokens_per_clip(self.pipe, config.data)

    # ------------------------------------------------------------------ setup helpers

    def _stage_dataset(self, stage: StageConfig) -> StageDataset:
        data = self.config.data
        if stage.cache is not None:
            cache = FeatureCache(stage.cache, feature_settings(data, self.config.seed))
            return FeatureCacheDataset(cache, data.on_bad_sample)
        manifest = read_clip_manifest(stage.manifest, data.on_bad_sample)
        if self.state.stage_step == 0:  # a resumed stage has its bad lines in the saved count already
            self.state.skipped_samples += len(manifest.skipped)
        return ClipDataset(manifest, data, self.config.seed)

    def compute_context(self) -> AbstractContextManager:
        """bf16 autocast around the DiT's forward (with FSDP2 the gathered weights are bf16 already)."""
        if self.compute_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.ctx.device.type, dtype=self.compute_dtype)

    # ------------------------------------------------------------------ training

    def train(self) -> TrainSummary:
        config, ctx, state = self.config, self.ctx, self.state
        summary = TrainSummary(
            output_dir=self.output_dir, step=state.step, skipped_samples=state.skipped_samples
        )
        progress = tqdm(total=config.total_steps, initial=state.step, desc="train", disable=not ctx.is_main)
        step_times: list[float] = []
        steps_this_run = 0
        try:
            for stage_index in range(state.stage, len(config.stages)):
                stage = config.stages[stage_index]
                if stage_index != state.stage:
                    state.stage, state.stage_step, state.stage_position = stage_index, 0, 0
                scheduler = build_lr_scheduler(self.optimizer, stage)
                if self.scheduler_state is not None:  # resumed inside this stage
                    scheduler.load_state_dict(self.scheduler_state)
                    for group, lr in zip(self.optimizer.param_groups, scheduler.get_last_lr(), strict=True):
                        group["lr"] = lr  # building the scheduler reset it to the warmup's first value
                    self.scheduler_state = None
                if state.stage_step >= stage.steps:
                    continue
                logger.info(
                    "stage %d '%s': steps %d-%d", stage_index, stage.name, state.stage_step + 1, stage.steps
                )
                batches = self._micro_batches(stage_index, stage)
                while state.stage_step < stage.steps:
                    start = time.perf_counter()
                    result = self._optimizer_step(batches, stage_index)
                    scheduler.step()
                    state.step += 1
                    state.stage_step += 1
                    state.stage_position += self.global_batch
                    state.skipped_samples += result.skipped
                    steps_this_run += 1
                    elapsed = time.perf_counter() - start
                    step_times.append(elapsed)
                    summary.losses.append(result.loss)
                    progress.update()
                    progress.set_postfix(loss=f"{result.loss:.4f}")
                    self._log(stage, result, elapsed)
                    summary.validation_videos += self._maybe_validate()
                    stop = config.stop_after_steps is not None and steps_this_run >= config.stop_after_steps
                    done = state.step == config.total_steps
                    if stop or done or state.step % config.checkpoint.every_steps == 0:
                        summary.checkpoints.append(self._save(scheduler))
                    if stop and not done:
                        logger.info(
                            "stop_after_steps=%d reached at step %d", config.stop_after_steps, state.step
                        )
                        summary.stopped_early = True
                        break
                del batches  # shuts the loader's workers down
                if summary.stopped_early:
                    break
        finally:
            progress.close()
        summary.step, summary.skipped_samples = state.step, state.skipped_samples
        timed = step_times[1:] or step_times  # the first step pays for warm-up
        if timed:
            summary.clips_per_second = self.global_batch * len(timed) / sum(timed)
            summary.tokens_per_second = summary.clips_per_second * self.tokens_per_clip
        return summary

    def _micro_batches(self, stage_index: int, stage: StageConfig) -> Iterator[list[Sample]]:
        dataset = self._stage_dataset(stage)
        config, ctx = self.config, self.ctx
        stream = SampleStream(len(dataset), config.seed, stage_index)
        sampler = StreamBatchSampler(
            stream, self.state.stage_position, config.micro_batch_size, ctx.world_size, ctx.rank
        )
        return iter(make_loader(dataset, sampler, config.data.num_workers, config.seed + ctx.rank))

    def _features(self, samples: list[Sample], stage_index: int) -> FeatureBatch:
        items = [self.encoder.encode(s.item) if isinstance(s.item, RawClip) else s.item for s in samples]
        dropout, seed = self.config.data.condition_dropout, self.config.seed
        items = [
            item.unconditional(self.negative_text)
            if condition_dropped(seed, stage_index, sample.key.position, dropout)
            else item
            for item, sample in zip(items, samples, strict=True)
        ]
        lines, positions = [s.line for s in samples], [s.key.position for s in samples]
        return collate_features(items, lines, positions, need_subject_mask=self.objective.subject_weight != 1)

    def _optimizer_step(self, batches: Iterator[list[Sample]], stage_index: int) -> StepResult:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches."""
        config, accumulation = self.config, self.config.gradient_accumulation_steps
        losses, skipped = [], 0
        for micro in range(accumulation):
            samples = next(batches)
            skipped += sum(len(s.skipped) for s in samples)
            batch = self._features(samples, stage_index).to(self.ctx.device)
            noise, index = self.objective.draw(
                tuple(batch.latents.shape[1:]), config.seed, stage_index, batch.positions
            )
            if self.sharded:  # reduce-scatter gradients only after the last micro-batch
                self.transformer.set_requires_gradient_sync(micro == accumulation - 1)
            # Open over the backward too: gradient checkpointing recomputes the blocks' forward there.
            with batch.padded(self.transformer):
                with self.compute_context():
                    output = self.objective.loss(
                        self.transformer,
                        batch.latents,
                        batch.cond,
                        noise,
                        index,
                        batch.padding,
                        subject_mask=batch.subject_mask,
                    )
                (output.loss / accumulation).backward()
            losses.append(output.loss.detach())

        grad_norm = global_grad_norm(self.params, config.optimizer.max_grad_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()
        return StepResult(
            loss=float(all_reduce_mean(torch.stack(losses).mean(), self.ctx)),
            grad_norm=grad_norm,
            lr=lr,
            skipped=all_reduce_sum(skipped, self.ctx),
        )

    # ------------------------------------------------------------------ periodic work

    def _log(self, stage: StageConfig, result: StepResult, elapsed: float) -> None:
        state, every = self.state, self.config.logging.every_steps
        if state.step % every and state.step != self.config.total_steps and state.step != 1:
            return
        clips_per_second = self.global_batch / elapsed
        self.metrics.log(
            state.step,
            {
                "stage": stage.name,
                "loss": result.loss,
                "lr": result.lr,
                "grad_norm": result.grad_norm,
                "clips_per_s": clips_per_second,
                "tokens_per_s": clips_per_second * self.tokens_per_clip,
                "skipped": state.skipped_samples,
            },
        )

    def _maybe_validate(self) -> list[Path]:
        every = self.config.validation.every_steps
        if self.validator is None or self.state.step % every:
            return []
        with self.ema.applied() if self.ema is not None else nullcontext():
            return self.validator.run(self.state.step, self.compute_context)

    def _save(self, scheduler: LambdaLR) -> Path:
        return save_checkpoint(
            self.output_dir,
            self.state,
            self.transformer,
            self.optimizer,
            scheduler,
            self.ctx,
            lora=self.config.trainable == "lora",
            save_dtype=DTYPES[self.config.checkpoint.save_dtype],
            keep_last=self.config.checkpoint.keep_last,
            ema=self.ema,
        )

    def close(self) -> None:
        self.metrics.close()
