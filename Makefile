# hearth — `make` alone lists the targets.
SHELL := /bin/bash
GO ?= go
# go-nvml needs cgo; its headers use deprecated declarations we don't control.
export CGO_ENABLED := 1
export CGO_CFLAGS := -Wno-deprecated-declarations
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION) -X github.com/hearth-gpu/hearth/agent.Version=$(VERSION)
# Packages with goroutines run under the race detector in `make test`.
RACE_PKGS := ./coordinator/... ./agent/... ./cachefs/... ./client/... ./internal/... ./cmd/... ./gossip/...
PLAIN_PKGS := ./proto/... ./examples/...

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-11s %s\n", $$1, $$2}'

.PHONY: build
build: ## build bin/hearth
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/hearth ./cmd/hearth

# The object-store tests run against a real MinIO, pinned and built from
# source once (about 5 minutes on 2 cores), then reused from GOPATH/bin.
MINIO_VERSION := v0.0.0-20260212201848-7aac2a2c5b7c
MINIO := $(shell $(GO) env GOPATH)/bin/minio
export HEARTH_MINIO := $(MINIO)

.PHONY: minio
minio: ## install the pinned MinIO server the tests use (skipped when present)
	@if [ -x '$(MINIO)' ] && [ "$$(cat '$(MINIO).version' 2>/dev/null)" = '$(MINIO_VERSION)' ]; then \
		echo "minio $(MINIO_VERSION) already at $(MINIO)"; \
	else \
		echo "building minio $(MINIO_VERSION) (a few minutes, once)"; \
		CGO_ENABLED=0 GOBIN='$(dir $(MINIO))' $(GO) install github.com/minio/minio@$(MINIO_VERSION) && \
		echo '$(MINIO_VERSION)' > '$(MINIO).version'; \
	fi

# The operations tests (internal/opstest) check the systemd units and run the
# Ansible playbook; they use the distribution's packages of these tools.
OPS_TOOLS := ansible-playbook ansible-lint systemd-analyze

.PHONY: ops-tools
ops-tools: ## install Ansible, ansible-lint and systemd-analyze with apt (skipped when present)
	@missing=; for t in $(OPS_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -z "$$missing" ]; then echo "ops tools present: $(OPS_TOOLS)"; exit 0; fi; \
	echo "installing ansible ansible-lint systemd (missing:$$missing)"; \
	sudo=; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update && \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y ansible ansible-lint systemd

.PHONY: test
test: minio ops-tools ## run every test (race detector on; fuzz seed corpora included; a real MinIO; the ops tools)
	$(GO) mod download
	$(GO) vet ./...
	HEARTH_REQUIRE_MINIO=1 HEARTH_REQUIRE_PYTHON=1 HEARTH_REQUIRE_OPS=1 $(GO) test -race -count=1 -timeout 15m $(RACE_PKGS)
	$(GO) test -count=1 -timeout 10m $(PLAIN_PKGS)
	$(MAKE) --no-print-directory test-python

.PHONY: test-python
test-python: ## run the Python GPU worker's tests (fake backend: no torch or GPU needed)
	python3 -m unittest discover -s workers/python

.PHONY: test-short
test-short: ## quick tests only (-short, no race detector)
	$(GO) test -short -count=1 ./...

.PHONY: demo
demo: build ## run the example workflows cold then warm on an embedded one-node cluster
	./bin/hearth demo

.PHONY: bench
bench: minio ## run the benchmarks; each prints its figure beside a same-run baseline
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 20m ./coordinator/
	$(GO) test -run '^$$' -bench Placement -benchtime 3x -timeout 20m ./coordinator/scheduler/
	HEARTH_REQUIRE_MINIO=1 $(GO) test -run '^$$' -bench . -benchtime 4x -timeout 30m ./cachefs/
	$(GO) test -run '^$$' -bench 'PeerTransfer|FanOut' -benchtime 1x -timeout 20m ./agent/
	$(GO) run ./cmd/hearth bench submit --clients 64 --duration 10s
	$(GO) run ./cmd/hearth bench heartbeat --hosts 10000 --interval 2s --duration 30s

.PHONY: sim
sim: build ## simulate the standard scenarios on 100 and 1,000 hosts, every policy side by side (tens of minutes)
	./bin/hearth sim --hosts 100 --duration 600 --svg bin/sim-100.svg
	./bin/hearth sim --hosts 1000 --duration 300 --svg bin/sim-1000.svg

.PHONY: fuzz
fuzz: ## fuzz the workflow parser and the Raft command decoder for 60 s each
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime 60s ./coordinator/workflow/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeCommand$$' -fuzztime 60s ./proto/

.PHONY: lint
lint: ## gofmt check and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

.PHONY: fmt
fmt: ## format the code
	gofmt -w $$(git ls-files '*.go')
