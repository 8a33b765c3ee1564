# firesandbox: run untrusted code in microVMs.
#
#   make setup   install host packages, build, install, prepare kernel + python image (root)
#   make test    unit tests and VM tests (QEMU; TCG where KVM is unusable),
#                the adversarial suite, the cluster tests and the fuzz targets (bounded)
#   make test-adversarial   each attack of the security suite against a real serve
#   make test-cluster  many hosts on loopback: PostgreSQL, MinIO, HAProxy, three serves
#   make fuzz    every fuzz target for FUZZTIME (default 30s) each
#   make bench   cold-boot timings and image format comparison, restore
#                breakdown, density, idle CPU, tb-size, throughput (tables
#                and SVG plots in bench-plots/)
#   make bench-languages  per built language: cold, restore, pool; snapshot size

PREFIX    ?= /usr/local
DATA      ?= $(or $(FIRESANDBOX_DATA),/var/lib/firesandbox)
GO        ?= $(shell command -v go || echo /usr/local/go/bin/go)
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X github.com/firesandbox/firesandbox/internal/buildinfo.Version=$(VERSION)
FS        := $(CURDIR)/bin/firesandbox --data-dir $(DATA)
GOFILES   := $(shell find . -name '*.go' -not -path './.cache/*') go.mod go.sum $(wildcard languages/*.toml)
TEST_TIMEOUT ?= 40m

export PATH := $(dir $(GO)):$(PATH)

.PHONY: all setup deps test-deps build install kernel image test-images test test-unit test-cluster bench bench-languages clean minio test-languages test-adversarial fuzz

all: build

setup: deps build install kernel image
	@echo
	@echo "setup done. Try: firesandbox run python -c 'print(6*7)'"

deps:
	scripts/install-deps.sh

test-deps: ## deps, plus what the tests need (PostgreSQL, HAProxy, Node.js)
	scripts/install-deps.sh --test

build: bin/firesandbox bin/firesandbox-agent

bin/firesandbox: $(GOFILES)
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $@ ./cmd/firesandbox

# The agent is PID 1 in an initramfs with no libc: it must be static.
bin/firesandbox-agent: $(GOFILES)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $@ ./cmd/firesandbox-agent

install: build
	install -m 0755 bin/firesandbox bin/firesandbox-agent $(PREFIX)/bin/

# Rebuilt whenever the agent changes: the initramfs carries it.
kernel: $(DATA)/kernels/.agent-stamp
$(DATA)/kernels/.agent-stamp: bin/firesandbox-agent bin/firesandbox
	$(FS) kernel prepare --deb "$$(scripts/fetch-kernel.sh)" --agent bin/firesandbox-agent
	touch $@

image: build
	$(FS) image build python

# The images the VM tests run: see RepresentativeLanguages in internal/sandbox.
TEST_LANGS := python bash c nodejs ruby typescript code-interpreter
test-images: build
	$(FS) image build $(TEST_LANGS)

# VM tests boot real VMs from $(DATA); S3 tests run a real MinIO server;
# cluster tests a throwaway PostgreSQL and HAProxy (make deps installs
# them). All fail rather than skip here: a green `make test` means they
# ran. ./... includes internal/adversarial, the security suite (see
# test-adversarial), and test-cluster's tests, in the same go test.
TEST_ENV := FIRESANDBOX_DATA=$(DATA) FIRESANDBOX_VM_TESTS=1 FIRESANDBOX_S3_TESTS=1 FIRESANDBOX_CLUSTER_TESTS=1
test: build kernel image test-images minio
	$(GO) vet ./...
	$(TEST_ENV) $(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...
	$(MAKE) fuzz

# Many hosts on one machine: the directory's logic against a real
# PostgreSQL, in-process hosts on the fake VMM, then three serve processes
# with real VMs behind HAProxy, with MinIO for hibernations.
test-cluster: build kernel image test-images minio
	$(TEST_ENV) $(GO) test -count=1 -timeout 30m ./internal/cluster/...
	$(TEST_ENV) $(GO) test -count=1 -timeout 30m -run 'TestClusterVMs|TestServes' ./cmd/firesandbox/

# The attacks of the security suite, each against a real serve with real
# VMs (a built binary, killed with SIGKILL where the attack needs it).
test-adversarial: build kernel image
	FIRESANDBOX_DATA=$(DATA) FIRESANDBOX_VM_TESTS=1 FIRESANDBOX_BIN=$(CURDIR)/bin/firesandbox $(GO) test -count=1 -timeout 30m -v ./internal/adversarial/

# Each fuzz target for a bounded time; new findings land in testdata/fuzz
# (commit them with the fix). FUZZ_TARGETS is package:target pairs.
FUZZTIME ?= 20s
FUZZ_TARGETS := internal/api:FuzzRunRequest internal/api:FuzzPistonExecute internal/api:FuzzPaths \
	internal/api:FuzzJSONText internal/api:FuzzBrowserGuard \
	internal/agentproto:FuzzReadFrame internal/agentproto:FuzzParseBoot internal/agentproto:FuzzGuestPaths \
	internal/network:FuzzPolicy internal/network:FuzzParseFirst
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; fn=$${t##*:}; echo "fuzz $$fn ($(FUZZTIME))"; \
		$(GO) test -run='^$$' -fuzz="^$$fn$$" -fuzztime=$(FUZZTIME) -parallel 2 ./$$pkg/; \
	done

test-unit:
	$(GO) test -count=1 ./...

bench: build kernel image
	FIRESANDBOX_DATA=$(DATA) $(GO) run ./cmd/firesandbox-bench
bench-languages: build kernel
	FIRESANDBOX_DATA=$(DATA) $(GO) run ./cmd/firesandbox-bench -languages -n 3

clean:
	rm -rf bin

minio: ## build the MinIO server the S3 tests use (once; cached in GOBIN)
	test -x "$$($(GO) env GOPATH)/bin/minio" || GOBIN="$$($(GO) env GOPATH)/bin" $(GO) install github.com/minio/minio@v0.0.0-20260212201848-7aac2a2c5b7c

# Every catalog language: build its image if needed, run its conformance
# checks, print a table. LANGTEST_JOBS languages at once (2 overlaps one
# image build with another language's checks); LANGS picks some.
LANGTEST_JOBS ?= 2
test-languages: build kernel image
	FIRESANDBOX_DATA=$(DATA) $(GO) run ./cmd/firesandbox-langtest -j $(LANGTEST_JOBS) $(LANGS)
