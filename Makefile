# sitebridge: make demo | make test | make build | make fuzz
GO       ?= go
BIN      ?= bin/sitebridge
# A count (Nx), not a duration: Go 1.26's fuzz coordinator can fail a
# duration-bounded run with a bare "context deadline exceeded" at the
# boundary (go.dev/issue/75804, fixed in Go 1.27); a count has no deadline.
FUZZTIME ?= 20000x

# Every fuzz target, as package:Target.
FUZZ_TARGETS = \
	./tunnel:FuzzReadHeader \
	./tunnel:FuzzDecodeHello \
	./tunnel:FuzzReadFrame \
	./config:FuzzParse \
	./tlsgen:FuzzParseIdentity \
	./cacheapi:FuzzParsePath \
	./store:FuzzDecodeRequest \
	./store:FuzzDecodeResponse \
	./config:FuzzExpandEnv

.PHONY: all build demo test vet unit fuzz clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN) ./cmd/sitebridge

demo:
	$(GO) run ./cmd/sitebridge demo

test: vet unit fuzz chart-test

vet:
	$(GO) vet ./...
	cd third_party/yamux && $(GO) vet ./...

# third_party/yamux is our fork of hashicorp/yamux (see its PATCHES.md): its
# own tests run too, in -short mode (the one they skip moves 16 GiB).
unit:
	$(GO) test -race -count=1 -timeout 30m ./...
	cd third_party/yamux && $(GO) test -race -short -count=1 -timeout 10m ./...

# Each fuzz target runs briefly (FUZZTIME, default 20000 inputs); make fuzz
# FUZZTIME=2000000x for a longer run.
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$pkg $$name ($(FUZZTIME))"; \
		$(GO) test -run='^$$' -fuzz="^$$name$$" -fuzztime=$(FUZZTIME) $$pkg; \
	done

clean:
	rm -rf bin

# --- compose (issue 4) ---
# The Docker Compose suite of compose/ (the KWIC HA tutorial): 'make compose-up'
# builds the static binary and the FROM-scratch image and starts the suite
# detached; 'make compose-drill' stops and kills every instance and every
# cloud+on-prem pair and probes every path with real nc; 'make compose-down'
# removes containers, networks and the certificate volume.
SITEBRIDGE_IMAGE ?= sitebridge:local
# SITEBRIDGE_BINARY=path: put this prebuilt static binary in the image instead of building one.
SITEBRIDGE_BINARY ?=
COMPOSE_CONTEXT  := compose/bin/context
export SITEBRIDGE_IMAGE

.PHONY: image compose-up compose-down compose-drill

# Stage the build context (binary, configs, empty /tls mount point), then build;
# the previous image of that tag is removed unless a container still uses it.
image:
	rm -rf $(COMPOSE_CONTEXT)
	mkdir -p $(COMPOSE_CONTEXT)/etc/sitebridge $(COMPOSE_CONTEXT)/tls
ifeq ($(SITEBRIDGE_BINARY),)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o $(COMPOSE_CONTEXT)/sitebridge ./cmd/sitebridge
else
	install -m 0755 $(SITEBRIDGE_BINARY) $(COMPOSE_CONTEXT)/sitebridge
endif
	install -m 0644 compose/configs/*.yaml $(COMPOSE_CONTEXT)/etc/sitebridge/
	chmod 0755 $(COMPOSE_CONTEXT)/tls
	@old=$$(docker image inspect -f '{{.Id}}' $(SITEBRIDGE_IMAGE) 2>/dev/null || true); \
	echo "docker build -q -f compose/Dockerfile -t $(SITEBRIDGE_IMAGE) $(COMPOSE_CONTEXT)"; \
	docker build -q -f compose/Dockerfile -t $(SITEBRIDGE_IMAGE) $(COMPOSE_CONTEXT) || exit 1; \
	new=$$(docker image inspect -f '{{.Id}}' $(SITEBRIDGE_IMAGE)); \
	if [ -n "$$old" ] && [ "$$old" != "$$new" ]; then docker rmi "$$old" >/dev/null 2>&1 || true; fi

compose-up: image
	compose/compose.sh up -d --remove-orphans
	compose/compose.sh wait 60

compose-down:
	compose/compose.sh down --volumes --remove-orphans --timeout 10

compose-drill: image
	compose/drill.sh

# --- bench (issue 9) ---
# 'make bench' measures direct TCP against the tunnel (1+1 instances of the
# built binary, loopback; then the WAN profile when run as root with
# iproute2) and prints one table; 'make bench-short' is the quick CI check.
# BENCH_JSON is where the results go (gitignored); BENCHFLAGS adds flags.
BENCH_JSON ?= bench-results.json
BENCHFLAGS ?=

.PHONY: bench bench-short

bench: build
	$(GO) run ./cmd/sitebridge-bench -bin $(BIN) -json $(BENCH_JSON) $(BENCHFLAGS)

bench-short: build
	$(GO) run ./cmd/sitebridge-bench -short -bin $(BIN) -json $(BENCH_JSON) $(BENCHFLAGS)

# --- chart (issue 10) ---
# 'make chart-test' lints and renders the Helm chart charts/sitebridge with
# the Helm SDK for several values files, decodes every manifest strictly into
# its Kubernetes (k8s.io/api) or cert-manager API type, checks the chart's
# invariants and golden files, and runs sitebridge's own config and
# certificate checks on the rendered config of every pod. No cluster needed.
# The test is a Go module of its own (charts/sitebridge/test), so Helm and
# k8s.io stay out of the main go.mod. It builds the main module's packages
# through a replace directive, so -mod=mod lets a dependency added to the main
# module reach its go.mod and go.sum without a manual 'go mod tidy' there.
# CHARTFLAGS=-update rewrites the golden files (review the diff).
CHARTFLAGS ?=

.PHONY: chart-test

chart-test:
	cd charts/sitebridge/test && $(GO) test -mod=mod -count=1 -timeout 10m ./... $(CHARTFLAGS)
