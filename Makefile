# vlm-ablation: every command a user needs. `make help` lists them.
# Variables can be set on the command line: make ablation MODELS=llava-1.5-7b,gemma-3-4b BATCH_SIZE=4

PYTHON         ?= .venv/bin/python
MODELS         ?= all
DATA_CSV       ?= data/quic360/test.csv
# The data file, any format (docs/DATA.md): CSV/TSV, COCO annotations, a Karpathy split file or JSONL. DATA_CSV is
# its older name. DATA_FORMAT names the format (default: detected), SPLIT a Karpathy file's split (default test),
# IMAGE_ROOT the folder relative image paths are read from (default: the data file's folder).
DATA_FILE      ?= $(DATA_CSV)
DATA_FORMAT    ?=
SPLIT          ?=
IMAGE_ROOT     ?=
OUTPUT_DIR     ?= results
BATCH_SIZE     ?= auto
MAX_NEW_TOKENS ?= 64
GPUS           ?= auto
ENGINE         ?= auto
TIMEOUT        ?=
EXTRA_ARGS     ?=
MODEL          ?=
MANIFEST       ?= $(OUTPUT_DIR)/run_manifest.json

# Images: FAMILIES=all or a comma list (blip2,llava,...,generic,scoring), or IMAGE_MODELS=<models> for what those
# models need; BASE_IMAGE overrides the CUDA PyTorch base.
FAMILIES       ?= all
IMAGE_MODELS   ?=
BASE_IMAGE     ?=
SCORING_BASE_IMAGE ?=
IMAGE_ARGS     ?=
# Offline image builds: `make wheelhouse` fills WHEELHOUSE with every image's wheels, resolved against the base
# image's torch (BASE_REQUIREMENTS), then `make images IMAGE_ARGS=--offline` installs from there only.
WHEELHOUSE     ?= images/wheelhouse
WHEEL_TARGETS  ?= blip2 instructblip internvl2 internvl2-remote llava llava-next qwen2.5-vl gemma3 generic scoring
BASE_REQUIREMENTS ?= torch==2.14.1 torchvision==0.29.1

# The demo: tiny random-weight checkpoints of MODELS on data/sample, local engine, CPU. Its results go to
# OUTPUT_DIR when that is given on the command line (or in the environment), else to DEMO_DIR.
DEMO_DIR       ?= results/demo
DEMO_OUTPUT    = $(if $(filter command line environment environment override,$(origin OUTPUT_DIR)),$(OUTPUT_DIR),$(DEMO_DIR))
CONTAINER_USER ?=
MEMORY         ?=
MODELS_FILE    ?=
TINY_DIR       ?= .cache/tiny-checkpoints
PYTEST_ARGS    ?=
# make quic360: where the prepared data goes, and more options (python -m data.quic360 prepare --help), e.g.
# QUIC360_ARGS=--split-file=test.tsv to use a split TSV you already have.
QUIC360_DIR    ?= data/quic360
QUIC360_ARGS   ?=

.PHONY: help setup spice-jars test lint demo ablation run-one fetch reproduce images wheelhouse quic360 sample models sif

help:
	@echo "Commands:"
	@echo "  make setup                  create .venv with everything (torch, runner, scoring, orchestrator, tests)"
	@echo "  make spice-jars             SPICE's jars (Stanford CoreNLP 3.6.0, ~385 MB; verified) into the user cache"
	@echo "  make demo                   tiny RANDOM-WEIGHT models on data/sample, scored; CPU, minutes (results/demo)"
	@echo "  make test                   the test suite (Docker tests need an engine at DOCKER_HOST, Slurm tests root)"
	@echo "  make lint                   ruff check and ruff format --check"
	@echo "  make images                 the family images and the scoring image (or IMAGE_MODELS=... for some models)"
	@echo "  make wheelhouse             download every image's wheels into WHEELHOUSE (then IMAGE_ARGS=--offline)"
	@echo "  make quic360                QuIC-360 test split + its images -> data/quic360/test.csv"
	@echo "  make sample                 regenerate data/sample (the demo's panoramas and captions)"
	@echo "  make ablation               run MODELS over DATA_FILE, score, summarise, report (GPU host: one command)"
	@echo "  make run-one MODEL=name     one model, same pipeline"
	@echo "  make fetch                  download MODELS' weights into the Hugging Face cache (HF_TOKEN from the env)"
	@echo "  make reproduce              rerun MANIFEST with its pins and report differences"
	@echo "  make models                 list the models you can name, with what is verified for each"
	@echo "  make sif                    Apptainer .sif images from the family images (slurm engine; needs apptainer)"
	@echo "  make help                   this list"
	@echo "Variables (name=default):"
	@echo "  MODELS=$(MODELS)  comma list, hf:Org/Name[@rev], or all    MODELS_FILE=  your own catalogue entries"
	@echo "  MODEL=  one model (make run-one)    PYTHON=$(PYTHON)"
	@echo "  DATA_FILE=$(DATA_FILE)  any format (docs/DATA.md)    DATA_CSV=$(DATA_CSV)  its older name"
	@echo "  DATA_FORMAT=(detected)  csv|coco|karpathy|jsonl    SPLIT=(test)  a Karpathy file's split    IMAGE_ROOT="
	@echo "  OUTPUT_DIR=$(OUTPUT_DIR)    DEMO_DIR=$(DEMO_DIR)"
	@echo "  TINY_DIR=$(TINY_DIR)  where make demo keeps its tiny checkpoints"
	@echo "  BATCH_SIZE=$(BATCH_SIZE)    MAX_NEW_TOKENS=$(MAX_NEW_TOKENS)    GPUS=$(GPUS)    ENGINE=$(ENGINE)    TIMEOUT=(none)"
	@echo "  CONTAINER_USER=(you)  UID:GID containers run as    MEMORY=(none)  per-container memory limit: 64g, or auto"
	@echo "  EXTRA_ARGS=  more orchestrator options (python -m orchestrator ablation --help)"
	@echo "  FAMILIES=$(FAMILIES)  IMAGE_MODELS=  BASE_IMAGE=  SCORING_BASE_IMAGE=  IMAGE_ARGS=  (make images)"
	@echo "  WHEELHOUSE=$(WHEELHOUSE)  WHEEL_TARGETS=(every image)  BASE_REQUIREMENTS=$(BASE_REQUIREMENTS)  (make wheelhouse)"
	@echo "  MANIFEST=$(MANIFEST)  (make reproduce; the demo's: MANIFEST=$(DEMO_DIR)/run_manifest.json)"
	@echo "  PYTEST_ARGS=  TEST_WORKERS=$(TEST_WORKERS)  (make test)"
	@echo "  QUIC360_DIR=$(QUIC360_DIR)  QUIC360_ARGS=  (make quic360; offline: QUIC360_ARGS=--split-file=test.tsv)"
	@echo "  SIF_DIR=$(SIF_DIR)  SIF_FAMILIES=(every image)  (make sif)"

setup:
	python3 -m venv .venv
	.venv/bin/pip install torch==2.14.1 torchvision==0.29.1 -e '.[runner,scoring,orchestrator,dev]'
	$(MAKE) spice-jars PYTHON=.venv/bin/python

# SPICE's jars into $SCORING_SPICE_JARS or ~/.cache/vlm-ablation/spice, each checked against its pinned SHA-256;
# nothing is downloaded when they are there. Uses Maven (mvn) when installed, else downloads from Maven Central.
spice-jars:
	$(PYTHON) -m scoring fetch-spice

# Two workers (this project's test machines have 2 cores); --dist loadfile keeps each test file on one worker (the
# Docker tests count the engine's containers; each worker starts its own Slurm test cluster).
TEST_WORKERS   ?= 2
test:
	$(PYTHON) -m pytest -q -rs --durations=25 -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

# The model names are checked first (orchestrator tiny, with the ablation's code and message): a typo stops the demo
# before anything is built or fetched.
demo:
	@echo "=== DEMO: tiny RANDOM-WEIGHT models. Their captions are meaningless and their scores say nothing about"
	@echo "=== the real models; the demo shows that the whole pipeline runs. Real runs: make ablation on a GPU host."
	$(PYTHON) -m orchestrator tiny --models $(MODELS) --out $(TINY_DIR)
	@$(MAKE) --no-print-directory spice-jars PYTHON=$(PYTHON)
	$(PYTHON) -m orchestrator ablation --engine local --gpus none --models $(MODELS) \
		--data data/sample/sample.csv --output-dir $(DEMO_OUTPUT) --model-path-root $(TINY_DIR) \
		--batch-size 4 --max-new-tokens 16 $(EXTRA_ARGS)
	@echo "=== DEMO done: results in $(DEMO_OUTPUT)/ (open $(DEMO_OUTPUT)/report.html)."

ablation:
	$(PYTHON) -m orchestrator ablation --models $(MODELS) --data $(DATA_FILE) --output-dir $(OUTPUT_DIR) \
		$(if $(DATA_FORMAT),--data-format $(DATA_FORMAT)) $(if $(SPLIT),--split $(SPLIT)) \
		$(if $(IMAGE_ROOT),--image-root $(IMAGE_ROOT)) \
		--batch-size $(BATCH_SIZE) --max-new-tokens $(MAX_NEW_TOKENS) --gpus $(GPUS) --engine $(ENGINE) \
		$(if $(TIMEOUT),--timeout $(TIMEOUT)) $(if $(CONTAINER_USER),--container-user $(CONTAINER_USER)) \
		$(if $(MEMORY),--memory $(MEMORY)) $(if $(MODELS_FILE),--models-file $(MODELS_FILE)) $(EXTRA_ARGS)

models:
	$(PYTHON) -m orchestrator models $(if $(MODELS_FILE),--models-file $(MODELS_FILE))

run-one:
	@test -n "$(MODEL)" || { echo "usage: make run-one MODEL=<model name> [DATA_FILE=...]"; exit 2; }
	$(MAKE) ablation MODELS=$(MODEL)

fetch:
	$(PYTHON) -m orchestrator fetch --models $(MODELS) --engine $(ENGINE) --output-dir $(OUTPUT_DIR) \
		$(if $(CONTAINER_USER),--container-user $(CONTAINER_USER)) $(if $(MODELS_FILE),--models-file $(MODELS_FILE))

reproduce:
	$(PYTHON) -m orchestrator reproduce --manifest $(MANIFEST) $(if $(CONTAINER_USER),--container-user $(CONTAINER_USER)) \
		$(EXTRA_ARGS)

images:
	$(PYTHON) -m orchestrator images $(if $(IMAGE_MODELS),--models $(IMAGE_MODELS),--families $(FAMILIES)) \
		$(if $(MODELS_FILE),--models-file $(MODELS_FILE)) \
		$(if $(BASE_IMAGE),--base-image $(BASE_IMAGE)) \
		$(if $(SCORING_BASE_IMAGE),--scoring-base-image $(SCORING_BASE_IMAGE)) $(IMAGE_ARGS)

# One `pip download` per image: the families pin different, incompatible versions. Files already there are kept.
# setuptools and wheel: what an older pip (Debian bookworm's 23.0) needs to build a pin shipped only as source
# (docopt, num2words' dependency) without an index.
wheelhouse:
	mkdir -p $(WHEELHOUSE)
	for target in $(WHEEL_TARGETS); do \
		$(PYTHON) -m pip download --quiet --dest $(WHEELHOUSE) $(BASE_REQUIREMENTS) setuptools wheel \
			-r images/$$target/requirements.txt || exit 1; \
	done

# Apptainer images for the slurm engine (--container-runtime apptainer --sif-dir images/sif): one .sif per family
# image the Docker daemon holds. Needs `apptainer` on this host (not installable where this project is tested).
SIF_DIR        ?= images/sif
SIF_FAMILIES   ?= blip2 instructblip internvl2 llava llava-next qwen2.5-vl gemma3 generic scoring
sif:
	@command -v apptainer >/dev/null || { echo "make sif needs apptainer (https://apptainer.org) on this host"; exit 2; }
	mkdir -p $(SIF_DIR)
	for family in $(SIF_FAMILIES); do \
		apptainer build --force $(SIF_DIR)/$$family.sif docker-daemon://vlm-ablation/$$family:latest || exit 1; \
	done

quic360:
	$(PYTHON) -m data.quic360 prepare --out $(QUIC360_DIR) $(QUIC360_ARGS)

sample:
	$(PYTHON) -m data.make_sample --out data/sample
