"""Build hook for the optional compiled row encoder (``connectors/_rowjson.pyx``, see connectors/rowjson.py).

Everything else is declared in pyproject.toml. Without a C compiler the build warns and goes on: the
connector then runs the pure-Python encoder (``WALDUCK_CONNECTOR_ROW_ENCODER=native`` refuses to start instead).
"""

from __future__ import annotations

import logging

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

log = logging.getLogger("walduck.setup")


class OptionalBuildExt(build_ext):
    """Build the extension if possible; a missing compiler is not a failed install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # distutils raises several unrelated types for "no compiler"
            log.warning("walduck: compiled row encoder not built (%s); the Python encoder will serve", exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            log.warning("walduck: %s not built (%s); the Python encoder will serve", ext.name, exc)


setup(
    ext_modules=cythonize(
        [Extension("connectors._rowjson", ["connectors/_rowjson.pyx"], extra_compile_args=["-O2"])],
        compiler_directives={"language_level": "3"},
        quiet=True,
    ),
    cmdclass={"build_ext": OptionalBuildExt},
)
