# ddslug developer entry points. `make demo` and `make test` do all the set-up they need.
CARGO ?= cargo

.PHONY: build test demo bench lint clean

build:
	$(CARGO) build

# The whole suite: unit tests, integration tests against served signed repositories,
# and the comparison against Debian's archive and tools.
test:
	$(CARGO) test --workspace --no-fail-fast

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

demo: build-release
	$(CARGO) run --release -p ddslug-testsupport --bin ddslug-demo

clean:
	$(CARGO) clean

# Benchmarks against the classic buildpack's mechanics (results: target/bench/results.md;
# recorded in BENCHMARKS.md). Set CLASSIC_BUILDPACK to also time the classic dyno start.
bench: build-release
	$(CARGO) run --release -p ddslug-testsupport --bin ddslug-bench

# --- Shipping: the binary bin/compile downloads (README, "Using it as a buildpack") ---------
# `make release` builds it reproducibly (--locked, remapped paths, SOURCE_DATE_EPOCH), checks
# the GLIBC versions it needs, packs dist/ddslug-<version>-<target>.tar.gz with its .sha256,
# writes bin/ddslug.release from them and prints the steps that publish the release
# (.ci/release). `make build-release` is a plain optimised build in target/release, which
# `make demo` and `make bench` run and bin/compile prefers when it is there.
.PHONY: release build-release glibc-check

release:
	.ci/release

build-release:
	$(CARGO) build --release

# What CI runs on the test build: fails if the binary needs a GLIBC newer than heroku-22's.
glibc-check:
	$(CARGO) build
	.ci/glibc-check target/debug/ddslug
