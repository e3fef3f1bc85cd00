VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test sweep lint bench fuzz clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[test]' --config-settings editable_mode=compat
	# DeepSpeed writes the ZeRO checkpoints tests/test_zero.py reads (its engine on cpu);
	# an sdist: built against the torch above, without its CUDA ops
	DS_BUILD_OPS=0 $(PY) -m pip install -q -c constraints.txt --no-build-isolation deepspeed==0.19.8
	touch $(STAMP)

DEMO := demo-out
PIPE := fixtures/tiny-pipeline

# The main job on the checked-in tiny pipeline: inspect, shard, plan, run, generate.
demo: install
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(BIN)/bigmodel inspect $(PIPE) --dtype fp16
	$(BIN)/bigmodel shard $(PIPE) -o $(DEMO)/tiny-pipeline-sharded --max-shard-size 500KB
	$(BIN)/bigmodel inspect $(DEMO)/tiny-pipeline-sharded
	$(BIN)/bigmodel plan $(DEMO)/tiny-pipeline-sharded --max-memory 0=2MB,1=2MB --dtype fp16
	$(BIN)/bigmodel plan $(DEMO)/tiny-pipeline-sharded --max-memory 0=1MB,1=1MB,cpu=1GB \
		--dtype fp16 --strategy auto
	$(BIN)/bigmodel plan $(DEMO)/tiny-pipeline-sharded --max-memory cpu=1GB -o $(DEMO)/plan.json
	$(BIN)/bigmodel run $(DEMO)/tiny-pipeline-sharded --plan $(DEMO)/plan.json --verify
	$(BIN)/bigmodel run $(DEMO)/tiny-pipeline-sharded --plan $(DEMO)/plan.json \
		--generate "a photo of a cat" --steps 4 --height 64 --width 64 -o $(DEMO)/cat.png

test: install
	$(BIN)/pytest -m "not sweep"

# Long or fragile checks kept out of `make test` (marker `sweep`), among them every
# architecture of transformers' causal-LM and image-text Auto mappings, loaded split (-s: its counts)
sweep: install
	$(BIN)/pytest -m sweep -s

lint: install
	$(BIN)/ruff check bigmodel_cli tests benchmarks fixtures
	$(BIN)/ruff format --check bigmodel_cli tests benchmarks fixtures
	$(BIN)/mypy

bench: install
	$(PY) benchmarks/run_all.py

fuzz: install
	BIGMODEL_FUZZ_EXAMPLES=1000 $(BIN)/pytest tests/fuzz/test_fuzz_commands.py
	BIGMODEL_FUZZ_EXAMPLES=10000 $(BIN)/pytest -s tests/fuzz/test_fuzz_inputs.py

clean:
	rm -rf $(VENV) build *.egg-info
