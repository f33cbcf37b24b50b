# Shoal's build. `make demo` runs a local fleet; `make test` runs every test.
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

# test runs every test with the race detector, containerd ones included,
# then the five-node fleet suite, verbose so its figures are printed.
test: deps
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 15m $$($(GO) list ./... | grep -v /e2e)
	$(GO) test -race -count=1 -timeout 10m -v ./e2e

lint:
	@out=$$(gofmt -l . 2>&1); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

demo: deps build
	./bin/shoal dev

clean:
	rm -rf bin
