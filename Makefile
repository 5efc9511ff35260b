# Build, test and demo targets. `make test`, `make e2e` and `make demo` first install
# nginx and the docker client with apt-get when they are missing (scripts/install-deps.sh).

GO      ?= go
BIN     ?= bin
PKG     := github.com/imgxfer/imgxfer
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
DATE    ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS := -s -w \
	-X $(PKG)/internal/version.Version=$(VERSION) \
	-X $(PKG)/internal/version.Commit=$(COMMIT) \
	-X $(PKG)/internal/version.Date=$(DATE)

.PHONY: all build install-plugin deps test lint unit e2e demo bench release-check completion clean

all: build

## build: the standalone command and the Docker CLI plugin (the same binary)
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/imgxfer .
	cp $(BIN)/imgxfer $(BIN)/docker-imgxfer

## install-plugin: install docker-imgxfer into ~/.docker/cli-plugins
install-plugin: build
	mkdir -p $(HOME)/.docker/cli-plugins
	install -m 0755 $(BIN)/docker-imgxfer $(HOME)/.docker/cli-plugins/docker-imgxfer

## deps: install nginx and the docker client with apt-get when they are missing
deps:
	./scripts/install-deps.sh

## test: static checks, every test with the race detector, end-to-end tests included, then
## a cross-compile of every release target
test: deps lint
	$(GO) test -race -count=1 -timeout 25m ./...
	$(MAKE) release-check

## release-check: build every goos/goarch of .goreleaser.yaml with the release flags, offline
release-check:
	GO=$(GO) ./scripts/release-check.sh $(BIN)/release-check

## completion: write the bash, zsh and fish completion scripts into $(BIN)/completion
completion: build
	mkdir -p $(BIN)/completion
	$(BIN)/imgxfer completion bash > $(BIN)/completion/imgxfer.bash
	$(BIN)/imgxfer completion zsh > $(BIN)/completion/_imgxfer
	$(BIN)/imgxfer completion fish > $(BIN)/completion/imgxfer.fish

## lint: go vet, gofmt and a tidy go.mod
lint:
	$(GO) vet ./...
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed on: $$unformatted"; exit 1; fi
	$(GO) mod tidy -diff

## unit: the tests outside test/e2e, without the race detector
unit:
	$(GO) test -count=1 $$($(GO) list ./... | grep -v /test/e2e)

## e2e: the end-to-end tests only
e2e: deps
	$(GO) test -race -count=1 -timeout 25m ./test/e2e/...

## demo: copy a real two-platform image through nginx on loopback, then clean up
demo: deps
	$(GO) run ./test/demo

## bench: time imgxfer against a raw HTTP copy, crane and regctl on loopback and print
## markdown tables; BENCH_N sets the rounds. crane and regctl are installed with go install
## into a temporary directory, which needs the Go module proxy.
BENCH_N ?= 5
bench: deps
	$(GO) run ./bench -n $(BENCH_N)

clean:
	rm -rf $(BIN)
