#!/usr/bin/env bash
# Installs what the tests need (system tools, npm packages), type-checks,
# builds, and runs every test. This is the one test command: the README and
# .ci/run both call it.
set -euo pipefail
cd "$(dirname "$0")/.."

# tool check → Debian package that provides it
declare -A PACKAGES=(
  [curl]=curl
  [ncat]=ncat
  [proxychains4]=proxychains4
  [danted]=dante-server
  [microsocks]=microsocks
  [pysocks]=python3-socks
  [gcc]=gcc
  [taskset]=util-linux
  [unshare]=util-linux
  [ip]=iproute2
  [pidof]=sysvinit-utils
  [socat]=socat
  [nc.openbsd]=netcat-openbsd
  [connect-proxy]=connect-proxy
)

has() {
  case "$1" in
    danted) [ -x /usr/sbin/danted ] || command -v danted >/dev/null 2>&1 ;;
    pysocks) [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import socks' >/dev/null 2>&1 ;;
    *) command -v "$1" >/dev/null 2>&1 ;;
  esac
}

missing=()
for tool in "${!PACKAGES[@]}"; do
  has "$tool" || missing+=("${PACKAGES[$tool]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "test: missing system packages: ${missing[*]}" >&2
    echo "test: install them (e.g. sudo apt-get install ${missing[*]}) and run again" >&2
    exit 1
  fi
fi

npm install --no-audit --no-fund --loglevel=error --ignore-scripts
node scripts/build-native.mjs --require   # the splice relay addon: its tests need it
rm -rf dist
npx tsc -p tsconfig.json   # type-check and build src/, test/ and bench/ into dist/
exec node --test --test-timeout=300000 dist/test/
