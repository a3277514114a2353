# The two commands from the README. Both set themselves up first.
.PHONY: demo test test-all setup

setup:
	@scripts/setup.sh

demo:
	@scripts/setup.sh
	.venv/bin/saesteer demo

test:
	@scripts/setup.sh --dev
	.venv/bin/python -m pytest -q

# Everything, including the slow checks kept out of the default run.
test-all:
	@scripts/setup.sh --dev
	.venv/bin/python -m pytest -q -m "slow or not slow"
