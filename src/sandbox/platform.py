"""Kernel mechanisms that workers rely on, and whether this platform has them.

Linux is the full target. On macOS, and on Linux with an extension built
with SANDBOX_PORTABLE_BUILD=1, the C launcher leaves out the parent-death
signal, the capability bounding set and no_new_privs, and fails Landlock
and seccomp with ENOSYS. The shared-memory rings cannot wait there
either, having no futex. Workers on such a platform get rlimits, the uid
drop, a new session and the stream transport, and nothing more.

This module is the one place that decides it: the host picks its
transport, ``sandbox verify`` reports protections missing, and a strict
host rejects the platform from here.
"""

from __future__ import annotations

import functools
import platform
import sys

__all__ = [
    "LINUX_ONLY_PROTECTIONS",
    "has_linux_features",
    "missing_protections",
    "native_built_for_linux",
    "unsupported_reason",
]

# Protection names, as ``sandbox verify`` reports them, of what only the
# Linux build of the C launcher applies. The dumpable flag and pidfds are
# set and used from Python, so verify checks the kernel for them itself.
LINUX_ONLY_PROTECTIONS = {
    "seccomp": "seccomp-bpf system call filter",
    "no_new_privs": "no_new_privs flag",
    "landlock": "Landlock filesystem rules",
    "landlock_fs_rights": "Landlock filesystem rights",
    "landlock_tcp": "Landlock TCP rules",
    "landlock_signal_scope": "Landlock signal scope",
    "landlock_unix_scope": "Landlock abstract unix socket scope",
    "capabilities": "empty capability bounding set",
}


@functools.cache
def native_built_for_linux() -> bool:
    """Return whether sandbox._native was compiled with its Linux stages."""
    from .launcher import lib

    return bool(lib.sandbox_built_for_linux())


def unsupported_reason() -> str | None:
    """Return why the Linux-only mechanisms are absent, or None.

    The kernel comes first: a Linux build cannot run elsewhere, and a
    portable build on Linux lacks the mechanisms as macOS does.
    """
    if not sys.platform.startswith("linux"):
        return f"Linux only, and this host runs {platform.system()}"
    if not native_built_for_linux():
        return (
            "left out of this build of sandbox._native "
            "(SANDBOX_PORTABLE_BUILD=1)"
        )
    return None


def has_linux_features() -> bool:
    """Return whether workers here can get every protection of a policy."""
    return unsupported_reason() is None


def missing_protections() -> dict[str, str]:
    """Return each protection this platform lacks, with the reason.

    Keys are the names of LINUX_ONLY_PROTECTIONS. An empty dict means the
    platform lacks none of them; whether the kernel offers each one is
    then for sandbox.verify to find out.
    """
    reason = unsupported_reason()
    if reason is None:
        return {}
    return {
        name: f"{description}: {reason}"
        for name, description in LINUX_ONLY_PROTECTIONS.items()
    }
