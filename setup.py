"""setuptools hooks; the metadata is in pyproject.toml.

The sdist and the wheel record the commit they are built from in ``llamaswap/__init__.py``
(``COMMIT``, ``BUILD_DATE``), as ``build_zipapp.py`` does for the .pyz, so ``llama-swap
-version`` of an installed package names it. Only a git checkout is stamped: a wheel built
from the sdist keeps what the sdist recorded, and an editable install stays ``unknown``.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = os.path.dirname(os.path.abspath(__file__))


def stamp(init_py: str) -> None:
    """Rewrite the copy ``init_py`` (never the source: sdist hard-links its files)."""
    if not os.path.exists(os.path.join(ROOT, ".git")):
        return
    import sys
    sys.path.insert(0, ROOT)
    from build_zipapp import stamp_version
    with open(init_py, "rb") as f:
        text = stamp_version(f.read())
    os.unlink(init_py)
    with open(init_py, "wb") as f:
        f.write(text)


class StampedBuildPy(build_py):
    def run(self):
        super().run()
        if not getattr(self, "editable_mode", False):
            stamp(os.path.join(self.build_lib, "llamaswap", "__init__.py"))


class StampedSdist(sdist):
    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        stamp(os.path.join(base_dir, "llamaswap", "__init__.py"))


setup(cmdclass={"build_py": StampedBuildPy, "sdist": StampedSdist})
