#!/bin/bash
# Two namespaces joined by a veth, static ESP tunnel SAs both ways (ip xfrm), ping through,
# then delete B's inbound SA: pings fail and B's XfrmInNoStates rises. Prints KEY=VALUE
# lines for the host test. Cleans up its namespaces whatever happens.
set -u
A=esa$$ B=esb$$
cleanup() { ip netns del "$A" 2>/dev/null; ip netns del "$B" 2>/dev/null; }
trap cleanup EXIT
set -e
ip netns add "$A"; ip netns add "$B"
ip link add va netns "$A" type veth peer name vb netns "$B"
ip -n "$A" addr add 10.77.0.1/24 dev va; ip -n "$B" addr add 10.77.0.2/24 dev vb
for n in "$A" "$B"; do ip -n "$n" link set lo up; done
ip -n "$A" link set va up; ip -n "$B" link set vb up
K1=0x$(printf '1a%.0s' {1..20}); K2=0x$(printf '2b%.0s' {1..20})
for n in "$A" "$B"; do
  ip -n "$n" xfrm state add src 10.77.0.1 dst 10.77.0.2 proto esp spi 0x7701 reqid 1 \
     mode tunnel aead 'rfc4106(gcm(aes))' "$K1" 128
  ip -n "$n" xfrm state add src 10.77.0.2 dst 10.77.0.1 proto esp spi 0x7702 reqid 2 \
     mode tunnel aead 'rfc4106(gcm(aes))' "$K2" 128
done
pol() {  # ns src dst dir reqid
  ip -n "$1" xfrm policy add src "$2/32" dst "$3/32" dir "$4" \
     tmpl src "$2" dst "$3" proto esp reqid "$5" mode tunnel
}
pol "$A" 10.77.0.1 10.77.0.2 out 1; pol "$A" 10.77.0.2 10.77.0.1 in 2
pol "$B" 10.77.0.2 10.77.0.1 out 2; pol "$B" 10.77.0.1 10.77.0.2 in 1
nostates() { ip netns exec "$B" awk '$1=="XfrmInNoStates"{print $2}' /proc/net/xfrm_stat; }
esp_in() { ip -n "$B" -s xfrm state get src 10.77.0.1 dst 10.77.0.2 proto esp spi 0x7701 |
           awk '/lifetime current:/{getline; sub(/[(].*/, "", $1); print $1; exit}'; }
set +e
ip netns exec "$A" ping -c 3 -i 0.2 -W 2 10.77.0.2 >/dev/null; echo "PING_BEFORE=$?"
echo "ESP_IN_BYTES=$(esp_in)"
echo "NOSTATES_BEFORE=$(nostates)"
ip -n "$B" xfrm state delete src 10.77.0.1 dst 10.77.0.2 proto esp spi 0x7701; echo "DELETE=$?"
ip netns exec "$A" ping -c 3 -i 0.2 -W 1 10.77.0.2 >/dev/null; echo "PING_AFTER=$?"
echo "NOSTATES_AFTER=$(nostates)"
