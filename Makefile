# The README's commands. Everything installs into .venv; nothing is needed by hand.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medgen-installed
# CPU wheel of torch when there is no NVIDIA GPU (a bare `torch` would pull a CUDA build)
TORCH_CPU ?= torch==2.13.0
SYSTEM_PACKAGES := xvfb xauth libgl1-mesa-dri libglx-mesa0 libegl1 libxkbcommon-x11-0 libxcb-icccm4 \
	libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 \
	libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1

.PHONY: setup system-deps test demo bench eclare-env inorm-env screenshot validate clean

setup: $(STAMP)

$(STAMP): pyproject.toml plugins/medgen-classic/pyproject.toml plugins/medgen-template/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q "$(TORCH_CPU)"; fi
	$(PY) -m pip install -q -e ".[test]" -e plugins/medgen-classic -e plugins/medgen-template
	touch $@

# Xvfb + Mesa for napari's OpenGL canvas when there is no display (installed only if missing).
system-deps:
	@if ! command -v xvfb-run >/dev/null 2>&1 || ! ldconfig -p | grep -q libEGL.so.1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Xvfb and Mesa (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	  else \
	    echo "xvfb-run/Mesa missing: install them with: sudo apt-get install $(SYSTEM_PACKAGES)"; exit 1; \
	  fi; \
	fi

test: setup system-deps
	xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	@if [ -n "$$DISPLAY" ] || [ -n "$$WAYLAND_DISPLAY" ]; then \
	  $(PY) -m napari_medgen.demo; \
	else \
	  $(MAKE) --no-print-directory system-deps; \
	  echo "no display found: running the demo under Xvfb and saving docs/demo.png"; \
	  xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m napari_medgen.demo --screenshot docs/demo.png --quit; \
	fi

screenshot: setup system-deps
	xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m napari_medgen.demo --docs docs --quit

validate: setup
	$(VENV)/bin/npe2 validate napari-medgen --imports

# Peers run from their own virtual environment (ECLARE pins scipy 1.11 / numpy 1.26; GPL-3.0, never imported here)
ECLARE_VENV ?= benchmarks/.venv-eclare
$(ECLARE_VENV)/.installed:
	test -x $(ECLARE_VENV)/bin/python || $(PYTHON) -m venv $(ECLARE_VENV)
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(ECLARE_VENV)/bin/python -m pip install -q "$(TORCH_CPU)"; fi
	$(ECLARE_VENV)/bin/python -m pip install -q "eclare==1.0.1"
	touch $@

eclare-env: $(ECLARE_VENV)/.installed

# intensity-normalization (MIT) for the harmonization benchmark, run as a subprocess, never imported
# here; 3.0.1 is the newest release for Python 3.11 (4.x needs 3.12). The venv ignores itself in git.
INORM_VENV ?= benchmarks/.venv-inorm
$(INORM_VENV)/.installed:
	test -x $(INORM_VENV)/bin/python || $(PYTHON) -m venv $(INORM_VENV)
	echo '*' > $(INORM_VENV)/.gitignore
	$(INORM_VENV)/bin/python -m pip install -q "intensity-normalization==3.0.1"
	touch $@

inorm-env: $(INORM_VENV)/.installed

bench: setup eclare-env inorm-env
	ECLARE_PYTHON=$(ECLARE_VENV)/bin/python INORM_PYTHON=$(INORM_VENV)/bin/python $(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) dist build
