# ddslug developer entry points. `make demo` and `make test` do all the set-up they need.
CARGO ?= cargo

.PHONY: build test demo bench lint clean fuzz

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

# The Cloud Native Buildpack as a directory and a .tgz, byte for byte the same from the same
# commit (.ci/cnb-package; README, "Heroku Fir and other CNB platforms").
.PHONY: cnb
cnb:
	.ci/cnb-package

# What CI runs on the test build: fails if the binary needs a GLIBC newer than heroku-22's.
glibc-check:
	$(CARGO) build
	.ci/glibc-check target/debug/ddslug

# Fuzzing (nightly + cargo-fuzz; not run by CI: each target runs FUZZ_SECONDS, 600 by default).
# Corpora grow in fuzz/corpus/<target> from the committed seeds in fuzz/seeds/<target>;
# results are recorded in FUZZING.md.
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?= deb822 inrelease ar unpack xzseek recipe layerindex lock_manifest version gobuild
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus/$$t && \
		$(CARGO) +nightly fuzz run $$t fuzz/corpus/$$t fuzz/seeds/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=1024 -timeout=10 -print_final_stats=1 -detect_leaks=0 || exit 1; \
	done
