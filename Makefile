# xlb — build, demo, tests and benchmarks. Run as root on Debian (AF_XDP, XDP and network namespaces need it).

CARGO ?= cargo
# Debian packages for the build (clang for the XDP filter; libelf, zlib, m4, pkg-config for libxdp/libbpf) and
# the real peers the tests, demo and benchmarks run against.
DEBIAN_PACKAGES = build-essential clang llvm libelf-dev libbpf-dev linux-libc-dev m4 libpcap-dev zlib1g-dev \
	pkg-config iproute2 iputils-ping ethtool curl socat netcat-openbsd nftables tcpdump openssl \
	nginx haproxy wrk nghttp2-client keepalived python3 python3-scapy util-linux conntrack librsvg2-bin
# Keep installed daemons (nginx, haproxy, keepalived) from starting: tests start their own inside namespaces.
POLICY_RC = /usr/sbin/policy-rc.d

.PHONY: all deps build ctl release demo test unit integration lint bench bench-quick bench-loop clean

all: build

deps:
	@command -v apt-get >/dev/null || { echo "make deps needs Debian/Ubuntu (apt-get)"; exit 1; }
	@created=0; if [ ! -e $(POLICY_RC) ]; then printf '#!/bin/sh\nexit 101\n' > $(POLICY_RC); chmod +x $(POLICY_RC); created=1; fi; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get update -qq && apt-get install -y -qq --no-install-recommends $(DEBIAN_PACKAGES) >/dev/null; rc=$$?; \
	[ $$created = 1 ] && rm -f $(POLICY_RC); exit $$rc
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust (rustup) first"; exit 1; }
	@echo "deps: OK"

build:
	$(CARGO) build --workspace --bins

# xlbctl alone (no clang, libbpf or libxdp needed): for a management host.
ctl:
	$(CARGO) build -p xlbctl --release

release:
	$(CARGO) build --workspace --bins --release

# Installs deps, builds release binaries and runs the netns lab demo (removed again at the end).
demo: deps release
	XLB_BIN_DIR=$(CURDIR)/target/release ./target/release/xlb-demo

# Unit and integration tests (integration tests build netns labs: run as root).
test: build
	$(CARGO) test --workspace --no-fail-fast

unit:
	$(CARGO) test --workspace --lib --bins

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# xlb vs the Linux kernel doing the same FULLNAT, in one run (~10 min; BENCH_QUICK=1 for a ~1-2 min smoke run).
# Writes perf/results/<date>-<host>.json and SVG plots; see perf/README.md.
bench: release
	./target/release/xlb-suite $(if $(filter 1,$(BENCH_QUICK)),--quick)
	./target/release/xlb-perf conntrack-scale $(if $(filter 1,$(BENCH_QUICK)),--quick)

bench-quick: release
	./target/release/xlb-suite --quick
	./target/release/xlb-perf conntrack-scale --quick

# The raw AF_XDP loop alone (the limit the suite reports against).
bench-loop: release
	./target/release/xlb-perf xdp-loop

clean:
	$(CARGO) clean
