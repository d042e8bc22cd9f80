"""Cross-shard calls over the shared-memory rings: `submit_to`, `invoke_on_all`, `map_reduce`.

A message is a 12-byte header (kind, request id) followed by a pickle (protocol 5).
Messages to a shard are queued in its *outbox* as they are made and pushed into
the ring by the next reactor tick, so every message of one loop iteration goes out
in one burst with one doorbell/wake-up. A message larger than a ring record is
split into records and reassembled by the receiver (per source ring, so records
of different messages never interleave). When a destination's outbox holds more
than `HIGH_WATER` bytes, `submit_to` waits for it to drain: a full ring slows the
sender, it never drops a message or blocks the reactor.

Requests run on the destination shard: a plain callable runs inline in the
poller; a coroutine function (or any callable returning an awaitable) runs as a
task. Results and exceptions travel back on the reverse ring; an exception is
re-raised in the caller with its type and message, and the remote traceback as
a note.

This module is also the per-process shard state: `count` and `this_shard()`.
"""
import asyncio
import inspect
import itertools
import os
import pickle
import struct
import time
import traceback
from collections import deque

from shoal.runtime._smp import lib
from shoal.runtime.ring import FINAL

count = 0
"""How many shards the running app has (0 outside a shoal app)."""

_shard = None
_router = None
_call_observer = None  # called with each submit_to round trip in seconds (the metrics histogram)

_HDR = struct.Struct("<IQ")
_REQ, _OK, _ERR, _STOP = range(4)
_NOTHING = object()


class RemoteError(Exception):
    """An exception from another shard that could not be sent back as itself."""


def stats():
    """This shard's message counters (messages, records and bytes each way,
    back-pressure waits); None outside a shard."""
    return None if _router is None else dict(_router.stats)


def this_shard():
    """This shard's id, 0..count-1."""
    if _shard is None:
        raise RuntimeError("not running on a shoal shard (start the app with shoal.runtime.run)")
    return _shard


async def submit_to(shard, func, *args, **kwargs):
    """Run ``func(*args, **kwargs)`` on `shard` and return its result.

    `func` must be importable by name on the other shard (a module-level
    function or a function of the script that called `run`), and the arguments
    and result picklable. On the calling shard itself it is called directly."""
    if shard == _shard:
        result = func(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result
    if _router is None:
        raise RuntimeError("not running on a shoal shard (start the app with shoal.runtime.run)")
    if not 0 <= shard < count:
        raise ValueError(f"no shard {shard}: the app has {count} (0..{count - 1})")
    return await _router.request(shard, func, args, kwargs)


async def invoke_on_all(func, *args, **kwargs):
    """Run `func` on every shard concurrently; the results in shard order."""
    return await asyncio.gather(*(submit_to(s, func, *args, **kwargs) for s in range(count)))


async def map_reduce(func, *args, reduce, initial=_NOTHING, **kwargs):
    """Run `func` on every shard and fold the results with ``reduce(acc, result)``
    in shard order, starting from `initial` (or the first result)."""
    results = await invoke_on_all(func, *args, **kwargs)
    acc = initial
    for result in results:
        acc = result if acc is _NOTHING else reduce(acc, result)
    return acc


class Router:
    """This shard's end of every ring: the smp poller of the reactor."""

    HIGH_WATER_RINGS = 4  # outbox bytes per destination, in ring sizes, before senders wait

    def __init__(self, segment, shard, eventfds, loop):
        self.seg = segment
        self.me = shard
        self.n = segment.nshards
        self.loop = loop
        self.efds = eventfds
        self.efd = eventfds[shard]
        self.outbound = [segment.ring(shard, d) if d != shard else None for d in range(self.n)]
        self.inbound = [segment.ring(s, shard) if s != shard else None for s in range(self.n)]
        self.max_record = segment.ring_bytes // 2 - 8
        self.high_water = self.HIGH_WATER_RINGS * segment.ring_bytes
        self.outbox = [deque() for _ in range(self.n)]
        self.outbox_bytes = [0] * self.n
        self.head_offset = [0] * self.n     # bytes of outbox[d][0] already pushed
        self.dirty = set()
        self.space_waiters = [[] for _ in range(self.n)]
        self.partial = {}
        self.pending = {}
        self.ids = itertools.count(1)
        self.stopped = loop.create_future()
        self.early = []  # requests received before open()
        self.words = (self.n + 63) // 64
        self.kick = lambda: None  # the reactor's wake(), set when the router is added to it
        self.stats = {"messages_sent": 0, "messages_received": 0, "records_sent": 0, "records_received": 0,
                      "bytes_sent": 0, "bytes_received": 0, "backpressure_waits": 0}

    # ---- sending -------------------------------------------------------------

    def _enqueue(self, dest, data):
        self.outbox[dest].append(data)
        self.outbox_bytes[dest] += len(data)
        self.dirty.add(dest)
        self.stats["messages_sent"] += 1
        self.kick()

    async def request(self, dest, func, args, kwargs):
        req_id = next(self.ids)
        data = _HDR.pack(_REQ, req_id) + pickle.dumps((func, args, kwargs), 5)
        while self.outbox_bytes[dest] > self.high_water:
            self.stats["backpressure_waits"] += 1
            waiter = self.loop.create_future()
            self.space_waiters[dest].append(waiter)
            await waiter
        fut = self.loop.create_future()
        self.pending[req_id] = fut
        started = time.perf_counter()
        self._enqueue(dest, data)
        try:
            result = await fut
        finally:
            self.pending.pop(req_id, None)
        if _call_observer is not None:
            _call_observer(time.perf_counter() - started)
        return result

    def send_stop(self, dest):
        self._enqueue(dest, _HDR.pack(_STOP, 0))

    def _reply(self, dest, req_id, ok, value):
        try:
            body = pickle.dumps(value, 5)
            if not ok:
                pickle.loads(body)  # exceptions whose __init__ breaks unpickling fail here, not there
            data = _HDR.pack(_OK if ok else _ERR, req_id) + body
        except Exception as exc:
            if ok:
                err = RemoteError(f"the result of a call on shard {self.me} cannot be sent back: {exc!r}")
            else:
                err = RemoteError(f"{type(value).__name__}: {value}")
                err.__notes__ = list(getattr(value, "__notes__", []))
            data = _HDR.pack(_ERR, req_id) + pickle.dumps(err, 5)
        self._enqueue(dest, data)

    def _flush(self):
        pushed_any = False
        for dest in list(self.dirty):
            ring = self.outbound[dest]
            box = self.outbox[dest]
            off = self.head_offset[dest]
            pushed = 0
            while box:
                msg = box[0]
                end = min(len(msg), off + self.max_record)
                chunk = msg[off:end] if off or end < len(msg) else msg
                if not ring.push(chunk, FINAL if end == len(msg) else 0, False):
                    break
                pushed += 1
                self.stats["bytes_sent"] += end - off
                if end == len(msg):
                    box.popleft()
                    self.outbox_bytes[dest] -= len(msg)
                    off = 0
                else:
                    off = end
            self.head_offset[dest] = off
            if pushed:
                ring.publish()
                pushed_any = True
                self.stats["records_sent"] += pushed
                lib.smp_notify(self.seg.ptr, dest, self.me, self.efds[dest])
            if not box:
                self.dirty.discard(dest)
            if self.space_waiters[dest] and self.outbox_bytes[dest] <= self.high_water:
                for waiter in self.space_waiters[dest]:
                    if not waiter.done():
                        waiter.set_result(None)
                self.space_waiters[dest].clear()
        return pushed_any

    # ---- receiving -----------------------------------------------------------

    def _drain(self, src):
        ring = self.inbound[src]
        data = ring.data
        for _ in range(4):
            offs, lens, flags, n = ring.pop_batch()
            for i in range(n):
                off = offs[i]
                view = data[off:off + lens[i]]
                self.stats["records_received"] += 1
                self.stats["bytes_received"] += lens[i]
                if flags[i] & FINAL and src not in self.partial:
                    self._dispatch(src, view)
                else:
                    buf = self.partial.setdefault(src, bytearray())
                    buf += view
                    if flags[i] & FINAL:
                        del self.partial[src]
                        self._dispatch(src, memoryview(buf))
            ring.release()
            if n < ring._batch:
                return
        # Fairness: leave the rest for the next tick, and ring our own bell for it.
        lib.smp_set_doorbell(self.seg.ptr, self.me, src)

    def _dispatch(self, src, view):
        self.stats["messages_received"] += 1
        kind, req_id = _HDR.unpack_from(view)
        if kind == _REQ:
            if self.early is None:
                self._serve(src, req_id, view[_HDR.size:])
            else:
                self.early.append((src, req_id, bytes(view[_HDR.size:])))
        elif kind == _STOP:
            if not self.stopped.done():
                self.stopped.set_result(None)
        else:
            fut = self.pending.get(req_id)
            try:
                value = pickle.loads(view[_HDR.size:])
            except Exception as exc:
                kind, value = _ERR, RemoteError(f"reply from shard {src} cannot be read: {exc!r}")
            if fut is None or fut.done():
                return  # the caller was cancelled; the late reply has nobody to go to
            if kind == _OK:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def _serve(self, src, req_id, body):
        try:
            func, args, kwargs = pickle.loads(body)
            result = func(*args, **kwargs)
        except Exception as exc:
            self._reply(src, req_id, False, _with_traceback(exc, self.me))
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            task.add_done_callback(lambda t, src=src, req_id=req_id: self._task_done(t, src, req_id))
        else:
            self._reply(src, req_id, True, result)

    def open(self):
        """Start serving requests. Until then (while the shard's extensions start)
        requests that arrive are kept in order; replies are processed from the start,
        so a starting extension may itself call other shards."""
        early, self.early = self.early, None
        for src, req_id, body in early:
            self._serve(src, req_id, body)

    def _task_done(self, task, src, req_id):
        if task.cancelled():
            self._reply(src, req_id, False, asyncio.CancelledError(f"the call was cancelled on shard {self.me}"))
        elif task.exception() is not None:
            self._reply(src, req_id, False, _with_traceback(task.exception(), self.me))
        else:
            self._reply(src, req_id, True, task.result())

    # ---- poller interface ----------------------------------------------------

    def poll(self):
        worked = self._flush() if self.dirty else False
        seg = self.seg.ptr
        for word in range(self.words):
            bells = lib.smp_take_doorbell(seg, self.me, word)
            while bells:
                low = bells & -bells
                bells ^= low
                self._drain(word * 64 + low.bit_length() - 1)
                worked = True
        if self.dirty:
            worked = self._flush() or worked
        return worked

    def enter_interrupt_mode(self):
        if self.dirty or not lib.smp_try_sleep(self.seg.ptr, self.me):
            os.eventfd_write(self.efd, 1)  # work is waiting: make the fd ready at once
        return self.efd

    def exit_interrupt_mode(self):
        lib.smp_awake(self.seg.ptr, self.me)
        try:
            os.eventfd_read(self.efd)
        except BlockingIOError:
            pass


def _with_traceback(exc, shard):
    """Attach the remote traceback as a note: the caller sees where it failed."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        exc.add_note(f"(raised on shard {shard})\n{tb}")
    except Exception:
        pass
    return exc
