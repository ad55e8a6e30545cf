# ddslug developer entry points. `make demo` and `make test` do all the set-up they need.
CARGO ?= cargo

.PHONY: build release test demo bench lint clean

build:
	$(CARGO) build

release:
	$(CARGO) build --release

# The whole suite: unit tests, integration tests against served signed repositories,
# and the comparison against Debian's archive and tools.
test:
	$(CARGO) test --workspace --no-fail-fast

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

demo: release
	$(CARGO) run --release -p ddslug-testsupport --bin ddslug-demo

clean:
	$(CARGO) clean

# Benchmarks against the classic buildpack's mechanics (results: target/bench/results.md;
# recorded in BENCHMARKS.md). Set CLASSIC_BUILDPACK to also time the classic dyno start.
bench: release
	$(CARGO) run --release -p ddslug-testsupport --bin ddslug-bench
