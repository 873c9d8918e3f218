"""Splitting a sequence into runs bounded by count and weight."""

from __future__ import annotations

from helpdeskd.runs import split_runs


def test_runs_keep_order_and_both_limits_with_at_least_one_item_each() -> None:
    items = [1, 2, 3, 4, 5, 6, 7]
    weights = [10, 30, 70, 5, 5, 200, 1]
    assert list(split_runs(items, weights, 50, 10)) == [[1, 2], [3], [4, 5], [6], [7]]
    assert list(split_runs(items, weights, 1000, 3)) == [[1, 2, 3], [4, 5, 6], [7]]
    assert list(split_runs([], [], 50, 10)) == []
