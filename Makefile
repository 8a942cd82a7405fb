# One command each for the main job and the tests; both work from a clean clone.
PYTHON ?= python3
VENV := .venv

# The pipeline with every extra, the tests' tools, and the FLOP SDK (sdk/, its own
# distribution; pip takes the `mfu-sdk` dependency from ./sdk).
$(VENV)/.installed: pyproject.toml sdk/pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e ./sdk -e ".[all,test,docker]"
	touch $@

.PHONY: install demo test lint bench services-up services-down
install: $(VENV)/.installed

demo: install  ## the whole pipeline on local services with a simulated fleet
	$(VENV)/bin/mfu demo $(DEMO_ARGS)

test: install  ## start local Kafka + InfluxDB (cached) and run every test
	eval "$$($(VENV)/bin/mfu dev up)" && $(VENV)/bin/python -m pytest -q

lint: install
	$(VENV)/bin/ruff check .

bench: install
	eval "$$($(VENV)/bin/mfu dev up)" && $(VENV)/bin/mfu bench streams && $(VENV)/bin/mfu bench agent

services-up: install
	$(VENV)/bin/mfu dev up

services-down: install
	$(VENV)/bin/mfu dev down
