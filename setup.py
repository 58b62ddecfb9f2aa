"""The compiled modules; everything else is in setup.cfg.

Each ``.pyx`` under ``wxmgw/`` sits beside the Python it serves and is the
only implementation of what it does (a ``.pyi`` beside it gives its types):
``make setup`` (``pip install -e .``) compiles them, so a fresh machine needs
a C compiler and Cython, which the build takes from PyPI (pyproject.toml).
"""

from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

MODULES = [
    Extension(".".join(path.with_suffix("").parts), [str(path)], extra_compile_args=["-O3"])
    for path in sorted(Path("wxmgw").glob("**/*.pyx"))
]

setup(ext_modules=cythonize(MODULES, language_level=3))
