# The two commands of the README: `make demo` and `make test`. Each sets up .venv itself.
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup vulkan demo demo-npu test test-all bench lint clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the CPU build of torch first, pinned: an unpinned torch would pull gigabytes of CUDA
	$(PY) -m pip install --quiet torch==2.13.0
	# constraints.txt: the versions the suite passed with; without it pip backtracks through
	# litert-torch's wide dependency tree and can land on sdists that no longer build
	$(PY) -m pip install --quiet -c constraints.txt -e ".[all,dev]"
	touch $(STAMP)

setup: $(STAMP)

# LiteRT's GPU accelerator (WebGPU/Dawn on Vulkan) needs a Vulkan driver: a real GPU's ICD where
# one is installed, else SwiftShader from Debian's chromium-common plus the libvulkan1 loader
# (apt --no-install-recommends: 4 packages, 26.7 MB download, 69.9 MB on disk, 12 s; measured).
# Checked on every run, installed once; it never fails the build: without apt or root it prints
# why, and the GPU tests fail with that line.
vulkan: $(STAMP)
	$(PY) -m mobilegen.targets.vulkan_driver --install

# the embedded STOIC to three targets and, beside it (-j 2: one process each), the trained
# text-to-image pipeline to ORT and LiteRT; then one prompt drawn from the pipeline's artifacts
# alone (the PNG's path is the last line)
demo: setup vulkan
	$(VENV)/bin/mobilegen export recipes/stoic-digits.toml recipes/digits-t2i-demo.toml -j 2 --out out
	$(VENV)/bin/mobilegen sample out/digits-t2i-demo --target ort --prompt "a red seven on a black background" --png out/seven.png

# The NPU rows: the same model compiled for Snapdragon HTP (v73/v75/v79, W8A16) and validated in
# Qualcomm's HTP simulator, beside ORT mobile CPU. Minutes: a simulated call is ~100x the CPU's.
demo-npu: setup
	$(VENV)/bin/mobilegen export recipes/stoic-digits-npu.toml --out out/stoic-digits-npu

# two pytest workers (pytest-xdist; 2 = the CI runner's cores), each test file on one worker
# (--dist loadfile: a file's module-scoped exports are built once); PYTEST_WORKERS=0 runs the
# suite in this process
PYTEST_WORKERS ?= 2
test: setup vulkan
	$(VENV)/bin/pytest -q -n $(PYTEST_WORKERS) --dist loadfile

# everything, the `slow` end-to-end duplicates included (tests/conftest.py: --run-slow)
test-all: setup vulkan
	$(VENV)/bin/pytest -q -n $(PYTEST_WORKERS) --dist loadfile --run-slow

# every benchmark script in turn (the SD-size ones take tens of minutes); results/ + SUMMARY.md
bench: setup
	$(PY) benchmarks/run_all.py

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks scripts

clean:
	rm -rf out .pytest_cache
