"""Split a sequence into runs bounded by count and weight (FETCH batches, parse chunks)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def split_runs(
    items: Sequence[T], weights: Sequence[int], max_weight: int, max_count: int
) -> Iterator[list[T]]:
    """Split ITEMS, in order, into runs of at most MAX_COUNT items whose WEIGHTS (one per item)
    add up to at most MAX_WEIGHT; an item heavier than that makes a run of its own."""
    run: list[T] = []
    total = 0
    for item, weight in zip(items, weights, strict=True):
        if run and (len(run) >= max_count or total + weight > max_weight):
            yield run
            run, total = [], 0
        run.append(item)
        total += weight
    if run:
        yield run
