# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
OUT    ?= outputs

.PHONY: install demo test lint clean toy-model toy-long toy-long-land toy-continue toy-land gpu-wheels gpu-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is installed first and pinned, so the other packages never pull a different (CUDA) build;
# constraints.txt pins the packages the GPU check carries as wheels, so the tests run on those versions.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,ui]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/bindweave demo --out $(OUT)

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

test: lint
	$(BIN)/python -m pytest -q

# Train the toy BindWeave from nothing in one sitting (docs/toy-world.md, "The one-sitting recipe"): 99 min on
# a 2-core CPU (measured for an earlier model, whose weights it reproduced byte for byte). Every step but the
# VAE's resumes if interrupted. Paths match configs/toy.yaml. It made the default model shipped until
# 2026-12-07; the shipped one is now the long run's (toy-long, toy-long-land).
TOY := runs/toy
toy-model: $(STAMP)
	$(BIN)/bindweave toy data --out $(TOY)/data --num-clips 1200
	$(BIN)/bindweave toy base --out $(TOY)/base
	$(BIN)/bindweave precompute --config configs/toy.yaml --manifest $(TOY)/data/manifest.jsonl --output-dir $(TOY)/cache
	$(BIN)/bindweave train configs/toy.yaml
	$(BIN)/bindweave toy export $(TOY)/train --out $(TOY)/model
	$(BIN)/bindweave toy-eval --model $(TOY)/model --out $(TOY)/eval --num-samples 16 --steps 15

# One part of the toy model's long run (configs/toy-long.yaml): resumes from runs/toy-long; THREADS=2 when alone.
toy-long: $(STAMP)
	BIN=$(BIN) scripts/toy-long.sh

# The end of a long-run part: its newest weights annealed with the plain MSE (configs/toy-long-anneal.yaml),
# then `toy land` on 32 held-out scenes (scripts/toy-long-land.sh); THREADS=2 when alone.
toy-long-land: $(STAMP)
	BIN=$(BIN) scripts/toy-long-land.sh

# One part of the shipped model's continued training on its own VAE (configs/toy-continue.yaml), ending with
# `toy land`: resumes from runs/toy-continue, or starts from the shipped model on a new machine; 1 thread.
toy-continue: $(STAMP)
	BIN=$(BIN) scripts/toy-continue.sh

# The end of a part: ship the run's newest checkpoint if it beats the shipped model (fidelity and direction
# accuracy, each beyond a standard error of the paired difference on the held-out scenes); TOY_RUN/land.
# `make toy-land TOY_RUN=runs/toy-continue` lands the continued run as it is (the long run: toy-long-land).
TOY_RUN ?= runs/toy-long
TOY_LAND_SAMPLES ?= 16
toy-land: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/bindweave toy land $(TOY_RUN)/train --out $(TOY_RUN)/land --num-samples $(TOY_LAND_SAMPLES)

# The GPU check (docs/performance.md, "Checking a GPU node"). gpu-wheels runs where the package registries are:
# it downloads the wheels an offline CUDA node lacks (diffusers, av, ftfy, wcwidth: 41 MiB, CPython 3.12,
# x86-64). gpu-check runs on the node with its own python3 and PyTorch, the project from this source tree.
GPU_WHEELS ?= wheels/gpu
GPU_CHECK_OUT ?= gpu-check
gpu-wheels:
	PYTHONPATH=src $(PYTHON) -m bindweave.gpu_check.wheels --dest $(GPU_WHEELS)

gpu-check:
	PYTHONPATH=src $(PYTHON) -m bindweave gpu-check --out $(GPU_CHECK_OUT) --wheels $(GPU_WHEELS) $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .tmp
