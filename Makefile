# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make run    create .venv, install the serving extra, start the service on the default model
#   make test   create .venv, install serve + dev + train + batch + cluster extras, run ruff, mypy, pytest
# Rebuilding the shipped model from ../shared data (hours of CPU; resumable):
#   make cv        cross-validate LSTM_AT_400 and LSTM_NAT_400 on VGMIDI (CV_FOLDS_TO_RUN=N: first N folds;
#                  finished folds land in docs/results/vgmidi_16k/folds, commit them: they accumulate)
#   make joint-cv  5-fold CV over 4Q by artist, every fold also training on VGMIDI (folds committed)
#   make model     train the default's members on all of VGMIDI + 4Q (make -j3 model: side by side), export
#                  their mean as models/default.onnx with its card
#   make card      refresh that card's CV numbers from the committed reports (no training)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 0.0.0.0
PORT ?= 8000
VGMIDI ?= ../shared/data/vgmidi
FOURQ ?= ../shared/data/4q
RATE ?= 16000
MODEL_PRESET ?= LSTM_AT_400
MODEL_NAME ?= mer-lstm-at-400
MODEL_VERSION ?= 2.4.0
CV_OUT ?= docs/results/vgmidi_16k
# Training on VGMIDI's per-frame ratings and 4Q's clip-level quadrants (docs/results.md, "Real music").
# The shipped model is the mean of three LSTM_AT_400 members ("An ensemble of three recipes"), each
# trained with the shared clip recipe plus its own member arguments; each member's joint CV lives in its
# own folder and JOINT_OUT holds the report of their mean. The unaveraged AT and NAT twins:
# docs/results/fourq_joint_16k.
JOINT_OUT ?= docs/results/fourq_joint_16k_ensemble3
JOINT_PRESETS ?= LSTM_AT_400
JOINT_FOLDS_TO_RUN ?= 5
CLIP_ARGS ?= --clip-loss mean_mse --clip-target 0.5 --clip-weight 1 --weight-average 0.995
MEMBERS ?= rank256 rank1024 full
MEMBER_ARGS_rank256 ?= --input-rank 256
MEMBER_ARGS_rank1024 ?= --input-rank 1024
MEMBER_ARGS_full ?=
MEMBER_OUT_rank256 ?= docs/results/fourq_joint_16k_rank256
MEMBER_OUT_rank1024 ?= docs/results/fourq_joint_16k_rank1024
MEMBER_OUT_full ?= docs/results/fourq_joint_16k_ema995
SMOOTHING_ALPHA ?= 0.9
# The shipped model's feature path cuts clips of more than 30 s into 30 s chunks with 2 s of pre-roll, so
# one long song uses every core (docs/performance.md, "Long songs"). The CV targets keep one pass: their
# committed folds were computed so, and the deviation between the two is measured (bench/long_song.py).
CHUNK_ARGS ?= --chunk-frames 60 --chunk-preroll-frames 4
CV_FOLDS_TO_RUN ?= 10
# The same small learning-rate choice (on each fold's validation split) for AT and NAT.
CV_ARGS ?= --lr-choices 3e-4 1e-3
# One checkpoint per member; one that exists is reused (delete it to retrain that member).
CHECKPOINTS := $(foreach m,$(MEMBERS),cache/checkpoints/default-$(m).pt)
# The service's uvicorn flags (also the Dockerfile's CMD): JSON 400s from the HTTP parser itself, and a
# bounded graceful shutdown (requests in flight get this long after SIGTERM, then are cancelled).
SHUTDOWN_TIMEOUT_S ?= 10
UVICORN_FLAGS ?= --http app.http.protocols:JsonErrorProtocol --timeout-graceful-shutdown $(SHUTDOWN_TIMEOUT_S)

.PHONY: run test lint typecheck pytest bench-extract bench-infer bench-long bench-serve bench-batch bench-stream cv joint-cv model card clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.serve: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[serve]'
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[serve,dev,train,batch,cluster]'
	touch $@ $(VENV)/.serve

run: $(VENV)/.serve
	exec $(BIN)/uvicorn --factory app.main:create_app --host $(HOST) --port $(PORT) $(UVICORN_FLAGS)

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev
	$(BIN)/mypy

pytest: $(VENV)/.dev
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

bench-extract: $(VENV)/.dev
	$(BIN)/python bench/extract.py

bench-serve: $(VENV)/.dev
	$(BIN)/python bench/serve.py

bench-batch: $(VENV)/.dev
	$(BIN)/python bench/batch.py

bench-stream: $(VENV)/.dev
	$(BIN)/python bench/stream.py

bench-infer: $(VENV)/.dev
	$(BIN)/python bench/infer.py

bench-long: $(VENV)/.dev
	$(BIN)/python bench/long_song.py

cv: $(VENV)/.dev
	$(BIN)/python -m model_export setup
	$(BIN)/python -m model_export cv --dataset vgmidi --root $(VGMIDI) --rate $(RATE) \
		--presets LSTM_AT_400 LSTM_NAT_400 --folds 10 --folds-to-run $(CV_FOLDS_TO_RUN) $(CV_ARGS) \
		--out $(CV_OUT)

# Reuses the folds under $(JOINT_OUT)/folds (committed) when their key matches: rebuilds the report.
joint-cv: $(VENV)/.dev
	$(BIN)/python -m model_export setup
	$(foreach m,$(MEMBERS),$(BIN)/python -m model_export joint-cv --dataset vgmidi --root $(VGMIDI) \
		--clip-dataset fourq --clip-root $(FOURQ) --rate $(RATE) --presets $(JOINT_PRESETS) --folds 5 \
		--folds-to-run $(JOINT_FOLDS_TO_RUN) $(CLIP_ARGS) $(MEMBER_ARGS_$(m)) \
		--smoothing-alpha $(SMOOTHING_ALPHA) --probe --quoted $(MEMBER_OUT_$(m))/shipped-1.0.1.json \
		--out $(MEMBER_OUT_$(m)) &&) true
	$(BIN)/python -m model_export joint-ensemble --dataset vgmidi --root $(VGMIDI) --clip-dataset fourq \
		--clip-root $(FOURQ) --rate $(RATE) --members $(foreach m,$(MEMBERS),$(MEMBER_OUT_$(m))) --folds 5 \
		--smoothing-alpha $(SMOOTHING_ALPHA) --probe --quoted $(JOINT_OUT)/shipped-1.0.1.json --out $(JOINT_OUT)

# Rendering tools and the members' features, once: `make -j3 model` then starts three trainings that find
# them cached instead of three apt-get runs and three extractions racing for the same files.
cache/.model-features: | $(VENV)/.dev
	$(BIN)/python -m model_export setup
	$(BIN)/python -m model_export extract --dataset vgmidi --root $(VGMIDI) --rate $(RATE) $(CHUNK_ARGS)
	$(BIN)/python -m model_export extract --dataset fourq --root $(FOURQ) --rate $(RATE) $(CHUNK_ARGS)
	touch $@

cache/checkpoints/default-%.pt: | cache/.model-features
	$(BIN)/python -m model_export train --dataset vgmidi --root $(VGMIDI) --clip-dataset fourq \
		--clip-root $(FOURQ) --rate $(RATE) --preset $(MODEL_PRESET) $(CLIP_ARGS) $(MEMBER_ARGS_$*) \
		$(CHUNK_ARGS) --out $@

model: $(VENV)/.dev $(CHECKPOINTS)
	$(BIN)/python -m model_export export --checkpoint $(CHECKPOINTS) --out models/default.onnx --fp16 \
		--name $(MODEL_NAME) --version $(MODEL_VERSION) --smoothing-alpha $(SMOOTHING_ALPHA) \
		--cv-report $(CV_OUT)/report.json --joint-report $(JOINT_OUT)/report.json \
		--compare "before: no level policy=docs/results/vgmidi_16k_level_none/report.json" \
		--compare "level policy + augment=2 (not shipped)=docs/results/vgmidi_16k_augmented/report.json" \
		--card models/default.md

# The CV keeps accumulating folds after an export: refresh the card's numbers, weights untouched.
card: $(VENV)/.dev
	$(BIN)/python -m model_export card --model models/default.onnx --cv-report $(CV_OUT)/report.json \
		--joint-report $(JOINT_OUT)/report.json --card models/default.md

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
