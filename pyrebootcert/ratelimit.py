"""Token buckets as values: pure, immutable, clock passed in.

A :class:`TokenBucket` holds up to ``burst`` tokens and gains ``rate_per_s``
tokens per second of elapsed time. Taking ``n`` tokens succeeds when at least
``n`` are present. Over any interval of ``T`` seconds a bucket that starts full
therefore admits at most ``burst + rate_per_s * T`` tokens' worth of takes.

Nothing here reads a clock or mutates state: every operation takes ``now_ns``
(nanoseconds, any clock that normally moves forward) and returns a new value.
If the clock goes backwards, no tokens are added and ``last_ns`` stays where it
was, so a clock step can never refill a bucket early; a forward step can at most
fill it to ``burst``.

A :class:`Limiter` is the verification limiter used by :mod:`pyrebootcert.policy`:
one bucket per peer (keyed by a string, normally the peer's configured name)
and one global bucket, consulted in that order. A take refused by the per-peer
bucket consumes nothing from the global bucket. The number of per-peer buckets
is bounded (``max_peers``): when a new peer arrives and
the table is full, buckets that are full at ``now_ns`` are dropped first (a
full bucket is indistinguishable from a fresh one, so this loses nothing), then
the least recently used one. Evicting a non-full bucket can let that peer start
again with a full burst; the global bucket still bounds the total.

A :class:`SourceLimiter` applies the same rule to keys an attacker chooses (the sources
the responder answers): it is updated in place and costs O(1) per take, where a
:class:`Limiter` copies its table on every take and scans it when full.

The XDP program has its own integer-arithmetic buckets (docs/classifier.md);
these float buckets are for user space only.
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

NS_PER_S = 1_000_000_000
DEFAULT_MAX_PEERS = 4096


def _check_rate(rate_per_s: float, burst: float) -> None:
    if not (math.isfinite(rate_per_s) and rate_per_s >= 0):
        raise ValueError(f"rate_per_s must be finite and >= 0, got {rate_per_s!r}")
    if not (math.isfinite(burst) and burst >= 0):
        raise ValueError(f"burst must be finite and >= 0, got {burst!r}")


@dataclass(frozen=True)
class TokenBucket:
    """A token bucket at instant ``last_ns`` holding ``tokens`` (0 <= tokens <= burst)."""

    rate_per_s: float
    burst: float
    tokens: float
    last_ns: int

    def __post_init__(self) -> None:
        _check_rate(self.rate_per_s, self.burst)
        if not (math.isfinite(self.tokens) and 0 <= self.tokens <= self.burst):
            raise ValueError(f"tokens must be in 0..burst, got {self.tokens!r}")

    @classmethod
    def full(cls, rate_per_s: float, burst: float, now_ns: int) -> TokenBucket:
        """A bucket holding ``burst`` tokens at ``now_ns``."""
        return cls(rate_per_s, burst, float(burst), now_ns)

    def refilled(self, now_ns: int) -> TokenBucket:
        """The bucket as it stands at ``now_ns`` (unchanged if the clock went backwards)."""
        if now_ns <= self.last_ns:
            return self
        gained = (now_ns - self.last_ns) * self.rate_per_s / NS_PER_S
        return replace(self, tokens=min(self.burst, self.tokens + gained), last_ns=now_ns)

    def is_full(self, now_ns: int) -> bool:
        """True when the bucket holds ``burst`` tokens at ``now_ns``."""
        return self.refilled(now_ns).tokens >= self.burst

    def take(self, now_ns: int, n: float = 1) -> tuple[bool, TokenBucket]:
        """Try to take ``n`` tokens at ``now_ns``.

        Returns ``(allowed, bucket)``; the returned bucket is refilled to
        ``now_ns`` and, if allowed, holds ``n`` fewer tokens. ``self`` is unchanged.
        """
        if not (math.isfinite(n) and n >= 0):
            raise ValueError(f"n must be finite and >= 0, got {n!r}")
        current = self.refilled(now_ns)
        if current.tokens < n:
            return False, current
        return True, replace(current, tokens=max(0.0, current.tokens - n))


def new_key_bucket(
    rate_per_s: float, burst: float, now_ns: int, global_bucket: TokenBucket
) -> TokenBucket:
    """The full bucket a key gets on its first take.

    It starts no earlier than the latest instant the global bucket has seen, so a clock that
    went backwards cannot date it into the past and let it accrue tokens for time that had
    already been accounted for.
    """
    return TokenBucket.full(rate_per_s, burst, max(now_ns, global_bucket.last_ns))


class LimitResult(enum.Enum):
    """Outcome of :meth:`Limiter.take`."""

    ALLOWED = "allowed"
    PEER_LIMITED = "peer_limited"  # the per-peer bucket is empty
    GLOBAL_LIMITED = "global_limited"  # the per-peer bucket had a token, the global one not

    @property
    def allowed(self) -> bool:
        return self is LimitResult.ALLOWED


@dataclass(frozen=True)
class Limiter:
    """Per-peer buckets plus one global bucket; see the module docstring."""

    per_peer_rate_per_s: float
    per_peer_burst: float
    global_bucket: TokenBucket
    peers: Mapping[str, TokenBucket] = field(hash=False)
    max_peers: int = DEFAULT_MAX_PEERS

    def __post_init__(self) -> None:
        _check_rate(self.per_peer_rate_per_s, self.per_peer_burst)
        if self.max_peers < 1:
            raise ValueError(f"max_peers must be >= 1, got {self.max_peers}")
        if len(self.peers) > self.max_peers:
            raise ValueError(f"{len(self.peers)} buckets exceed max_peers={self.max_peers}")
        # Freeze the table so that no caller can change a value they were handed.
        if not isinstance(self.peers, MappingProxyType):
            object.__setattr__(self, "peers", MappingProxyType(dict(self.peers)))

    @classmethod
    def create(
        cls,
        *,
        per_peer_rate_per_s: float,
        per_peer_burst: float,
        global_rate_per_s: float,
        global_burst: float,
        now_ns: int,
        max_peers: int = DEFAULT_MAX_PEERS,
    ) -> Limiter:
        """A limiter with a full global bucket and no per-peer buckets yet."""
        return cls(
            per_peer_rate_per_s=per_peer_rate_per_s,
            per_peer_burst=per_peer_burst,
            global_bucket=TokenBucket.full(global_rate_per_s, global_burst, now_ns),
            peers=MappingProxyType({}),
            max_peers=max_peers,
        )

    def bucket_for(self, peer: str, now_ns: int) -> TokenBucket:
        """The bucket ``peer`` would use at ``now_ns`` (:func:`new_key_bucket` if it has none)."""
        found = self.peers.get(peer)
        if found is None:
            return new_key_bucket(
                self.per_peer_rate_per_s, self.per_peer_burst, now_ns, self.global_bucket
            )
        return found

    def _table_with(self, peer: str, bucket: TokenBucket, now_ns: int) -> dict[str, TokenBucket]:
        table = dict(self.peers)
        if peer not in table and len(table) >= self.max_peers:
            # Lossless first: a full bucket is the same as a fresh one.
            table = {k: b for k, b in table.items() if not b.is_full(now_ns)}
            while len(table) >= self.max_peers:
                oldest = min(table, key=lambda k: (table[k].last_ns, k))
                del table[oldest]
        table[peer] = bucket
        return table

    def take(self, peer: str, now_ns: int) -> tuple[LimitResult, Limiter]:
        """Take one token from ``peer``'s bucket, then one from the global bucket.

        A refusal by the per-peer bucket leaves the global bucket untouched; a
        refusal by the global bucket still spends the per-peer token (as in the
        XDP program: buckets are consulted in order).
        """
        ok, bucket = self.bucket_for(peer, now_ns).take(now_ns)
        table = self._table_with(peer, bucket, now_ns)
        if not ok:
            return LimitResult.PEER_LIMITED, replace(self, peers=MappingProxyType(table))
        ok, global_bucket = self.global_bucket.take(now_ns)
        result = LimitResult.ALLOWED if ok else LimitResult.GLOBAL_LIMITED
        return result, replace(self, global_bucket=global_bucket, peers=MappingProxyType(table))


class SourceLimiter:
    """:class:`Limiter`'s rule for keys that arrive at line rate and may be spoofed.

    The same buckets, consulted in the same order (per key, then global; a per-key refusal
    spends no global token), and a new key's bucket dated no earlier than the global
    bucket's latest instant. What differs: it is updated in place, and a full table evicts
    its least recently used key at once (an ordered dict), without first looking for full
    buckets as :class:`Limiter` does. That scan, and :class:`Limiter`'s copy of its table on
    every take, cost O(``max_keys``) per event when every event brings a new spoofed source.
    Evicting a non-full bucket can let that source start again with a full burst; the
    global bucket still bounds the total.
    """

    def __init__(
        self,
        *,
        per_key_rate_per_s: float,
        per_key_burst: float,
        global_rate_per_s: float,
        global_burst: float,
        now_ns: int,
        max_keys: int = DEFAULT_MAX_PEERS,
    ) -> None:
        _check_rate(per_key_rate_per_s, per_key_burst)
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        self.per_key_rate_per_s = per_key_rate_per_s
        self.per_key_burst = per_key_burst
        self.max_keys = max_keys
        self.global_bucket = TokenBucket.full(global_rate_per_s, global_burst, now_ns)
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def bucket(self, key: str) -> TokenBucket | None:
        """The bucket ``key`` holds now (as of its last take), or None."""
        return self._buckets.get(key)

    def take(self, key: str, now_ns: int) -> LimitResult:
        """Take one token from ``key``'s bucket, then one from the global bucket."""
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = new_key_bucket(
                self.per_key_rate_per_s, self.per_key_burst, now_ns, self.global_bucket
            )
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)  # the least recently used key
        ok, bucket = bucket.take(now_ns)
        self._buckets[key] = bucket  # now the most recently used
        if not ok:
            return LimitResult.PEER_LIMITED
        ok, self.global_bucket = self.global_bucket.take(now_ns)
        return LimitResult.ALLOWED if ok else LimitResult.GLOBAL_LIMITED
