"""Putting a component file's tensors into a freshly built model, with every key accounted for.

The model is built without allocating its weights (``accelerate.init_empty_weights``; buffers such as rotary
frequencies are computed as usual), then the file's tensors are assigned. Every parameter must come from
the file, and every tensor of the file must land in the model: a mismatch is one error listing the keys
(and a wrong shape names the key and both shapes), never a partly random model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from ..models.checkpoint import CheckpointError

__all__ = ["assign_state_dict"]

_LISTED = 8  # keys named in an error, of each kind


def _listed(keys: list[str]) -> str:
    more = f" and {len(keys) - _LISTED} more" if len(keys) > _LISTED else ""
    return ", ".join(keys[:_LISTED]) + more


def assign_state_dict(
    make_model: Callable[[], torch.nn.Module],
    state: dict[str, torch.Tensor],
    path: Path,
    component: str,
    *,
    zero_if_missing: Iterable[str] = (),
) -> torch.nn.Module:
    """Build ``make_model()`` without weights and load ``state`` into it.

    Args:
        make_model: builds the model from its config.
        state: the file's tensors under the model's names.
        path, component: named in errors.
        zero_if_missing: parameters the file may lack because the component never uses them (Qwen's LM head,
            when a text-encoder file leaves it out); they are set to zeros.
    """
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = make_model()
    expected = model.state_dict(keep_vars=True)
    zero_if_missing = set(zero_if_missing)
    unexpected = sorted(set(state) - set(expected))
    # transformers' tied aliases (umT5's encoder.embed_tokens -> shared): present when their source is.
    tied = dict(getattr(model, "all_tied_weights_keys", None) or {})
    missing = sorted(
        name
        for name in expected
        if name not in state and name not in zero_if_missing and not (name in tied and tied[name] in state)
    )
    wrong = sorted(
        f"{name} {list(state[name].shape)} (expected {list(expected[name].shape)})"
        for name in set(state) & set(expected)
        if state[name].shape != expected[name].shape
    )
    if missing or unexpected or wrong:
        problems = [
            f"{len(missing)} missing tensors: {_listed(missing)}" if missing else "",
            f"{len(unexpected)} unexpected tensors: {_listed(unexpected)}" if unexpected else "",
            f"{len(wrong)} wrongly shaped tensors: {_listed(wrong)}" if wrong else "",
        ]
        raise CheckpointError(
            f"{path} does not fit the {component}: "
            + "; ".join(p for p in problems if p)
            + ". Is it the right file?"
        )
    for name in zero_if_missing - set(state):
        state[name] = torch.zeros(expected[name].shape, dtype=next(iter(state.values())).dtype)
    model.load_state_dict(state, strict=False, assign=True)
    if hasattr(model, "tie_weights"):  # assigning a tied parameter replaced it on one module only
        model.tie_weights()
    on_meta = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
    if on_meta:  # a tensor the key check above should have caught: never hand out a model without weights
        raise CheckpointError(f"{path}: {component} tensors left without values: {_listed(on_meta)}")
    return model.eval()
