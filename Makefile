.PHONY: demo test

# Set up everything on a fresh machine, build in release mode, run the main job.
demo:
	.ci/dev demo

# Set up whatever is missing, build, and run the whole test suite (Rust and Python).
test:
	.ci/dev test
