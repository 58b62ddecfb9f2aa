"""Workers that do not die silently (issue #12, item 3)."""

from __future__ import annotations

import gc
import weakref

import gevent
import pytest

from wxmgw.supervise import RECONNECTING, RUNNING, Backoff, Worker, failed, worst


def test_backoff_doubles_to_the_cap_and_resets() -> None:
    backoff = Backoff(0.5, 8.0)
    assert [backoff.next() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    backoff.reset()
    assert backoff.next() == 0.5


def test_a_crash_is_reported_and_the_target_runs_again() -> None:
    runs: list[int] = []
    reports: list[tuple[str, float]] = []
    states: list[str] = []

    def target() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise RecursionError(f"run {len(runs)}")

    worker: Worker

    def on_crash(error: BaseException, retry_in: float) -> None:
        reports.append((str(error), retry_in))
        states.append(worker.state)

    worker = Worker(target, on_crash, Backoff(0.001, 0.004))
    assert worker.join(5)
    assert runs == [0, 1, 2]
    assert reports == [("run 1", 0.001), ("run 2", 0.002)]
    assert states == [failed("RecursionError: run 1"), failed("RecursionError: run 2")]
    assert worker.state == RUNNING


def test_kill_is_not_a_crash() -> None:
    reports: list[BaseException] = []
    worker = Worker(lambda: gevent.sleep(60), lambda e, _: reports.append(e))
    gevent.sleep(0)
    worker.kill()
    assert not worker.dead  # it ends at the hub's next turn: kill does not wait
    assert worker.join(5) and not reports



def test_a_killed_worker_is_freed_without_the_cyclic_collector() -> None:
    """Its greenlet keeps no GreenletExit whose traceback would hold the worker in a cycle."""
    gc.collect()
    gc.disable()
    try:
        worker = Worker(lambda: gevent.sleep(60), lambda e, _: None)
        gevent.sleep(0)
        worker.kill()
        assert worker.join(5)
        freed = weakref.ref(worker)
        del worker
        assert freed() is None
    finally:
        gc.enable()


@pytest.mark.parametrize(("parts", "whole"), [
    ([], RUNNING),
    ([RUNNING, RUNNING], RUNNING),
    ([RUNNING, RECONNECTING], RECONNECTING),
    ([RECONNECTING, failed("KeyError: 'x'"), RUNNING], failed("KeyError: 'x'")),
])
def test_worst_state_wins(parts: list[str], whole: str) -> None:
    assert worst(parts) == whole
