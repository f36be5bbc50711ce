"""The ``bindweave`` command: one subcommand per job, each derived from the job's typed config."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import config as cfg
from .demo import DemoConfig, run_demo
from .eval.score import EvalScoreConfig, run_score
from .extract import ExtractMLLMConfig, run_extract_mllm
from .generate import GenerateConfig, RunManifestConfig, run_generate, run_manifest
from .interrupt import INTERRUPTED_EXIT_CODE, interrupt_line
from .perf.bench import BenchConfig, run_bench
from .refine import RefineConfig, run_refine
from .toy.dataset import ToyDataConfig, run_toy_data
from .toy.evaluate import ToyEvalConfig, run_toy_eval
from .toy.export import ToyExportConfig, run_toy_export
from .toy.vae import ToyBaseConfig, run_toy_base
from .training.config import PrecomputeConfig
from .training.distributed import shutdown_distributed
from .training.precompute import run_precompute
from .ui import UIConfig, run_ui


@dataclass
class TrainCommandConfig:
    config: Path = cfg.field(help="training config, YAML or JSON (see configs/)", positional=True)


def run_train_command(args: TrainCommandConfig):
    from .training import load_train_config, run_train

    return run_train(load_train_config(args.config))


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    config_cls: type
    run: Callable


COMMANDS = [
    Command("demo", "generate a demo video with the embedded default model", DemoConfig, run_demo),
    Command(
        "generate", "generate one video from 1-4 reference images and a prompt", GenerateConfig, run_generate
    ),
    Command(
        "run-manifest",
        "generate every entry of a test_case.json-format manifest to <id>.mp4 (resumable)",
        RunManifestConfig,
        run_manifest,
    ),
    Command(
        "eval generate",
        "generate the OpenS2V-Eval videos of a manifest (fixed seed, resumable, sharded under torchrun)",
        RunManifestConfig,
        run_manifest,
    ),
    Command("eval score", "score generated videos with the OpenS2V-Eval metrics", EvalScoreConfig, run_score),
    Command(
        "refine",
        "rewrite a manifest's prompts from its references with a VLM (spec 5)",
        RefineConfig,
        run_refine,
    ),
    Command(
        "precompute",
        "encode a training manifest's clips once into a feature cache (resumable, sharded under torchrun)",
        PrecomputeConfig,
        run_precompute,
    ),
    Command(
        "train",
        "train or fine-tune BindWeave from a config (torchrun for FSDP2)",
        TrainCommandConfig,
        run_train_command,
    ),
    Command(
        "bench",
        "benchmark the DiT and the pipeline against stock Wan (prints the figures)",
        BenchConfig,
        run_bench,
    ),
    Command("ui", "serve the subject-to-video web app on 127.0.0.1 (needs the 'ui' extra)", UIConfig, run_ui),
    Command(
        "toy data",
        "write toy-world samples: a training manifest, reference images + masks, clips, ground truth",
        ToyDataConfig,
        run_toy_data,
    ),
    Command(
        "toy base",
        "train the toy VAE and save the untrained toy pipeline around it (the start of toy training)",
        ToyBaseConfig,
        run_toy_base,
    ),
    Command(
        "toy export",
        "copy a training checkpoint to a self-contained pipeline folder",
        ToyExportConfig,
        run_toy_export,
    ),
    Command(
        "toy-eval",
        "benchmark a toy model against its ablations and a random model on held-out toy scenes",
        ToyEvalConfig,
        run_toy_eval,
    ),
    Command(
        "extract-mllm",
        "save the MLLM states of a manifest in the released .pt format, plus a manifest copy pointing at them",
        ExtractMLLMConfig,
        run_extract_mllm,
    ),
]


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
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
        cfg.add_arguments(sub_parser, command.config_cls)
        sub_parser.set_defaults(_command=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    command: Command = args._command
    config = cfg.from_namespace(command.config_cls, args)
    try:
        command.run(config)
    except (ValueError, OSError) as err:  # user errors: one clear line, non-zero exit
        logging.getLogger("bindweave").error("%s", err)
        return 1
    except KeyboardInterrupt as err:  # Ctrl-C: what was saved and how to continue, in one line
        print(interrupt_line(command.name, err), file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    # A context-parallel torchrun job leaves its process group open: close it, on success only (tearing
    # down while another rank is still inside a collective can hang or abort that rank).
    shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
