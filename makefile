# infbench — the user interface. Thin targets over `python -m infbench ...`.
#
#   make run                    the whole study (native processes, default profile and model)
#   make test                   unit + integration tests (tiny model, seconds of load)
#   make test-slow              the longest studies (untouched and planted verdicts, diagnose)
#   make test-docker            the real-engine tests (make docker-engine, make docker-base first)
#   make system                 the Debian packages the studies and tests use (root; run by
#                               make run / make test when one is missing)
#   make run_<variant>          one hypothesis;  make build_<variant>  its model + images
#   make report RUN=<run-id>    rebuild plots/tables/report.html of a finished or interrupted run
#   make compare A=<run> B=<run> [FORCE=1]   what changed from run A to run B, and is it noise
#   make check RUN=<run> THRESHOLDS=<file>   a run against thresholds: PASS/FAIL per rule
#   make diagnose_<variant>     leak or allocator retention? the variant under glibc and jemalloc
#   make list                   variants, profiles, studies and models
#   make run_study STUDY=<name> a named study (default: allocators)
#   make bench-probes           what the memory probes cost (req/s, p50 with / without)
#   make bench-capture          what the packet capture costs (req/s, p50 on / off, ABBA)
#   make capacity_<variant> P95_MS=<ms>   the highest open-loop rate with p95 under the bound
#   make trace_<variant> [REQUESTS=N]      where one request's time goes (pyinstrument, yappi)
#   make crosscheck_<variant> [CONNECTIONS=N]  wrk / h2load beside our closed loop (exit 4: disagree)
#   make bench-loadgen          our closed loop vs wrk on a 20 ms server, and the generator's ceiling
#   make bench-load-processes   the generator's ceiling with 1 vs LOAD_PROCESSES (2) Locust processes
#   make export_<variant> FORMAT=compose|k8s   its topology for a cluster engine (build/export/)
#   make peers                  the peer stacks' environments (MLServer, BentoML, Ray Serve)
#   make test-peers             the peer stacks' tests (their environments built first)
#   make torch                  PyTorch (optional, the CPU build) for the torch models
#                               (TORCH_INDEX_URL=<index> where this machine's has no CPU build)
#   make test-torch             the torch tests (tests/torch/; make torch first)
#
# Variables: PROFILE=<profile> MODEL=<model> RUNTIME=native|docker RUN=<run-id>|latest
#            PROBES=1 (the server-side memory probes in every variant) P95_MS=<ms>
#            CAPTURE=1 (a packet capture of each step and its wire view: run, run_<variant>)
#            LOAD_PROCESSES=<n> (Locust's master and n workers per step: run, run_<variant>)
#            URL=<http(s)://host:port> (where a `server = "url"` variant's server runs: run_*)
#            CONNECTIONS=<n> SECONDS=<s> TOOL=wrk|hey (crosscheck_*)
#            FORMAT=compose|k8s EXPORT_DIR=<dir> IMAGE=<tag> HOST_PORT=<port> (export_*)

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.infbench-installed

PROFILE ?=
MODEL ?=
RUNTIME ?= native
RUN ?= latest
STUDY ?= allocators
PROBES ?=
CAPTURE ?=
URL ?=
LOAD_PROCESSES ?=
PYTEST_ARGS ?=

opts = $(if $(PROFILE),--profile $(PROFILE)) $(if $(MODEL),--model $(MODEL)) --runtime $(RUNTIME) \
       $(if $(filter 1 yes true,$(PROBES)),--probes)
ropts = $(opts) $(if $(URL),--url $(URL)) $(if $(filter 1 yes true,$(CAPTURE)),--capture) \
        $(if $(filter 0 no false,$(CAPTURE)),--no-capture) \
        $(if $(LOAD_PROCESSES),--load-processes $(LOAD_PROCESSES))
bopts = $(if $(MODEL),--model $(MODEL)) --runtime $(RUNTIME)

.PHONY: help venv system system-run build build_all run run_all run_study bench-probes bench-capture report \
	compare check list test test-unit test-slow lint lock clean allocators redis

help:
	@sed -n '2,36p' makefile | sed 's/^# \{0,1\}//'

# The environment: created on first use from the pinned lock file.
venv: $(STAMP)
$(STAMP): requirements.lock requirements-nodeps.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing pinned packages into $(VENV) (first time: ~2 min, TensorFlow is large)..."
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# The Debian packages (scripts/system-packages.sh, the one list): installed when one is missing,
# as root; otherwise one line naming `sudo make system`. A quick dpkg query when all are there.
system:
	@scripts/system-packages.sh install test
system-run:
	@scripts/system-packages.sh install run

build: venv
	$(PY) -m infbench build $(bopts)
build_all: venv
	$(PY) -m infbench build --all $(bopts)
build_%: venv
	$(PY) -m infbench build $* $(bopts)

run: venv system-run
	$(PY) -m infbench run $(ropts)
run_all: venv system-run
	$(PY) -m infbench run --all $(ropts)
run_study: venv system-run
	$(PY) -m infbench run --study $(STUDY) $(ropts)
# What the probes cost: the same server without, with, with and without them in one run (~9 min),
# then requests/s and p50 latency as ratios.
bench-probes: venv system-run
	$(PY) -m infbench run --study probe-overhead $(opts)
	$(PY) -m infbench overhead latest
# What the packet capture costs (benchmarks/capture_cost.py): the transport study's REST
# variant with capture off, on, on, off; requests/s and p50 as ratios.
bench-capture: venv system-run
	$(PY) -m benchmarks.capture_cost $(if $(MODEL),--model $(MODEL))
run_%: venv system-run
	$(PY) -m infbench run $* $(ropts)
# The differential hypothesis: the same variant under glibc and with jemalloc preloaded (a cycled
# profile: PROFILE=cycles unless the study's is cycled).
diagnose_%: venv system-run
	$(PY) -m infbench diagnose $* $(opts)

# Capacity under a latency bound (infbench/modes/capacity.py): PROFILE=capacity unless given.
P95_MS ?=
capacity_%: venv system-run
	@test -n "$(P95_MS)" || { echo "make capacity_$*: give the bound, e.g. P95_MS=500"; exit 2; }
	$(PY) -m infbench capacity $* --p95-ms $(P95_MS) $(opts)

# A second opinion (infbench/modes/crosscheck.py): the variant's entry driven by wrk (TOOL=hey)
# or, for gRPC, h2load, beside our closed loop, alternating ABBA; PROFILE=crosscheck unless given.
CONNECTIONS ?=
SECONDS ?=
TOOL ?=
xopts = $(if $(CONNECTIONS),--connections $(CONNECTIONS)) $(if $(SECONDS),--seconds $(SECONDS)) \
        $(if $(TOOL),--tool $(TOOL))
crosscheck_%: venv system-run
	$(PY) -m infbench crosscheck $* $(xopts) $(opts)

# A variant's topology for a cluster engine (infbench/launch/export.py): FORMAT=compose (a
# docker-compose file) or k8s (Deployments and Services), in build/export/<variant>/ unless
# EXPORT_DIR says; IMAGE= names the servers' image, HOST_PORT= the entry's loopback port.
FORMAT ?= compose
EXPORT_DIR ?=
IMAGE ?=
HOST_PORT ?=
eopts = --format $(FORMAT) $(if $(EXPORT_DIR),--out $(EXPORT_DIR)) \
        $(if $(IMAGE),--image $(IMAGE)) $(if $(HOST_PORT),--host-port $(HOST_PORT))
export_%: venv
	$(PY) -m infbench export $* $(eopts) $(if $(MODEL),--model $(MODEL))

# The load generator's own benchmark (benchmarks/loadgen_bench.py), under a lock so that two
# heavy runs do not overlap: ours vs wrk at 8 and 64 connections on a 20 ms server, ABBA.
BENCH_LOCK ?= /tmp/infbench-heavy.lock
.PHONY: bench-loadgen
bench-loadgen: venv system-run
	flock $(BENCH_LOCK) $(PY) -m benchmarks.loadgen_bench

# One Locust process vs Locust's master and LOAD_PROCESSES workers on a null server, ABBA
# (benchmarks/load_processes.py): requests/s, p50, each side's CPU, as ratios.
.PHONY: bench-load-processes
bench-load-processes: venv
	flock $(BENCH_LOCK) $(PY) -m benchmarks.load_processes --processes $(or $(LOAD_PROCESSES),2)

# Where the time goes, request by request (infbench/modes/request_profile.py): e.g.
# make trace_scoring-sync; several at once, side by side: make trace VARIANTS="scoring-sync
# scoring-async". (`make profile`, `make profile_<variant>`: the old names, with a notice.)
REQUESTS ?=
VARIANTS ?= scoring-sync scoring-async
topts = $(if $(REQUESTS),--requests $(REQUESTS)) $(if $(MODEL),--model $(MODEL)) --runtime $(RUNTIME)
.PHONY: trace profile
trace: venv system-run
	$(PY) -m infbench trace $(VARIANTS) $(topts)
trace_%: venv system-run
	$(PY) -m infbench trace $* $(topts)
profile: venv system-run
	@echo "make: \`make profile\` is now \`make trace\` (a profile is a load profile, PROFILE=)" >&2
	$(PY) -m infbench trace $(VARIANTS) $(topts)
profile_%: venv system-run
	@echo "make: \`make profile_$*\` is now \`make trace_$*\` (a profile is a load profile, PROFILE=)" >&2
	$(PY) -m infbench trace $* $(topts)

report: venv
	$(PY) -m infbench report $(RUN)

# The peer serving stacks' environments (servers/peers/<peer>/requirements.lock), one venv each
# in .peers/, built side by side; a run builds a missing one itself. `make peers-lock PEER=x`
# re-resolves servers/peers/x/requirements.in into its lock (pip, this Python).
PEER ?=
.PHONY: peers peers-lock test-peers
peers: venv
	$(PY) -m infbench peers
peers-lock: venv
	@test -n "$(PEER)" || { echo "usage: make peers-lock PEER=<name>" >&2; exit 1; }
	$(PY) -m infbench peers --lock $(PEER)
# The peers' tests (tests/peers/): their environments first (side by side, with progress), then
# one pytest worker per peer.
test-peers: venv peers
	$(PY) -m pytest -n 3 --dist loadscope $(PYTEST_ARGS) tests/peers

# PyTorch, optional (requirements-torch.lock: the CPU build and what only it needs), into the
# venv by scripts/torch.sh, constrained by requirements.lock; once per lock (a stamp). The torch
# models (format = "torch", a .pt file) and tests/torch/ need it; make venv and make test never
# install it. On a machine whose index has only PyPI's CUDA build it says so in one line:
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu names PyTorch's CPU index.
TORCH_STAMP := $(VENV)/.infbench-torch
TORCH_INDEX_URL ?=
.PHONY: torch test-torch
torch: $(TORCH_STAMP)
$(TORCH_STAMP): requirements-torch.lock requirements.lock $(STAMP)
	@TORCH_INDEX_URL="$(TORCH_INDEX_URL)" scripts/torch.sh install $(PY)
	@touch $@
# The torch tests (tests/torch/): not in make test, nor in CI (docs/testing.md).
test-torch: venv system torch
	$(PY) -m pytest -n $(JOBS) --dist loadscope $(PYTEST_ARGS) tests/torch

# Two runs compared (compare-<A>-vs-<B>.json/.md in B's folder and B's report.html), and a
# run checked against thresholds (THRESHOLDS=<file.toml>, else [thresholds] in experiments.toml).
A ?=
B ?=
FORCE ?=
THRESHOLDS ?=
compare: venv
	@test -n "$(A)" -a -n "$(B)" || { echo "usage: make compare A=<run> B=<run> [FORCE=1]" >&2; exit 1; }
	$(PY) -m infbench compare $(A) $(B) $(if $(filter 1 yes true,$(FORCE)),--force)
check: venv
	$(PY) -m infbench check $(RUN) $(if $(THRESHOLDS),--thresholds $(THRESHOLDS))

list: venv
	@$(PY) -m infbench list

# The test pyramid (tests/unit, tests/integration, tests/slow, tests/docker). `make test` runs
# unit + integration in $(JOBS) pytest-xdist workers, then the tests that measure time or memory
# (marked `serial`) alone, so that no other test's load is in their figures.
JOBS ?= 4
test: venv system
	$(PY) -m pytest -n $(JOBS) --dist loadscope -m "not serial" $(PYTEST_ARGS) tests/unit tests/integration
	$(PY) -m pytest -m serial $(PYTEST_ARGS) tests/unit tests/integration || test $$? = 5

test-unit: venv
	$(PY) -m pytest -n $(JOBS) --dist loadscope $(PYTEST_ARGS) tests/unit

# The slow set: whole studies (cycled verdicts, diagnose, the profile experiment, the model
# alone, the transport formats); the verdicts judge memory, which another run's load does not
# change, so they run in parallel too.
test-slow: venv system
	$(PY) -m pytest -n $(JOBS) --dist loadscope $(PYTEST_ARGS) tests/slow

lint: venv
	$(PY) -m ruff check infbench servers loadtests tests examples benchmarks
	$(PY) -m mypy

# The Docker runtime (RUNTIME=docker): an engine on a machine without one (root), the offline
# base image for machines without an image registry, and the real-engine smoke test.
.PHONY: docker-engine docker-engine-stop docker-engine-status docker-base test-docker
docker-engine:
	scripts/docker-engine.sh start
docker-engine-stop:
	scripts/docker-engine.sh stop
docker-engine-status:
	scripts/docker-engine.sh status
docker-base:
	docker/base.sh
# Two files, two workers (--dist loadfile): the engine test and the compose round trip run side
# by side; an image build is one at a time per checkout (a lock), so they share one image.
test-docker: venv system
	INFBENCH_DOCKER_TESTS=1 $(PY) -m pytest -n 2 --dist loadfile $(PYTEST_ARGS) tests/docker

# Older names for `make system` (the allocators, redis-server): the same script, the same list.
allocators redis: system

# Refresh the pins from the current environment (after changing pyproject.toml).
lock: venv
	@{ echo "# Exact versions installed by \`make venv\` (pip freeze of a working environment, Python 3.11)."; \
	  echo "# Regenerate: make lock"; \
	  $(PY) -m pip freeze --exclude-editable | grep -v '^infbench' \
	    | grep -v -i -E -f <(grep -h -v '^#' requirements-nodeps.lock requirements-torch.lock \
	                         | cut -d= -f1 | sed 's/.*/^&==/'); } \
	  > requirements.lock.tmp
	@mv requirements.lock.tmp requirements.lock && echo "wrote requirements.lock"

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
