.PHONY: demo test wheel

# Set up everything on a fresh machine, build in release mode, run the main job.
demo:
	.ci/dev demo

# Set up whatever is missing, build, and run the whole test suite (Rust and Python).
test:
	.ci/dev test

# Build the release wheel into dist/: one abi3 wheel for CPython >= 3.10 that links the installed
# torch's libtorch instead of bundling it (install it with `pip install dist/recforge-*.whl`).
wheel:
	.ci/dev wheel
