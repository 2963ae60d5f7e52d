"""Set and read back the worker's own process state.

Uses python-prctl (the optional ``prctl`` extra) where it is installed and
falls back to calling prctl(2) through ctypes.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_GET_SECCOMP = 21
PR_CAPBSET_READ = 23
PR_GET_SECUREBITS = 27
PR_GET_NO_NEW_PRIVS = 39
CAP_LAST_CANDIDATE = 63

_libc: Any = None


def _prctl_module() -> ModuleType | None:
    # Imported on use: the worker puts its site folder on sys.path first.
    try:
        return importlib.import_module("prctl")
    except ImportError:  # the optional extra is not installed
        return None


def _raw_prctl(option: int, arg: int | bytes = 0) -> int:
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    result: int = _libc.prctl(option, arg, 0, 0, 0)
    return result


def harden(name: str) -> None:
    """Turn dumpability off and show ``name`` in ps for this process.

    execve resets dumpable to 1 for an unprivileged binary; left on, a
    process of the same uid could ptrace the worker or read its memory.
    """
    short = name.encode()[:15]
    module = _prctl_module()
    if module is not None:
        module.set_dumpable(False)
        module.set_name(short.decode(errors="ignore"))
    else:
        _raw_prctl(PR_SET_DUMPABLE, 0)
        _raw_prctl(PR_SET_NAME, short)
    if _raw_prctl(PR_GET_DUMPABLE) != 0:
        raise OSError("PR_SET_DUMPABLE did not take effect")


def report() -> dict[str, Any]:
    """Return the kernel's view of this process's credentials and state."""
    ruid, euid, suid = os.getresuid()
    rgid, egid, sgid = os.getresgid()
    return {
        "pid": os.getpid(),
        "uid": [ruid, euid, suid],
        "gid": [rgid, egid, sgid],
        "groups": sorted(os.getgroups()),
        "no_new_privs": _raw_prctl(PR_GET_NO_NEW_PRIVS),
        "seccomp": _raw_prctl(PR_GET_SECCOMP),
        "dumpable": _raw_prctl(PR_GET_DUMPABLE),
        "capability_bounding_set": _bounding_set(),
        "securebits": _raw_prctl(PR_GET_SECUREBITS),
        "name": _process_name(),
        "prctl_module": _prctl_module() is not None,
    }


def _bounding_set() -> list[int]:
    caps = []
    for cap in range(CAP_LAST_CANDIDATE + 1):
        if _raw_prctl(PR_CAPBSET_READ, cap) == 1:
            caps.append(cap)
    return caps


def _process_name() -> str:
    module = _prctl_module()
    if module is None:
        return ""
    name: str = module.get_name()
    return name
