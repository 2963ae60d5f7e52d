"""setuptools reads everything from pyproject.toml but the cffi modules.

cffi hooks into setuptools through the ``cffi_modules`` keyword, which
pyproject.toml's [tool.setuptools] table does not accept.
"""

from setuptools import setup

setup(cffi_modules=["build_ffi.py:ffibuilder"])
