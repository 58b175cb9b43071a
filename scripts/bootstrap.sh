#!/usr/bin/env bash
# Install what walduck needs on a fresh Debian machine: PostgreSQL (Debian package), a Java 17+ runtime and
# Maven (Kafka runs from its Maven Central artifacts), and the Python package in ./.venv.
# Idempotent and quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need_apt+=(postgresql)
command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
# promtool (Debian's prometheus package) checks and unit-tests k8s/prometheusrule.yaml in the suite
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
# the connector's compiled row encoder (connectors/_rowjson.pyx) needs a C compiler and Python's headers
PY=${PYTHON:-python3}
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
py_include=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null || true)
[ -n "$py_include" ] && [ -f "$py_include/Python.h" ] || need_apt+=(python3-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "walduck: missing ${need_apt[*]}; run as root or install them: apt-get install ${need_apt[*]}" >&2
    exit 1
  fi
  echo "walduck: installing ${need_apt[*]} from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# wal2json: the independent logical decoder of the differential test (tests/integration/connector/
# test_differential_wal2json.py), for each installed PostgreSQL major version
need_w2j=()
for pgdir in /usr/lib/postgresql/*/; do
  [ -d "$pgdir" ] || continue
  [ -f "${pgdir}lib/wal2json.so" ] || need_w2j+=("postgresql-$(basename "$pgdir")-wal2json")
done
if [ ${#need_w2j[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "walduck: missing ${need_w2j[*]}; run as root or install them: apt-get install ${need_w2j[*]}" >&2
    exit 1
  fi
  echo "walduck: installing ${need_w2j[*]} from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${need_w2j[@]}" >/dev/null || { apt-get update -qq && apt-get install -y -qq "${need_w2j[@]}" >/dev/null; }
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.walduck-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] || [ connectors/_rowjson.pyx -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".[dev,bench,eval]"
  touch "$stamp"
fi
