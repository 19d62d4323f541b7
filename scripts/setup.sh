#!/usr/bin/env bash
# setup.sh - make this machine ready to run pyrebootcert's demo and tests. Idempotent.
#
#   scripts/setup.sh            install what is missing, then print a one-line summary
#   scripts/setup.sh --check    only report what is missing (exit 1 if anything is)
#   scripts/setup.sh --test     also what only the test suite uses (vagrant + vagrant-libvirt, for
#                               `vagrant validate`, which needs a usable provider)
#
# What it does, in order (each step is skipped when already done):
#   1. Debian packages: Python + venv, bcc (python3-bpfcc), kernel headers for bcc, and the
#      real-kernel lab (qemu, Debian's kernel image, busybox, strongSwan, iproute2, tcpdump, ruby;
#      Debian's libreswan unpacked, not installed, as it conflicts with strongSwan).
#   2. Kernel headers for bcc: /lib/modules/$(uname -r)/build. On a Debian kernel that is
#      linux-headers-$(uname -r). On a custom kernel with no such package (this project's CI host)
#      the Debian headers of the lab kernel work: /lib/modules/$(uname -r) is linked to them.
#   3. A venv at .venv on Debian's /usr/bin/python3 with --system-site-packages, so Debian's bcc
#      is importable (the PyPI "bcc" is an unrelated package), and the project installed editable.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CHECK_ONLY=0
FOR_TESTS=0
for arg in "$@"; do
  case "$arg" in
    --check) CHECK_ONLY=1 ;;
    --test) FOR_TESTS=1 ;;
    *) echo "usage: $0 [--check] [--test]" >&2; exit 2 ;;
  esac
done

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (XDP, network namespaces and apt need it): sudo $0"
command -v apt-get >/dev/null && command -v dpkg-query >/dev/null \
  || die "this script needs a Debian-like system (apt-get); install by hand: python3 (>=3.11) + venv, \
python3-bpfcc, kernel headers for $(uname -r), qemu-system-x86, busybox-static, a Debian linux-image, strongswan"
[ -e /sys/fs/bpf ] || [ -d /sys/kernel/btf ] || say "warning: no /sys/fs/bpf: is this kernel built with BPF?"

KREL=$(uname -r)
# No `cmd | grep -q` under pipefail: grep exits at the first match, the writer gets SIGPIPE and
# the pipeline fails although the line was there. Match on captured output instead.
installed() { [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == *'install ok installed'* ]]; }
candidate() { apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: \([^(].*\)$/\1/p'; }
APT_UPDATED=0
apt_has() {  # is package $1 known to apt? (updates the lists once when it is not)
  if [ "$APT_UPDATED" = 0 ] && [ -z "$(candidate "$1")" ]; then
    apt-get update -qq >/dev/null; APT_UPDATED=1
  fi
  [ -n "$(candidate "$1")" ]
}

# libreswan for the VM test tests/vm/test_libreswan.py. Debian's package Conflicts with
# strongSwan (which the lab's gateways use), so it is not installed: its .deb is unpacked into
# the cache and the guest mounts it per gateway. Its libraries are ordinary packages.
LIBRESWAN_LIBS=(libnss3-tools libldns3 libunbound8 libcurl3-nss libldap-2.5-0 libevent-core-2.1-7
                libevent-pthreads-2.1-7 libcap-ng0 libnspr4 libnss3)
fetch_libreswan() {
  local cache=${XDG_CACHE_HOME:-$HOME/.cache}/pyrebootcert/libreswan ver dir deb tmp
  ver=$(candidate libreswan)
  [ -n "$ver" ] || { say "warning: apt knows no libreswan package; tests/vm/test_libreswan.py will fail"; return 0; }
  dir=$cache/$ver
  [ -x "$dir/root/usr/libexec/ipsec/pluto" ] && return 0
  [ "$CHECK_ONLY" = 1 ] && { say "missing: libreswan $ver unpacked in $dir"; exit 1; }
  tmp=$(mktemp -d) && chmod 755 "$tmp"
  (cd "$tmp" && apt-get download -qq "libreswan=$ver" 2>/dev/null) || { rm -rf "$tmp"; die "apt-get download libreswan=$ver failed"; }
  deb=$(ls "$tmp"/libreswan_*.deb)
  mkdir -p "$dir" && rm -rf "$dir/root.new" && dpkg-deb -x "$deb" "$dir/root.new" \
    && rm -rf "$dir/root" && mv "$dir/root.new" "$dir/root" || { rm -rf "$tmp"; die "cannot unpack $deb into $dir"; }
  rm -rf "$tmp"
  say "libreswan $ver unpacked into $dir/root (not installed: it conflicts with strongSwan)"
}

# The Debian kernel the lab boots (and whose headers bcc uses on a non-Debian host kernel): the
# newest one installed, else the one linux-image-amd64 depends on.
lab_kernel_version() {
  local v
  v=$(ls /boot/vmlinuz-*-amd64 2>/dev/null | sed 's|/boot/vmlinuz-||' | sort -V | tail -n 1)
  if [ -z "$v" ]; then
    apt_has linux-image-amd64 || { echo ""; return; }
    v=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/.*Depends: linux-image-\(.*-amd64\)$/\1/p' | head -n 1)
  fi
  echo "$v"
}

LABK=${REBOOTCERT_LAB_KERNEL:-$(lab_kernel_version)}
[ -n "$LABK" ] || die "cannot find a Debian linux-image for the lab (apt-cache depends linux-image-amd64 says nothing)"

PKGS=(python3 python3-venv python3-pip python3-bpfcc iproute2 kmod iputils-ping tcpdump bpftool
      qemu-system-x86 busybox-static "linux-image-$LABK" "linux-headers-$LABK"
      strongswan-charon strongswan-swanctl charon-systemd ruby openssl "${LIBRESWAN_LIBS[@]}")
[ "$FOR_TESTS" = 1 ] && PKGS+=(vagrant vagrant-libvirt)   # vagrant validate needs a usable provider
if [ ! -e "/lib/modules/$KREL/build" ] && apt_has "linux-headers-$KREL"; then
  PKGS+=("linux-headers-$KREL")   # a Debian host kernel: its own headers
fi
MISSING=()
for p in "${PKGS[@]}"; do installed "$p" || MISSING+=("$p"); done

if [ ${#MISSING[@]} -gt 0 ]; then
  if [ "$CHECK_ONLY" = 1 ]; then say "missing packages: ${MISSING[*]}"; exit 1; fi
  say "installing: ${MISSING[*]}"
  [ "$APT_UPDATED" = 1 ] || apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${MISSING[@]}" >/dev/null \
    || die "apt-get install failed for: ${MISSING[*]}"
fi
fetch_libreswan

# Kernel headers for bcc.
if [ ! -e "/lib/modules/$KREL/build" ]; then
  [ "$CHECK_ONLY" = 1 ] && { say "missing: /lib/modules/$KREL/build (kernel headers for bcc)"; exit 1; }
  HDR=/lib/modules/$LABK/build
  [ -e "$HDR" ] || die "no kernel headers for $KREL and none at $HDR: apt-get install linux-headers-$LABK"
  if [ -e "/lib/modules/$KREL" ] && [ ! -L "/lib/modules/$KREL" ]; then
    ln -sfn "$HDR" "/lib/modules/$KREL/build"      # a real module dir without headers
    say "linked /lib/modules/$KREL/build -> $HDR (headers of Debian's $LABK for this custom kernel)"
  else
    ln -sfn "/lib/modules/$LABK" "/lib/modules/$KREL"
    say "linked /lib/modules/$KREL -> /lib/modules/$LABK (headers of Debian's $LABK for this custom kernel)"
  fi
fi

# The venv: Debian's python (bcc's), system site-packages visible, project editable.
VENV=$ROOT/.venv
STAMP=$VENV/.setup-stamp
WANT=$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  [ "$CHECK_ONLY" = 1 ] && { say "missing or stale venv: $VENV"; exit 1; }
  [ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv --system-site-packages "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]" >"$VENV/pip.log" 2>&1 \
    || { tail -n 20 "$VENV/pip.log" >&2; die "pip install failed (full log: $VENV/pip.log)"; }
  "$VENV/bin/python" -c 'import pyrebootcert, cryptography, pyroute2' \
    || die "the venv at $VENV is broken; remove it and run again"
  echo "$WANT" > "$STAMP"
fi
"$VENV/bin/python" -c 'import bcc' 2>/dev/null \
  || die "bcc is not importable from $VENV (apt-get install python3-bpfcc; the venv must use /usr/bin/python3)"
say "ready: venv $VENV, bcc $(dpkg-query -W -f='${Version}' python3-bpfcc), lab kernel $LABK"
