"""docs/tutorial.md runs as written: every program, every command, every output shown.

The page is made of ```python file=NAME.py blocks (programs, written to a temporary
directory) and ```console blocks: ``$ command`` lines, each followed by the exact
output it prints. The commands a block may use are the ones a reader types:

- ``python NAME.py ARGS`` runs to completion; its stdout must be the lines shown;
- ``python NAME.py ARGS &`` starts a server in the background; the lines shown are
  what it prints first, and the next command runs once it has printed them;
- ``curl -s URL | grep 'PATTERN'`` fetches URL (retrying while the server starts) and
  keeps the lines matching PATTERN;
- ``kill %1`` sends SIGTERM to the background program, which must exit cleanly.

Anything else fails the test, so the page cannot show a command nobody ran. Each
program also gets ``--overprovisioned`` so it runs on a machine with busy cores; a fixed
``--prometheus-port`` is replaced by a free port. Exposition lines are compared with
their labels sorted, since prometheus-client versions order labels differently.
"""
import os
import pathlib
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "tutorial.md"
RUN_S = 120
SCRAPE_S = 90

_FENCE = re.compile(r"^```([\w-]+)([^\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)
_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)\{(.*)\}\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def blocks():
    """(files {name: source}, consoles [[(command, [expected lines])]]) of the page."""
    files, consoles = {}, []
    for lang, info, body in _FENCE.findall(DOC.read_text()):
        if lang == "python":
            name = re.search(r"\bfile=(\S+\.py)\b", info)
            assert name, f"a python block without file=NAME.py cannot be run: {body[:60]!r}"
            files[name.group(1)] = body
        elif lang == "console":
            steps = []
            for line in body.splitlines():
                if line.startswith("$ "):
                    steps.append((line[2:], []))
                else:
                    assert steps, f"output before any command in a console block: {line!r}"
                    steps[-1][1].append(line)
            consoles.append(steps)
        else:
            pytest.fail(f"untested ```{lang} block in the tutorial")
    return files, consoles


FILES, CONSOLES = blocks()


def normalize(lines):
    """Exposition samples with their labels sorted; other lines as they are."""
    out = []
    for line in lines:
        sample = _SAMPLE.match(line)
        if sample:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(_LABEL.findall(sample.group(2))))
            line = f"{sample.group(1)}{{{labels}}} {sample.group(3)}"
        out.append(line)
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_cpus(words):
    """Point ``--cpuset`` at two cores this process may use (the doc says 0-1)."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("the tutorial runs two shards on two cores; this machine allows one")
    out = list(words)
    for i, word in enumerate(out[:-1]):
        if word == "--cpuset":
            out[i + 1] = f"{allowed[0]},{allowed[1]}"
    return out


def wait_for_lines(path, count, job):
    """The first `count` lines the background program printed (it flushes them)."""
    deadline = time.monotonic() + RUN_S
    while True:
        lines = path.read_text().splitlines()
        if len(lines) >= count:
            return lines[:count]
        assert job.poll() is None, f"the background program exited early:\n{path.with_suffix('.err').read_text()}"
        assert time.monotonic() < deadline, f"the background program printed only {lines}"
        time.sleep(0.1)


def fetch_lines(url, pattern, job):
    deadline = time.monotonic() + SCRAPE_S
    while True:
        try:
            with urllib.request.urlopen(url, timeout=SCRAPE_S) as response:
                text = response.read().decode()
            return [line for line in text.splitlines() if re.search(pattern, line)]
        except (urllib.error.URLError, ConnectionError):
            if job is None or job.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_every_program_is_run():
    commands = " ".join(cmd for steps in CONSOLES for cmd, _ in steps)
    for name in FILES:
        assert f"python {name}" in commands, f"{name} is never run by the tutorial"


@pytest.mark.parametrize("steps", CONSOLES, ids=[steps[0][0].split(" &")[0] for steps in CONSOLES])
def test_console_block(tmp_path, steps):
    for name, source in FILES.items():
        (tmp_path / name).write_text(source)
    ports = {}
    for command, _ in steps:
        found = re.search(r"--prometheus-port (\d+)", command)
        if found and found.group(1) != "0":
            ports[found.group(1)] = str(free_port())
    job, logs = None, []
    try:
        for command, expected in steps:
            for old, new in ports.items():
                command = command.replace(old, new)
            if command.startswith("python "):
                background = command.endswith(" &")
                words = local_cpus(shlex.split(command.removesuffix(" &")))
                argv = [sys.executable, *words[1:], "--overprovisioned"]
                if background:
                    assert job is None, "one background program at a time"
                    # stdout (what the page shows) apart from stderr (the shards' log lines)
                    logs = [open(tmp_path / "job.out", "w"), open(tmp_path / "job.err", "w")]
                    job = subprocess.Popen(argv, cwd=tmp_path, stdout=logs[0], stderr=logs[1])
                    printed = wait_for_lines(tmp_path / "job.out", len(expected), job)
                    assert normalize(printed) == normalize(expected), command
                    continue
                done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=RUN_S)
                assert done.returncode == 0, f"{command} failed:\n{done.stderr}"
                assert normalize(done.stdout.splitlines()) == normalize(expected), command
            elif command.startswith("curl -s "):
                url, sep, grep = command[len("curl -s "):].partition(" | grep ")
                assert sep, f"unsupported curl command: {command}"
                (pattern,) = shlex.split(grep)
                assert normalize(fetch_lines(url.strip(), pattern, job)) == normalize(expected), command
            elif command == "kill %1":
                assert job is not None, "kill %1 without a background program"
                job.send_signal(signal.SIGTERM)
                assert job.wait(RUN_S) == 0, (tmp_path / "job.err").read_text()
                job = None
            else:
                pytest.fail(f"the test does not know how to run this tutorial command: {command}")
        assert job is None, "the tutorial leaves a background program running"
    finally:
        if job is not None and job.poll() is None:
            job.kill()
            job.wait(RUN_S)
        for log in logs:
            log.close()
