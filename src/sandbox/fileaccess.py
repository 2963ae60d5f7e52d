"""Scoped file access: the file logic of the broker's file capabilities.

The ``read_file``, ``write_file`` and ``list_files`` capabilities let a
plugin reach files beneath the folders of its policy's ``files`` table,
which the host opens on the plugin's behalf. PluginFiles serves them.
The path checks here are lexical and give clear messages. openat2(2)
then enforces on the real tree that no symlink, ``..``, magic link or
mount point leads out of the folder. Only regular files with a single
link are read or written, and files and listings are bounded so that
they fit one reply.

A host usually runs as root, which passes every file permission check.
So on a root host each open, and the whole of a write, runs in a
short-lived thread that has the file-system uid and gid and the
supplementary groups of the plugin's workers, and no capabilities. File
permissions then apply as they would to the plugin, and the files that
the host creates belong to the plugin's uid. The other threads of the
host keep root's identity.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import CapabilityDenied

if TYPE_CHECKING:
    from .launcher import Identity
    from .policy import FileAccessPolicy

__all__ = [
    "Openat2Unavailable",
    "PluginFiles",
    "open_in_identity_thread",
    "openat2",
    "run_in_identity_thread",
]

IdentityLookup = Callable[[], "Identity | None"]
_Result = TypeVar("_Result")


@dataclass(frozen=True)
class PluginFiles:
    """The files that one plugin may reach, for one capability request.

    ``max_bytes`` bounds a file and the JSON array of a listing.
    ``show`` turns a path from the plugin into message text, with its
    secrets replaced. ``identity_of`` returns the identity of the
    plugin's workers, which a root host takes on for each open. Without
    it, or where it returns None, files are opened with the host's own
    identity. Each method raises CapabilityDenied to reject a request.
    """

    policy: FileAccessPolicy
    max_bytes: int
    show: Callable[[str], str]
    identity_of: IdentityLookup | None = None

    # A read or a listing depends on the caller's identity only at the
    # open, where the kernel checks file permissions, because reading
    # changes no file mode and uses no quota. So only the open runs as
    # the plugin, and the read runs in the calling thread.

    def read_file(self, path: str) -> bytes:
        """Return the content of the regular file at ``path``."""
        target = _locate(path, self.policy.readable(), "read", self.show)
        fd = self._run_as_plugin(target.open_for_read, "read")
        try:
            return _read_bounded(fd, target, self.max_bytes)
        finally:
            os.close(fd)

    def write_file(self, path: str, data: bytes) -> int:
        """Replace the content of the file at ``path``; return its size.

        Creates the file, with mode 0644 before the umask, if it is
        missing.
        """
        if len(data) > self.max_bytes:
            raise CapabilityDenied(
                f"write_file of {len(data)} bytes to {self.show(path)} is "
                f"larger than the maximum of {self.max_bytes} bytes"
            )
        target = _locate(path, self.policy.write, "write", self.show)
        # The truncation and the write run as the plugin too. With root's
        # CAP_FSETID the kernel would keep the file's set-user-ID and
        # set-group-ID bits, which it clears when another user writes,
        # and root may also use the blocks that quotas and the file
        # system reserve.
        self._run_as_plugin(partial(_replace_content, target, data), "write")
        return len(data)

    def list_files(self, path: str) -> list[str]:
        """Return the sorted names in the folder at ``path``."""
        target = _locate(path, self.policy.readable(), "list", self.show)
        fd = self._run_as_plugin(target.open_for_list, "list")
        try:
            return _list_bounded(fd, target, self.max_bytes)
        finally:
            os.close(fd)

    def _run_as_plugin(
        self, action: Callable[[], _Result], access: str
    ) -> _Result:
        """Run ``action`` with the identity of the plugin's workers.

        A denial by file permissions names the uid that the action ran
        as, so the user knows whom to give the folder to.
        """
        identity = None
        if self.identity_of is not None and os.geteuid() == 0:
            identity = self.identity_of()
        try:
            if identity is None:
                return action()
            return run_in_identity_thread(identity, action)
        except _FileModeDenied as error:
            uid = os.geteuid() if identity is None else identity.uid
            raise CapabilityDenied(
                f"{error} as uid {uid}; {_FILE_MODE_ADVICE[access]}, and "
                "every folder above it searchable by it"
            ) from None


class _FileModeDenied(CapabilityDenied):
    """An open that file permissions rejected (EACCES)."""


_FILE_MODE_ADVICE = {
    "read": "the file must be readable by that uid",
    "write": "the folder, and the file if it exists, must be writable by "
    "that uid",
    "list": "the folder must be readable by that uid",
}


# -- paths -------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """A path beneath an allowlisted folder, and how messages show it.

    The open_for_* methods return a descriptor of the path opened for
    one capability. Each raises CapabilityDenied for every failure, and
    each may run in another thread with the plugin's identity.
    """

    folder: str
    relative: str
    # The path as the plugin sent it, already redacted and shortened.
    shown: str

    def open_for_read(self) -> int:
        with _FolderHandle(self.folder) as folder_fd:
            _check_existing_is_regular(folder_fd, self, missing_ok=False)
            fd = _open_beneath(folder_fd, self, os.O_RDONLY | os.O_NONBLOCK)
        return _checked_regular(fd, self)

    def open_for_write(self) -> int:
        with _FolderHandle(self.folder) as folder_fd:
            _check_existing_is_regular(folder_fd, self, missing_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK
            fd = _open_beneath(folder_fd, self, flags, 0o644)
        return _checked_regular(fd, self)

    def open_for_list(self) -> int:
        with _FolderHandle(self.folder) as folder_fd:
            return _open_beneath(folder_fd, self, os.O_RDONLY | os.O_DIRECTORY)


def _locate(
    path: str,
    folders: tuple[str, ...],
    access: str,
    show: Callable[[str], str],
) -> _Target:
    """Split ``path`` into an allowlisted folder and the path beneath it.

    The checks here are lexical and give clear messages. openat2() then
    enforces that the path stays beneath the folder on the real tree.
    """
    _check_path_text(path, show)
    best: str | None = None
    for folder in folders:
        inside = path == folder or path.startswith(folder.rstrip("/") + "/")
        if inside and (best is None or len(folder) > len(best)):
            best = folder
    if best is None:
        listed = ", ".join(folders) or "none"
        raise CapabilityDenied(
            f"path {show(path)} is not in a folder the plugin may "
            f"{access}; its folders: {listed}"
        )
    relative = path[len(best) :].lstrip("/")
    return _Target(best, relative or ".", show(path))


def _check_path_text(path: str, show: Callable[[str], str]) -> None:
    if "\0" in path:
        raise CapabilityDenied(f"path {show(path)} contains a NUL character")
    if not path.startswith("/"):
        raise CapabilityDenied(
            f"path {show(path)} is not absolute; start it with /"
        )
    if ".." in path.split("/"):
        raise CapabilityDenied(f"path {show(path)} contains a '..' component")
    if os.path.normpath(path) != path:
        raise CapabilityDenied(
            f"path {show(path)} is not normalised; use "
            f"{show(os.path.normpath(path))}"
        )


class _FolderHandle:
    """An O_PATH descriptor of an allowlisted folder, closed on exit.

    No component of the folder's path may be a symlink either. A plugin
    that may write to a parent folder through ``filesystem`` could
    otherwise replace the folder with a symlink to anywhere. The path to
    the folder may cross mount points, since the folder itself can be on
    any file system.
    """

    def __init__(self, folder: str) -> None:
        self._folder = folder
        self._fd = -1

    def __enter__(self) -> int:
        try:
            self._fd = openat2(
                _AT_FDCWD,
                self._folder,
                os.O_PATH | os.O_DIRECTORY,
                resolve=RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
            )
        except Openat2Unavailable:
            raise
        except OSError as error:
            reason = error.strerror
            if error.errno == errno.ELOOP:
                reason = "its path goes through a symbolic link"
            denial = (
                _FileModeDenied
                if error.errno == errno.EACCES
                else CapabilityDenied
            )
            raise denial(
                f"failed to open folder {self._folder!r}: {reason}"
            ) from None
        return self._fd

    def __exit__(self, *exc_info: object) -> None:
        os.close(self._fd)


# -- openat2 -----------------------------------------------------------------

# From linux/openat2.h.
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_AT_FDCWD = -100
# Beneath the folder, through no symlink at all, and within the folder's
# mount. A symlink that stays inside could be swapped for one that leads
# out between two calls. A mount beneath the folder, such as a procfs or
# a bind mount of another tree, would bring in files the policy never
# named.
SAFE_RESOLVE = (
    RESOLVE_BENEATH
    | RESOLVE_NO_SYMLINKS
    | RESOLVE_NO_MAGICLINKS
    | RESOLVE_NO_XDEV
)

# System call numbers from asm/unistd_64.h (x86_64) and from the generic
# table asm-generic/unistd.h that aarch64 uses. openat2 needs Linux 5.6.
# NOTE: tests ran on x86_64 only.
_SYSCALL_NUMBERS = {
    "x86_64": {
        "openat2": 437,
        "setgroups": 116,
        "setfsuid": 122,
        "setfsgid": 123,
        "capset": 126,
    },
    "aarch64": {
        "openat2": 437,
        "setgroups": 159,
        "setfsuid": 151,
        "setfsgid": 152,
        "capset": 91,
    },
}


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


class Openat2Unavailable(CapabilityDenied):
    """This machine has no openat2(2), so files cannot be opened safely."""


@cache
def _syscall_table() -> tuple[Any, dict[str, int]]:
    """Return libc's syscall() and the system call numbers of this CPU."""
    if platform.system() != "Linux":
        raise Openat2Unavailable(
            "file capabilities need openat2(2), which only Linux has"
        )
    machine = platform.machine()
    if machine not in _SYSCALL_NUMBERS:
        raise Openat2Unavailable(
            f"file capabilities need openat2(2), whose system call number "
            f"on {machine!r} this module does not know"
        )
    function = ctypes.CDLL(None, use_errno=True).syscall
    function.restype = ctypes.c_long
    return function, _SYSCALL_NUMBERS[machine]


def openat2(
    dirfd: int,
    path: str,
    flags: int,
    mode: int = 0,
    resolve: int = SAFE_RESOLVE,
) -> int:
    """Open ``path`` relative to ``dirfd`` with openat2(2); return the fd.

    Raises OSError with the kernel's errno, and Openat2Unavailable where
    the kernel or the architecture lacks the system call.
    """
    syscall, numbers = _syscall_table()
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    fd: int = syscall(
        ctypes.c_long(numbers["openat2"]),
        ctypes.c_int(dirfd),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd >= 0:
        return fd
    code = ctypes.get_errno()
    if code == errno.ENOSYS:
        raise Openat2Unavailable(
            "file capabilities need openat2(2), which this kernel lacks "
            "(it needs Linux 5.6 or later)"
        )
    raise OSError(code, os.strerror(code), path)


# -- opening files as the plugin ---------------------------------------------

# From linux/capability.h.
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def run_in_identity_thread(
    identity: Identity, action: Callable[[], _Result]
) -> _Result:
    """Run ``action`` in a new thread that has taken on ``identity``.

    The kernel keeps credentials per thread, and the raw system calls
    change only the calling thread's. The thread ends after the action,
    so its identity is never restored or reused, and the calling thread
    keeps root's. Returns what ``action`` returns and raises what it
    raises.
    """
    outcome: list[_Result] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            _take_on_identity(identity)
            outcome.append(action())
        except BaseException as error:
            failure.append(error)

    thread = threading.Thread(target=run, name="sandbox-broker-as-plugin")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def open_in_identity_thread(
    identity: Identity, open_file: Callable[[], int]
) -> int:
    """Run ``open_file`` in a new thread that has taken on ``identity``.

    The descriptor works in every thread, and the kernel checked the
    file's permissions once, at the open.
    """
    return run_in_identity_thread(identity, open_file)


def _take_on_identity(identity: Identity) -> None:
    """Give this thread the file-system identity of ``identity``.

    Sets the supplementary groups, then the file-system gid and uid, and
    drops every capability last, since the earlier steps need
    CAP_SETGID and CAP_SETUID. glibc's setgroups() would change every
    thread of the process, so each step is a raw system call.
    """
    syscall, numbers = _syscall_table()
    groups = (ctypes.c_uint32 * len(identity.groups))(*identity.groups)
    _check_syscall(
        "setgroups",
        syscall(
            ctypes.c_long(numbers["setgroups"]),
            ctypes.c_size_t(len(identity.groups)),
            groups if identity.groups else None,
        ),
    )
    _set_fs_id(syscall, numbers["setfsgid"], "setfsgid", identity.gid)
    _set_fs_id(syscall, numbers["setfsuid"], "setfsuid", identity.uid)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    # Version 3 takes two structures, for capabilities 0-31 and 32-63.
    data = (_CapData * 2)()
    _check_syscall(
        "capset",
        syscall(
            ctypes.c_long(numbers["capset"]),
            ctypes.byref(header),
            data,
        ),
    )


def _set_fs_id(syscall: Any, number: int, name: str, value: int) -> None:
    """Call setfsuid or setfsgid, and check that the id took effect.

    Both return the previous id and never an error, so a second call with
    the same id returns the id in force.
    """
    syscall(ctypes.c_long(number), ctypes.c_uint32(value))
    current = syscall(ctypes.c_long(number), ctypes.c_uint32(value))
    if current != value:
        raise PermissionError(
            errno.EPERM, f"{name}({value}) failed: the id is still {current}"
        )


def _check_syscall(name: str, result: int) -> None:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{name}() failed: {os.strerror(code)}")


# -- files -------------------------------------------------------------------

# Denial reasons for the errnos of openat2, worded for the plugin.
_ESCAPE_REASONS = {
    errno.EXDEV: "leads out of its folder",
    errno.ELOOP: "goes through a symbolic link",
    errno.EAGAIN: "changed while it was resolved",
}


def _open_beneath(
    folder_fd: int, target: _Target, flags: int, mode: int = 0
) -> int:
    """Open a path beneath a folder, with every failure as a denial."""
    try:
        return openat2(folder_fd, target.relative, flags | os.O_NOCTTY, mode)
    except Openat2Unavailable:
        raise
    except OSError as error:
        raise _open_denial(target, error) from None


def _open_denial(target: _Target, error: OSError) -> CapabilityDenied:
    if error.errno == errno.EACCES:
        return _FileModeDenied(f"path {target.shown}: {error.strerror}")
    reason = _ESCAPE_REASONS.get(error.errno or 0, error.strerror)
    return CapabilityDenied(f"path {target.shown}: {reason}")


def _checked_regular(fd: int, target: _Target) -> int:
    """Return ``fd`` if it is a regular file; close it and deny if not."""
    try:
        _check_regular_file(fd, target)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_regular_file(fd: int, target: _Target) -> os.stat_result:
    """Deny anything but a regular file with a single link.

    A second hard link could be a file outside the folder that the plugin
    linked in, so such files are denied too.
    """
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise CapabilityDenied(
            f"path {target.shown} is not a regular file; only regular "
            "files can be read or written"
        )
    if info.st_nlink != 1:
        raise CapabilityDenied(
            f"path {target.shown} has {info.st_nlink} hard links; only "
            "files with a single link can be read or written"
        )
    return info


def _check_existing_is_regular(
    folder_fd: int, target: _Target, *, missing_ok: bool
) -> None:
    """Check the file type through an O_PATH descriptor before opening.

    An O_PATH open runs no device driver and does not wait on a FIFO, so
    a device node is rejected before it is opened for real. The check is
    repeated on the real descriptor, which is what counts if the file is
    swapped in between.
    """
    try:
        fd = openat2(folder_fd, target.relative, os.O_PATH)
    except Openat2Unavailable:
        raise
    except OSError as error:
        if missing_ok and error.errno == errno.ENOENT:
            return
        raise _open_denial(target, error) from None
    try:
        _check_regular_file(fd, target)
    finally:
        os.close(fd)


def _read_bounded(fd: int, target: _Target, limit: int) -> bytes:
    data = _read_at_most(fd, limit + 1)
    if len(data) > limit:
        raise CapabilityDenied(
            f"file {target.shown} is larger than the maximum of {limit} "
            "bytes that one reply can carry"
        )
    return data


def _read_at_most(fd: int, count: int) -> bytes:
    chunks: list[bytes] = []
    remaining = count
    while remaining > 0:
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _replace_content(target: _Target, data: bytes) -> None:
    """Open the file of ``target`` for writing and replace its content."""
    fd = target.open_for_write()
    try:
        # The open had no O_TRUNC: the file is truncated only once it is
        # known to be a regular file.
        os.ftruncate(fd, 0)
        _write_all(fd, data)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _list_bounded(fd: int, target: _Target, limit: int) -> list[str]:
    """Return the sorted names in a folder, if their listing fits a reply.

    Reads the folder entry by entry and stops as soon as the JSON array
    of the names read so far exceeds ``limit`` bytes, so a huge folder
    costs no more memory than one reply.
    """
    names: list[str] = []
    # "[" and "]", then each name, quoted and escaped, after ", ".
    size = 2
    with os.scandir(fd) as entries:
        for entry in entries:
            size += _listed_size(entry.name, target) + (2 if names else 0)
            if size > limit:
                raise CapabilityDenied(
                    f"the listing of folder {target.shown} is larger than "
                    f"the maximum of {limit} bytes that one reply can "
                    "carry; list a folder with fewer entries"
                )
            names.append(entry.name)
    return sorted(names)


def _listed_size(name: str, target: _Target) -> int:
    """Return the bytes that ``name`` takes in the JSON listing."""
    try:
        return len(json.dumps(name, ensure_ascii=False).encode())
    except UnicodeEncodeError:
        raise CapabilityDenied(
            f"folder {target.shown} contains a name that is not valid "
            "UTF-8, which no reply can carry"
        ) from None
