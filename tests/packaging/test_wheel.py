"""The wheel, installed into a fresh venv, carries every subpackage and the compiled modules."""
import os
import pathlib
import subprocess
import sys
import venv

ROOT = pathlib.Path(__file__).resolve().parents[2]
FOLDERS = {"runtime": "shoal.runtime", "net": "shoal.net", "drivers": "shoal.drivers", "apps": "shoal.apps"}


def expected_modules():
    """Every package under the mapped folders, and every cffi module a `*_build.py` makes."""
    names = []
    for folder, package in FOLDERS.items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT / folder)
            if any(part.startswith(("_", ".")) for part in rel.parts):
                continue
            names.append(".".join([package, *rel.parts]))
        for builder in sorted((ROOT / folder).rglob("*_build.py")):
            if "_build" in builder.relative_to(ROOT / folder).parts[:-1]:
                continue
            text = builder.read_text()
            start = text.index('set_source(') + len('set_source(')
            names.append(text[start:].split(",")[0].strip().strip("\"'"))
    return names


def test_wheel_installs_and_imports_every_subpackage(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
                   check=True, timeout=600)
    (wheel,) = wheels.glob("shoal-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], check=True, timeout=600)
    modules = expected_modules()
    assert "shoal.runtime" in modules and "shoal.runtime._smp" in modules
    script = ("import importlib, sys\n"
              f"for name in {modules!r}:\n"
              "    module = importlib.import_module(name)\n"
              "    assert 'site-packages' in module.__file__, (name, module.__file__)\n"
              "print('imported', len(sys.argv))\n")
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    out = subprocess.run([str(python), "-c", script], cwd=tmp_path, env=clean_env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    hello = subprocess.run([str(python), "-m", "shoal.apps.hello", "--smp", "1"], cwd=tmp_path, env=clean_env,
                           capture_output=True, text=True, timeout=120)
    assert hello.returncode == 0 and "shard 0 of 1" in hello.stdout, hello.stderr
