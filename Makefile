# Shoal's build. The quick start needs no make: scripts/demo runs a local
# fleet, scripts/test runs every test; `make demo` and `make test` call them.
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: all build deps test lint bench demo clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/shoal ./cmd/shoal

# deps installs containerd, runc and the tools the tests use, when missing.
deps:
	./scripts/install-deps

# test runs every test with the race detector, then the fleet suite.
test:
	GO=$(GO) ./scripts/test

lint:
	@out=$$(gofmt -l . 2>&1); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

demo:
	GO=$(GO) ./scripts/demo

clean:
	rm -rf bin
