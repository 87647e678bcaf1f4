# Two commands do all the set-up on a fresh Debian machine with Python 3.11:
#   make demo   installs, builds the sample archive and runs the pipeline on it
#   make test   installs what the tests need and runs the whole suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO := build/demo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-deps demo sample test lint format bench clean

system-deps:  ## espeak-ng speaks the test speech; chromium renders the report, drives the workbench tests
	@{ command -v espeak-ng && command -v chromium && command -v chromedriver; } >/dev/null || { \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  $(SUDO) apt-get install -y -qq espeak-ng chromium chromium-driver >/dev/null; }

$(BIN)/asr: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,dist,train,bench,diarize,serve]'
	# the Silero VAD model as the silero-vad wheel ships it (its torch dependency is not needed)
	$(BIN)/pip install -q --no-deps silero-vad
	touch $@

setup: system-deps $(BIN)/asr

sample: setup
	$(BIN)/python -m sample_archive.build build/sample-archive

demo: sample
	$(BIN)/asr ingest --catalogue build/sample-archive/catalogue.csv --out $(DEMO)
	$(BIN)/asr segment $(DEMO)/recordings.jsonl --out $(DEMO)/segments.jsonl
	$(BIN)/asr shard $(DEMO)/segments.jsonl --out $(DEMO)/shards
	$(BIN)/asr align $(DEMO)/recordings.jsonl --out $(DEMO)/aligned.jsonl
	$(BIN)/asr shard $(DEMO)/aligned.jsonl --out $(DEMO)/aligned-shards
	$(BIN)/asr train recipes/whisper-tiny-cpu.yaml --shards $(DEMO)/aligned-shards --out $(DEMO)/run
	$(BIN)/asr export $(DEMO)/run/final --out $(DEMO)/tiny-model --force
	$(BIN)/asr transcribe $(DEMO)/recordings.jsonl --out $(DEMO)/transcripts
	@echo "shards: $(DEMO)/shards/shards.json; model: $(DEMO)/tiny-model; transcripts: $(DEMO)/transcripts/"

lint: setup  ## ruff, and the module layers of pyproject.toml's [tool.importlinter]
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python benchmarks/corpus_throughput.py
	$(BIN)/python benchmarks/transcribe_speed.py --long-hours 3
	$(BIN)/python benchmarks/align_accuracy.py
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf build .pytest_cache
