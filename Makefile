# meshgate: the two commands a fresh machine needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Two stamps: meshgate itself (what running it needs: `make demo`), and the
# dev extras on top (what testing needs: `make test`, `lint`, `fuzz`).
STAMP  := $(VENV)/.installed
DEV    := $(VENV)/.dev-installed

.PHONY: install demo test test-fast fuzz bench lint clean

# The request path is compiled with mypyc (setup.py): editing one of those
# modules rebuilds, as the editable install runs the compiled copy.
COMPILED := $(shell $(PYTHON) setup.py --print-compiled)

$(STAMP): pyproject.toml setup.py $(COMPILED)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $(STAMP)

# The dev extras alone (pyproject.toml's `dev`), so adding them never rebuilds
# the package: `make test` after `make demo` installs just these.
$(DEV): pyproject.toml | $(STAMP)
	$(BIN)/python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', \
		'rb'))['project']['optional-dependencies']['dev']))" > $(VENV)/dev-requirements.txt
	$(BIN)/python -m pip install -q -r $(VENV)/dev-requirements.txt
	touch $(DEV)

# The demo's extras (pyproject.toml's `demo`: grpcio for its gRPC service).
DEMO_STAMP := $(VENV)/.demo-installed

$(DEMO_STAMP): pyproject.toml | $(STAMP)
	$(BIN)/python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', \
		'rb'))['project']['optional-dependencies']['demo']))" > $(VENV)/demo-requirements.txt
	$(BIN)/python -m pip install -q -r $(VENV)/demo-requirements.txt
	touch $(DEMO_STAMP)

install: $(STAMP)

demo: $(STAMP) $(DEMO_STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP) $(DEV)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP) $(DEV)
	$(BIN)/python -m pytest -q -m 'not slow'

# make fuzz: the property tests' long profile (tests/fuzz/__init__.py), then each
# atheris harness for FUZZ_SECONDS; crashing inputs land in .fuzz/NAME/crashes/.
FUZZ_SECONDS ?= 300
FUZZ_STAMP := $(VENV)/.fuzz-installed

$(FUZZ_STAMP): pyproject.toml
	$(BIN)/python -m pip install -q 'atheris>=2.3'    # pyproject.toml's fuzz extra
	touch $(FUZZ_STAMP)

fuzz: $(STAMP) $(DEV) $(FUZZ_STAMP)
	status=0; \
	MESHGATE_FUZZ=long $(BIN)/python -m pytest -q --timeout=0 tests/test_smuggling.py \
		tests/test_fuzz_http.py tests/test_fuzz_units.py || status=1; \
	$(BIN)/python -m tests.fuzz.http_head -max_total_time=$(FUZZ_SECONDS) || status=1; \
	$(BIN)/python -m tests.fuzz.path_normalize -max_total_time=$(FUZZ_SECONDS) || status=1; \
	exit $$status

bench: $(STAMP)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/mesh_bench.py

lint: $(STAMP) $(DEV)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis .fuzz
	find src -name '*.so' -delete
