"""Fast and lean generation: memory modes, exact speed-ups, opt-in step caches, multi-GPU, benchmarks.

See ``docs/performance.md``. Submodules are imported on use: :mod:`bindweave.perf.config` (the options
every generation job takes) stays free of diffusers so that building the CLI is cheap.
"""
