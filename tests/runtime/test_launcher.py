"""The launcher: pinning, main's outcome, crashes, signals, stalls, and no leftovers."""
import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from shoal.runtime import AppTemplate, ShardCrashed, run, smp
from shoal.runtime.cpuset import choose_cpus, format_cpuset, parse_cpuset

TWO = dict(smp=2, argv=["--overprovisioned"])


def whoami():
    return smp.this_shard(), os.getpid(), sorted(os.sched_getaffinity(0))


def die(code):
    os._exit(code)


def exit_shard(code):
    sys.exit(code)


def kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def shoal_segments(launcher_pid):
    """Ring segments made by one launcher (their names start with its pid)."""
    return {n for n in os.listdir("/dev/shm") if n.startswith(f"shoal-{launcher_pid}-")}


def wait_until(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_cpuset_parsing_and_choice():
    assert parse_cpuset("0-3,6") == [0, 1, 2, 3, 6]
    assert format_cpuset([0, 1, 2, 3, 6, 8, 9]) == "0-3,6,8-9"
    for bad in ("", "a", "3-1", "1,,2", "-1"):
        with pytest.raises(ValueError):
            parse_cpuset(bad)
    allowed = {0, 1, 2, 3}
    assert choose_cpus(allowed=allowed) == [0, 1, 2, 3]
    assert choose_cpus(smp=2, allowed=allowed) == [0, 1]
    assert choose_cpus(cpuset="1,3", allowed=allowed) == [1, 3]
    assert choose_cpus(smp=1, cpuset=[2, 3], allowed=allowed) == [2]
    assert choose_cpus(smp=3, cpuset=[2], overprovisioned=True, allowed=allowed) == [2, 2, 2]
    with pytest.raises(ValueError, match="only 2 are available"):
        choose_cpus(smp=3, cpuset=[0, 1], allowed=allowed)
    with pytest.raises(ValueError, match="may not run on"):
        choose_cpus(cpuset=[7], allowed=allowed)


def test_shards_are_pinned_to_their_cores():
    cpus = sorted(os.sched_getaffinity(0))

    async def main():
        return await smp.invoke_on_all(whoami)

    reports = run(main, smp=len(cpus[:2]), cpuset=cpus[:2])
    assert [cores for _, _, cores in reports] == [[c] for c in cpus[:2]]
    for _, pid, _ in reports:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_main_must_be_a_coroutine_function():
    with pytest.raises(TypeError, match="async def"):
        run(lambda: None, smp=1)


def test_main_exception_is_reraised_with_remote_traceback():
    async def main():
        raise LookupError("nothing here")

    with pytest.raises(LookupError, match="nothing here") as info:
        run(main, **TWO)
    assert "raised by main on shard 0" in "".join(info.value.__notes__)


@pytest.mark.parametrize("how, expected", [
    (die, "exited with status 3"),
    (kill_self, "killed by signal SIGKILL"),
    (exit_shard, "raised SystemExit(4)"),
])
def test_a_dying_shard_stops_the_app_naming_the_shard(how, expected):
    pids = []

    async def main():
        pids.append(await smp.submit_to(1, os.getpid))
        await smp.submit_to(1, how, *((3,) if how is die else (4,) if how is exit_shard else ()))

    with pytest.raises(ShardCrashed) as info:
        run(main, **TWO)
    assert info.value.shard == 1
    assert f"shard 1 (pid" in str(info.value) and expected in str(info.value)
    if how is exit_shard:
        assert "in exit_shard" in info.value.remote_traceback
    assert not shoal_segments(os.getpid())


APP = textwrap.dedent("""
    import asyncio, os, sys, time
    from shoal.runtime import AppTemplate, smp

    def block(seconds):
        time.sleep(seconds)
        return "done"

    async def main():
        pids = await smp.invoke_on_all(os.getpid)
        print("PIDS", *pids, flush=True)
        if app.args.stall:
            print(await smp.submit_to(1, block, 0.6), flush=True)
            return 7
        await asyncio.Event().wait()

    app = AppTemplate("test app")
    app.parser.add_argument("--stall", action="store_true")
    sys.exit(app.run(main))
""")


def start_app(tmp_path, *args):
    script = tmp_path / "app.py"
    script.write_text(APP)
    proc = subprocess.Popen([sys.executable, str(script), "--smp", "2", "--overprovisioned", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("PIDS"), (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc, [int(p) for p in line.split()[1:]]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_launcher_stops_every_shard_cleanly(tmp_path, signum):
    proc, pids = start_app(tmp_path)
    try:
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    for pid in pids:
        assert not psutil.pid_exists(pid)
    assert not shoal_segments(proc.pid)


def test_killing_the_launcher_takes_the_shards_with_it(tmp_path):
    proc, pids = start_app(tmp_path)
    try:
        assert shoal_segments(proc.pid)
        proc.kill()
        proc.wait(timeout=30)
        wait_until(lambda: not any(psutil.pid_exists(p) for p in pids), what="shards to die with the launcher")
        wait_until(lambda: not shoal_segments(proc.pid), what="the segment to be removed by the resource tracker")
    finally:
        for pid in pids:
            if psutil.pid_exists(pid):
                os.kill(pid, signal.SIGKILL)


def test_stall_detector_logs_the_blocking_stack(tmp_path):
    proc, _ = start_app(tmp_path, "--stall", "--blocked-reactor-notify-ms", "100")
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 7
    assert "done" in out
    assert "[shard 1]" in err and "reactor stalled" in err
    assert "in block" in err and "time.sleep(seconds)" in err


def test_hello_demo_reports_every_shard():
    out = subprocess.run([sys.executable, "-m", "shoal.apps.hello", "--smp", "2", "--overprovisioned"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["shard 0 of 2", "shard 1 of 2"]
    assert all("pinned to cpu" in line for line in lines)


def test_bad_options_are_refused_with_a_message():
    out = subprocess.run([sys.executable, "-m", "shoal.apps.hello", "--smp", "64"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--smp 64 needs 64 cpus" in out.stderr
    out = subprocess.run([sys.executable, "-m", "shoal.apps.hello", "--cpuset", "x"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "bad cpuset element" in out.stderr


def test_app_template_exit_codes():
    async def returns_three():
        return 3

    async def raises():
        raise RuntimeError("boom")

    app = AppTemplate()
    assert app.run(returns_three, ["--smp", "1"]) == 3
    assert app.run(raises, ["--smp", "1"]) == 1


_started = []


def started_here():
    return list(_started)


class SlowExtension:
    """Takes a while to start on shard 1; requests to it must wait for that."""

    def __init__(self, log_path):
        self.log_path = log_path

    def add_options(self, parser):
        parser.add_argument("--greeting", default="hi")

    async def start_shard(self, args):
        if smp.this_shard() == 1:
            await asyncio.sleep(0.3)
        _started.append(args.greeting)

    async def stop_shard(self, args):
        with open(self.log_path, "a") as f:
            f.write(f"stopped {smp.this_shard()}\n")


def test_extensions_start_before_requests_are_served_and_stop_on_every_shard(tmp_path):
    log = tmp_path / "stops"

    async def main():
        return await smp.submit_to(1, started_here), started_here()

    there, here = run(main, smp=2, argv=["--overprovisioned", "--greeting", "hello"],
                      extensions=[SlowExtension(str(log))])
    assert there == ["hello"] and here == ["hello"]
    assert sorted(log.read_text().split("\n")[:-1]) == ["stopped 0", "stopped 1"]


_prepared = []


def prepared_here():
    return list(_prepared)


class ForkingExtension:
    """Prepares something in shard order before the shards fork (as the native stack opens
    TAP queues); refuses ``--prepare-fails`` with a ValueError."""

    def __init__(self, log_path):
        self.log_path = log_path

    def add_options(self, parser):
        parser.add_argument("--prepare-fails", action="store_true")

    def before_fork(self, args, shard_count):
        if args.prepare_fails:
            raise ValueError("--prepare-fails: the device is gone")
        _prepared[:] = [f"queue {i} pid {os.getpid()}" for i in range(shard_count)]

    def after_fork(self, args):
        with open(self.log_path, "a") as f:
            f.write(f"after_fork in {os.getpid()}\n")
        _prepared.clear()

    async def start_shard(self, args):
        pass

    async def stop_shard(self, args):
        pass


def test_before_fork_runs_in_the_launcher_and_the_shards_inherit_what_it_made(tmp_path):
    log = tmp_path / "after"

    async def main():
        deadline = time.monotonic() + 30
        while not log.exists():  # the launcher lets go of its copies while the shards run
            assert time.monotonic() < deadline, "after_fork did not run once the shards were forked"
            await asyncio.sleep(0.01)
        return await smp.submit_to(1, prepared_here), prepared_here()

    there, here = run(main, smp=2, argv=["--overprovisioned"], extensions=[ForkingExtension(str(log))])
    expected = [f"queue {i} pid {os.getpid()}" for i in range(2)]
    assert there == expected and here == expected
    assert log.read_text() == f"after_fork in {os.getpid()}\n"  # once, in the launcher
    assert _prepared == []


def test_a_before_fork_value_error_is_a_usage_error_and_no_shard_starts(tmp_path):
    log = tmp_path / "after"
    app = AppTemplate(extensions=[ForkingExtension(str(log))])

    async def main():
        raise AssertionError("no shard may start")

    with pytest.raises(SystemExit) as exc:
        app.run(main, ["--smp", "1", "--prepare-fails"])
    assert exc.value.code == 2
    assert not log.exists()  # nothing was prepared, so nothing is released
