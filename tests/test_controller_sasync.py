"""The classifier's SA view follows the kernel: initial dump, events, resync."""

from __future__ import annotations

from controller_fakes import LOCAL4, LOCAL6, PEER4, PEER6, FakeClassifier, FakeXfrm, ip, sa

from pyrebootcert.controller.sasync import SaSync, outbound_sas, wanted_keys
from pyrebootcert.xfrm import Resync, SaEvent, SaExpired, SaFlushed

LOCAL = {LOCAL4, LOCAL6}


def test_wanted_keys_are_inbound_esp_to_local_addresses() -> None:
    sas = [
        sa(PEER4, LOCAL4, 0x100),  # inbound
        sa(PEER6, LOCAL6, 0x200, encap=True),  # inbound, v6
        sa(LOCAL4, PEER4, 0x300),  # outbound
        sa(PEER4, LOCAL4, 0x400, proto=51),  # AH
        sa(PEER4, ip("192.0.2.99"), 0x500),  # to an address that is not ours
        sa(PEER4, LOCAL4, 0),  # larval without an SPI yet
    ]
    assert wanted_keys(sas, LOCAL) == {(LOCAL4, 0x100), (LOCAL6, 0x200)}


def test_outbound_sas_for_the_policy() -> None:
    sas = [
        sa(LOCAL4, PEER4, 0x300, created_s=1_700_000_000, encap=True),
        sa(PEER4, LOCAL4, 0x100),
        sa(LOCAL6, PEER6, 0x600),
    ]
    [out] = outbound_sas(sas, PEER4, LOCAL)
    assert (out.peer, out.spi, out.encap_udp) == (PEER4, 0x300, True)
    assert out.created_ns == 1_700_000_000 * 10**9


def test_initial_sync_sets_markers_and_entries() -> None:
    clf = FakeClassifier()
    xfrm = FakeXfrm([sa(PEER4, LOCAL4, 0x100), sa(LOCAL4, PEER4, 0x300)])
    view = SaSync(clf, xfrm, ())
    view.set_local_addresses(LOCAL)
    assert clf.markers == LOCAL
    assert clf.sas == {(LOCAL4, 0x100)}
    assert view.keys() == clf.sas


def test_events_add_and_remove_entries() -> None:
    clf = FakeClassifier()
    view = SaSync(clf, FakeXfrm(), ())
    view.set_local_addresses(LOCAL)
    a, b = sa(PEER4, LOCAL4, 0x100), sa(LOCAL4, PEER4, 0x300)
    assert view.apply([SaEvent("new", a), SaEvent("new", b)]) is False
    assert clf.sas == {(LOCAL4, 0x100)}
    view.apply([SaEvent("update", a)])  # larval SA completed: still one entry
    assert clf.sas == {(LOCAL4, 0x100)}
    view.apply([SaExpired(a, hard=False)])  # soft expiry: the SA is still there
    assert clf.sas == {(LOCAL4, 0x100)}
    view.apply([SaEvent("delete", a)])
    assert clf.sas == set()
    view.apply([SaEvent("new", a), SaExpired(a, hard=True)])  # hard expiry deletes
    assert clf.sas == set()


def test_deleting_one_of_two_sas_sharing_an_spi_keeps_the_entry() -> None:
    clf = FakeClassifier()
    view = SaSync(clf, FakeXfrm(), ())
    view.set_local_addresses(LOCAL)
    marked = sa(PEER4, LOCAL4, 0x100, mark=7)
    view.apply([SaEvent("new", sa(PEER4, LOCAL4, 0x100)), SaEvent("new", marked)])
    view.apply([SaEvent("delete", marked)])
    assert clf.sas == {(LOCAL4, 0x100)}


def test_resync_event_equals_a_full_dump() -> None:
    clf = FakeClassifier()
    xfrm = FakeXfrm([sa(PEER4, LOCAL4, 0x100)])
    view = SaSync(clf, xfrm, ())
    view.set_local_addresses(LOCAL)
    # the kernel changes while its events are lost
    xfrm.sas = [sa(PEER4, LOCAL4, 0x101), sa(PEER6, LOCAL6, 0x202), sa(LOCAL4, PEER4, 0x9)]
    dumps = xfrm.dumps
    assert view.apply([Resync("ENOBUFS"), SaEvent("new", sa(PEER4, LOCAL4, 0x999))]) is True
    assert xfrm.dumps == dumps + 1
    assert clf.sas == wanted_keys(xfrm.sas, LOCAL) == {(LOCAL4, 0x101), (LOCAL6, 0x202)}
    # and a flush is a reason to look again too
    xfrm.sas = []
    assert view.apply([SaFlushed(proto=0)]) is True
    assert clf.sas == set()


def test_new_local_address_makes_its_sas_inbound() -> None:
    clf = FakeClassifier()
    xfrm = FakeXfrm([sa(PEER4, LOCAL4, 0x100), sa(PEER6, LOCAL6, 0x200)])
    view = SaSync(clf, xfrm, ())
    view.set_local_addresses({LOCAL4})
    assert clf.sas == {(LOCAL4, 0x100)}
    view.set_local_addresses(LOCAL)
    assert clf.markers == LOCAL
    assert clf.sas == {(LOCAL4, 0x100), (LOCAL6, 0x200)}


def test_a_flush_read_late_dumps_instead_of_clearing() -> None:
    """FLUSHSA is an event like the others: by the time it is read, SAs may have been
    created after it (their NEWSA still queued behind it, or not broadcast at all, as
    ALLOCSPI's larval SAs are not). Clearing the view would make us answer those peers'
    ESP with Bad SPI; a dump keeps them."""
    clf = FakeClassifier()
    old = sa(PEER4, LOCAL4, 0x100)
    xfrm = FakeXfrm([old])
    view = SaSync(clf, xfrm, ())
    view.set_local_addresses(LOCAL)
    # flush, then a larval SA (ALLOCSPI: no event) and a new SA whose NEWSA is queued
    larval, fresh = sa(PEER6, LOCAL6, 0x200), sa(PEER4, LOCAL4, 0x300)
    xfrm.sas = [larval, fresh]
    assert view.apply([SaFlushed(proto=0), SaEvent("new", fresh)]) is True
    assert clf.sas == view.keys() == {(LOCAL6, 0x200), (LOCAL4, 0x300)}
    # a flush of another protocol (AH) leaves our ESP SAs in place
    assert view.apply([SaFlushed(proto=51)]) is True
    assert clf.sas == {(LOCAL6, 0x200), (LOCAL4, 0x300)}
    # later events still apply to the dumped view
    view.apply([SaEvent("delete", fresh)])
    assert clf.sas == view.keys() == {(LOCAL6, 0x200)}


def test_prepare_changes_nothing_until_installed() -> None:
    clf = FakeClassifier()
    xfrm = FakeXfrm([sa(PEER4, LOCAL4, 0x100), sa(PEER6, LOCAL6, 0x200)])
    view = SaSync(clf, xfrm, ())
    view.set_local_addresses({LOCAL4})
    before = (set(clf.markers), set(clf.sas), view.local_addresses, view.keys())
    staged = view.prepare(LOCAL)
    assert staged.keys() == {(LOCAL4, 0x100), (LOCAL6, 0x200)}
    assert (set(clf.markers), set(clf.sas), view.local_addresses, view.keys()) == before
    view.install(staged)
    assert clf.markers == LOCAL and clf.sas == view.keys() == staged.keys()
    view.install(view.view())  # installing the present view is a no-op
    assert clf.sas == staged.keys()


def test_marks_in_use_come_from_dumps_and_events() -> None:
    marked_out = sa(LOCAL4, PEER4, 0x500, mark=0x42, mark_mask=0xFFFFFFFF)
    xfrm = FakeXfrm([sa(PEER4, LOCAL4, 0x100), marked_out])
    sync = SaSync(FakeClassifier(), xfrm, [LOCAL4])
    assert sync.marks == frozenset()
    sync.full_sync()
    assert sync.marks == {(0x42, 0xFFFFFFFF)}  # outbound SAs count: the verifier looks them up
    sync.apply([SaEvent("new", sa(LOCAL4, PEER4, 0x600, mark=7, mark_mask=0xFF))])
    assert sync.marks == {(0x42, 0xFFFFFFFF), (7, 0xFF)}
    xfrm.sas = [sa(PEER4, LOCAL4, 0x100)]
    sync.full_sync()  # a dump forgets marks no SA carries any more
    assert sync.marks == frozenset()
    assert sync.view().marks == frozenset()
