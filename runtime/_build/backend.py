"""PEP 517 build backend: setuptools plus shoal's package map and cffi modules.

The repository's top level is fixed (`runtime/`, `net/`, `drivers/`, `apps/` are
imported as `shoal.runtime`, `shoal.net`, `shoal.drivers`, `shoal.apps`), so the
package list is derived here by walking those folders: a new subpackage can never
be left out of the wheel by a forgotten list entry. Every `*_build.py` next to the
code it serves is a cffi builder (API mode) and is compiled by `pip install`.
"""
import os

from setuptools import build_meta as _setuptools

ROOTS = {"runtime": "shoal.runtime", "net": "shoal.net", "drivers": "shoal.drivers", "apps": "shoal.apps"}


def _packages():
    packages, package_dir = [], {}
    for folder, name in ROOTS.items():
        package_dir[name] = folder
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "_")) and d != "__pycache__")
            if "__init__.py" in filenames:
                packages.append(name + dirpath[len(folder):].replace(os.sep, "."))
    return packages, package_dir


def _cffi_modules():
    found = []
    for folder in ROOTS:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
            found += [f"{dirpath}/{f}:ffibuilder" for f in sorted(filenames) if f.endswith("_build.py")]
    return found


class _Backend(_setuptools._BuildMetaBackend):
    def run_setup(self, setup_script="setup.py"):
        from setuptools import setup

        packages, package_dir = _packages()
        setup(packages=packages, package_dir=package_dir, cffi_modules=_cffi_modules(), zip_safe=False)


_backend = _Backend()
get_requires_for_build_wheel = _backend.get_requires_for_build_wheel
get_requires_for_build_sdist = _backend.get_requires_for_build_sdist
prepare_metadata_for_build_wheel = _backend.prepare_metadata_for_build_wheel
build_wheel = _backend.build_wheel
build_sdist = _backend.build_sdist
get_requires_for_build_editable = _backend.get_requires_for_build_editable
prepare_metadata_for_build_editable = _backend.prepare_metadata_for_build_editable
build_editable = _backend.build_editable
