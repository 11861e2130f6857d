# comicgen: `make dev` runs the whole stack, `make test` runs the tests. Both install what is missing.
.PHONY: dev test lint fmt setup bench clean

dev:
	@bash scripts/dev.sh

test:
	@bash scripts/test.sh $(PYTEST_ARGS)

setup:
	@bash -c 'source scripts/lib.sh && ensure_packages browser && ensure_venv'

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy .

fmt:
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

clean:
	rm -rf .local

bench:  ## BENCH="makespan push" make bench; default: all (about 9 minutes)
	@bash bench/run.sh $(or $(BENCH),all)
