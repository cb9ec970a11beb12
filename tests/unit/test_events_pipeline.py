"""apublish's pipeline without a broker: batches, one answer per event, cancellation, errors."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import pytest

from events import Event, PublishRejected, PublishTimeout, Unroutable
from events.pipeline import ConfirmPipeline
from events.publishing import encode
from kitty_tasks.core.publisher import OutgoingMessage, PublishResult


def _event(event_type: str, n: int) -> Event:
    return Event(event_type=event_type, data={"n": n}, source="probe")


class StubPool:
    """A PublisherPool that nacks or returns the event types it is told to, and records batches."""

    def __init__(self, *, nack: str = "", lost: str = "", error: Exception | None = None) -> None:
        self.nack, self.lost, self.error = nack, lost, error
        self.batches: list[list[str]] = []
        self.counted: list[tuple[list[str], set[str]]] = []
        self.gate, self.entered = threading.Event(), threading.Event()
        self.gate.set()

    def publish(
        self, messages: Sequence[OutgoingMessage], *, allow_unroutable: bool, timeout: float,
        check: bool,
    ) -> PublishResult:  # fmt: skip
        assert (allow_unroutable, check) == (True, False)
        self.entered.set()
        assert self.gate.wait(10)
        self.batches.append([m.message_id for m in messages])
        if self.error is not None:
            raise self.error
        return PublishResult(
            confirmed=[m.message_id for m in messages if m.routing_key != self.nack],
            nacked=[m.message_id for m in messages if m.routing_key == self.nack],
            returned=[m.message_id for m in messages if m.routing_key == self.lost],
        )

    def rejected(self, event_type: str) -> PublishRejected:
        return PublishRejected(f"broker refused event(s) {event_type!r}", queue="tiny")

    def count(self, events: Sequence[Event], returned: set[str]) -> None:
        self.counted.append(([e.event_id for e in events], returned))


def _submit(
    pipeline: ConfirmPipeline, event: Event, *, allow_unroutable: bool = False
) -> Future[Event]:
    return pipeline.submit(event, encode(event, {}, max_bytes=10_000), allow_unroutable)


def _pipeline(pool: StubPool, lost: list[int] | None = None) -> ConfirmPipeline:
    lost = [] if lost is None else lost
    return ConfirmPipeline(lambda: pool, timeout=5, on_unroutable=lost.append)  # type: ignore[arg-type,return-value]


def test_events_queued_meanwhile_go_out_as_one_batch_each_with_its_own_answer() -> None:
    pool, lost = StubPool(nack="probe.full", lost="probe.lost"), list[int]()
    pipeline = _pipeline(pool, lost)
    # Given a batch in flight, held before its confirm
    pool.gate.clear()
    first = _submit(pipeline, _event("probe.ok", 0))
    assert pool.entered.wait(10)
    # When more events queue up meanwhile, some refused and some unroutable
    later = [
        _submit(pipeline, _event("probe.ok", 1)),
        _submit(pipeline, _event("probe.full", 2)),
        _submit(pipeline, _event("probe.lost", 3)),
        _submit(pipeline, _event("probe.lost", 4), allow_unroutable=True),
    ]
    pool.gate.set()
    # Then they went out as one second batch, and each got its own outcome
    assert first.result(5).data == {"n": 0}
    assert later[0].result(5).data == {"n": 1}
    with pytest.raises(PublishRejected, match=r"'probe\.full'") as refused:
        later[1].result(5)
    assert refused.value.queue == "tiny"
    with pytest.raises(Unroutable, match="1 message"):
        later[2].result(5)
    assert later[3].result(5).data == {"n": 4}
    assert [len(batch) for batch in pool.batches] == [1, 4]
    assert lost == [1]
    pipeline.close()


def test_an_event_cancelled_before_its_batch_is_not_sent() -> None:
    pool = StubPool()
    pipeline = _pipeline(pool)
    pool.gate.clear()
    sending = _submit(pipeline, _event("probe.ok", 0))
    assert pool.entered.wait(10)
    unsent = _event("probe.ok", 1)
    dropped = _submit(pipeline, unsent)
    assert dropped.cancel()
    pool.gate.set()
    sending.result(5)
    pipeline.close()
    kept = _submit(pipeline, _event("probe.ok", 2))  # a new thread after close
    kept.result(5)
    sent = [event_id for batch in pool.batches for event_id in batch]
    assert unsent.event_id not in sent
    assert len(sent) == 2
    pipeline.close()


def test_a_batch_that_fails_fails_every_event_in_it() -> None:
    pool = StubPool(error=PublishTimeout("broker confirmed 0 of 2 message(s) within 5s"))
    pipeline = _pipeline(pool)
    pool.gate.clear()
    futures = [_submit(pipeline, _event("probe.ok", n)) for n in range(2)]
    pool.gate.set()
    for future in futures:
        with pytest.raises(PublishTimeout, match="confirmed 0 of 2"):
            future.result(5)
    pipeline.close()


def test_the_callers_answer_never_waits_on_a_broken_stub() -> None:
    def broken() -> Any:
        raise RuntimeError("no pool")

    pipeline = ConfirmPipeline(broken, timeout=5, on_unroutable=lambda n: None)
    with pytest.raises(RuntimeError, match="no pool"):
        _submit(pipeline, _event("probe.ok", 0)).result(5)
    pipeline.close()
