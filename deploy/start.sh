#!/bin/sh
# Container entrypoint (and what `bgsvc cluster up` runs per node): a clean Prometheus
# multiprocess directory, then gunicorn as this process, so SIGTERM reaches gunicorn's
# arbiter directly and starts the graceful drain (see src/bgsvc/server.py).
set -eu

here="$(cd "$(dirname "$0")" && pwd)"

# prometheus-client writes one file per worker process here; files of a previous run
# would be summed into this one's counters, so wipe them at every start.
: "${PROMETHEUS_MULTIPROC_DIR:=/tmp/bgsvc-metrics}"
export PROMETHEUS_MULTIPROC_DIR
rm -rf "$PROMETHEUS_MULTIPROC_DIR"
mkdir -p "$PROMETHEUS_MULTIPROC_DIR"

# glibc gives each thread its own malloc arena; with the decode/encode threads that keeps
# 60-120 MiB per worker that is never reused (measured, benchmarks/RESULTS.md).
: "${MALLOC_ARENA_MAX:=2}"
export MALLOC_ARENA_MAX

exec gunicorn -c "$here/gunicorn.conf.py" 'bgsvc.app:create_app()'
