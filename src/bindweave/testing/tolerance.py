"""Comparing float outputs in tests: bitwise only on the same storage layout, else up to float32 rounding.

CPU kernels pick different SIMD code paths for differently aligned storage (and for other batch shapes), so
one model loaded two ways gives outputs that differ in the last bits: the tiny pipeline loaded by
``from_released`` (DiT weights at ``data_ptr % 64`` 16/24/56) and by ``from_pretrained`` (32) gives frames
that differ by 7.7e-7. Compare bitwise (``torch.equal``, ``np.array_equal``) only where both sides provably
run the same kernels on the same storage layout:

- one module instance called twice, or with and without an option that leaves its weights where they are;
- pure functions of the same inputs; integer and index data; bytes read back from files;
- modules built in memory with the same shapes (torch's CPU allocator aligns every allocation to 64 bytes);
- the same weight files loaded by the same loader, with nothing moving the weights afterwards:
  safetensors maps the file, so each tensor's address modulo the page size is its offset in the file.

Everything else (another loader, an offload hook that copies the weights to new storage, another batch
shape) is compared with :func:`assert_close_to_float32_rounding`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "FLOAT32_EPS",
    "ROUNDING_ULPS",
    "assert_close_to_float32_rounding",
    "assert_differs_beyond_float32_rounding",
    "rounding_ulps",
]

#: float32 machine epsilon, 2**-23 = 1.19e-7: one ulp of a value in [1, 2).
FLOAT32_EPS = float(np.finfo(np.float32).eps)

#: How far, in float32 ulps of the output's scale, two placements of one computation may differ.
#:
#: Why this size. Each float32 operation rounds with relative error at most u = eps / 2; a sum of K terms
#: evaluated in another order (another SIMD path, another thread split) moves by about sqrt(K) * u of the
#: terms' magnitude, and by at most (K - 1) * u. The tiny pipeline's longest sums have ~900 terms (the VAE's
#: 3x3x3 convolutions over 32 channels), and its normalisations keep such differences from compounding.
#: Measured on the tiny pipeline's frames (32x48x5, CPU, torch 2.13) over 1, 2 and 4 threads and 2, 3 and
#: 5 steps, 63 cases: loaded by ``from_released`` vs ``from_pretrained``, with model offload (weights moved
#: to new storage), and each component's weights moved one ulp up or down at random: 5 to 12 ulps. 64 ulps
#: is 5x the largest.
#:
#: How tight. For frames in [0, 1] it is 7.6e-6, 1/500 of an 8-bit level. One weight of the DiT's output
#: projection changed by 1e-3 moves the 2-step frames by 309 ulps (5x the bound), of its patch embedding by
#: 1056 ulps; one sampler step more by 5e5 ulps, another seed by 4e6 ulps: all fail. (A change that small
#: deep inside the model can move a 2-step video by no more than rounding, e.g. 6 ulps for one connector
#: weight: no comparison of outputs can see it, bitwise or not.)
ROUNDING_ULPS = 64


def _as_float64(value: Any) -> np.ndarray:
    """A tensor or array as a float64 numpy array (exact for float32, bfloat16 and float16 values)."""
    if hasattr(value, "detach"):  # a torch tensor; numpy has no bfloat16, so widen in torch first
        import torch

        value = value.detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.asarray(value, dtype=np.float64)


def rounding_ulps(actual: Any, expected: Any, *, scale: float | None = None) -> float:
    """The largest ``|actual - expected|`` in float32 ulps of ``scale`` (default: the largest ``|expected|``).

    Raises ``AssertionError`` for other shapes or non-finite values (those are never rounding).
    """
    a, e = _as_float64(actual), _as_float64(expected)
    if a.shape != e.shape:
        raise AssertionError(f"shapes differ: {a.shape} vs {e.shape}")
    if not (np.isfinite(a).all() and np.isfinite(e).all()):
        raise AssertionError("non-finite values: not a rounding difference")
    if scale is None:
        scale = float(np.abs(e).max(initial=0.0))
    if scale <= 0:
        raise AssertionError(f"scale must be positive (expected is all zeros?), got {scale}")
    return float(np.abs(a - e).max(initial=0.0)) / (FLOAT32_EPS * scale)


def assert_close_to_float32_rounding(
    actual: Any, expected: Any, *, ulps: float = ROUNDING_ULPS, scale: float | None = None
) -> None:
    """Assert ``max |actual - expected| <= ulps * FLOAT32_EPS * scale``: equal up to float32 rounding.

    For outputs of one float32 computation run on differently placed storage (see the module docstring for
    when to compare bitwise instead). ``scale`` is the magnitude the computation works at, by default the
    largest ``|expected|``: 1 for frames in [0, 1], where the default bound of :data:`ROUNDING_ULPS` ulps is
    7.6e-6. Shapes must match and every value must be finite.
    """
    measured = rounding_ulps(actual, expected, scale=scale)
    if measured > ulps:
        raise AssertionError(
            f"differ by {measured:.1f} float32 ulps of the output scale, more than rounding ({ulps} ulps)"
        )


def assert_differs_beyond_float32_rounding(
    actual: Any, expected: Any, *, ulps: float = ROUNDING_ULPS, scale: float | None = None
) -> None:
    """Assert that ``actual`` and ``expected`` differ by more than float32 rounding: a real change.

    The negation of :func:`assert_close_to_float32_rounding` (same shapes required), for checks that an
    option or input changes the output: ``not torch.equal`` would also pass for a rounding difference.
    """
    measured = rounding_ulps(actual, expected, scale=scale)
    if measured <= ulps:
        raise AssertionError(
            f"differ by only {measured:.1f} float32 ulps of the output scale: within rounding ({ulps} ulps)"
        )
