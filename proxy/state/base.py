"""The small protocols every state backend implements, so policies never know which one runs.

Each concept has a memory implementation (the embedded default) and a Redis one; one contract test
suite per concept runs against both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol


class KVStore(Protocol):
    """Bytes by key with a time to live (the exact caches).

    Reads and writes fail open (a miss, a skipped store) when the backend is down; `delete` and
    `purge` raise `StateBackendError` instead, so an admin never believes a purge that did not run.
    """

    async def get(self, key: str) -> bytes | None: ...

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    async def set(self, key: str, value: bytes, ttl: float) -> bool:
        """Store `value` for `ttl` seconds; False when it was not stored (too big, backend down)."""

    async def delete(self, key: str) -> bool: ...

    async def purge(self, match: str = "*") -> int:
        """Delete every key matching the glob `match` (`*`, `?`, `\\` escapes); returns how many."""

    async def lock(self, key: str, ttl: float) -> str | None:
        """Take a short exclusive lock; its owner token, or None when someone else holds it."""

    async def unlock(self, key: str, token: str) -> None: ...

    async def ready(self) -> bool: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Charge:
    """One counter a request must fit in: `cost` more of `limit` per `window` seconds.

    `window == 0` makes it a concurrency counter: `limit` in-flight leases, each costing 1 and
    held until released (or until its lease expires, when its holder died).
    """

    key: str
    limit: int
    cost: int
    window: float


@dataclass(frozen=True, slots=True)
class Admission:
    """The verdict on a set of charges, and each counter's state after it.

    `remaining[i]` and `reset[i]` describe charge i after this request (before it when refused);
    `reset` is the seconds until that counter is back at its full limit. `retry_after` is the
    seconds until the refused charge would fit, `inf` when it never can (cost above the limit),
    and for a concurrency counter only a hint (capacity frees when a holder finishes).
    """

    admitted: bool
    refused: int
    retry_after: float
    remaining: tuple[int, ...]
    reset: tuple[float, ...]


class WindowCounter(Protocol):
    """Atomic sliding-window and concurrency counters: all-or-nothing admission over many rules."""

    async def acquire(self, charges: Sequence[Charge], lease: str, now: float) -> Admission:
        """Charge every counter or none; concurrency counters take the lease id `lease`."""

    async def settle(self, charges: Sequence[Charge], deltas: Sequence[int], charged_at: float,
                     lease: str, now: float) -> None:
        """Correct window charges made at `charged_at` by `deltas`; release `lease` everywhere."""

    async def refresh(self, charges: Sequence[Charge], lease: str, now: float) -> None:
        """Extend the lease on the concurrency counters among `charges` (its holder is alive)."""

    async def aclose(self) -> None: ...


class Reservation(NamedTuple):
    """A hold on budget keys (integer nano-USD); `id` is None when refused or when nothing is held.

    When refused, `refused` is the index of the first key whose cap said no and `used` is that key's
    settled plus held spend.
    """

    id: str | None
    keys: tuple[str, ...]
    amount: int
    refused: int = -1
    used: int = 0


class BudgetLedger(Protocol):
    """Atomic spend reservations against caps, in integer nano-USD: reserve before, settle after.

    Holds lapse `hold` seconds after they were made, so a crashed process frees what it held.
    """

    async def reserve(self, keys: Sequence[str], caps: Sequence[int], amount: int,
                      hold: float, now: float) -> Reservation:
        """Hold `amount` on every key or none (a cap < 0 means uncapped)."""

    async def settle(self, reservation: Reservation, actual: int, charge: Sequence[str],
                     now: float) -> list[int]:
        """Release the hold; add `actual` to its keys, then to `charge`; new totals in that order."""

    async def totals(self, prefix: str) -> dict[str, tuple[int, int]]:
        """(settled, held) of every key starting with `prefix`."""

    async def reset(self, prefix: str, exact: bool = False) -> int:
        """Forget the settled spend and alert marks of keys starting with `prefix` (or equal to it,
        when `exact`); returns how many keys had spend."""

    async def claim_alert(self, key: str, threshold: float) -> bool:
        """True exactly once per key and threshold (until a reset), across processes."""

    async def aclose(self) -> None: ...


class VectorIndex(Protocol):
    """Nearest-neighbour search over normalised vectors, partitioned by scope."""

    async def add(self, scope: str, vector: Sequence[float], payload: bytes, ttl: float) -> str: ...

    async def search(self, scope: str, vector: Sequence[float],
                     k: int) -> list[tuple[str, float, bytes]]: ...

    async def purge(self, scope_prefix: str = "") -> int: ...
