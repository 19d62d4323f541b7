#!/usr/bin/env bash
# gateway-setup.sh - provision one IPsec gateway of the pyrebootcert lab: strongSwan (IKEv2,
# PSK, ESP aes128gcm16, tunnel mode) towards one peer, plus a rebootcert config for it.
# The one provisioning script: the qemu lab (pyrebootcert/labnet.py) and vagrant/ both use it.
#
#   gateway-setup.sh --name a --peer-name b --addr 10.120.0.1 --peer 10.120.0.2 \
#       --subnet 10.121.1.0/24 --peer-subnet 10.121.2.0/24 [options]
#
# Two modes:
#   --confdir DIR   lab mode: write every file into DIR and nothing else (no packages, no
#                   services, no addresses). The caller starts charon with
#                   STRONGSWAN_CONF=DIR/strongswan.conf and loads DIR/swanctl.conf through
#                   DIR/charon.vici (pyrebootcert/labnet.py does).
#   (no --confdir)  system mode (Vagrant), as root: install missing Debian packages, write the
#                   files into the system's places (below), add a boot-time unit for the
#                   protected-subnet address and route, restart strongSwan, load the config.
#
# Options (defaults in brackets):
#   --psk SECRET            pre-shared key, >= 16 of [A-Za-z0-9._+/=-] [a fixed lab-only secret]
#   --iface NAME            interface facing the peer, for rebootcert's XDP [eth1]
#   --inner ADDR            this gateway's address inside --subnet [the subnet's first host]
#   --encap yes|no          force UDP encapsulation of ESP (port 4500) [no]
#   --dpd-delay DURATION    strongSwan dpd_delay, e.g. 10s; 0s = off [0s]
#   --dpd-action ACTION     clear | trap | restart [clear]
#   --start-action ACTION   none | trap | start (the lab initiates by itself) [none]
#   --retransmit-tries N    charon.retransmit_tries [5]       (strongSwan's defaults)
#   --retransmit-timeout S  charon.retransmit_timeout [4.0]
#   --retransmit-base B     charon.retransmit_base [1.8]
#   --key FILE              use this rebootcert private key (PEM) [make an Ed25519 key once]
#   --peer-pubkey FILE      the peer's rebootcert public key (PEM). Lab mode: the path the
#                           config names [DIR/../PEER/key.pub.pem]; system mode: copied to
#                           /etc/rebootcert/peers/PEER.pub.pem
#   --rebootcert-src DIR    system mode: pip-install pyrebootcert from this checkout into
#                           /opt/rebootcert and enable its systemd units
#
# Files written             lab mode (DIR=--confdir)   system mode
#   charon settings         DIR/strongswan.conf        /etc/strongswan.d/rebootcert-lab.conf
#   connection "lab" + PSK  DIR/swanctl.conf           /etc/swanctl/conf.d/rebootcert-lab.conf
#   rebootcert config       DIR/rebootcert.toml        /etc/rebootcert/config.toml
#   rebootcert key pair     DIR/key.pem, key.pub.pem   /etc/rebootcert/key.pem, key.pub.pem
#   rebootcert state        DIR/state                  /var/lib/rebootcert
#   charon log              DIR/charon.log             the journal (-u strongswan)
#   the parameters          DIR/gateway.env            /etc/rebootcert/gateway.env
set -euo pipefail

die() { printf 'gateway-setup: error: %s\n' "$*" >&2; exit 2; }
say() { printf 'gateway-setup: %s\n' "$*" >&2; }

NAME= PEER_NAME= ADDR= PEER= SUBNET= PEER_SUBNET= CONFDIR= PEER_PUBKEY= KEY_IN= INNER= SRC=
PSK="rebootcert-lab-only-psk-0123456789"
IFACE=eth1 ENCAP=no DPD_DELAY=0s DPD_ACTION=clear START_ACTION=none
RT_TRIES=5 RT_TIMEOUT=4.0 RT_BASE=1.8

while [ $# -gt 0 ]; do
  opt=$1
  [ $# -ge 2 ] || die "$opt needs a value (see the header of $0)"
  case $opt in
    --name) NAME=$2;; --peer-name) PEER_NAME=$2;; --addr) ADDR=$2;; --peer) PEER=$2;;
    --subnet) SUBNET=$2;; --peer-subnet) PEER_SUBNET=$2;; --confdir) CONFDIR=$2;;
    --psk) PSK=$2;; --iface) IFACE=$2;; --inner) INNER=$2;; --encap) ENCAP=$2;;
    --dpd-delay) DPD_DELAY=$2;; --dpd-action) DPD_ACTION=$2;; --start-action) START_ACTION=$2;;
    --retransmit-tries) RT_TRIES=$2;; --retransmit-timeout) RT_TIMEOUT=$2;;
    --retransmit-base) RT_BASE=$2;; --key) KEY_IN=$2;; --peer-pubkey) PEER_PUBKEY=$2;;
    --rebootcert-src) SRC=$2;;
    *) die "unknown option $opt (see the header of $0)";;
  esac
  shift 2
done

# --- validate: a bad value must not become a config that charon silently misreads
for v in NAME PEER_NAME ADDR PEER SUBNET PEER_SUBNET; do
  [ -n "${!v}" ] || die "--$(v=${v,,}; echo "${v//_/-}") is required"
done
name_re='^[a-z0-9][a-z0-9-]{0,30}$'
[[ $NAME =~ $name_re ]] || die "--name '$NAME': lower-case letters, digits and '-'"
[[ $PEER_NAME =~ $name_re ]] || die "--peer-name '$PEER_NAME': lower-case letters, digits and '-'"
ip4='^(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])){3}$'
ip6='^[0-9a-fA-F:]*:[0-9a-fA-F:]*$'
is_ip() { [[ $1 =~ $ip4 || $1 =~ $ip6 ]]; }
for v in ADDR PEER; do is_ip "${!v}" || die "'${!v}' is not an IP address"; done
for v in SUBNET PEER_SUBNET; do
  [[ ${!v} == */* ]] && is_ip "${!v%/*}" && [[ ${!v#*/} =~ ^[0-9]{1,3}$ ]] \
    || die "'${!v}' is not a subnet (ADDR/PREFIX)"
done
if [ -z "$INNER" ]; then  # the subnet's first host: a.b.c.0/24 -> a.b.c.1, x::/64 -> x::1
  INNER=${SUBNET%/*}; INNER=${INNER%0}1
fi
is_ip "$INNER" || die "--inner '$INNER' is not an IP address"
[ ${#PSK} -ge 16 ] || die "--psk must have at least 16 characters"
[[ $PSK =~ ^[A-Za-z0-9._+/=-]+$ ]] || die "--psk: use letters, digits and . _ + / = -"
[[ $IFACE =~ ^[A-Za-z0-9._-]{1,15}$ ]] || die "--iface '$IFACE' is not an interface name"
case $ENCAP in yes|no) ;; *) die "--encap must be yes or no";; esac
case $DPD_ACTION in clear|trap|restart) ;; *) die "--dpd-action must be clear, trap or restart";; esac
case $START_ACTION in none|trap|start) ;; *) die "--start-action must be none, trap or start";; esac
[[ $DPD_DELAY =~ ^[0-9]+[smh]?$ ]] || die "--dpd-delay '$DPD_DELAY': e.g. 10s"
[[ $RT_TRIES =~ ^[0-9]+$ ]] || die "--retransmit-tries must be an integer"
for v in RT_TIMEOUT RT_BASE; do [[ ${!v} =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "'${!v}' is not a number"; done
[ -z "$KEY_IN" ] || [ -r "$KEY_IN" ] || die "--key $KEY_IN is not readable"

if [ -n "$CONFDIR" ]; then
  SYSTEM=0
  [[ $CONFDIR == /* ]] || die "--confdir must be an absolute path"
  [ -z "$SRC" ] || die "--rebootcert-src is for system mode (no --confdir)"
  CONFDIR=${CONFDIR%/}
  F_SS=$CONFDIR/strongswan.conf F_SWANCTL=$CONFDIR/swanctl.conf F_RC=$CONFDIR/rebootcert.toml
  F_ENV=$CONFDIR/gateway.env KEY=$CONFDIR/key.pem STATE=$CONFDIR/state
  LOG=$CONFDIR/charon.log VICI=$CONFDIR/charon.vici
  [ -n "$PEER_PUBKEY" ] || PEER_PUBKEY=${CONFDIR%/*}/$PEER_NAME/key.pub.pem
else
  SYSTEM=1
  [ "$(id -u)" = 0 ] || die "system mode (no --confdir) must run as root"
  [ -n "$PEER_PUBKEY" ] || die "system mode needs --peer-pubkey FILE (the peer's public key)"
  [ -r "$PEER_PUBKEY" ] || die "--peer-pubkey $PEER_PUBKEY is not readable"
  CONFDIR=/etc/rebootcert
  F_SS=/etc/strongswan.d/rebootcert-lab.conf F_SWANCTL=/etc/swanctl/conf.d/rebootcert-lab.conf
  F_RC=$CONFDIR/config.toml F_ENV=$CONFDIR/gateway.env KEY=$CONFDIR/key.pem
  STATE=/var/lib/rebootcert LOG= VICI=/var/run/charon.vici
fi

# --- packages (system mode only: the lab guest runs on a read-only copy of the host)
if [ "$SYSTEM" = 1 ]; then
  PKGS=(charon-systemd strongswan-swanctl openssl iproute2 iputils-ping tcpdump python3
        python3-venv python3-pip python3-bpfcc bpftool "linux-headers-$(uname -r)")
  MISSING=()
  for p in "${PKGS[@]}"; do
    [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" == *'install ok installed'* ]] || MISSING+=("$p")
  done
  if [ ${#MISSING[@]} -gt 0 ]; then
    say "installing ${MISSING[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${MISSING[@]}" \
      >/dev/null || die "apt-get install failed for: ${MISSING[*]}"
  fi
fi
for c in swanctl openssl ip; do
  command -v "$c" >/dev/null || die "$c not found (apt-get install strongswan-swanctl openssl iproute2)"
done

# Few external commands from here on: in an emulated (TCG) lab guest every exec costs ~0.1 s.
write() {  # copy stdin to file $1, or to stdout without $1 (bash builtins only)
  local text
  IFS= read -r -d '' text || true
  if [ $# -gt 0 ]; then printf '%s' "$text" >"$1"; else printf '%s' "$text"; fi
}
umask 022
for d in "$CONFDIR" "${F_SS%/*}" "${F_SWANCTL%/*}"; do [ -d "$d" ] || mkdir -p "$d"; done
[ -d "$STATE" ] || mkdir -p -m 700 "$STATE"

# --- rebootcert signing key: made (or imported) once; a re-run keeps it (peers trust it)
if [ -n "$KEY_IN" ]; then
  (umask 077; write "$KEY") <"$KEY_IN"
elif [ ! -s "$KEY" ]; then
  (umask 077; openssl genpkey -algorithm ed25519 -out "$KEY" 2>/dev/null) \
    || die "openssl could not make an Ed25519 key"
fi
if [ ! -s "${KEY%.pem}.pub.pem" ] || [ "$KEY" -nt "${KEY%.pem}.pub.pem" ]; then
  openssl pkey -in "$KEY" -pubout -out "${KEY%.pem}.pub.pem" 2>/dev/null \
    || die "cannot read the private key $KEY"
fi
if [ "$SYSTEM" = 1 ]; then
  [ -d "$CONFDIR/peers" ] || mkdir -p "$CONFDIR/peers"
  write "$CONFDIR/peers/$PEER_NAME.pub.pem" <"$PEER_PUBKEY"
  PEER_PUBKEY=$CONFDIR/peers/$PEER_NAME.pub.pem
fi

# --- charon settings. Lab mode: a complete file for STRONGSWAN_CONF. System mode: an
# override that Debian's /etc/strongswan.conf includes (strongswan.d/*.conf).
{
  [ "$SYSTEM" = 1 ] || echo "include /etc/strongswan.conf"
  write <<EOF
# written by gateway-setup.sh for gateway $NAME
charon {
  retransmit_tries = $RT_TRIES
  retransmit_timeout = $RT_TIMEOUT
  retransmit_base = $RT_BASE
  # the route to the peer's subnet belongs to the topology, not to charon's table 220
  install_routes = no
  plugins {
    bypass-lan {
      load = no
    }
EOF
  # (this group is a pipeline stage, a subshell: exit ends only the group)
  if [ "$SYSTEM" = 1 ]; then  # charon-systemd logs to the journal (and AppArmor confines it)
    echo "  }"
    echo "}"
    exit 0
  fi
  write <<EOF
    vici {
      socket = unix://$VICI
    }
  }
  filelog {
    lab {
      path = $LOG
      time_format = %H:%M:%S
      ike_name = yes
      flush_line = yes
      default = 1
      ike = 2
      knl = 1
    }
  }
}
EOF
} | write "$F_SS"

# --- the connection (it holds the PSK: owner-only). IKE proposals: strongSwan's defaults.
(umask 077; write "$F_SWANCTL") <<EOF
# written by gateway-setup.sh for gateway $NAME (peer $PEER_NAME)
connections {
  lab {
    version = 2
    local_addrs = $ADDR
    remote_addrs = $PEER
    encap = $ENCAP
    dpd_delay = $DPD_DELAY
    mobike = no
    local {
      auth = psk
      id = $ADDR
    }
    remote {
      auth = psk
      id = $PEER
    }
    children {
      lab-net {
        local_ts = $SUBNET
        remote_ts = $PEER_SUBNET
        esp_proposals = aes128gcm16
        mode = tunnel
        dpd_action = $DPD_ACTION
        start_action = $START_ACTION
      }
    }
  }
}
secrets {
  ike-lab {
    id-local = $ADDR
    id-peer = $PEER
    secret = "$PSK"
  }
}
EOF

# --- rebootcert (format: docs/config.example.toml)
write "$F_RC" <<EOF
# written by gateway-setup.sh for gateway $NAME
[local]
key = "$KEY"
state_dir = "$STATE"
certificate = "$STATE/birth.cert"
addresses = ["$ADDR"]
interfaces = ["$IFACE"]

[[peers]]
name = "$PEER_NAME"
addresses = ["$PEER"]
pubkey = "$PEER_PUBKEY"
[peers.renegotiate]
ike = "lab"
children = ["lab-net"]

[renegotiate]
backend = "strongswan"
vici_socket = "$VICI"
EOF

write "$F_ENV" <<EOF
NAME=$NAME
PEER_NAME=$PEER_NAME
ADDR=$ADDR
PEER=$PEER
SUBNET=$SUBNET
PEER_SUBNET=$PEER_SUBNET
INNER=$INNER
IFACE=$IFACE
ENCAP=$ENCAP
DPD_DELAY=$DPD_DELAY
DPD_ACTION=$DPD_ACTION
START_ACTION=$START_ACTION
RETRANSMIT_TRIES=$RT_TRIES
RETRANSMIT_TIMEOUT=$RT_TIMEOUT
RETRANSMIT_BASE=$RT_BASE
VICI=$VICI
REBOOTCERT_CONFIG=$F_RC
EOF

[ "$SYSTEM" = 1 ] || exit 0

# ---------------------------------------------------------------- system mode from here
# The protected subnet: our inner address and the route to the peer's subnet, at every boot.
write /etc/systemd/system/rebootcert-lab-net.service <<EOF
# written by gateway-setup.sh: the lab's protected-subnet address and route
[Unit]
Description=rebootcert lab: address in $SUBNET and route to $PEER_SUBNET
After=network-online.target
Wants=network-online.target
Before=strongswan.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/sbin/ip addr replace $INNER dev lo
ExecStart=/sbin/ip route replace $PEER_SUBNET via $PEER src $INNER

[Install]
WantedBy=multi-user.target
EOF
systemctl daemon-reload
systemctl enable --now rebootcert-lab-net.service >/dev/null 2>&1 \
  || die "rebootcert-lab-net.service failed (journalctl -u rebootcert-lab-net)"

if [ -n "$SRC" ]; then
  [ -f "$SRC/pyproject.toml" ] || die "--rebootcert-src $SRC is not a pyrebootcert checkout"
  [ -x /opt/rebootcert/bin/python ] || python3 -m venv --system-site-packages /opt/rebootcert
  /opt/rebootcert/bin/python -m pip install -q --disable-pip-version-check "$SRC[strongswan]" \
    || die "pip install of $SRC failed"
  ln -sfn /opt/rebootcert/bin/rebootcert /usr/local/bin/rebootcert
  for unit in "$SRC"/systemd/*.service; do
    [ -e "$unit" ] || continue
    write "/etc/systemd/system/${unit##*/}" <"$unit"
  done
  systemctl daemon-reload
  for unit in rebootcert-boot rebootcert; do
    [ -e "/etc/systemd/system/$unit.service" ] && systemctl enable "$unit.service" >/dev/null 2>&1
  done
  systemctl restart rebootcert-boot.service 2>/dev/null || say "rebootcert-boot.service failed \
(journalctl -u rebootcert-boot)"
fi

systemctl enable strongswan.service >/dev/null 2>&1 || true
systemctl restart strongswan.service || die "strongswan.service did not restart (journalctl -u strongswan)"
for _ in $(seq 1 50); do [ -S "$VICI" ] && break; sleep 0.2; done
swanctl --load-all >/dev/null || die "swanctl --load-all failed"
if [ -n "$SRC" ] && [ -e /etc/systemd/system/rebootcert.service ]; then
  systemctl restart rebootcert.service 2>/dev/null || say "rebootcert.service failed \
(journalctl -u rebootcert)"
fi
say "gateway $NAME ($ADDR, $INNER in $SUBNET) -> $PEER_NAME ($PEER, $PEER_SUBNET) ready"
