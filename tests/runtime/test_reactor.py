"""The reactor alone, on a plain asyncio loop: polling, sleeping in epoll, waking through an fd."""
import asyncio
import os
import threading
import time

import pytest

from shoal.runtime.reactor import Reactor


class EventPoller:
    """A poller whose work is 'items' and whose wake-up fd is an eventfd."""

    def __init__(self):
        self.items = 0
        self.done = 0
        self.efd = os.eventfd(0, os.EFD_NONBLOCK)
        self.armed = False

    def add(self, n=1):
        self.items += n
        os.eventfd_write(self.efd, 1)

    def poll(self):
        if not self.items:
            return False
        self.items -= 1
        self.done += 1
        return True

    def enter_interrupt_mode(self):
        self.armed = True
        return self.efd

    def exit_interrupt_mode(self):
        self.armed = False
        try:
            os.eventfd_read(self.efd)
        except BlockingIOError:
            pass


def run_with(reactor_kwargs, scenario):
    loop = asyncio.new_event_loop()
    poller = EventPoller()
    reactor = Reactor(loop, **reactor_kwargs)
    reactor.add_poller(poller)
    reactor.start()
    try:
        return loop.run_until_complete(scenario(reactor, poller)), reactor
    finally:
        reactor.close()
        loop.close()
        os.close(poller.efd)


async def until(predicate, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


def test_polls_work_away_then_sleeps_and_an_fd_wakes_it():
    async def scenario(reactor, poller):
        poller.items = 50
        await until(lambda: poller.done == 50)
        await until(lambda: reactor.sleeping)
        assert poller.armed
        sleeps = reactor.stats["sleeps"]
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, poller.add, 3)  # the eventfd fires while the loop sleeps in epoll
        await until(lambda: poller.done == 53)
        return sleeps

    sleeps, reactor = run_with({"idle_poll_time": 0.001}, scenario)
    assert sleeps >= 1 and reactor.stats["wakeups"] >= 1
    assert reactor.stats["polls_with_work"] >= 53


def test_poll_mode_never_sleeps():
    async def scenario(reactor, poller):
        await asyncio.sleep(0.05)
        return reactor.stats["sleeps"], reactor.stats["ticks"]

    (sleeps, ticks), _ = run_with({"idle_poll_time": 0.0, "poll_mode": True}, scenario)
    assert sleeps == 0 and ticks > 10


def test_a_failing_poller_stops_the_loop_with_its_error():
    class Broken(EventPoller):
        def poll(self):
            raise ZeroDivisionError("bug in a poller")

    loop = asyncio.new_event_loop()
    reactor = Reactor(loop)
    broken = Broken()
    reactor.add_poller(broken)
    reactor.start()
    try:
        try:
            loop.run_until_complete(asyncio.sleep(5))
        except RuntimeError:
            pass
        try:
            reactor.check_fatal()
        except ZeroDivisionError as exc:
            assert "bug in a poller" in str(exc)
        else:
            raise AssertionError("the poller's error was lost")
    finally:
        reactor.close()
        loop.close()
        os.close(broken.efd)


def test_the_stall_detector_logs_a_blocking_callback_once_and_stops_with_the_reactor(caplog):
    """The watchdog (its checks in C, `runtime/_watchdog_build.py`) reports a loop iteration
    held past the limit once, with the blocking frame, and not an idle reactor whose
    heartbeat keeps the tick fresh; closing the reactor ends its thread."""
    def block():
        time.sleep(1.6)  # three limits in one callback: one report, not three

    async def scenario(reactor, poller):
        await until(lambda: reactor.sleeping)
        await asyncio.sleep(1.1)  # asleep in epoll for two limits: the heartbeat ticks
        assert reactor.stats["stalls"] == 0
        asyncio.get_running_loop().call_soon(block)
        await asyncio.sleep(0)
        await until(lambda: reactor.stats["stalls"] >= 1)
        return reactor.stats["stalls"]

    with caplog.at_level("WARNING", logger="shoal.reactor"):
        stalls, reactor = run_with({"idle_poll_time": 0.001, "stall_limit": 0.5}, scenario)
    assert stalls == 1
    reports = [r.getMessage() for r in caplog.records if "reactor stalled" in r.getMessage()]
    assert len(reports) == 1 and "in block" in reports[0] and "time.sleep(1.6)" in reports[0]
    assert not [t for t in threading.enumerate() if t.name == "shoal-stall-detector"]


def test_a_stall_limit_needs_the_monotonic_clock():
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="time.monotonic"):
            Reactor(loop, stall_limit=0.1, clock=lambda: 0.0)
    finally:
        loop.close()
