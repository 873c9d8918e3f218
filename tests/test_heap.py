"""The garbage collector's settings for long-running processes (helpdeskd.heap)."""

from __future__ import annotations

import gc
import weakref

from helpdeskd import heap


class _Node:
    me: _Node | None = None


def test_settle_leaves_live_objects_out_until_the_next_settle_collects_them() -> None:
    threshold = gc.get_threshold()
    try:
        node = _Node()
        node.me = node  # a cycle: only the collector can free it
        gone = weakref.ref(node)
        frozen = heap.settle()
        assert frozen == gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == heap.YOUNG_THRESHOLD
        assert gc.get_threshold()[1:] == threshold[1:]

        del node
        gc.collect()
        assert gone() is not None  # frozen: full collections pass it by
        heap.settle()  # as after a reload: what was frozen is looked at again
        assert gone() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
