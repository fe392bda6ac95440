# The two commands of the README: `make serve` and `make test`.
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup setup-test serve test bench container

setup:
	bash scripts/setup.sh

setup-test:
	bash scripts/setup.sh --test

# The mmap threshold keeps freed image buffers from growing the heap (see Dockerfile).
serve: setup
	MALLOC_MMAP_THRESHOLD_=1048576 .venv/bin/uvicorn app.main:app --host $(HOST) --port $(PORT)

test: setup-test
	.venv/bin/python -m pytest

bench: setup-test
	.venv/bin/python -m bench.run

container:
	bash scripts/container.sh
