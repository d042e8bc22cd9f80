"""The per-shard reactor: an asyncio event loop plus pollers, sleep/wake and a stall detector.

Theory of operation
-------------------
The reactor knows nothing about what it polls. A *poller* is any object with

- ``poll() -> bool``: do a bounded amount of work, say whether anything moved;
- ``enter_interrupt_mode() -> fd | None``: the shard is about to sleep, arm the file
  descriptor that must wake it (``None``: nothing to watch). A poller that finds
  work while arming returns an fd that is already readable;
- ``exit_interrupt_mode()``: the shard woke up; disarm.

While any poller reports work, the reactor polls every pollers once per loop
iteration (a callback re-queued with ``call_soon``, so the loop itself never blocks).
After ``idle_poll_time`` seconds in which nothing moved, it arms every poller's fd
as a loop reader and stops re-queueing itself: the loop then sleeps in epoll until
one of those fds (or anything else the application registered) is ready. The first
armed fd that fires puts it back into polling. ``poll_mode`` never sleeps.

Stall detection, like Seastar's ``--blocked-reactor-notify-ms``: a watchdog thread
checks that the reactor's tick ran recently. While polling, the tick runs every
iteration; while sleeping, a heartbeat timer runs it every half limit. So a tick
older than the limit means one loop iteration (a task, a callback) has held the
shard that long, and the watchdog logs the main thread's current stack. The checks
run in C without the GIL (`runtime/_watchdog_build.py`): the thread takes the GIL
only to log, instead of 4 times per limit, each a thread switch the shard waits for.
"""
import array
import logging
import os
import sys
import threading
import time
import traceback

from shoal.runtime._watchdog import ffi as _watchdog_ffi, lib as _watchdog

log = logging.getLogger("shoal.reactor")

_current = None


def current():
    """The reactor of this shard (RuntimeError outside a shard)."""
    if _current is None:
        raise RuntimeError("no shoal reactor runs in this process (start one with shoal.runtime.run)")
    return _current


class Reactor:
    """Drives the pollers from one asyncio loop. See the module docstring."""

    def __init__(self, loop, *, idle_poll_time=200e-6, poll_mode=False, stall_limit=None, clock=time.monotonic):
        self.loop = loop
        self.idle_poll_time = idle_poll_time
        self.poll_mode = poll_mode
        if stall_limit and clock is not time.monotonic:
            raise ValueError("the stall detector measures ticks with time.monotonic: a reactor with "
                             "another clock cannot have a stall_limit")
        self.stall_limit = stall_limit
        self._clock = clock
        self._pollers = []
        self._last_work = clock()
        self._handle = None
        self._reader_of = {}  # poller -> the fd registered as a loop reader for it
        self._heartbeat = None
        self._fatal = None
        self.sleeping = False
        self._last_tick = array.array("d", [clock()])  # (read by the watchdog's C loop)
        self.stats = {"ticks": 0, "polls_with_work": 0, "sleeps": 0, "wakeups": 0, "stalls": 0}
        self._watchdog = None
        self._watchdog_stop = None  # an eventfd, written to stop the watchdog

    def add_poller(self, poller):
        self._pollers.append(poller)
        if self.sleeping:
            self.wake()

    def remove_poller(self, poller):
        if self.sleeping:
            self.wake()
        self._pollers.remove(poller)
        self._set_reader(poller, None)

    def _set_reader(self, poller, fd):
        old = self._reader_of.get(poller)
        if old == fd:
            return
        if old is not None and old not in (f for p, f in self._reader_of.items() if p is not poller):
            self.loop.remove_reader(old)
        if fd is None:
            self._reader_of.pop(poller, None)
        else:
            self._reader_of[poller] = fd
            self.loop.add_reader(fd, self.wake)

    def start(self):
        global _current
        _current = self
        self._handle = self.loop.call_soon(self._tick)
        if self.stall_limit:
            self._watchdog_stop = os.eventfd(0, os.EFD_CLOEXEC)
            self._watchdog = threading.Thread(target=self._watch, args=(threading.main_thread().ident,),
                                              name="shoal-stall-detector", daemon=True)
            self._watchdog.start()

    def close(self):
        global _current
        if self.sleeping:
            self.wake()
        for poller in list(self._reader_of):
            self._set_reader(poller, None)
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._watchdog is not None:
            os.eventfd_write(self._watchdog_stop, 1)
            self._watchdog.join()
            self._watchdog = None
            os.close(self._watchdog_stop)
            self._watchdog_stop = None
        _current = None

    def check_fatal(self):
        """Raise the exception that broke a poller, if any (the shard then dies with it)."""
        if self._fatal is not None:
            raise self._fatal

    def _tick(self):
        self._handle = None
        now = self._clock()
        self._last_tick[0] = now
        self.stats["ticks"] += 1
        worked = False
        try:
            for poller in self._pollers:
                if poller.poll():
                    worked = True
        except Exception as exc:
            # A poller is runtime machinery: an error there is a bug that leaves
            # the shard deaf, so the shard stops with it instead of limping on.
            self._fatal = exc
            self.loop.stop()
            return
        if worked:
            self._last_work = now
            self.stats["polls_with_work"] += 1
        elif not self.poll_mode and now - self._last_work >= self.idle_poll_time:
            self._sleep()
            return
        self._handle = self.loop.call_soon(self._tick)

    def _sleep(self):
        self.sleeping = True
        self.stats["sleeps"] += 1
        for poller in self._pollers:
            # A reader stays registered across sleeps (two epoll_ctl calls per sleep
            # saved); while polling, the fds are quiet or their wake() is a no-op.
            self._set_reader(poller, poller.enter_interrupt_mode())
        if self.stall_limit:
            self._heartbeat = self.loop.call_later(self.stall_limit / 2, self._beat)

    def _beat(self):
        self._last_tick[0] = self._clock()
        self._heartbeat = self.loop.call_later(self.stall_limit / 2, self._beat)

    def wake(self):
        """Back to polling. Called when an armed fd fires, and by code that just
        gave a poller work of its own (a queued outgoing message) while the shard
        sleeps."""
        if not self.sleeping:
            return
        self.sleeping = False
        self.stats["wakeups"] += 1
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        for poller in self._pollers:
            poller.exit_interrupt_mode()
        self._last_work = self._clock()
        if self._handle is None:
            self._handle = self.loop.call_soon(self._tick)

    def _watch(self, main_ident):
        limit = self.stall_limit
        last_tick = _watchdog_ffi.from_buffer("double[]", self._last_tick)
        stop = self._watchdog_stop
        reported = -1.0
        while True:
            tick = _watchdog.shoal_watch(last_tick, limit, reported, stop)  # (without the GIL)
            if tick < 0:
                return  # closed
            reported = tick
            held = time.monotonic() - tick
            frame = sys._current_frames().get(main_ident)
            if frame is None:
                continue
            self.stats["stalls"] += 1
            stack = "".join(traceback.format_stack(frame))
            log.warning("reactor stalled for %.0f ms (limit %.0f ms); the task holding it is at:\n%s",
                        held * 1e3, limit * 1e3, stack)
