# mailbus — the single entry point for building, running and testing.
# `make help` lists the targets.

SHELL := /usr/bin/env bash
.DEFAULT_GOAL := help

# Pinned tool versions, installed into ./bin with `go install` (local buf
# plugins: there is no network to the buf registry).
BUF_VERSION                := v1.75.0
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
KUSTOMIZE_VERSION          := v5.8.1

BIN     := $(CURDIR)/bin
MODULES := pkg services/config services/router services/quota services/signer \
           services/sender services/bounce services/tracker services/webhook services/console cmd/mailbus
PKGS    := $(addprefix ./,$(addsuffix /...,$(MODULES)))
export PATH := $(BIN):$(PATH)

# Tests share two cores with everything else; -p 2 keeps memory and CPU sane.
GOTEST_FLAGS ?= -race -count=1 -p 2 -timeout 20m

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(BIN)/buf:
	GOBIN=$(BIN) go install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(BIN)/protoc-gen-go:
	GOBIN=$(BIN) go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(BIN)/protoc-gen-go-grpc:
	GOBIN=$(BIN) go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
$(BIN)/kustomize:
	GOBIN=$(BIN) go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)

.PHONY: tools
tools: $(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc $(BIN)/kustomize ## install pinned tools into ./bin

.PHONY: run
# Built into ./bin once and reused: a later `make run` recompiles only what
# changed, and the CLI is ./bin/mailbus. The first build downloads the
# modules mailbus runs on (not the test-only ones) and compiles them, which
# takes minutes on a fresh machine with nothing printed by go meanwhile,
# hence the note.
run: ## build ./bin/mailbus and run the whole pipeline in one process on embedded parts (mailbus dev); the ready line names the console's address
	@if [ ! -x $(BIN)/mailbus ]; then echo "first build of ./bin/mailbus: downloading Go modules and compiling (about 3-5 minutes on a fresh machine, the pure-Go SQLite takes longest; later runs take seconds)"; fi
	go build -o $(BIN)/mailbus ./cmd/mailbus
	$(BIN)/mailbus dev --data ./.mailbus --config deploy/mailbus.example.yaml

.PHONY: build
build: ## build every service and the mailbus CLI into ./bin
	go build -o $(BIN)/ ./cmd/mailbus ./services/config/cmd/config ./services/router/cmd/router \
		./services/quota/cmd/quota ./services/signer/cmd/signer ./services/sender/cmd/sender \
		./services/bounce/cmd/bounce ./services/tracker/cmd/tracker ./services/webhook/cmd/webhook ./services/console/cmd/console

.PHONY: proto
proto: tools ## regenerate pkg/gen from proto/ with buf
	buf generate

.PHONY: checkproto
checkproto: tools ## fail when proto/ does not lint or pkg/gen differs from a fresh generation
	buf lint
	buf generate
	@if [ -n "$$(git status --porcelain -- pkg/gen)" ]; then \
		echo "pkg/gen differs from 'buf generate' (run make proto and commit):"; \
		git status --porcelain -- pkg/gen; git --no-pager diff --stat -- pkg/gen; exit 1; fi

.PHONY: vet
vet: ## go vet every module
	go vet $(PKGS)

.PHONY: lint
lint: tools vet ## gofmt, go vet and buf lint
	@out=$$(gofmt -l $(MODULES) | grep -v '^pkg/gen/' || true); \
		if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	buf lint

# Fuzzing budget per target, in inputs rather than seconds: go1.26's
# coordinator can fail a duration-bounded run with "context deadline
# exceeded" when its time runs out while a worker is busy, which on a loaded
# machine it often is (golang/go#75804, fixed in go1.27); a count has no
# deadline to race. 50000 inputs take about 5 s alone and up to a minute on
# a busy CI machine. Go also minimizes every input that finds new coverage,
# for up to a minute each by default, and a short run finds hundreds: the
# run spent its time minimizing (0 inputs/s) instead of fuzzing. CI spends
# it on new inputs; a failing input is written to testdata/fuzz either way.
# A long local run can afford both:
# make fuzz FUZZTIME=10m FUZZMINIMIZETIME=30s.
FUZZTIME         ?= 50000x
FUZZMINIMIZETIME ?= 0

.PHONY: fuzz
fuzz: ## run the parsers' fuzz targets briefly (bounce parser, address parser): no panic, work linear in the input
	go test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME) ./pkg/bounce
	go test -run '^$$' -fuzz '^FuzzParseAddress$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME) ./pkg/mail

.PHONY: deploy-check
deploy-check: $(BIN)/kustomize ## render the Kubernetes base and overlays; check the dashboard, alerts, manifests and compose against the services
	@set -e; for k in deploy/k8s/base deploy/k8s/overlays/*/; do \
		kustomize build "$$k" > /dev/null; \
		echo "kustomize build $$k: $$(kustomize build "$$k" | grep -c '^kind:') resources"; done
	go test -count=1 -run '^TestDeploy_' ./cmd/mailbus/internal/stack/

.PHONY: kafka
kafka: ## fetch the Apache Kafka broker the tests run against (Maven Central, once, into ~/.cache/mailbus; needs java and mvn)
	@deploy/kafka/fetch >/dev/null

.PHONY: test
# The 10,000-webhook run is about delivery, ordering and loss through a
# failing receiver, not data races (the other webhook tests, with -race,
# cover the same code concurrently): under -race it took 400 s of a CI run,
# without 32 s.
WEBHOOK_VOLUME_TEST := ^TestWebhook_deliversEveryEventSignedAndInOrderThroughAFailingReceiver$$

test: vet checkproto fuzz kafka deploy-check ## vet, check generated code, fuzz the parsers briefly, check deploy/, and run every module's tests with -race (pkg/bus also on Apache Kafka)
	go test $(GOTEST_FLAGS) -skip '$(WEBHOOK_VOLUME_TEST)' $(PKGS)
	go test -count=1 -run '$(WEBHOOK_VOLUME_TEST)' ./services/webhook/

.PHONY: chaos
chaos: ## fault scenarios on the multi-process cluster (kill -9 each stage, Kafka, Redis loss, added senders): prints sent/delivered/duplicates/lost per scenario
	go test -tags chaos -count=1 -timeout 120m -v -run '^TestChaos$$' ./cmd/mailbus/internal/cluster

.PHONY: scale
scale: ## messages/s through a slow relay with 1, 2 and 4 sender processes (16 partitions)
	go test -tags chaos -count=1 -timeout 60m -v -run '^TestScale$$' ./cmd/mailbus/internal/cluster

# KAFKA=host:port runs make bench on that Kafka instead of the embedded broker.
KAFKA ?=
BENCH_FLAGS := $(if $(KAFKA),--kafka $(KAFKA))

.PHONY: bench
bench: ## benchmarks: end-to-end pipeline rate, per-stage CPU, memory, RSA ceiling, then latency at a fixed half of that rate (open loop); then a sink with 20 ms reply latency (connection reuse), and a slow relay answering each message after 1 s with 100 connections (concurrency); KAFKA=host:port for an external Kafka
	go run ./cmd/mailbus bench $(BENCH_FLAGS) --open-loop 20s
	go run ./cmd/mailbus bench $(BENCH_FLAGS) --sink-latency 20ms --messages 2000
	go run ./cmd/mailbus bench $(BENCH_FLAGS) --sink-data-delay 1s --max-connections 100 --messages 2000

.PHONY: bench-kafka
bench-kafka: kafka ## the end-to-end benchmark on a real Apache Kafka broker, started for it (deploy/kafka/run on 127.0.0.1:19092)
	@deploy/kafka/run 19092 & pid=$$!; trap 'kill $$pid; wait $$pid' EXIT; \
		go run ./cmd/mailbus bench --kafka 127.0.0.1:19092 --open-loop 20s
