# mailbus — the single entry point for building, running and testing.
# `make help` lists the targets.

SHELL := /usr/bin/env bash
.DEFAULT_GOAL := help

# Pinned tool versions, installed into ./bin with `go install` (local buf
# plugins: there is no network to the buf registry).
BUF_VERSION                := v1.75.0
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2

BIN     := $(CURDIR)/bin
MODULES := pkg services/config services/router services/quota services/signer \
           services/sender services/bounce services/tracker cmd/mailbus
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

.PHONY: tools
tools: $(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc ## install pinned tools into ./bin

.PHONY: run
run: ## run the whole pipeline in one process on embedded parts (mailbus dev)
	go run ./cmd/mailbus dev --data ./.mailbus --config deploy/mailbus.example.yaml

.PHONY: build
build: ## build every service and the mailbus CLI into ./bin
	go build -o $(BIN)/ ./cmd/mailbus ./services/config/cmd/config ./services/router/cmd/router \
		./services/quota/cmd/quota ./services/signer/cmd/signer ./services/sender/cmd/sender \
		./services/bounce/cmd/bounce ./services/tracker/cmd/tracker

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

.PHONY: fuzz
fuzz: ## run the parsers' fuzz targets briefly (bounce parser, address parser)
	go test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime 10s ./pkg/bounce
	go test -run '^$$' -fuzz '^FuzzParseAddress$$' -fuzztime 10s ./pkg/mail

.PHONY: test
test: vet checkproto fuzz ## vet, check generated code, fuzz the parsers briefly, and run every module's tests with -race
	go test $(GOTEST_FLAGS) $(PKGS)

.PHONY: bench
bench: ## benchmarks: end-to-end pipeline rate, latency, per-stage CPU, RSA ceiling; then a sink with 20 ms reply latency (connection reuse), and a slow relay answering each message after 1 s with 100 connections (concurrency)
	go run ./cmd/mailbus bench
	go run ./cmd/mailbus bench --sink-latency 20ms --messages 2000
	go run ./cmd/mailbus bench --sink-data-delay 1s --max-connections 100 --messages 2000
