# vlm-ablation: every command a user needs. `make help` lists them.
# Variables can be set on the command line: make ablation MODELS=llava-1.5-7b,gemma-3-4b BATCH_SIZE=4

PYTHON         ?= .venv/bin/python
MODELS         ?= all
DATA_CSV       ?= data/quic360/test.csv
OUTPUT_DIR     ?= results
BATCH_SIZE     ?= auto
MAX_NEW_TOKENS ?= 64
GPUS           ?= auto
ENGINE         ?= auto
TIMEOUT        ?=
EXTRA_ARGS     ?=
MODEL          ?=
MANIFEST       ?= $(OUTPUT_DIR)/run_manifest.json

# Images: FAMILIES=all or a comma list (blip2,llava,...,scoring); BASE_IMAGE overrides the CUDA PyTorch base.
FAMILIES       ?= all
BASE_IMAGE     ?=
SCORING_BASE_IMAGE ?=
IMAGE_ARGS     ?=
# Offline image builds: `make wheelhouse` fills images/wheelhouse (TORCH_WHEEL: a local torch wheel to use).
WHEEL_TARGETS  ?= blip2 instructblip llava llava-next qwen2.5-vl gemma3 scoring
TORCH_WHEEL    ?=

# The demo: all 8 models as tiny random-weight checkpoints on data/sample, local engine, CPU.
DEMO_DIR       ?= results/demo
TINY_DIR       ?= .cache/tiny-checkpoints
PYTEST_ARGS    ?=

.PHONY: help setup test lint demo ablation run-one fetch reproduce images wheelhouse quic360 sample

help:
	@echo "make setup                      create .venv with everything (torch, runner, scoring, orchestrator, tests)"
	@echo "make demo                       all 8 models (tiny random weights) on data/sample, scored; CPU, minutes"
	@echo "make test                       the test suite (Docker tests run when an engine answers at DOCKER_HOST)"
	@echo "make images [FAMILIES=...]      build the family images and the scoring image"
	@echo "make quic360                    download QuIC-360 test split + images into data/quic360/"
	@echo "make ablation [MODELS=...]      run models over DATA_CSV, score, summarise (GPU host: one command)"
	@echo "make run-one MODEL=name         one model, same pipeline"
	@echo "make fetch [MODELS=...]         download weights into the Hugging Face cache (HF_TOKEN from the env)"
	@echo "make reproduce MANIFEST=file    rerun a run_manifest.json with its pins and report differences"

setup:
	python3 -m venv .venv
	.venv/bin/pip install torch==2.14.1 torchvision==0.29.1 -e '.[runner,scoring,orchestrator,dev]'

test:
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

demo:
	@echo "=== DEMO: tiny RANDOM-WEIGHT models. Their captions are meaningless and their scores say nothing about"
	@echo "=== the real models; the demo shows that the whole pipeline runs. Real runs: make ablation on a GPU host."
	$(PYTHON) -m orchestrator tiny --models all --out $(TINY_DIR)
	$(PYTHON) -m orchestrator ablation --engine local --gpus none --models all \
		--data data/sample/sample.csv --output-dir $(DEMO_DIR) --model-path-root $(TINY_DIR) \
		--batch-size 4 --max-new-tokens 16 $(EXTRA_ARGS)
	@echo "=== DEMO done: results in $(DEMO_DIR)/ (open $(DEMO_DIR)/report.html)."
	@echo "=== Reminder: tiny random-weight models, so the captions and the numbers above are meaningless."

ablation:
	$(PYTHON) -m orchestrator ablation --models $(MODELS) --data $(DATA_CSV) --output-dir $(OUTPUT_DIR) \
		--batch-size $(BATCH_SIZE) --max-new-tokens $(MAX_NEW_TOKENS) --gpus $(GPUS) --engine $(ENGINE) \
		$(if $(TIMEOUT),--timeout $(TIMEOUT)) $(EXTRA_ARGS)

run-one:
	@test -n "$(MODEL)" || { echo "usage: make run-one MODEL=<model name> [DATA_CSV=...]"; exit 2; }
	$(MAKE) ablation MODELS=$(MODEL)

fetch:
	$(PYTHON) -m orchestrator fetch --models $(MODELS) --engine $(ENGINE) --output-dir $(OUTPUT_DIR)

reproduce:
	$(PYTHON) -m orchestrator reproduce --manifest $(MANIFEST) $(EXTRA_ARGS)

images:
	$(PYTHON) -m orchestrator images --families $(FAMILIES) \
		$(if $(BASE_IMAGE),--base-image $(BASE_IMAGE)) \
		$(if $(SCORING_BASE_IMAGE),--scoring-base-image $(SCORING_BASE_IMAGE)) $(IMAGE_ARGS)

# One `pip download` per image: the families pin different, incompatible versions.
wheelhouse:
	@test -n "$(TORCH_WHEEL)" || { echo "make wheelhouse TORCH_WHEEL=/path/to/torch-*.whl (the base image's torch, so pip does not fetch another)"; exit 2; }
	for target in $(WHEEL_TARGETS); do \
		$(PYTHON) -m pip download --quiet --dest images/wheelhouse $(TORCH_WHEEL) setuptools \
			-r images/$$target/requirements.txt || exit 1; \
	done

quic360:
	$(PYTHON) -m data.quic360 prepare --out data/quic360

sample:
	$(PYTHON) -m data.make_sample --out data/sample
