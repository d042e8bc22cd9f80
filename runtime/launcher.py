"""The launcher: one pinned process per shard, supervised; no application state.

Theory of operation
-------------------
The launcher creates what the shards share (the ring segment, one eventfd per
shard, one status pipe per shard) and forks the shards; fork is what lets
`main` and every callable sent between shards be a function of the calling
script. Each shard pins itself, sets ``PR_SET_PDEATHSIG`` (so it cannot outlive
a killed launcher), runs its reactor, and before exiting writes one record to its
status pipe: shard 0 its outcome (main's result, exception or "stopped"), every
shard "clean" when it stops as told. A shard that exits without that record, or
with a crash record, has died: the launcher kills the others, reaps everyone,
removes the segment and raises `ShardCrashed` naming the shard, with its
traceback when it had one.

Stopping: SIGINT/SIGTERM to the launcher (or Ctrl-C, which reaches the whole
process group) asks shard 0 to cancel `main`; shard 0 then stops the services and
extensions on every shard and tells the others to exit. The other shards ignore
SIGINT so that a Ctrl-C stops the app through shard 0 in order. A second signal
kills everything at once.
"""
import asyncio
import ctypes
import os
import pickle
import selectors
import signal
import struct
import sys
import time
import traceback

from shoal.runtime import log, metrics, sharded, smp
from shoal.runtime.cpuset import choose_cpus
from shoal.runtime.reactor import Reactor
from shoal.runtime.ring import Segment

STOP_GRACE = 30.0      # seconds a requested stop may take before the launcher kills the shards
_PR_SET_PDEATHSIG = 1
_LEN = struct.Struct("<Q")


class ShardCrashed(RuntimeError):
    """A shard died: the app was stopped. `shard`, `cpu`, `pid`, `how`, `remote_traceback`."""

    def __init__(self, shard, cpu, pid, how, remote_traceback=""):
        self.shard, self.cpu, self.pid, self.how, self.remote_traceback = shard, cpu, pid, how, remote_traceback
        message = f"shard {shard} (pid {pid}, cpu {cpu}) {how}; the app was stopped"
        if remote_traceback:
            message += f"\n--- shard {shard} traceback ---\n{remote_traceback.rstrip()}"
        super().__init__(message)


class OptionError(ValueError):
    """A runtime option that cannot be honoured (e.g. more shards than cpus)."""


def run(main, *, smp=None, cpuset=None, argv=None, extensions=()):
    """Run ``await main()`` on shard 0 of a sharded app and return what it returns.

    `argv` is parsed for the runtime options (``--smp``, ``--cpuset``,
    ``--reactor-backend``, ...); the `smp` and `cpuset` arguments win over it.
    `main`'s exception is re-raised here; a crashed shard raises `ShardCrashed`;
    a stop by SIGINT/SIGTERM returns None."""
    from shoal.runtime.app import AppTemplate

    template = AppTemplate(extensions=extensions)
    args = template.parse(list(argv or []))
    if smp is not None:
        args.smp = smp
    if cpuset is not None:
        args.cpuset = cpuset
    return launch(main, args, template.extensions)


def launch(main, args, extensions=()):
    if not asyncio.iscoroutinefunction(main):
        raise TypeError(f"main must be an async def function, not {main!r}")
    try:
        cpus = choose_cpus(args.smp, args.cpuset, args.overprovisioned)
    except ValueError as exc:
        raise OptionError(str(exc)) from None
    ring_bytes = args.smp_ring_kib * 1024
    if ring_bytes & (ring_bytes - 1):
        raise OptionError(f"--smp-ring-kib must be a power of two, not {args.smp_ring_kib}")
    return _Launcher(cpus, args, list(extensions), ring_bytes).run(main)


class _Launcher:
    def __init__(self, cpus, args, extensions, ring_bytes):
        self.cpus = cpus
        self.n = len(cpus)
        self.args = args
        self.extensions = extensions
        self.ring_bytes = ring_bytes
        self.pids = {}
        self.stop_requested = None
        self.fatal = None

    def run(self, main):
        prepared = []
        try:
            for extension in self.extensions:
                before_fork = getattr(extension, "before_fork", None)
                if before_fork is not None:
                    try:
                        before_fork(self.args, self.n)
                    except ValueError as exc:
                        raise OptionError(str(exc)) from None
                prepared.append(extension)
            return self._fork_and_supervise(main, lambda: self._after_fork(prepared))
        finally:
            self._after_fork(prepared)  # when the start failed before every shard was forked

    def _after_fork(self, prepared):
        """Let each extension that prepared something release the launcher's copies (once)."""
        while prepared:
            after_fork = getattr(prepared.pop(0), "after_fork", None)
            if after_fork is not None:
                after_fork(self.args)

    def _fork_and_supervise(self, main, forked):
        segment = Segment.create(self.n, self.ring_bytes)
        efds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(self.n)]
        pipes = [os.pipe() for _ in range(self.n)]
        write_ends = {w for _, w in pipes}
        pidfds = {}
        old_handlers = {}
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            old_handlers = self._install_signal_handlers()
            parent = os.getpid()
            for shard in range(self.n):
                pid = os.fork()
                if pid == 0:
                    _shard_process(shard, self.cpus, segment, efds, pipes, parent, main, self.args, self.extensions)
                self.pids[shard] = pid
                pidfds[shard] = os.pidfd_open(pid)
            while write_ends:  # the shards hold them now
                os.close(write_ends.pop())
            forked()
            if self.stop_requested is not None:  # a signal came while the shards were being forked
                _kill(self.pids[0], signal.SIGTERM)
            return self._supervise(pidfds, [r for r, _ in pipes])
        finally:
            for signum, handler in old_handlers.items():
                signal.signal(signum, handler)
            self._kill_all()
            for fd in [*efds, *pidfds.values(), *(r for r, _ in pipes), *write_ends]:
                os.close(fd)
            segment.close()
            segment.unlink()

    def _install_signal_handlers(self):
        old = {}
        try:
            for signum in (signal.SIGINT, signal.SIGTERM):
                old[signum] = signal.signal(signum, self._on_signal)
        except ValueError:
            pass  # not the main thread: the caller keeps its own signal handling
        return old

    def _on_signal(self, signum, frame):
        if self.stop_requested is None:
            self.stop_requested = time.monotonic()
            _kill(self.pids.get(0), signal.SIGTERM)
        else:
            self._kill_all()

    def _kill_all(self):
        for pid in self.pids.values():
            _kill(pid, signal.SIGKILL)
        for shard, pid in list(self.pids.items()):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            del self.pids[shard]

    def _supervise(self, pidfds, status_fds):
        sel = selectors.DefaultSelector()
        buffers = {shard: bytearray() for shard in range(self.n)}
        for shard in range(self.n):
            sel.register(pidfds[shard], selectors.EVENT_READ, ("exit", shard))
            sel.register(status_fds[shard], selectors.EVENT_READ, ("status", shard))
        outcome = None
        alive = set(range(self.n))
        try:
            while alive:
                timeout = None
                if self.stop_requested is not None:
                    timeout = max(0.0, self.stop_requested + STOP_GRACE - time.monotonic())
                    if timeout == 0.0:
                        self.fatal = self.fatal or ShardCrashed(0, self.cpus[0], self.pids.get(0, "?"),
                                                                f"did not stop within {STOP_GRACE:.0f} s of the "
                                                                "stop request")
                        break
                for key, _ in sel.select(timeout):
                    kind, shard = key.data
                    if kind == "status":
                        chunk = os.read(key.fd, 1 << 16)
                        buffers[shard] += chunk
                        if not chunk:
                            sel.unregister(key.fd)
                        continue
                    sel.unregister(key.fd)
                    alive.discard(shard)
                    pid = self.pids.pop(shard)
                    _, status = os.waitpid(pid, 0)
                    buffers[shard] += _read_rest(status_fds[shard])
                    record = _decode(buffers[shard])
                    if record and record[0] == "result":
                        outcome = record[1]
                    elif not (record and record[0] == "clean" and status == 0) and self.fatal is None:
                        self.fatal = _crash(shard, self.cpus[shard], pid, status, record)
                        self._kill_all()
                        alive.clear()
        finally:
            sel.close()
        if self.fatal is not None:
            raise self.fatal
        return _unpack_outcome(outcome)


def _kill(pid, signum):
    if pid is None:
        return
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _read_rest(fd):
    data = bytearray()
    os.set_blocking(fd, False)
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except (BlockingIOError, OSError):
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _decode(buffer):
    if len(buffer) < _LEN.size:
        return None
    (size,) = _LEN.unpack_from(buffer)
    try:
        return pickle.loads(bytes(buffer[_LEN.size:_LEN.size + size]))
    except Exception as exc:
        return ("crash", f"sent an unreadable status ({exc!r})", "")


def _crash(shard, cpu, pid, status, record):
    if record and record[0] == "crash":
        return ShardCrashed(shard, cpu, pid, record[1], record[2])
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return ShardCrashed(shard, cpu, pid, f"was killed by signal {name}")
    return ShardCrashed(shard, cpu, pid, f"exited with status {os.WEXITSTATUS(status)} without stopping cleanly")


def _unpack_outcome(outcome):
    if outcome is None:
        raise RuntimeError("shard 0 exited without reporting main's outcome")
    kind = outcome[0]
    if kind == "ok":
        return outcome[1]
    if kind == "stopped":
        return None
    exc, remote_tb = outcome[1], outcome[2]
    exc.add_note(f"(raised by main on shard 0)\n{remote_tb}")
    raise exc


# ---- inside a shard -------------------------------------------------------------

def _shard_process(shard, cpus, segment, efds, pipes, parent, main, args, extensions):
    """The whole life of a shard process; never returns."""
    code = 1
    status_w = pipes[shard][1]
    try:
        for i, (r, w) in enumerate(pipes):
            os.close(r)
            if i != shard:
                os.close(w)
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)
        if shard:  # shard 0 stops the others in order (see the module docstring)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        else:
            # Held until shard 0's loop handles them (see _shard_zero): a stop request
            # that comes while the shard starts is then a clean stop, not a kill.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.sched_setaffinity(0, {cpus[shard]})
        log.setup(shard, args.default_log_level, args.logger_log_level)
        record = _run_shard(shard, len(cpus), segment, efds, main, args, extensions)
        code = 0
    except SystemExit as exc:
        record = ("crash", f"raised SystemExit({exc.code!r})", traceback.format_exc())
        code = exc.code if isinstance(exc.code, int) and exc.code else 1
    except BaseException as exc:
        record = ("crash", f"raised {type(exc).__name__}: {exc}", traceback.format_exc())
    try:
        try:
            payload = pickle.dumps(record, 5)
        except Exception as exc:
            payload = pickle.dumps(("result", ("error", smp.RemoteError(
                f"main's outcome cannot be sent to the launcher: {exc!r}"), "")), 5)
        os.write(status_w, _LEN.pack(len(payload)))
        view = memoryview(payload)
        while view:
            view = view[os.write(status_w, view):]
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _new_loop(backend):
    if backend == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _run_shard(shard, count, segment, efds, main, args, extensions):
    loop = _new_loop(args.reactor_backend)
    asyncio.set_event_loop(loop)
    metrics.count_tasks(loop)
    router = smp.Router(segment, shard, efds, loop)
    smp.count, smp._shard, smp._router = count, shard, router
    _ShardState.extensions, _ShardState.args = extensions, args
    reactor = Reactor(loop, idle_poll_time=args.idle_poll_time_us * 1e-6, poll_mode=args.poll_mode,
                      stall_limit=(args.blocked_reactor_notify_ms or 0) * 1e-3 or None)
    reactor.add_poller(router)
    router.kick = reactor.wake
    reactor.start()
    try:
        coro = _shard_zero(main, router, loop) if shard == 0 else _other_shard(router)
        try:
            outcome = loop.run_until_complete(coro)
        except RuntimeError:
            reactor.check_fatal()
            raise
        return ("result", outcome) if shard == 0 else ("clean",)
    finally:
        _cancel_remaining(loop)
        reactor.close()
        loop.close()


class _ShardState:
    extensions = ()
    args = None


async def _start_extensions():
    for extension in _ShardState.extensions:
        await extension.start_shard(_ShardState.args)


async def _stop_extensions():
    for extension in reversed(_ShardState.extensions):
        await extension.stop_shard(_ShardState.args)


async def _shard_zero(main, router, loop):
    stopping = []
    running = []

    def request_stop(signum):
        if not stopping:
            stopping.append(signum)
            for task in running:
                task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, request_stop, signum)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    await _start_extensions()
    router.open()
    try:
        if stopping:
            raise asyncio.CancelledError
        running.append(asyncio.ensure_future(main()))
        outcome = ("ok", await running[0])
    except asyncio.CancelledError:
        if not stopping:
            raise
        outcome = ("stopped", stopping[0])
    except Exception as exc:
        outcome = ("error", exc, traceback.format_exc())
    await sharded.stop_all()
    await smp.invoke_on_all(_stop_extensions)
    for other in range(1, smp.count):
        router.send_stop(other)
    while router.dirty:
        await asyncio.sleep(0)
    return outcome


async def _other_shard(router):
    await _start_extensions()
    router.open()
    await router.stopped


def _cancel_remaining(loop):
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
