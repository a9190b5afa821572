# The two commands: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# DeepSpeed compiles ops on first use; keep them across runs.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/$(VENV)/torch_extensions
export RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S ?= 600
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test test-fast install bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	# torch first, from the CPU file: nothing may pull another (CUDA) build
	$(BIN)/pip install -q torch==2.13.0
	# deepspeed's setup imports torch: build it against the torch above
	$(BIN)/pip install -q --no-build-isolation -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mer demo-data demo_corpus
	$(BIN)/mer run jobs/quickstart.yaml
	@sed -n '/^## Summary/,/^## Per-class/p' runs/quickstart/report.md | head -n -1
	@echo "full report: runs/quickstart/report.md (mer report runs/quickstart to re-render)"

# Lint first (seconds); pytest exits 5 when it collected no tests: not a failure of the code.
test: $(STAMP)
	$(BIN)/ruff check mer tests benchmarks
	$(BIN)/python -m pytest -q tests || [ $$? -eq 5 ]

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests -m "not integration and not slow"

bench: $(STAMP)
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf demo_corpus demo_corpus_balanced mer_store mer_store_* runs
