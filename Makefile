# The two set-up commands of the README:
#   make demo   installs everything into .venv and runs the main job on the embedded default
#   make test   installs everything into .venv and runs the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU wheel of this release lies on the machines' disk; a bare `torch` would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
SYSTEM_PACKAGES := ffmpeg sox espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts \
                   fortunes fortunes-de fortunes-es fortunes-it fortunes-zh chromium chromium-driver g++ ninja-build

# llama.cpp's GGUF converter, the oracle of tests/test_convert_gguf.py: three paths of the llama-cpp-python sdist
# (convert_hf_to_gguf.py, conversion/, gguf-py/), unpacked into the ignored build/ so that none of it is committed.
LLAMA_CPP_PYTHON := 0.3.36
LLAMA_CPP_DIR    := build/llama.cpp
LLAMA_CPP_SDIST  := llama_cpp_python-$(LLAMA_CPP_PYTHON)

.PHONY: install system-deps test demo demo-model bench clean llama-cpp-converter

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	# llm-compressor writes the compressed-tensors checkpoints the tests read. It pins transformers <= 5.17 and
	# compressed-tensors 0.19 but runs with the newer ones [test] installs, so it goes in without its pins (the
	# packages it imports are in [test])
	$(PY) -m pip install -q --no-deps llmcompressor==0.14.0.1
	touch $@

# Debian packages: ffmpeg decodes what soundfile cannot (webm/opus, m4a, video), sox, espeak-ng and flite make test
# audio and the synthetic corpus (`qwen2audio synth`, with festival), the fortunes packages its open-domain sentences
# (data: dpkg -s), chromium + chromium-driver the server's browser test (a test tool cannot download its own browser).
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do command -v $$p >/dev/null || dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	  else echo "missing:$$missing -- run: sudo apt-get install $(SYSTEM_PACKAGES)"; exit 1; fi; \
	fi

test: install system-deps llama-cpp-converter
	$(PY) -m pytest -q tests

llama-cpp-converter: $(LLAMA_CPP_DIR)/convert_hf_to_gguf.py

$(LLAMA_CPP_DIR)/convert_hf_to_gguf.py: $(VENV)/.installed
	$(PY) -m pip download -q --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP_PYTHON) -d build/sdist
	mkdir -p $(LLAMA_CPP_DIR)
	tar xzf build/sdist/$(LLAMA_CPP_SDIST).tar.gz -C $(LLAMA_CPP_DIR) --strip-components 3 \
	    $(addprefix $(LLAMA_CPP_SDIST)/vendor/llama.cpp/,convert_hf_to_gguf.py conversion gguf-py)
	touch $@

demo: install system-deps
	$(PY) scripts/demo.py

# Rebuild the embedded demo model from nothing but this repository (corpus, build, trim, 3 stages, eval, export to
# qwen2audio/assets/demo-model); about 80 minutes in one run on 2 cores of a VM with AMX (bf16), ~150 on one
# without (README), resumable (runs/demo/). See scripts/make_demo_model.py.
demo-model: install system-deps
	$(PY) scripts/make_demo_model.py

bench: install
	$(PY) bench/bench_features.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
