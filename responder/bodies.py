"""Webhook bodies already validated, kept by their exact text for the copies that repeat them."""

from __future__ import annotations

import sys
from collections import OrderedDict

from responder.payload import Notification

MAX_ENTRIES = 512
MAX_BODY_CHARS = 64 * 1024
MAX_TOTAL_BYTES = 12 * 1024 * 1024
NOTE_BYTES_PER_CHAR = 11
"""What a validated notification holds per character of its body, measured with tracemalloc
(~10.3 bytes for 60 KiB bodies of many alerts, ASCII or not)."""


class ValidatedBodies:
    """A bounded, least-recently-used map from a body's whole text to its validated notification.

    Alertmanager sends a group's notification again every group_interval while the group changes
    and every repeat_interval while it does not, and an unchanged group gives the same bytes each
    time (firing alerts carry endsAt 0001-01-01T00:00:00Z; labels and alerts come sorted). Most
    bodies are thus ones validated before. A body's notification is kept from its second copy
    on, and served from the third. The key is the whole text, so a hit is that body character
    for character: nothing is taken from here that was not validated as it is. Notifications are
    frozen, so requests can share one.

    Bounded in entries and in bytes (the texts' own size, and an estimate of each kept
    notification's; a body over MAX_BODY_CHARS is never kept), so a flood of distinct bodies
    costs at most about MAX_TOTAL_BYTES and an eviction per request.
    """

    def __init__(self, max_entries: int = MAX_ENTRIES, max_body_chars: int = MAX_BODY_CHARS,
                 max_total_bytes: int = MAX_TOTAL_BYTES) -> None:
        # None: the text was seen and validated once, and only the text is kept.
        self._notes: OrderedDict[str, Notification | None] = OrderedDict()
        self._max_entries = max_entries
        self._max_body = max_body_chars
        self._max_total = max_total_bytes
        self._total = 0

    @staticmethod
    def entry_bytes(text: str, with_note: bool) -> int:
        """What an entry is counted for: its text (4 bytes a character for some texts), plus
        its notification's estimate once one is kept."""
        return sys.getsizeof(text) + (NOTE_BYTES_PER_CHAR * len(text) if with_note else 0)

    def __len__(self) -> int:
        """How many notifications are kept (texts seen once are not counted)."""
        return sum(1 for note in self._notes.values() if note is not None)

    def get(self, text: str) -> Notification | None:
        """The notification validated from exactly this text, if it is still kept."""
        note = self._notes.get(text)
        if note is not None:
            self._notes.move_to_end(text)
        return note

    def add(self, text: str, note: Notification) -> None:
        """Note a notification validated from this text: the first time only the text is kept,
        from the second copy on the notification too; the least recent ones are forgotten."""
        if len(text) > self._max_body:
            return
        if text not in self._notes:
            # A body seen once (the first notification of most occurrences) keeps no objects:
            # notifications that never come again must not pile up for the garbage collector's
            # full collections to walk (they made those more frequent at 500 new alerts/s).
            self._notes[text] = None
            self._total += self.entry_bytes(text, with_note=False)
        elif self._notes[text] is None:
            # Computed once here, so requests sharing the note only ever read it.
            note.occurrences  # noqa: B018 - fills the cached property
            self._notes[text] = note
            self._notes.move_to_end(text)
            self._total += self.entry_bytes(text, True) - self.entry_bytes(text, False)
        while len(self._notes) > self._max_entries or self._total > self._max_total:
            old, old_note = self._notes.popitem(last=False)
            self._total -= self.entry_bytes(old, old_note is not None)
