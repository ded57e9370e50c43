# registry-mirror: `make run` starts the mirror with its defaults, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# command:package, for each command the tests run (the package when it is the command's name)
DEBIAN_TOOLS := docker-registry skopeo podman containerd nginx tinyproxy prometheus \
	runc mmdebstrap buildah podman-compose strip:binutils systemd-analyze:systemd

.PHONY: run test test-fast lint bench deps venv image dist

$(BIN)/registry-mirror: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(BIN)/registry-mirror

run: venv
	$(BIN)/registry-mirror serve

# The tests run real registries and clients: install Debian's packages when missing.
deps:
	@missing=""; for entry in $(DEBIAN_TOOLS); do \
		command -v $${entry%%:*} >/dev/null || missing="$$missing $${entry#*:}"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# The container image, offline: Debian's packages (mmdebstrap) and the project's wheels,
# committed by buildah as registry-mirror:VERSION (and :latest); reproducible.
image: venv deps
	deploy/image/build.sh --python $(BIN)/python

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src

test: venv deps lint
	$(BIN)/python -m pytest -q

# The fast tier (seconds, no external tools): in-process application tests and contract suites.
test-fast: venv
	$(BIN)/python -m pytest -q tests/inprocess tests/contracts

bench: venv deps
	$(BIN)/python -m bench

# A wheel and an sdist in dist/ (the wheel built from the sdist), by PyPA's build.
dist: venv
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
