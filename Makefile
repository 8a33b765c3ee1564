# firesandbox: run untrusted code in microVMs.
#
#   make setup   install host packages, build, install, prepare kernel + python image (root)
#   make test    unit tests and VM tests (QEMU; TCG where KVM is unusable), test-cluster included
#   make test-cluster  many hosts on loopback: PostgreSQL, MinIO, HAProxy, three serves
#   make bench   cold-boot timings and image format comparison

PREFIX    ?= /usr/local
DATA      ?= $(or $(FIRESANDBOX_DATA),/var/lib/firesandbox)
GO        ?= $(shell command -v go || echo /usr/local/go/bin/go)
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X github.com/firesandbox/firesandbox/internal/buildinfo.Version=$(VERSION)
FS        := $(CURDIR)/bin/firesandbox --data-dir $(DATA)
GOFILES   := $(shell find . -name '*.go' -not -path './.cache/*') go.mod go.sum $(wildcard languages/*.toml)
TEST_TIMEOUT ?= 40m

export PATH := $(dir $(GO)):$(PATH)

.PHONY: all setup deps build install kernel image test-images test test-unit test-cluster bench clean minio test-languages

all: build

setup: deps build install kernel image
	@echo
	@echo "setup done. Try: firesandbox run python -c 'print(6*7)'"

deps:
	scripts/install-deps.sh

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
TEST_LANGS := python bash c nodejs
test-images: build
	$(FS) image build $(TEST_LANGS)

# VM tests boot real VMs from $(DATA); S3 tests run a real MinIO server;
# cluster tests a throwaway PostgreSQL and HAProxy (make deps installs
# them). All fail rather than skip here: a green `make test` means they
# ran. It runs test-cluster's tests too, in the same go test.
TEST_ENV := FIRESANDBOX_DATA=$(DATA) FIRESANDBOX_VM_TESTS=1 FIRESANDBOX_S3_TESTS=1 FIRESANDBOX_CLUSTER_TESTS=1
test: build kernel image test-images minio
	$(GO) vet ./...
	$(TEST_ENV) $(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

# Many hosts on one machine: the directory's logic against a real
# PostgreSQL, in-process hosts on the fake VMM, then three serve processes
# with real VMs behind HAProxy, with MinIO for hibernations.
test-cluster: build kernel image test-images minio
	$(TEST_ENV) $(GO) test -count=1 -timeout 30m ./internal/cluster/...
	$(TEST_ENV) $(GO) test -count=1 -timeout 30m -run 'TestClusterVMs|TestServes' ./cmd/firesandbox/

test-unit:
	$(GO) test -count=1 ./...

bench: build kernel image
	FIRESANDBOX_DATA=$(DATA) $(GO) run ./cmd/firesandbox-bench

clean:
	rm -rf bin

minio: ## build the MinIO server the S3 tests use (once; cached in GOBIN)
	test -x "$$($(GO) env GOPATH)/bin/minio" || GOBIN="$$($(GO) env GOPATH)/bin" $(GO) install github.com/minio/minio@v0.0.0-20260212201848-7aac2a2c5b7c

# Every catalog language: build its image if needed, run its test program, print a table.
test-languages: build kernel
	FIRESANDBOX_DATA=$(DATA) $(GO) run ./cmd/firesandbox-langtest $(LANGS)
