# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv run test lint format bench clean demo-models

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

# The embedded demo packages, rebuilt from synthetic data with fixed seeds and epochs
# (about 10 minutes each on 2 cores). Each package records the accuracy of its exported
# ONNX model on its example clips (models/examples/TASK: unseen speakers for lip reading,
# unseen recordings of the training speakers for identity), which a test re-measures.
DEMO_DATA := data/demo-models
DEMO_TRAIN := --config configs/mplstm_lipreading.toml --threads 2 --no-progress --eval-split none \
	--set data.frames=16 --set model.hidden_size=64 --set model.view_dropout=0.2 \
	--set augment.crop_pad=0 --set 'augment.flip="off"' --set augment.time_mask=0 \
	--set train.label_smoothing=0.0 --set train.weight_decay=0.0
demo-models: venv
	rm -rf $(DEMO_DATA) runs/demo-lipreading runs/demo-identity models/demo-lipreading models/demo-identity models/examples
	$(BIN)/mplstm synth $(DEMO_DATA)/lipreading --task lipreading --speakers 10 --words 5 --clips-per-pair 8 --seed 0 --no-progress
	$(BIN)/mplstm synth models/examples/lipreading --task lipreading --first-speaker 11 --speakers 2 --words 5 --clips-per-pair 2 --seed 1 --split test --no-progress
	$(BIN)/mplstm train --data $(DEMO_DATA)/lipreading/manifest.jsonl --out runs/demo-lipreading --epochs 20 $(DEMO_TRAIN)
	$(BIN)/mplstm export runs/demo-lipreading/best.pt --out models/demo-lipreading/1 --eval-data models/examples/lipreading/manifest.jsonl
	$(BIN)/mplstm synth $(DEMO_DATA)/identity --task identity --speakers 10 --words 4 --clips-per-pair 8 --seed 0 --no-progress
	$(BIN)/mplstm synth models/examples/identity --task identity --speakers 10 --words 2 --clips-per-pair 1 --seed 1 --split test --no-progress
	$(BIN)/mplstm train --data $(DEMO_DATA)/identity/manifest.jsonl --out runs/demo-identity --epochs 20 $(DEMO_TRAIN)
	$(BIN)/mplstm export runs/demo-identity/best.pt --out models/demo-identity/1 --eval-data models/examples/identity/manifest.jsonl

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
