"""Occurrences this process has already seen recorded, to route their resends."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

KNOWN_MAX = 65_536


class KnownOccurrences:
    """A bounded, most-recently-seen set of occurrence ids.

    Only a hint for performance: a notification about known occurrences alone is most likely a
    resend, which decides nothing and needs no grouped commit. A wrong guess either way runs the
    same intake transaction, so it never changes what is decided.
    """

    def __init__(self, size: int = KNOWN_MAX) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def all_known(self, ids: Iterable[str]) -> bool:
        """Whether every one of these occurrences was seen recorded."""
        return all(i in self._ids for i in ids)

    def add(self, ids: Iterable[str]) -> None:
        """Remember occurrences that are now recorded, forgetting the least recent."""
        for oid in ids:
            self._ids[oid] = None
            self._ids.move_to_end(oid)
        while len(self._ids) > self._size:
            self._ids.popitem(last=False)
