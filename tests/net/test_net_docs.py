"""docs/api.md's runnable example runs as written, on one and two shards."""
import os
import pathlib
import re
import socket
import subprocess
import sys

import pytest

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "api.md"


def example_source():
    text = DOC.read_text()
    section = text.split("## A runnable example", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.parametrize("options", [["--smp", "1", "--reactor-backend", "asyncio"],
                                     ["--smp", "2", "--overprovisioned"]])
def test_runnable_example(tmp_path, options):
    script = tmp_path / "echo_demo.py"
    script.write_text(example_source())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = subprocess.run([sys.executable, str(script), *options],
                         env={**os.environ, "ECHO_DEMO_PORT": str(port)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    shards = options[1]
    assert out.stdout.strip() == f"hello, shoal from {shards} shard(s)"
