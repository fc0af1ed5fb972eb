"""`memsvc.stores.gaps`, the ids a session does not store, against the obvious model: the set of stored ids."""

import itertools

import hypothesis
from hypothesis import strategies as st

from memsvc.stores import gaps

Step = tuple[str, int]
steps = st.lists(
    st.one_of(
        st.integers(1, 5).map(lambda n: ('append', n)),
        st.integers(0, 30).map(lambda n: ('delete', n)),  # the nth stored id, if there is one
        st.integers(0, 40).map(lambda n: ('truncate', n)),
        st.integers(0, 30).map(lambda n: ('trim', n)),  # drop the n oldest, if there are that many
    ),
    max_size=25,
)


@hypothesis.given(steps=steps)
@hypothesis.settings(max_examples=400, deadline=None)
def test_gaps_track_the_stored_ids(steps: list[Step]) -> None:
    stored: list[int] = []
    first, next_id = 1, 1
    held: gaps.Gaps = ()
    for kind, n in steps:
        if kind == 'append':
            stored += range(next_id, next_id + n)
            next_id += n
        elif kind == 'delete' and n < len(stored):
            first, held = gaps.deleted(held, first, stored.pop(n))
        elif kind == 'truncate':
            first, held = gaps.truncated(held, first, next_id, n)
            stored = [m for m in stored if m <= n]
        elif kind == 'trim' and 0 < n < len(stored):
            del stored[:n]
            first, held = stored[0], gaps.trimmed(held, stored[0])
        if not stored:
            assert (first, held) == (next_id, ()), 'an empty session: first is next_id, no gaps'
        assert gaps.parse(gaps.format(held)) == held
        assert all(first < start < end <= next_id for start, end in held), 'strictly inside, never the first'
        assert all(a[1] < b[0] for a, b in itertools.pairwise(held)), 'sorted, disjoint and merged'
        assert next_id - first - gaps.missing(held) == len(stored)
        assert list(gaps.stored_ids(held, first, next_id)) == stored
        for position, message_id in enumerate(stored):
            assert gaps.id_at(held, first, position) == message_id
        for x in range(next_id + 2):
            assert gaps.holds(held, first, next_id, x) == (x in stored)
            assert gaps.stored_below(held, first, next_id, x) == len([m for m in stored if m < x])
