# statexec — see README.md.
GO      ?= go
BIN     := bin/statexec
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
# Fuzz budgets are execution counts, not durations: with a duration, Go's
# fuzz coordinator (before Go 1.27, go.dev/issue/75804) can fail a target
# with a bare "context deadline exceeded" when a worker is busy at the
# deadline. Counts are sized to about 10 s each on a 2-core machine.
FUZZ_PARSE_EXECS  ?= 300000
FUZZ_LABELS_EXECS ?= 8000
FUZZ_SPOOL_EXECS  ?= 15000
FUZZ_BTF_EXECS    ?= 40000
FUZZ_MINIMIZE     ?= 200x
# staticcheck, pinned (2026.2.2 supports Go 1.26), installed by go install
# into bin/tools on first use.
STATICCHECK_VERSION := v0.8.2
STATICCHECK         := bin/tools/staticcheck-$(STATICCHECK_VERSION)

.PHONY: all build deps run test unit fuzz bench generate check-generate example lint clean

all: build

# CGO_ENABLED=0: statexec needs no C (only net's resolver would use
# libc). A static binary starts ~3 ms sooner on this VM (no dynamic
# loader, no libc mapped: ~1.1 MiB less RSS).
build:
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) .

# Installs what the build and the tests need (Debian packages); instant
# when everything is there.
deps:
	./scripts/install-deps.sh

# The main job: a short run of the README's example, file in ./statexec_metrics.txt.
run: deps build
	SE_METRICS_FILE=$(CURDIR)/statexec_metrics.txt $(BIN) exec -- sh -c 'dd if=/dev/zero of=/dev/null bs=1M count=2000 && sleep 2'
	@echo "metrics written to $(CURDIR)/statexec_metrics.txt"

# GOOS=linux: most of statexec is //go:build linux; vet and staticcheck
# must see it from any machine.
lint: $(STATICCHECK)
	@test -z "$$(gofmt -l $$(git ls-files '*.go' | grep -v '_bpfe[lb].go$$'))" || { gofmt -l .; echo "gofmt needed"; exit 1; }
	GOOS=linux $(GO) vet ./...
	GOOS=linux $(STATICCHECK) ./...

$(STATICCHECK):
	mkdir -p bin/tools
	GOBIN=$(CURDIR)/bin/tools $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	mv bin/tools/staticcheck $@

# Every test: unit, BPF (as root), end-to-end with VictoriaMetrics and
# promtool, then each fuzz target for its execution budget.
test: deps lint build unit fuzz

# Every package with goroutines runs under the race detector, and the
# end-to-end tests then build statexec with it too (that is what exercises
# internal/modes, which has no unit tests). config and store start no
# goroutine, so -race can find nothing in their tests, while store's long
# loops take several times longer under it: those two run without it.
# `make unit RACE=` runs everything without the detector.
RACE        ?= -race
NORACE_PKGS := $(addprefix github.com/statexec/statexec/internal/,config store)

unit:
	$(GO) test -count=1 -timeout 10m $(NORACE_PKGS)
	$(GO) test $(RACE) -count=1 -timeout 30m $$($(GO) list ./... | grep -vxF $(addprefix -e ,$(NORACE_PKGS)))

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZ_PARSE_EXECS)x -fuzzminimizetime $(FUZZ_MINIMIZE) -timeout 5m ./internal/config
	$(GO) test -run '^$$' -fuzz '^FuzzLabelValues$$' -fuzztime $(FUZZ_LABELS_EXECS)x -fuzzminimizetime $(FUZZ_MINIMIZE) -timeout 5m ./internal/store
	$(GO) test -run '^$$' -fuzz '^FuzzSpool$$' -fuzztime $(FUZZ_SPOOL_EXECS)x -fuzzminimizetime $(FUZZ_MINIMIZE) -timeout 5m ./internal/store
	$(GO) test -run '^$$' -fuzz '^FuzzParseRawBTF$$' -fuzztime $(FUZZ_BTF_EXECS)x -fuzzminimizetime $(FUZZ_MINIMIZE) -timeout 5m ./internal/probe

bench: deps build
	$(GO) test -run '^$$' -bench . -benchtime 20x ./internal/store ./internal/probe
	./scripts/bench.sh
	./scripts/bench-report.sh

generate:
	$(GO) generate ./internal/probe/...
	./scripts/fetch-uplot.sh

# CI: the committed BPF objects must be what the sources compile to, and the
# embedded uPlot exactly the pinned npm package's files.
check-generate: deps generate
	git diff --exit-code -- internal/probe bpf internal/report/assets

# Regenerates example/statexec_metrics.txt from the README's iperf3 example.
example: deps build
	./scripts/example.sh

clean:
	rm -rf bin
