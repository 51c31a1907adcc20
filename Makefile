# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
EXAMPLE := s011_w00_1_000
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv run test lint format bench clean demo-models demo-lipreading demo-lipreading-live demo-identity deploy-tools postgres gpu-check

KERNEL_STAMP := $(VENV)/.cell_cpu

venv: $(STAMP) $(KERNEL_STAMP)

# Reinstall when the dependency pins change.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The fused CPU kernel of the MP-LSTM recurrence (inference; g++ against the venv's torch).
$(KERNEL_STAMP): $(STAMP) mplstm/training/cell_cpu.cpp
	$(BIN)/python -m mplstm.training.cell_cpu build
	touch $(KERNEL_STAMP)

# The service on the embedded demo packages (models/), on 127.0.0.1:8000.
run: venv
	@echo "Serving models/ on http://127.0.0.1:8000 (Ctrl-C stops). Try, from another shell:"
	@echo "  curl -s http://127.0.0.1:8000/v1/models"
	@echo "  curl -s -F front=@models/examples/lipreading/clips/$(EXAMPLE)/front.mp4 \\"
	@echo "       -F left90=@models/examples/lipreading/clips/$(EXAMPLE)/left90.mp4 \\"
	@echo "       -F right30=@models/examples/lipreading/clips/$(EXAMPLE)/right30.mp4 \\"
	@echo "       -F right90=@models/examples/lipreading/clips/$(EXAMPLE)/right90.mp4 \\"
	@echo "       -F left30=@models/examples/lipreading/clips/$(EXAMPLE)/left30.mp4 \\"
	@echo "       http://127.0.0.1:8000/v1/predict"
	$(BIN)/mplstm serve --models models --host 127.0.0.1 --port 8000

# Tools the deployment tests call: Debian's docker-compose (to validate
# docker-compose.yml), kubectl's built-in kustomize (to render k8s/) and promtool, from
# Debian's prometheus (to check and unit-test deploy/prometheus-rules.yml). Missing ones
# make those tests skip, saying so.
deploy-tools:
	@command -v docker-compose >/dev/null || apt-get install -y -q docker-compose >/dev/null \
		|| sudo apt-get install -y -q docker-compose >/dev/null \
		|| echo "docker-compose could not be installed: tests/deploy compose checks will skip"
	@command -v kubectl >/dev/null || echo "kubectl not found: tests/deploy kustomize checks will skip"
	@command -v promtool >/dev/null || apt-get install -y -q --no-install-recommends prometheus >/dev/null \
		|| sudo apt-get install -y -q --no-install-recommends prometheus >/dev/null \
		|| echo "promtool could not be installed: tests/deploy alert-rule checks will skip"

# PostgreSQL 15's server binaries for the gallery's PostgreSQL tests (tests/service/gallery:
# each starts a throwaway cluster as the `postgres` user, which the Debian package creates).
# Missing, those tests skip, saying so.
postgres:
	@command -v initdb >/dev/null || test -x /usr/lib/postgresql/15/bin/initdb \
		|| apt-get install -y -q postgresql-15 >/dev/null \
		|| sudo apt-get install -y -q postgresql-15 >/dev/null \
		|| echo "postgresql-15 could not be installed: the gallery's PostgreSQL tests will skip"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: venv lint deploy-tools postgres
	$(BIN)/pytest -q

# Triton's side of bench/serve.py: nvidia-pytriton needs numpy<2, so it has its own venv.
TRITON_VENV := .venv-triton
$(TRITON_VENV)/.installed:
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install --quiet nvidia-pytriton==0.7.0 numpy==1.26.4 onnxruntime==1.31.1
	touch $@

# Every benchmark, one after the other (about 30 minutes on 2 cores); each rewrites its
# own section of docs/benchmarks.md. Run on a quiet machine.
bench: venv $(TRITON_VENV)/.installed
	$(BIN)/python bench/decode.py
	$(BIN)/python bench/camera_checks.py
	$(BIN)/python -m bench.cell
	$(BIN)/python bench/onnx_cell.py
	$(BIN)/python bench/model.py
	$(BIN)/python bench/score.py --model models/demo-lipreading
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/hostile.py
	$(BIN)/python bench/ddp.py
	$(BIN)/python bench/stream.py

# The GPU truth kit (bench/gpu; docs/benchmarks.md, GPU section): every GPU claim checked in
# under 8 minutes on a bare NVIDIA host with Python, torch (CUDA) and Triton. No venv, nothing
# installed: the host's own python runs the checkout. Writes gpu-check/gpu-check.{json,md}.
GPU_PYTHON ?= python3
gpu-check:
	$(GPU_PYTHON) -m bench.gpu --out gpu-check

# The embedded demo packages, rebuilt from synthetic data with fixed seeds and epochs
# (a few minutes each on 2 quiet cores). Each package records the accuracy of its exported
# ONNX model on its example clips (models/examples/TASK: unseen speakers for lip reading,
# unseen recordings of the training speakers for identity), which a test re-measures, with
# all views and with every subset of them (the service's expected_accuracy).
DEMO_DATA := data/demo-models
# The configs' defaults (no augmentation nor regularisation; docs/results.md) at a demo size,
# view dropout as the committed packages were trained: off, or on from the first step.
DEMO_TRAIN := --config configs/mplstm_lipreading.toml --threads 2 --no-progress --eval-split none \
	--epochs 20 --set data.frames=16 --set model.hidden_size=64 \
	--set model.view_dropout=0.0 --set train.view_dropout_start_epoch=0
DEMO_LIVE_TRAIN := --config configs/mplstm_live.toml --threads 2 --no-progress --eval-split none \
	--epochs 20 --set model.hidden_size=64 --set model.view_dropout=0.2 --set train.view_dropout_start_epoch=0
demo-models: demo-lipreading demo-lipreading-live demo-identity

# The lip-reading data and example clips, shared by the bidirectional and the live demo
# (the same seeds give the same files).
LIP_SYNTH := $(BIN)/mplstm synth $(DEMO_DATA)/lipreading --task lipreading --speakers 10 --words 5 --clips-per-pair 8 --seed 0 --no-progress
LIP_EXAMPLES := $(BIN)/mplstm synth models/examples/lipreading --task lipreading --first-speaker 11 --speakers 2 --words 5 --clips-per-pair 2 --seed 1 --split test --no-progress

# Lip reading with view dropout: the service then takes clips with a camera missing.
demo-lipreading: venv
	rm -rf $(DEMO_DATA)/lipreading runs/demo-lipreading models/demo-lipreading models/examples/lipreading
	$(LIP_SYNTH)
	$(LIP_EXAMPLES)
	$(BIN)/mplstm train --data $(DEMO_DATA)/lipreading/manifest.jsonl --out runs/demo-lipreading $(DEMO_TRAIN) --set model.view_dropout=0.2
	$(BIN)/mplstm export runs/demo-lipreading/best.pt --out models/demo-lipreading/1 --eval-data models/examples/lipreading/manifest.jsonl

# The live (causal) lip-reading model on the same data and sizes (configs/mplstm_live.toml
# at demo-lipreading's: hidden 64, 20 epochs, view dropout 0.2 from the first step), sampled
# at 12.5 steps/s; its package adds model.step.onnx for streaming sessions (docs/streaming.md).
demo-lipreading-live: venv
	rm -rf runs/demo-lipreading-live models/demo-lipreading-live
	test -f $(DEMO_DATA)/lipreading/manifest.jsonl || $(LIP_SYNTH)
	test -f models/examples/lipreading/manifest.jsonl || $(LIP_EXAMPLES)
	$(BIN)/mplstm train --data $(DEMO_DATA)/lipreading/manifest.jsonl --out runs/demo-lipreading-live $(DEMO_LIVE_TRAIN)
	$(BIN)/mplstm export runs/demo-lipreading-live/best.pt --out models/demo-lipreading-live/1 --eval-data models/examples/lipreading/manifest.jsonl

# Identity with an embedding head (open set: configs/mplstm_identity_open.toml, docs/results.md):
# people are enrolled and identified without retraining. As in docs/results.md, a front-view
# model of the same people trains first (a minute) and the MP-LSTM starts from its front-end
# (train.init_from): from scratch it learns several times slower. Its thresholds at FAR 1% and 0.1% are
# measured at export on 20 people it never saw; models/examples/identity holds unseen clips of
# its training people (the accuracy the manifest records), models/examples/identity-unseen
# clips of new people to enrol and identify (docs/service.md).
demo-identity: venv
	rm -rf $(DEMO_DATA)/identity $(DEMO_DATA)/identity-unseen runs/demo-identity runs/demo-identity-front models/demo-identity \
		models/examples/identity models/examples/identity-unseen
	$(BIN)/mplstm synth $(DEMO_DATA)/identity --task identity --speakers 40 --words 3 --clips-per-pair 3 --seed 0 --no-progress
	$(BIN)/mplstm synth $(DEMO_DATA)/identity-unseen --task identity --first-speaker 1001 --speakers 20 --words 2 --clips-per-pair 2 --seed 1 --split test --no-progress
	$(BIN)/mplstm synth models/examples/identity --task identity --speakers 10 --words 2 --clips-per-pair 1 --seed 1 --split test --no-progress
	$(BIN)/mplstm synth models/examples/identity-unseen --task identity --first-speaker 2001 --speakers 3 --words 2 --clips-per-pair 1 --seed 2 --split test --no-progress
	$(BIN)/mplstm train --data $(DEMO_DATA)/identity/manifest.jsonl --out runs/demo-identity-front \
		--config configs/single_view.toml --threads 2 --no-progress --eval-split none --epochs 12 \
		--set data.frames=16 --set model.hidden_size=64 --set model.embedding_size=128 --set 'train.loss="cosface"'
	$(BIN)/mplstm train --data $(DEMO_DATA)/identity/manifest.jsonl --out runs/demo-identity \
		--config configs/mplstm_identity_open.toml --threads 2 --no-progress --eval-split none --epochs 20 \
		--set 'train.init_from="runs/demo-identity-front/best.pt"'
	$(BIN)/mplstm export runs/demo-identity/best.pt --out models/demo-identity/1 \
		--eval-data models/examples/identity/manifest.jsonl --open-set-data $(DEMO_DATA)/identity-unseen/manifest.jsonl

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
