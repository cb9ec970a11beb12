"""TaskQueue.start_worker's prefetch_count and concurrency mean what they say."""

from __future__ import annotations

import pytest

from kitty_tasks.runtime.taskqueue import worker_shape


@pytest.mark.parametrize(
    ("prefetch_count", "concurrency", "shape"),
    [
        (None, None, (1, 1)),  # one thread, one task reserved
        (2, None, (2, 1)),  # the guide's start_worker(prefetch_count=2): 2 at once, none waiting
        (None, 4, (4, 1)),
        (8, 4, (4, 2)),  # 4 threads, 8 reserved from the broker
    ],
)
def test_shape(prefetch_count: int | None, concurrency: int | None, shape: tuple[int, int]) -> None:
    assert worker_shape(prefetch_count, concurrency) == shape


@pytest.mark.parametrize(
    ("prefetch_count", "concurrency", "words"),
    [(0, None, "prefetch_count must be"), (None, -1, "concurrency must be"), (6, 4, "multiple")],
)
def test_impossible_shapes_say_why(
    prefetch_count: int | None, concurrency: int | None, words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        worker_shape(prefetch_count, concurrency)
