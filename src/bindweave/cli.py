"""The ``bindweave`` command: one subcommand per job, each derived from the job's typed config.

The command table names each job's config class and run function by import path, and a command line
builds the options of its own subcommand only: ``bindweave --help`` imports no job module, and
``bindweave <command> --help`` imports only that job's config module, which imports no torch,
diffusers or transformers (:mod:`bindweave.generate_config` and its siblings). The run function's
module, with the heavy imports, is imported when the job runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import config as cfg
from .extras import install_hint, missing_extra
from .interrupt import INTERRUPTED_EXIT_CODE, interrupt_line


@dataclass
class TrainCommandConfig:
    config: Path = cfg.field(help="training config, YAML or JSON (see configs/)", positional=True)


def run_train_command(args: TrainCommandConfig):
    from .training import load_train_config, run_train

    return run_train(load_train_config(args.config))


def _resolve(path: str) -> Any:
    """``"bindweave.module:name"`` -> that object (importing the module)."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    config_path: str  # "module:ConfigClass", imported only when this command is parsed
    run_path: str  # "module:function", imported only when the job runs

    @property
    def config_cls(self) -> type:
        return _resolve(self.config_path)

    @property
    def run(self) -> Callable:
        return _resolve(self.run_path)


_GEN = "bindweave.generate"
_GEN_CONFIG = "bindweave.generate_config"

COMMANDS = [
    Command(
        "demo",
        "generate a demo video with the embedded default model",
        "bindweave.demo:DemoConfig",
        "bindweave.demo:run_demo",
    ),
    Command(
        "generate",
        "generate one video from 1-4 reference images and a prompt (default model: the embedded one)",
        f"{_GEN_CONFIG}:GenerateConfig",
        f"{_GEN}:run_generate",
    ),
    Command(
        "run-manifest",
        "generate every entry of a test_case.json-format manifest to <id>.mp4 (resumable)",
        f"{_GEN_CONFIG}:RunManifestConfig",
        f"{_GEN}:run_manifest",
    ),
    Command(
        "eval generate",
        "generate the OpenS2V-Eval videos of a manifest (fixed seed, resumable, sharded under torchrun)",
        f"{_GEN_CONFIG}:RunManifestConfig",
        f"{_GEN}:run_manifest",
    ),
    Command(
        "eval score",
        "score generated videos with the OpenS2V-Eval metrics",
        "bindweave.eval.score_config:EvalScoreConfig",
        "bindweave.eval.score:run_score",
    ),
    Command(
        "refine",
        "rewrite a manifest's prompts from its references with a VLM (spec 5)",
        "bindweave.refine:RefineConfig",
        "bindweave.refine:run_refine",
    ),
    Command(
        "precompute",
        "encode a training manifest's clips once into a feature cache (resumable, sharded under torchrun)",
        "bindweave.training.config:PrecomputeConfig",
        "bindweave.training.precompute:run_precompute",
    ),
    Command(
        "train",
        "train or fine-tune BindWeave from a config (torchrun for FSDP2)",
        "bindweave.cli:TrainCommandConfig",
        "bindweave.cli:run_train_command",
    ),
    Command(
        "bench",
        "benchmark the DiT and the pipeline against stock Wan (prints the figures)",
        "bindweave.perf.bench_config:BenchConfig",
        "bindweave.perf.bench:run_bench",
    ),
    Command(
        "gpu-check",
        "on a CUDA node: run every gpu test, time the 14B DiT against stock Wan, peak memory per mode",
        "bindweave.gpu_check.config:GpuCheckConfig",
        "bindweave.gpu_check.run:run_gpu_check",
    ),
    Command(
        "ui",
        "serve the subject-to-video web app on 127.0.0.1 (needs the 'ui' extra)",
        "bindweave.ui.config:UIConfig",
        "bindweave.ui.launch:run_ui",
    ),
    Command(
        "toy data",
        "write toy-world samples: a training manifest, reference images + masks, clips, ground truth",
        "bindweave.toy.config:ToyDataConfig",
        "bindweave.toy.dataset:run_toy_data",
    ),
    Command(
        "toy base",
        "train the toy VAE and save the untrained toy pipeline around it (the start of toy training)",
        "bindweave.toy.config:ToyBaseConfig",
        "bindweave.toy.vae:run_toy_base",
    ),
    Command(
        "toy export",
        "copy a training checkpoint to a self-contained pipeline folder",
        "bindweave.toy.export:ToyExportConfig",
        "bindweave.toy.export:run_toy_export",
    ),
    Command(
        "toy land",
        "ship a training run's newest checkpoint if it beats the shipped toy model on held-out scenes",
        "bindweave.toy.land:ToyLandConfig",
        "bindweave.toy.land:run_toy_land",
    ),
    Command(
        "toy-eval",
        "benchmark a toy model against its ablations and a random model on held-out toy scenes",
        "bindweave.toy.config:ToyEvalConfig",
        "bindweave.toy.evaluate:run_toy_eval",
    ),
    Command(
        "export-lora",
        "write a LoRA trained with `bindweave train` as one ComfyUI / original-Wan .safetensors file",
        "bindweave.lora.config:ExportLoraConfig",
        "bindweave.lora.export:run_export_lora",
    ),
    Command(
        "extract-mllm",
        "save the MLLM states of a manifest in the released .pt format, plus a manifest copy pointing at them",
        f"{_GEN_CONFIG}:ExtractMLLMConfig",
        "bindweave.extract:run_extract_mllm",
    ),
]


def _chosen_command(argv: Sequence[str], commands: Sequence[Command]) -> Command | None:
    """The command that ``argv`` names (its words after the top-level options), if any."""
    words = [a for a in argv if not a.startswith("-")]
    for command in commands:
        name = command.name.split(" ")
        if words[: len(name)] == name:
            return command
    return None


def build_parser(
    commands: Sequence[Command] = COMMANDS, argv: Sequence[str] | None = None
) -> argparse.ArgumentParser:
    """The ``bindweave`` parser; with ``argv``, only the command it names gets its options (and its
    config module imported), which keeps ``bindweave --help`` and every start-up light."""
    chosen = None if argv is None else _chosen_command(argv, commands)
    parser = argparse.ArgumentParser(prog="bindweave", description="BindWeave subject-to-video generation")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for command in commands:
        # "eval score" is the subcommand "score" of the group "eval".
        *group, name = command.name.split(" ")
        target = sub
        if group:
            if group[0] not in groups:
                group_parser = sub.add_parser(group[0], help=f"{group[0]} commands")
                groups[group[0]] = group_parser.add_subparsers(dest="subcommand", required=True)
            target = groups[group[0]]
        sub_parser = target.add_parser(name, help=command.help, description=command.help)
        if argv is None or command is chosen:
            cfg.add_arguments(sub_parser, command.config_cls)
        sub_parser.set_defaults(_command=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv=argv).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    log = logging.getLogger("bindweave")
    command: Command = args._command
    config = cfg.from_namespace(command.config_cls, args)
    try:
        command.run(config)
    except (ValueError, OSError) as err:  # user errors: one clear line, non-zero exit
        log.error("%s", err)
        return 1
    except ImportError as err:
        missing = missing_extra(err)
        if missing is None:
            raise
        package, extra = missing
        log.error(
            "bindweave %s needs %r, of the %r extra: %s", command.name, package, extra, install_hint(extra)
        )
        return 1
    except KeyboardInterrupt as err:  # Ctrl-C: what was saved and how to continue, in one line
        print(interrupt_line(command.name, err), file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    # A context-parallel torchrun job leaves its process group open: close it, on success only (tearing
    # down while another rank is still inside a collective can hang or abort that rank). Only a job that
    # imported torch.distributed can have opened one.
    if "torch.distributed" in sys.modules:
        from .training.distributed import shutdown_distributed

        shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
