#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need (nats-server and
# openssl, from Debian's packages) if it is missing, checks formatting and lints, then runs every test.
# CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# The tests start real servers: nats-server, and certificates made with openssl for TLS.
missing=()
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# The dashboard's browser test (tests/dashboard_browser.rs): Debian's chromium and its WebDriver.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing from Debian's packages: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
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

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets
