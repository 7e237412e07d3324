PYTHON ?= python3

.PHONY: deps test lint demo bench clean

deps:
	@bash scripts/install-deps.sh

test: deps
	$(PYTHON) -m pytest -q tests

lint: deps
	$(PYTHON) -m ruff check .

demo: deps
	$(PYTHON) scripts/demo.py

bench: deps
	$(PYTHON) bench/bench_backup.py
	$(PYTHON) bench/bench_maintenance.py
	$(PYTHON) bench/bench_mongo.py
	$(PYTHON) bench/bench_es.py

clean:
	rm -rf .pytest_cache .ruff_cache build *.egg-info bench/out demo-run .deps-installed
