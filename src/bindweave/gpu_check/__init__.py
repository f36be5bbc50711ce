"""``bindweave gpu-check``: prove the CUDA paths on a GPU node in one command, within a few minutes.

1. :mod:`.wheels`: the packages the node's own Python lacks come from a carried wheel folder;
2. :mod:`.tests`: every ``gpu``-marked test runs (pytest in a subprocess, results from its junit XML);
3. :mod:`.timing`: the DiT forward with the released 14B shapes at 720p x 81, ours against stock diffusers
   ``WanTransformer3DModel`` on the same weights, MFU against the measured bf16 matmul peak;
4. :mod:`.memory`: the peak GPU memory of one denoising step in each memory mode and with fp8 weights;
5. :mod:`.report`: ``gpu-check.json`` and ``gpu-check.md``.

:mod:`.run` ties them together. Only :mod:`.config` and :mod:`.wheels` are imported before the wheels are
installed (standard library only).
"""
