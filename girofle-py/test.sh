#!/usr/bin/env bash
# girofle-py's tests: builds the Python module into a virtualenv under target/ (reused
# between runs; cargo's own target dir, so girofle-core is not compiled again), then runs
# pytest against the real Docker engine with the GitLab stand-in image, and the Ansible
# playbook with ansible-core.
# Usage: girofle-py/test.sh [pytest arguments]      (scripts/test calls it)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${GIROFLE_PY_VENV:-$ROOT/target/py-venv}
PYTHON=${PYTHON:-python3}
# Pinned so a fresh machine tests what was tested here.
PINS=(maturin==1.16.0 pytest==8.4.2 ansible-core==2.19.14)

if ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    if ! "$PYTHON" -m venv --help >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv
    fi
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
fi
# Already satisfied pins are checked locally, without the network.
"$VENV/bin/pip" install -q --disable-pip-version-check "${PINS[@]}"

# `maturin develop` builds with cargo into the workspace's target/ and installs the
# module (editable: python/girofle from the source tree) into the virtualenv.
start=$(date +%s)
(cd girofle-py && VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH" maturin develop --quiet)
echo "girofle-py: module built and installed in $(( $(date +%s) - start ))s"

rc=0
"$VENV/bin/python" -m pytest girofle-py/tests -p no:cacheprovider "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    echo "girofle-py: pytest collected no tests: that is a failure" >&2
    exit 1
fi
exit "$rc"
