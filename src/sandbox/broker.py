"""The capability broker: the host's side of every capability call.

A plugin requests a capability over its channel, and CapabilityBroker
decides and carries it out. A call succeeds only if the plugin's
plugin.toml lists the capability, its policy grants it, a handler is
registered and the arguments match the handler's schema. Every decision
becomes a ``capability_granted`` or ``capability_denied`` audit event.

Built-in capabilities, each denied unless the policy grants it:

- ``read_env(name)``: a host environment variable named in ``env``.
- ``get_secret(name)``: a secret that the host gave the plugin with
  provide_secret() and that the policy names in ``secrets``.
- ``read_file(path)``, ``write_file(path, data)``, ``list_files(path)``:
  files beneath the folders of the policy's ``files`` table, opened by
  the host with openat2(2) so that no symlink, ``..`` or magic link
  leads out of the folder.

PluginHost registers ``notify`` itself, because it keeps the
notifications.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import stat
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from .audit import AuditLog
from .errors import CapabilityDenied
from .manifest import PluginManifest
from .policy import _CAPABILITY_NAME, _PLUGIN_NAME, _SECRET_NAME, Policy

__all__ = [
    "Argument",
    "CapabilityBroker",
    "CapabilityHandler",
    "Schema",
    "check_arguments",
    "redact_secrets",
]

CapabilityHandler = Callable[[str, dict[str, Any]], Any]

REDACTED = "[redacted]"
# A secret must fit in one reply with room to spare.
MAX_SECRET_CHARS = 65536
# Room for the JSON-RPC envelope around a file's bytes in one message,
# so that a reply of at most max_message_bytes - this always fits.
MESSAGE_ENVELOPE_BYTES = 256
MAX_PATH_CHARS = 4096
_MAX_SHOWN_CHARS = 80


@dataclass(frozen=True)
class Argument:
    """One argument of a capability: its types, and whether it is needed.

    ``types`` are matched exactly, so ``int`` does not accept True, and
    ``type(None)`` accepts None. ``max_length`` bounds the len() of a
    str, bytes or list value.
    """

    types: type | tuple[type, ...]
    required: bool = True
    max_length: int | None = None

    def __post_init__(self) -> None:
        types = self.types if isinstance(self.types, tuple) else (self.types,)
        if not types or not all(isinstance(t, type) for t in types):
            raise TypeError(
                f"Argument types must be a type or a tuple of types, got "
                f"{self.types!r}"
            )
        if self.max_length is not None and self.max_length < 0:
            raise ValueError(
                f"max_length must be at least 0, got {self.max_length}"
            )

    def accepts_type(self, value: object) -> bool:
        types = self.types if isinstance(self.types, tuple) else (self.types,)
        return type(value) in types

    def type_names(self) -> str:
        types = self.types if isinstance(self.types, tuple) else (self.types,)
        return " or ".join(t.__name__ for t in types)


Schema = Mapping[str, Argument]


def check_arguments(capability: str, schema: Schema, params: object) -> None:
    """Raise CapabilityDenied unless ``params`` matches ``schema``.

    Every required argument must be present, no argument outside the
    schema may be, and each value must have one of its types and at most
    its maximum length.
    """
    if not isinstance(params, dict):
        raise CapabilityDenied(
            f"capability {capability!r} needs its arguments as an object"
        )
    for name in params:
        if name not in schema:
            expected = ", ".join(schema) or "none"
            raise CapabilityDenied(
                f"capability {capability!r} takes no argument "
                f"{_shown(name)}; its arguments are: {expected}"
            )
    for name, argument in schema.items():
        if name in params:
            _check_value(capability, name, argument, params[name])
        elif argument.required:
            raise CapabilityDenied(
                f"capability {capability!r} needs argument {name!r}"
            )


def _check_value(
    capability: str, name: str, argument: Argument, value: object
) -> None:
    if not argument.accepts_type(value):
        raise CapabilityDenied(
            f"argument {name!r} of capability {capability!r} must be "
            f"{argument.type_names()}, got {type(value).__name__}"
        )
    limit = argument.max_length
    if (
        limit is not None
        and isinstance(value, (str, bytes, list))
        and len(value) > limit
    ):
        raise CapabilityDenied(
            f"argument {name!r} of capability {capability!r} is "
            f"{len(value)} long; the maximum is {limit}"
        )


def redact_secrets(text: str, secrets: Iterable[str]) -> str:
    """Replace each occurrence of a secret value in ``text``.

    Longer values go first, so that a secret that contains another is
    replaced whole.
    """
    for value in sorted(secrets, key=len, reverse=True):
        if value:
            text = text.replace(value, REDACTED)
    return text


def _shown(value: object) -> str:
    """Describe a value from a plugin for a message, shortened."""
    text = repr(value)
    if len(text) > _MAX_SHOWN_CHARS:
        return text[: _MAX_SHOWN_CHARS - 3] + "..."
    return text


@dataclass(frozen=True)
class _Capability:
    handler: CapabilityHandler
    schema: Schema | None
    # Argument name -> audit event field for the arguments worth
    # recording. Values are recorded only once they passed the schema.
    audited: Mapping[str, str] = field(default_factory=dict)


class CapabilityBroker:
    """Decides, runs and audits the capability calls of every plugin.

    ``manifest_of`` and ``policy_of`` return a plugin's manifest and
    merged policy. Calling the broker serves one request.
    """

    def __init__(
        self,
        audit: AuditLog,
        *,
        manifest_of: Callable[[str], PluginManifest],
        policy_of: Callable[[str], Policy],
    ) -> None:
        self._audit = audit
        self._manifest_of = manifest_of
        self._policy_of = policy_of
        self._capabilities: dict[str, _Capability] = {}
        # Plugin -> secret name -> value. provide_secret() may run on any
        # thread while calls read it.
        self._secrets: dict[str, dict[str, str]] = {}
        self._secrets_lock = threading.Lock()
        self._register_builtins()

    def register(
        self,
        name: str,
        handler: CapabilityHandler,
        *,
        schema: Schema | None = None,
        audited: Mapping[str, str] | None = None,
    ) -> None:
        """Serve capability ``name`` with ``handler(plugin, params)``.

        With a ``schema``, the handler runs only for arguments that match
        it. Without one, it gets the params object unchecked. ``audited``
        maps argument names to the audit event fields that record them.
        """
        if _CAPABILITY_NAME.pattern.fullmatch(name) is None:
            raise ValueError(
                f"invalid capability name {name!r}: expected "
                f"{_CAPABILITY_NAME.description}"
            )
        if schema is not None:
            _check_schema(schema)
        _check_audited(audited or {}, schema)
        self._capabilities[name] = _Capability(
            handler, schema, dict(audited or {})
        )

    def __call__(
        self, plugin: str, capability: str, params: dict[str, Any]
    ) -> Any:
        """Serve one request; raise CapabilityDenied to reject it."""
        fields: dict[str, Any] = {}
        try:
            entry = self._granted_capability(plugin, capability)
            if entry.schema is not None:
                check_arguments(capability, entry.schema, params)
                fields = self._audited_fields(plugin, entry, params)
            result = entry.handler(plugin, params)
        except CapabilityDenied as error:
            self._audit.emit(
                "capability_denied",
                plugin,
                capability=capability,
                reason=self.redact(plugin, str(error)),
                **fields,
            )
            raise
        self._audit.emit(
            "capability_granted", plugin, capability=capability, **fields
        )
        return result

    # -- secrets -------------------------------------------------------------

    def provide_secret(self, plugin: str, name: str, value: str) -> None:
        """Hold secret ``name`` for ``plugin``, replacing an earlier value.

        The plugin fetches it with get_secret() if its policy lists
        ``name`` in ``secrets``. The value never enters audit events, and
        is replaced by "[redacted]" in the worker's output and errors
        that the host shows.
        """
        _check_name(_PLUGIN_NAME.pattern.fullmatch, "plugin", plugin)
        _check_name(_SECRET_NAME.pattern.fullmatch, "secret", name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"secret {name!r} must be a non-empty str")
        if len(value) > MAX_SECRET_CHARS:
            raise ValueError(
                f"secret {name!r} is longer than {MAX_SECRET_CHARS} characters"
            )
        with self._secrets_lock:
            self._secrets.setdefault(plugin, {})[name] = value

    def secret_values(self, plugin: str) -> tuple[str, ...]:
        """Return the values of every secret provided to ``plugin``."""
        with self._secrets_lock:
            return tuple(self._secrets.get(plugin, {}).values())

    def redact(self, plugin: str, text: str) -> str:
        """Replace each secret value provided to ``plugin`` in ``text``."""
        return redact_secrets(text, self.secret_values(plugin))

    # -- checks --------------------------------------------------------------

    def _granted_capability(self, plugin: str, capability: str) -> _Capability:
        manifest = self._manifest_of(plugin)
        policy = self._policy_of(plugin)
        listed = capability in manifest.capabilities
        if not (listed and capability in policy.capabilities):
            if listed:
                reason = "its policy does not grant it"
            else:
                reason = "its plugin.toml does not list it in capabilities"
            raise CapabilityDenied(
                f"capability {capability[:64]!r} is not available to plugin "
                f"{plugin!r}: {reason}"
            )
        entry = self._capabilities.get(capability)
        if entry is None:
            raise CapabilityDenied(
                f"capability {capability!r} has no handler in this host; "
                "register one with PluginHost.register_capability"
            )
        return entry

    def _audited_fields(
        self, plugin: str, entry: _Capability, params: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            event_field: self.redact(plugin, str(params[argument]))
            for argument, event_field in entry.audited.items()
            if argument in params
        }

    # -- built-in capabilities -----------------------------------------------

    def _register_builtins(self) -> None:
        name = {"name": Argument(str, max_length=128)}
        path = {"path": Argument(str, max_length=MAX_PATH_CHARS)}
        self.register(
            "read_env", self._read_env, schema=name, audited={"name": "name"}
        )
        self.register(
            "get_secret",
            self._get_secret,
            schema=name,
            audited={"name": "secret"},
        )
        self.register(
            "read_file", self._read_file, schema=path, audited={"path": "path"}
        )
        self.register(
            "write_file",
            self._write_file,
            schema={**path, "data": Argument(bytes)},
            audited={"path": "path"},
        )
        self.register(
            "list_files",
            self._list_files,
            schema=path,
            audited={"path": "path"},
        )

    def _read_env(self, plugin: str, params: dict[str, Any]) -> str | None:
        name = params["name"]
        if name not in self._policy_of(plugin).env:
            raise CapabilityDenied(
                f"variable {_shown(name)} is not in the env allowlist of "
                f"plugin {plugin!r}"
            )
        return os.environ.get(name)

    def _get_secret(self, plugin: str, params: dict[str, Any]) -> str:
        name = params["name"]
        if name not in self._policy_of(plugin).secrets:
            raise CapabilityDenied(
                f"secret {_shown(name)} is not in the secrets list of the "
                f"policy of plugin {plugin!r}"
            )
        with self._secrets_lock:
            value = self._secrets.get(plugin, {}).get(name)
        if value is None:
            raise CapabilityDenied(
                f"the host has not provided secret {name!r} to plugin "
                f"{plugin!r}; call PluginHost.provide_secret first"
            )
        return value

    def _read_file(self, plugin: str, params: dict[str, Any]) -> bytes:
        policy = self._policy_of(plugin)
        path = params["path"]
        folder, relative = _locate(path, policy.files.readable(), "read")
        limit = _file_limit(policy)
        with _FolderHandle(folder) as folder_fd:
            return _read_regular(folder_fd, relative, path, limit)

    def _write_file(self, plugin: str, params: dict[str, Any]) -> int:
        policy = self._policy_of(plugin)
        path, data = params["path"], params["data"]
        limit = _file_limit(policy)
        if len(data) > limit:
            raise CapabilityDenied(
                f"write_file of {len(data)} bytes to {_shown(path)} is "
                f"larger than the maximum of {limit} bytes"
            )
        folder, relative = _locate(path, policy.files.write, "write")
        with _FolderHandle(folder) as folder_fd:
            _write_regular(folder_fd, relative, path, data)
        return len(data)

    def _list_files(self, plugin: str, params: dict[str, Any]) -> list[str]:
        policy = self._policy_of(plugin)
        path = params["path"]
        folder, relative = _locate(path, policy.files.readable(), "list")
        with _FolderHandle(folder) as folder_fd:
            return _list_folder(folder_fd, relative, path, _file_limit(policy))


def _check_schema(schema: Schema) -> None:
    for name, argument in schema.items():
        if not isinstance(name, str) or not isinstance(argument, Argument):
            raise TypeError(
                "a schema maps argument names to Argument objects, got "
                f"{name!r}: {argument!r}"
            )


# Fields that every capability event already has.
_EVENT_FIELDS = frozenset({"event", "plugin", "time", "capability", "reason"})


def _check_audited(audited: Mapping[str, str], schema: Schema | None) -> None:
    """Check that audited arguments are in the schema, which bounds them."""
    for argument, event_field in audited.items():
        if schema is None or argument not in schema:
            raise ValueError(
                f"audited argument {argument!r} is not in the schema"
            )
        if event_field in _EVENT_FIELDS:
            raise ValueError(
                f"audit event field {event_field!r} is reserved; choose "
                "another name"
            )


def _check_name(
    matches: Callable[[str], object], kind: str, name: object
) -> None:
    if not isinstance(name, str) or not matches(name):
        raise ValueError(f"invalid {kind} name {name!r}")


def _file_limit(policy: Policy) -> int:
    return policy.max_message_bytes - MESSAGE_ENVELOPE_BYTES


# -- paths -------------------------------------------------------------------


def _locate(
    path: str, folders: tuple[str, ...], access: str
) -> tuple[str, str]:
    """Split ``path`` into an allowlisted folder and the path beneath it.

    The checks here are lexical and give clear messages. openat2() then
    enforces that the path stays beneath the folder on the real tree.
    """
    _check_path_text(path)
    best: str | None = None
    for folder in folders:
        inside = path == folder or path.startswith(folder.rstrip("/") + "/")
        if inside and (best is None or len(folder) > len(best)):
            best = folder
    if best is None:
        shown = ", ".join(folders) or "none"
        raise CapabilityDenied(
            f"path {_shown(path)} is not in a folder the plugin may "
            f"{access}; its folders: {shown}"
        )
    relative = path[len(best) :].lstrip("/")
    return best, relative or "."


def _check_path_text(path: str) -> None:
    if "\0" in path:
        raise CapabilityDenied(f"path {_shown(path)} contains a NUL character")
    if not path.startswith("/"):
        raise CapabilityDenied(
            f"path {_shown(path)} is not absolute; start it with /"
        )
    if ".." in path.split("/"):
        raise CapabilityDenied(
            f"path {_shown(path)} contains a '..' component"
        )
    if os.path.normpath(path) != path:
        raise CapabilityDenied(
            f"path {_shown(path)} is not normalised; use "
            f"{_shown(os.path.normpath(path))}"
        )


class _FolderHandle:
    """An O_PATH descriptor of an allowlisted folder, closed on exit.

    No component of the folder's path may be a symlink either. A plugin
    that may write to a parent folder through ``filesystem`` could
    otherwise replace the folder with a symlink to anywhere.
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
            raise CapabilityDenied(
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
# Beneath the folder, and through no symlink at all: a symlink that stays
# inside could be swapped for one that leads out between two calls.
SAFE_RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS

# openat2 (Linux 5.6 and later) is number 437 on x86_64, and on aarch64,
# which uses the generic system call table. NOTE: tests ran on x86_64 only.
_OPENAT2_NUMBERS = {"x86_64": 437, "aarch64": 437}


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


class Openat2Unavailable(CapabilityDenied):
    """This machine has no openat2(2), so files cannot be opened safely."""


@cache
def _openat2_syscall() -> tuple[Any, int]:
    """Return libc's syscall() and the number of openat2."""
    if platform.system() != "Linux":
        raise Openat2Unavailable(
            "file capabilities need openat2(2), which only Linux has"
        )
    machine = platform.machine()
    if machine not in _OPENAT2_NUMBERS:
        raise Openat2Unavailable(
            f"file capabilities need openat2(2), whose system call number "
            f"on {machine!r} this module does not know"
        )
    function = ctypes.CDLL(None, use_errno=True).syscall
    function.restype = ctypes.c_long
    return function, _OPENAT2_NUMBERS[machine]


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
    syscall, number = _openat2_syscall()
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    fd: int = syscall(
        ctypes.c_long(number),
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


# Denial reasons for the errnos of openat2, worded for the plugin.
_ESCAPE_REASONS = {
    errno.EXDEV: "leads out of its folder",
    errno.ELOOP: "goes through a symbolic link",
    errno.EAGAIN: "changed while it was resolved",
}


def _open_beneath(
    folder_fd: int, relative: str, path: str, flags: int, mode: int = 0
) -> int:
    """Open a path beneath a folder, with every failure as a denial."""
    try:
        return openat2(folder_fd, relative, flags | os.O_NOCTTY, mode)
    except Openat2Unavailable:
        raise
    except OSError as error:
        reason = _ESCAPE_REASONS.get(error.errno or 0, error.strerror)
        raise CapabilityDenied(f"path {_shown(path)}: {reason}") from None


def _check_regular_file(fd: int, path: str) -> os.stat_result:
    """Deny anything but a regular file with a single link.

    A second hard link could be a file outside the folder that the plugin
    linked in, so such files are denied too.
    """
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise CapabilityDenied(
            f"path {_shown(path)} is not a regular file; only regular "
            "files can be read or written"
        )
    if info.st_nlink != 1:
        raise CapabilityDenied(
            f"path {_shown(path)} has {info.st_nlink} hard links; only "
            "files with a single link can be read or written"
        )
    return info


def _check_existing_is_regular(
    folder_fd: int, relative: str, path: str, *, missing_ok: bool
) -> None:
    """Check the file type through an O_PATH descriptor before opening.

    An O_PATH open runs no device driver and does not wait on a FIFO, so
    a device node is rejected before it is opened for real. The check is
    repeated on the real descriptor, which is what counts if the file is
    swapped in between.
    """
    try:
        fd = openat2(folder_fd, relative, os.O_PATH)
    except Openat2Unavailable:
        raise
    except OSError as error:
        if missing_ok and error.errno == errno.ENOENT:
            return
        reason = _ESCAPE_REASONS.get(error.errno or 0, error.strerror)
        raise CapabilityDenied(f"path {_shown(path)}: {reason}") from None
    try:
        _check_regular_file(fd, path)
    finally:
        os.close(fd)


def _read_regular(
    folder_fd: int, relative: str, path: str, limit: int
) -> bytes:
    _check_existing_is_regular(folder_fd, relative, path, missing_ok=False)
    fd = _open_beneath(folder_fd, relative, path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        _check_regular_file(fd, path)
        data = _read_at_most(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise CapabilityDenied(
            f"file {_shown(path)} is larger than the maximum of {limit} "
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


def _write_regular(
    folder_fd: int, relative: str, path: str, data: bytes
) -> None:
    _check_existing_is_regular(folder_fd, relative, path, missing_ok=True)
    # No O_TRUNC: the file is truncated only once it is known to be a
    # regular file.
    fd = _open_beneath(
        folder_fd,
        relative,
        path,
        os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK,
        0o644,
    )
    try:
        _check_regular_file(fd, path)
        os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _list_folder(
    folder_fd: int, relative: str, path: str, limit: int
) -> list[str]:
    fd = _open_beneath(folder_fd, relative, path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        names = sorted(os.listdir(fd))
    finally:
        os.close(fd)
    try:
        size = len(json.dumps(names, ensure_ascii=False).encode())
    except UnicodeEncodeError:
        raise CapabilityDenied(
            f"folder {_shown(path)} contains a name that is not valid "
            "UTF-8, which no reply can carry"
        ) from None
    if size > limit:
        raise CapabilityDenied(
            f"the listing of folder {_shown(path)} is larger than the "
            f"maximum of {limit} bytes that one reply can carry"
        )
    return names
