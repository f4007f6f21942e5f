# The two commands of the README:
#   make demo   set everything up, then run the main job on generated data
#   make test   set everything up, then run the test suite
# `make test-quick` runs the suite without the tests marked slow (pytest.ini),
# the edit-test loop; CI runs `make test`, every test.
# `make env` alone builds/refreshes the virtual environment (.venv): the first
# run compiles mmcv (about 10 min on 2 idle cores), later runs take seconds.
PY := .venv/bin/python

.PHONY: env demo demo-seg demo-cls test test-quick
env:
	bash tools/setup_env.sh

demo: env
	bash tools/demo.sh

demo-seg: env
	bash tools/demo_seg.sh

demo-cls: env
	bash tools/demo_cls.sh

test: env
	$(PY) -m pytest tests

test-quick: env
	$(PY) -m pytest tests -m "not slow"
