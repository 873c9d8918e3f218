"""The cyclic garbage collector in a long-running process: what start-up made stays out of it.

A daemon holds some 185,000 objects from its start (modules, the ORM's mappers, compiled
templates and statements) that live as long as it does. CPython's full collections walk all of
them each time: measured on the ingest benchmark, six full collections took half a second of a
five-second burst of mail, a tenth of the daemon's time. :func:`settle` collects once and then
freezes what is left (``gc.freeze``), so that later collections walk only what came after; and
it lets the youngest generation grow larger before it is collected, as a process that parses
and writes mail in batches allocates in bursts.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000  # allocations between collections of the youngest generation (700)


def settle() -> int:
    """Collect, then leave every object alive now out of later collections; return their count.

    Call it when start-up is done, and again after a reload: objects frozen before are put back
    in first, so that what the reload made unreachable (the old templates) is collected.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
    return gc.get_freeze_count()
