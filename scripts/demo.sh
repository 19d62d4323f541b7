#!/usr/bin/env bash
# demo.sh - the pyrebootcert demo: two IPsec gateways (strongSwan, real ESP) in network
# namespaces, a rebootcert controller on each. B reboots and A detects, verifies, flushes and
# renegotiates within one round trip; then a 30 s link outage flushes nothing. Prints a
# timeline with the measured times and a summary; exits 0 only if every check held.
#
#   sudo ./scripts/demo.sh                  IPv4, raw ESP
#   sudo ./scripts/demo.sh --family 6       IPv6 outer addresses (ICMPv6 Bad SPI)
#   sudo ./scripts/demo.sh --encap          ESP in UDP (NAT-T)
#   sudo ./scripts/demo.sh --outage 0       skip the outage
#
# Needs a kernel with ESP. This one lacks it? Then the demo runs inside the real-kernel lab
# guest (qemu with Debian's kernel and this machine's filesystem; see docs/lab.md),
# automatically, with its output streamed here.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=$PWD/.venv/bin/python
if "$PY" -c 'import sys; from pyrebootcert.lab import host_has_esp; sys.exit(0 if host_has_esp() else 1)'; then
  exec "$PY" -m pyrebootcert.demo "$@"
fi
echo "demo: this kernel ($(uname -r)) has no ESP; running the demo in the lab guest (boot ~15-30 s)"
exec "$PY" -m pyrebootcert.lab -v -- "$PY" -m pyrebootcert.demo "$@"
