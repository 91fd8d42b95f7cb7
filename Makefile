# R1 pipeline. `make pipeline` runs the whole recipe; `make test` runs the suite.
# Both install first when needed. Per-step targets wrap `r1 run CONFIG --only STEP`.
# Stacks (scripts/setup.sh): STACK=auto (default) is gpu when an NVIDIA driver is installed
# (nvidia-smi on PATH), else cpu; each stack has its own venv (.venv, .venv-gpu) and lock
# (requirements/cpu.lock, requirements/gpu.lock), so a target never reinstalls one over the other.
PYTHON ?= python3.11
STACK  ?= auto
DETECTED := $(shell STACK=$(STACK) bash scripts/setup.sh --detect)
STACK_NAME := $(word 1,$(DETECTED))
VENV   ?= $(word 2,$(DETECTED))
BIN    := $(VENV)/bin
R1     := $(BIN)/r1
STAMP  := $(VENV)/.setup-stamp
CONFIG ?= configs/pipeline/r1.yaml
RUN    ?=
RUN_FLAG := $(if $(RUN),--run $(RUN),)
ARGS   ?=
export VLLM_CPU_KVCACHE_SPACE ?= 2
export TOKENIZERS_PARALLELISM ?= false

# `--only STEP` when the pipeline file has that step (the demo has a prompt-pool and an eval
# step around reasoning_rl; other pipelines may not).
IF_STEP = $(if $(shell grep -Eq '^[[:space:]]*- name: $(1)([[:space:]]|$$)' $(CONFIG) && echo y),--only $(1))

.PHONY: setup pipeline test test-fast lint doctor gpu-check cold-start reasoning-rl rejection-sampling sft preference-pairs reward-models all-domain-rl distill eval inspect report clean-venv help

help:
	@echo "make pipeline | test | lint | setup | doctor | gpu-check | cold-start | reasoning-rl | rejection-sampling | sft | preference-pairs | reward-models | all-domain-rl | distill | eval | inspect | report"
	@echo "variables: CONFIG=$(CONFIG) RUN=<run name> ARGS='extra r1 flags' STACK=auto|cpu|gpu (now: $(STACK_NAME) in $(VENV))"

# The stamp depends on the files that define the install: a second `make setup` with nothing
# changed does nothing.
setup: $(STAMP)
$(STAMP): pyproject.toml requirements/$(STACK_NAME).lock scripts/setup.sh
	STACK=$(STACK_NAME) R1_VENV=$(VENV) PYTHON=$(PYTHON) bash scripts/setup.sh
	touch $(STAMP)

# First contact with a machine: versions, CUDA and driver, dtype, vLLM, bwrap, reward workers.
doctor: $(STAMP)
	$(R1) doctor $(ARGS)
# The same, failing unless torch can use the GPUs (run it first on a GPU node).
gpu-check: $(STAMP)
	$(R1) doctor --require-gpu $(ARGS)

# `r1 run` ends by writing the run report (runs/<run>/report/report.md and report.html).
pipeline: $(STAMP)
	$(R1) run $(CONFIG) $(RUN_FLAG) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15 $(ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

# Lint, format and types (settings in pyproject.toml); .ci/run runs it before the tests.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# One target per R1 step of the pipeline file (step names of configs/pipeline/r1.yaml).
cold-start: $(STAMP)
	$(R1) run $(CONFIG) $(RUN_FLAG) --only cold_start_data --only cold_start_sft $(ARGS)
reasoning-rl: $(STAMP)
	$(R1) run $(CONFIG) $(RUN_FLAG) $(call IF_STEP,rl_prompt_pool) --only reasoning_rl $(call IF_STEP,eval_rl) $(ARGS)
rejection-sampling: $(STAMP)
	$(R1) run $(CONFIG) $(RUN_FLAG) --only rejection_sampling $(ARGS)
sft: $(STAMP)
	$(R1) run $(CONFIG) $(RUN_FLAG) --only sft $(ARGS)
preference-pairs: $(STAMP)
	$(R1) run $(CONFIG) $(RUN_FLAG) --only preference_pairs $(ARGS)
# Both reward models of all-domain RL (helpfulness on the answer, harmlessness on the whole response).
reward-models: $(STAMP)
	$(R1) run $(CONFIG) $(RUN_FLAG) --only helpfulness_rm --only harmlessness_rm $(ARGS)
all-domain-rl: $(STAMP)
	$(R1) run $(CONFIG) $(RUN_FLAG) --only all_domain_rl $(ARGS)
distill: $(STAMP)
	$(R1) run $(CONFIG) $(RUN_FLAG) --only distill $(ARGS)
eval: $(STAMP)
	$(R1) run $(CONFIG) $(RUN_FLAG) --only eval $(ARGS)
HTML ?= rejection_sampling_report.html
inspect: $(STAMP)
	$(R1) inspect rejection_sampling --config $(CONFIG) $(RUN_FLAG) --html $(HTML) $(ARGS)
# make report [RUN=r1-demo]: the run report of RUN (default: the `run` of CONFIG).
report: $(STAMP)
	$(R1) report $(if $(RUN),$(RUN),--config $(CONFIG)) $(ARGS)

clean-venv:
	rm -rf $(VENV)
