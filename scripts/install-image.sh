#!/bin/sh
# The image's install steps, run by the Dockerfile and by tests/unit/core/test_image.py (no container engine in
# CI: the test runs this very script into a fresh venv, then the CLI from it).
#   scripts/install-image.sh build SRC WHEELS   wheel of SRC (compiles connectors/_rowjson.pyx), into WHEELS
#   scripts/install-image.sh venv WHEELS VENV   fresh venv at VENV with the walduck wheel and its dependencies
set -eu
step=$1
case "$step" in
  build)
    src=$2 wheels=$3
    python3 -m pip wheel --no-deps --wheel-dir "$wheels" "$src"
    # the connector refuses to start without its compiled row encoder (WALDUCK_CONNECTOR_ROW_ENCODER=native in k8s/):
    # a wheel built without a C compiler must fail the build here, not the pod at start
    python3 - "$wheels" <<'PY'
import sys, zipfile, pathlib
(wheel,) = pathlib.Path(sys.argv[1]).glob("walduck-*.whl")
names = zipfile.ZipFile(wheel).namelist()
if not any(n.startswith("connectors/_rowjson") and n.endswith(".so") for n in names):
    sys.exit(f"walduck: {wheel.name} has no compiled row encoder (connectors/_rowjson*.so)")
PY
    ;;
  venv)
    wheels=$2 venv=$3
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --disable-pip-version-check "$wheels"/walduck-*.whl
    "$venv/bin/python" -c "import connectors._rowjson, stack.cli"
    ;;
  *)
    echo "usage: $0 build SRC WHEELS | venv WHEELS VENV" >&2
    exit 2
    ;;
esac
