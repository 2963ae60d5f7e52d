"""cffi builder for the C code in csrc/, compiled as sandbox._native.

Environment switches, read once here:
  SANDBOX_CFLAGS          extra compiler flags, split on white space
                          (e.g. "-O0 -g").
  SANDBOX_PORTABLE_BUILD  "1" compiles without the Linux-only parts
                          (csrc/platform.h), as on macOS, to test that
                          build on a Linux machine.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cffi import FFI

CSRC = Path(__file__).resolve().parent / "csrc"
HEADERS = ("launcher.h", "jsonscan.h", "ring.h")
SOURCES = ("launcher.c", "jsonscan.c", "ring.c")
# An undeclared function is a Linux or glibc extension that a guard in
# csrc/platform.h left out, which C99 forbids but older compilers accept.
WARNINGS = ("-Wall", "-Wextra", "-Werror=implicit-function-declaration")


def cdef_from_header(text: str) -> str:
    """Strip comments and preprocessor lines, which cffi's parser rejects.

    The header is the one declaration of the C interface, so the cdef
    cannot drift from what the compiler reads.
    """
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.DOTALL)
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    return "\n".join(lines)


def portable_build() -> bool:
    return os.environ.get("SANDBOX_PORTABLE_BUILD", "") == "1"


def make_builder() -> FFI:
    builder = FFI()
    for header in HEADERS:
        builder.cdef(cdef_from_header((CSRC / header).read_text()))
    extra = os.environ.get("SANDBOX_CFLAGS", "").split()
    macros = [("SANDBOX_PORTABLE", "1")] if portable_build() else []
    builder.set_source(
        "sandbox._native",
        "".join(f'#include "{header}"\n' for header in HEADERS),
        sources=[f"csrc/{source}" for source in SOURCES],
        include_dirs=["csrc"],
        define_macros=macros,
        extra_compile_args=["-std=gnu11", *WARNINGS, *extra],
    )
    return builder


ffibuilder = make_builder()

if __name__ == "__main__":
    ffibuilder.compile(tmpdir="build", verbose=True)
