# diffrl: every target creates the virtualenv it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench zoo system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, exactly as verified (served from local disk on these machines)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# The colour-emoji font and fribidi (Pillow's complex text layout, for multi-codepoint emoji) render the zoo's world;
# the renderer's tests and `make zoo` need them.
system-deps:
	@if ! ls /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf >/dev/null 2>&1 || ! ldconfig -p | grep -q libfribidi; then \
		apt-get update -qq && apt-get install -y -qq fonts-noto-color-emoji libfribidi0 >/dev/null; fi

demo: $(STAMP)
	$(PY) examples/demo.py --output-dir outputs/demo  # a rerun continues or re-plots, never overwrites

test: $(STAMP) system-deps
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/rollout_vs_pipeline.py
	$(PY) benchmarks/reward_cost.py
	$(PY) benchmarks/train_step.py

zoo: $(STAMP) system-deps
	$(PY) scripts/build_zoo.py --jobs 2 --unet-budget-min 90

clean:
	rm -rf $(VENV) outputs
