"""setup.py: copies a built clipdb extension into the package when one is found, so that an
installed package works without the build tree. Metadata lives in pyproject.toml.

Looked for, first found wins: $CLIPDB_EXTENSION, $CLIPDB_BUILD_DIR/sqlite-ext/clipdb.so, then
../../build/sqlite-ext/clipdb.so from this folder. Without one the package installs anyway and
finds the extension at run time (see clipdb.loadable_path)."""
import os
import pathlib
import shutil

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1: the wheel package's command
    from wheel.bdist_wheel import bdist_wheel

HERE = pathlib.Path(__file__).resolve().parent


def built_extension():
    candidates = []
    if os.environ.get("CLIPDB_EXTENSION"):
        candidates.append(pathlib.Path(os.environ["CLIPDB_EXTENSION"]))
    if os.environ.get("CLIPDB_BUILD_DIR"):
        candidates.append(pathlib.Path(os.environ["CLIPDB_BUILD_DIR"]) / "sqlite-ext" / "clipdb.so")
    candidates.append(HERE.parent.parent / "build" / "sqlite-ext" / "clipdb.so")
    return next((c for c in candidates if c.is_file()), None)


class BuildPyWithExtension(build_py):
    def run(self):
        super().run()
        ext = built_extension()
        target = pathlib.Path(self.build_lib) / "clipdb" / "clipdb.so"
        if ext is None:
            target.unlink(missing_ok=True)  # never ship a stale copy from an earlier build
            print("clipdb: no built extension found; the package will look for it at run time")
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ext, target)
        print(f"clipdb: bundled {ext}")


class DistributionWithExtension(Distribution):
    """With a bundled extension the package holds machine code: platform-specific (platlib)."""

    def has_ext_modules(self):
        return built_extension() is not None


class PlatformWheel(bdist_wheel):
    """A wheel that bundles the compiled extension is for this platform (py3-none-linux_x86_64
    on x86-64 Linux): the .so is machine code, but it calls no Python API, so any Python 3."""

    def get_tag(self):
        python, abi, plat = super().get_tag()
        return (python, abi, plat) if self.root_is_pure else ("py3", "none", plat)


setup(distclass=DistributionWithExtension,
      cmdclass={"build_py": BuildPyWithExtension, "bdist_wheel": PlatformWheel})
