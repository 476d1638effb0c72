# The README's two commands: `make demo` and `make test`. Everything they need is
# installed by scripts/setup.sh, idempotently.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup demo test test-arm64 lint unit docs clean

setup:
	@scripts/setup.sh

demo: setup
	@scripts/demo.sh

test: setup
	$(PY) -m pytest -n 2 --dist loadgroup --no-loadscope-reorder -p no:cacheprovider --durations=30 tests

# The arm64 tests alone (`make test` runs them too, first): bootstrap under qemu-user when not cached,
# customize through the chroot backend, boot under AAVMF. ≈ 13 CPU-minutes cold here (docs/decisions.md).
test-arm64: setup
	$(PY) -m pytest -p no:cacheprovider tests/test_arch.py -k arm64

unit: setup
	$(PY) -m pytest -m "not guest and not boot and not differential" tests

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

docs: setup
	$(PY) -c 'from imgsmith.docs import render_operations_doc as r; open("docs/operations.md", "w").write(r())'
	$(PY) -c 'from imgsmith.clouds.doc import render_clouds_doc as r; open("docs/clouds.md", "w").write(r())'

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
