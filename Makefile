PYTHON ?= python3

.PHONY: deps test lint demo bench clean images image-test

deps:
	@bash scripts/install-deps.sh

test: deps
	$(PYTHON) -m pytest -q tests

lint: deps
	$(PYTHON) -m ruff check .
	hadolint --config .hadolint.yaml images/*.Containerfile tests/peers/*.Containerfile

# The container images (podman; the Debian base is made locally once per machine): see README "Container images".
images: deps
	bash scripts/build-images.sh

# A real backup and restore inside each built image (also part of `make test`).
image-test: images
	$(PYTHON) -m pytest -q tests/test_images.py

demo:
	@bash scripts/install-demo-deps.sh
	$(PYTHON) scripts/demo.py

bench: deps
	$(PYTHON) bench/bench_backup.py
	$(PYTHON) bench/bench_restore.py
	$(PYTHON) bench/bench_maintenance.py
	$(PYTHON) bench/bench_scale.py
	$(PYTHON) bench/bench_mongo.py
	$(PYTHON) bench/bench_es.py

clean:
	rm -rf .pytest_cache .ruff_cache build *.egg-info bench/out demo-run .deps-installed
