#!/bin/bash
# scripts/gateway-setup.sh in system mode -- what a Vagrant gateway runs -- inside the lab
# guest, where /etc and /var are throw-away overlays. systemctl and apt-get are stubs that
# log their calls; "systemctl restart strongswan.service" starts charon, as the real unit
# would. Prints KEY=VALUE lines and the files for the host test; undoes what it did.
set -u
REPO=$1
STUB=$(mktemp -d)
LOG=$STUB/calls.log
cat >"$STUB/systemctl" <<STUBEOF
#!/bin/bash
echo "systemctl \$*" >>"$LOG"
if [ "\$*" = "restart strongswan.service" ]; then
  /usr/lib/ipsec/charon >"$STUB/charon.out" 2>&1 &
fi
exit 0
STUBEOF
printf '#!/bin/bash\necho "apt-get $*" >>"%s"\n' "$LOG" >"$STUB/apt-get"
chmod +x "$STUB/systemctl" "$STUB/apt-get"
openssl genpkey -algorithm ed25519 -out "$STUB/peer.pem" 2>/dev/null
openssl pkey -in "$STUB/peer.pem" -pubout -out "$STUB/peer.pub.pem" 2>/dev/null

cleanup() {
  [ -f /run/charon.pid ] && kill "$(cat /run/charon.pid)" 2>/dev/null
  rm -rf /etc/rebootcert /var/lib/rebootcert /etc/swanctl/conf.d/rebootcert-lab.conf \
    /etc/strongswan.d/rebootcert-lab.conf /etc/systemd/system/rebootcert-lab-net.service "$STUB"
}
trap cleanup EXIT

PATH=$STUB:$PATH bash "$REPO/scripts/gateway-setup.sh" --name a --peer-name b \
  --addr 10.130.0.1 --peer 10.130.0.2 --subnet 10.131.1.0/24 --peer-subnet 10.131.2.0/24 \
  --peer-pubkey "$STUB/peer.pub.pem" --dpd-delay 10s --dpd-action restart --start-action start \
  --iface lo
echo "SETUP_RC=$?"
echo "CONNS=$(swanctl --list-conns 2>/dev/null | grep -c 'lab-net: TUNNEL')"
echo "PEER_KEY_SAME=$(cmp -s "$STUB/peer.pub.pem" /etc/rebootcert/peers/b.pub.pem && echo yes)"
echo "MODES=$(stat -c '%n:%a' /etc/rebootcert/key.pem /etc/swanctl/conf.d/rebootcert-lab.conf \
  /var/lib/rebootcert | tr '\n' ' ')"
echo "CALLS=$(tr '\n' ';' <"$LOG")"
echo "--- unit"; cat /etc/systemd/system/rebootcert-lab-net.service
echo "--- strongswan.d"; cat /etc/strongswan.d/rebootcert-lab.conf
echo "--- config.toml"; cat /etc/rebootcert/config.toml
echo "--- end"
