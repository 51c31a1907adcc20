# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv run test lint format bench clean

venv: $(STAMP)

# Reinstall when the dependency pins change.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Until the service lands (issue 5), `make run` generates a small synthetic
# multi-view set and shows what a model sees of one clip.
run: venv
	@echo "The service is not built yet: generating a synthetic demo set instead."
	$(BIN)/mplstm synth data/demo --task lipreading --speakers 4 --words 10 --views 5 --clips-per-pair 1 --seed 0
	$(BIN)/mplstm preprocess $$(ls data/demo/clips/*/*.mp4 | head -5 | sort) --frames 20 --size 64 64 --gray --out runs/demo_clip.npz --png runs/demo_clip.png
	@echo "Wrote runs/demo_clip.npz and the contact sheet runs/demo_clip.png"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: venv lint
	$(BIN)/pytest -q

bench: venv
	$(BIN)/python bench/decode.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
