"""Worker of ``test_parallel.py``: one BindWeave forward, Ulysses context-parallel over the torchrun ranks.

Run as ``torchrun --nproc_per_node 2 cp_worker.py OUT_DIR`` on CPU (gloo). It applies diffusers' context
parallel plan exactly as ``ModelMixin.enable_parallelism`` does after choosing the device (which needs an
accelerator, so it cannot run here): the parallel config is set up on a CPU device mesh, handed to every
attention processor, and the model's ``_cp_plan`` hooks are registered. Each rank writes the largest
difference from the single-process forward, for the stock processor and for batched CFG with unequal
MLLM lengths (the fast processor).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from diffusers import ContextParallelConfig
from diffusers.hooks.context_parallel import apply_context_parallel
from diffusers.models._modeling_parallel import ParallelConfig
from torch.distributed.device_mesh import init_device_mesh

from bindweave.denoiser import Conditioning, predict_velocities, predict_velocity
from bindweave.models import BindWeaveTransformer3DModel
from bindweave.perf.cross_attention import install_fast_cross_attention
from bindweave.testing import tiny_transformer_kwargs


def branches(config) -> tuple[torch.Tensor, list[Conditioning]]:
    g = torch.Generator().manual_seed(1)
    slots = config.num_reference_slots
    latents = torch.randn(1, 16, 2, 4, 6, generator=g)  # 6 frames x 2 x 3 patches = 36 tokens
    conds = [
        Conditioning(
            text=torch.randn(1, 512, config.text_dim, generator=g),
            image=torch.randn(1, slots * config.image_context_tokens, config.image_dim, generator=g),
            mllm=torch.randn(1, length, config.mllm_dim, generator=g),
            condition=torch.randn(1, 20, slots + 2, 4, 6, generator=g),
        )
        for length in (7, 13)
    ]
    return latents, conds


def make_context_parallel(model: BindWeaveTransformer3DModel, degree: int) -> None:
    cp = ContextParallelConfig(ulysses_degree=degree)
    mesh = init_device_mesh("cpu", cp.mesh_shape, mesh_dim_names=("ring", "ulysses"))
    config = ParallelConfig(context_parallel_config=cp)
    config.setup(dist.get_rank(), dist.get_world_size(), torch.device("cpu"), mesh=mesh)
    for module in model.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_parallel_config"):
            processor._parallel_config = config
    apply_context_parallel(model, cp, model._cp_plan)


@torch.no_grad()
def main(out: Path) -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = BindWeaveTransformer3DModel(**tiny_transformer_kwargs()).eval()
    install_fast_cross_attention(model)
    latents, conds = branches(model.config)
    t = torch.tensor([500.0])
    expected = [predict_velocity(model, latents, t, cond) for cond in conds]

    make_context_parallel(model, dist.get_world_size())
    separate = [predict_velocity(model, latents, t, cond) for cond in conds]
    batched = predict_velocities(model, latents, t, conds)
    result = {
        "separate": max((a - b).abs().max().item() for a, b in zip(separate, expected, strict=True)),
        "batched": max((a - b).abs().max().item() for a, b in zip(batched, expected, strict=True)),
        "shape": list(separate[0].shape),
    }
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(result))
    # No rank tears the groups down while the other is still inside a collective (gloo aborts then).
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
