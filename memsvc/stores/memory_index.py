"""The metadata index of the in-memory store (`memory.py`): for each (key, value) entry (`stores.index`), the listing
places of the sessions holding it, in one sorted list per entry, sorted with the listing (a session's place is the
same in the listing and in each of its entries' lists, `memory_tenant.Session.listed`)."""

from collections.abc import Iterator, Sequence

from sortedcontainers import SortedList

from memsvc.stores.base import ListCursor
from memsvc.stores.index import Entry, Where


class ValueIndex:
    __slots__ = ('lists',)

    def __init__(self) -> None:
        self.lists: dict[Entry, SortedList[ListCursor]] = {}

    def add(self, place: ListCursor, entries: Sequence[Entry]) -> None:
        for entry in entries:
            places = self.lists.get(entry)
            if places is None:
                places = self.lists[entry] = SortedList()
            places.add(place)

    def remove(self, place: ListCursor, entries: Sequence[Entry]) -> None:
        for entry in entries:
            places = self.lists[entry]
            places.remove(place)
            if not places:
                del self.lists[entry]

    def move(self, old: ListCursor, new: ListCursor, entries: Sequence[Entry]) -> None:
        for entry in entries:
            places = self.lists[entry]
            places.remove(old)
            places.add(new)

    def change(self, place: ListCursor, old: Where, new: Where) -> None:
        """The session at `place` leaves the entries `old` and holds `new` instead."""
        self.remove(place, [entry for entry in old if entry not in new])
        self.add(place, [entry for entry in new if entry not in old])

    def walk(self, where: Where, after: ListCursor | None) -> Iterator[str]:
        """The ids of the sessions that may hold every entry of `where`, newest first, after the position `after`: the
        shortest of its entries' lists, from its end (the caller checks the other entries)."""
        lists = [self.lists.get(entry) for entry in where]
        if not all(lists):
            return
        shortest = min((places for places in lists if places is not None), key=len)
        end = len(shortest) if after is None else shortest.bisect_left(after)
        for n in range(end - 1, -1, -1):
            yield shortest[n][1]
