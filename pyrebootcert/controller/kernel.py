"""The real classifier edge: one :class:`~pyrebootcert.xdp.loader.Classifier` per interface
behind :class:`~.ports.ClassifierPort`, and the interfaces' addresses.

The daemon pins nothing: everything ``rebootcert status`` shows comes from the status file
the daemon writes, so it runs unchanged inside ``ip netns exec`` where ``/sys/fs/bpf`` is
not mounted. Attaching replaces a stale program of ours (a daemon killed with SIGKILL
leaves its program attached) and refuses to touch anyone else's.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable, Mapping, Sequence

from ..cert import IPAddress
from ..config import KernelSad
from ..errors import KernelError
from ..xdp import abi
from ..xdp.loader import Classifier, ClassifierConfig, Mode
from .ports import SaKey

log = logging.getLogger(__name__)


class XdpClassifiers:
    """The classifier attached to each of ``interfaces``; map writes go to all of them."""

    def __init__(
        self,
        interfaces: Sequence[str],
        mode: Mode,
        config: ClassifierConfig,
        kernel_sad: KernelSad = "auto",
    ) -> None:
        self._clfs: list[Classifier] = []
        try:
            for ifname in interfaces:
                log.debug("compiling and loading the classifier for %s", ifname)
                clf = Classifier(ifname, mode=mode, config=config, kernel_sad=kernel_sad)
                self._clfs.append(clf)
                log.info(
                    "classifier attached to %s (%s%s)",
                    ifname,
                    clf.attached_mode,
                    ", kernel SAD on a miss" if clf.kernel_sad else "",
                )
        except BaseException:
            self.close()
            raise

    def set_config(self, config: ClassifierConfig) -> None:
        for c in self._clfs:
            c.set_config(config)

    def sync_sas(self, wanted: set[SaKey]) -> None:
        for c in self._clfs:
            c.sync_sas(wanted)

    def add_sa(self, daddr: IPAddress, spi: int) -> None:
        for c in self._clfs:
            c.add_sa(daddr, spi)

    def remove_sa(self, daddr: IPAddress, spi: int) -> None:
        for c in self._clfs:
            c.remove_sa(daddr, spi)

    def sync_local_addresses(self, addresses: Iterable[IPAddress]) -> None:
        want = list(addresses)
        for c in self._clfs:
            c.maps.sync_local_addresses(want)

    def sync_peer_boots(self, boots: Mapping[IPAddress, int]) -> None:
        for c in self._clfs:
            have = c.maps.peer_boots()
            for addr in set(have) - set(boots):
                c.maps.remove_peer(addr)
            for addr, boot in boots.items():
                if have.get(addr) != boot:
                    c.maps.set_peer_boot(addr, boot)

    def set_peer_boot(self, addr: IPAddress, boot: int) -> None:
        for c in self._clfs:
            c.set_peer_boot(addr, boot)

    def events_fds(self) -> Sequence[int]:
        return [c.events_fd() for c in self._clfs]

    def poll_events(self) -> list[abi.Event]:
        out: list[abi.Event] = []
        for c in self._clfs:
            out.extend(c.drain_events())
        return out

    def stats(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for c in self._clfs:
            for name, n in c.stats().items():
                total[name] = total.get(name, 0) + n
        return total

    def interfaces(self) -> list[dict[str, object]]:
        return [
            {"name": c.ifname, "ifindex": c.ifindex, "mode": c.attached_mode} for c in self._clfs
        ]

    def detach(self) -> None:
        for c in self._clfs:
            c.detach()

    def close(self) -> None:
        for c in self._clfs:
            c.close()
        self._clfs = []


def interface_addresses(names: Iterable[str]) -> set[IPAddress]:
    """The addresses on the named interfaces (IPv6 link-local ones left out: the maps have
    no scope). KernelError if an interface does not exist."""
    from pyroute2 import IPRoute

    out: set[IPAddress] = set()
    names = list(names)
    if not names:
        return out
    with IPRoute() as ipr:
        for name in names:
            try:
                index = socket.if_nametoindex(name)
            except OSError as e:
                raise KernelError(f"interface {name} does not exist") from e
            for msg in ipr.get_addr(index=index):
                text = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
                if not text:
                    continue
                addr = ipaddress.ip_address(text)
                if addr.version == 6 and addr.is_link_local:
                    continue
                out.add(addr)
    return out
