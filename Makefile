# The two commands of the README: `make serve` and `make test`.
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup setup-test serve test bench container

setup:
	bash scripts/setup.sh

setup-test:
	bash scripts/setup.sh --test

# Two malloc arenas keep the resident size down (see Dockerfile).
serve: setup
	MALLOC_ARENA_MAX=2 .venv/bin/uvicorn app.main:app --host $(HOST) --port $(PORT)

test: setup-test
	.venv/bin/python -m pytest

bench: setup-test
	.venv/bin/python -m bench.run

container:
	bash scripts/container.sh
