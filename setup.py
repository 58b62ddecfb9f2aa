"""The compiled modules; everything else is in setup.cfg.

Each ``.pyx`` sits beside the Python it serves and is its only implementation:
``make setup`` (``pip install -e .``) compiles it, so a fresh machine needs a C
compiler and Cython, which the build pulls from PyPI (pyproject.toml).
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension("wxmgw.media._resample", ["wxmgw/media/_resample.pyx"],
                   extra_compile_args=["-O3"])],
        language_level=3,
    )
)
