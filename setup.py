"""setuptools reads everything from pyproject.toml but the cffi modules.

cffi hooks into setuptools through the ``cffi_modules`` keyword, which
pyproject.toml's [tool.setuptools] table does not accept. The wheel tag
is set here too, for the same reason.
"""

import sysconfig

from setuptools import setup


def wheel_options() -> dict[str, dict[str, str]]:
    """Tag wheels cp310-abi3, which CPython 3.10 and later all load.

    cffi compiles sandbox._native against the limited API already; the
    tag lets installers use one wheel for every version. Free-threaded
    builds have no limited API, so their wheels keep the version tag.
    """
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        return {}
    return {"bdist_wheel": {"py_limited_api": "cp310"}}


setup(
    cffi_modules=["build_ffi.py:ffibuilder"],
    options=wheel_options(),
)
