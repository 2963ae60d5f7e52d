"""Per-plugin policies: the model, TOML loading, validation and defaults.

A policy file has a ``[defaults]`` table and one ``[plugins.NAME]`` table
per plugin::

    [defaults]
    resources = { memory_mb = 128, cpu_seconds = 10 }

    [plugins.notification]
    capabilities = ["notify"]
    filesystem = { write = ["/tmp/notifications"] }
    resources = { memory_mb = 64 }

Everything is denied unless a table grants it: a plugin without a table
gets the ``[defaults]`` policy, and an empty ``[defaults]`` grants no
capability, no network and no file access beyond what the launcher gives
every worker. Every invalid value raises PolicyError with the file, the
plugin and the dotted key.

``network`` takes one of three forms::

    network = false          # the default: no network
    network = true           # every socket family, address and port
    network = [443, 8080]    # TCP connect() to these ports only

Under ``false``, the seccomp program makes socket() fail for every
family, Landlock denies TCP bind() and connect(), and a root host also
gives the worker an empty network namespace. Under a port
list, seccomp allows socket() only for TCP over IPv4 and IPv6 and
denies listen(), so UDP (and with it DNS lookups), raw, packet, netlink
and unix sockets stay denied. Landlock then allows connect() to the
listed ports and denies bind(). A port rule matches every address,
because Landlock has no address rules and the worker keeps the host's
network namespace: ``[443]`` reaches port 443 on loopback as on any
other host.
Under ``true``, neither layer filters sockets. Under every form,
Landlock's scope denies connecting to abstract unix sockets that were
created outside the worker.

Two keys configure capabilities that the host carries out for a plugin.
``secrets`` lists the names of the secrets that the plugin may fetch with
the ``get_secret`` capability. ``files`` lists folders that the host reads
(``read``) or reads and writes (``write``) for the plugin through the
``read_file``, ``write_file`` and ``list_files`` capabilities. The worker
never opens these folders itself, so they are separate from
``filesystem``, which Landlock enforces in the worker. A ``files``
folder in /proc, /sys or /dev, after symbolic links are resolved, is
rejected::

    [plugins.reports]
    capabilities = ["get_secret", "read_file", "write_file"]
    secrets = ["API_TOKEN"]
    files = { read = ["/srv/data"], write = ["/srv/out"] }
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import pwd
import re
import reprlib
import stat
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from .errors import PolicyError

if sys.version_info >= (3, 11):
    import tomllib
else:  # tomllib is in the standard library from Python 3.11 on.
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = [
    "DEFAULT_RESOURCES",
    "FileAccessPolicy",
    "FilesystemPolicy",
    "Policy",
    "PolicySet",
    "Resources",
]


_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_MAX_UID = 2**31 - 2

# A hand-written policy or manifest is a few kilobytes. The cap stops a
# path such as /dev/zero from being read without end.
_MAX_FILE_BYTES = 1 << 20

# Bounds catch typos (a value in bytes, an extra zero) rather than
# describe the machine: (minimum, maximum, unit shown in messages).
_INT_RESOURCE_BOUNDS: dict[str, tuple[int, int, str]] = {
    "memory_mb": (16, 1 << 20, "MiB"),
    "cpu_seconds": (1, 604800, "seconds"),
    "file_descriptors": (8, 65536, "descriptors"),
    "processes": (1, 4096, "processes"),
    "file_size_mb": (0, 1 << 20, "MiB"),
}
_MAX_TIMEOUT = 604800.0
_MESSAGE_BYTES_BOUNDS = (1024, 256 << 20, "bytes")

_TOP_LEVEL_KEYS = ("defaults", "plugins")
_POLICY_KEYS = (
    "capabilities",
    "network",
    "filesystem",
    "resources",
    "user",
    "env",
    "max_message_bytes",
    "secrets",
    "files",
)
_FILESYSTEM_KEYS = ("read", "write", "readonly")
_FILES_KEYS = ("read", "write")
_RESOURCE_KEYS = (*_INT_RESOURCE_BOUNDS, "timeout")


# The checks come before the public classes because those validate
# their fields on construction, DEFAULT_RESOURCES included.


@dataclass(frozen=True)
class _Where:
    """Location of a value, turned into PolicyError attributes."""

    source: str
    plugin: str | None = None
    key: str | None = None

    def at(self, part: str) -> _Where:
        if _BARE_KEY.fullmatch(part) is None:
            part = _quote(part)
        key = part if self.key is None else f"{self.key}.{part}"
        return dataclasses.replace(self, key=key)

    def item(self, index: int) -> _Where:
        return dataclasses.replace(self, key=f"{self.key}[{index}]")

    def error(self, message: str) -> PolicyError:
        return PolicyError(
            message, source=self.source, plugin=self.plugin, key=self.key
        )


def _quote(text: str) -> str:
    """Quote a key part the way TOML writes a key that is not bare."""
    return json.dumps(text, ensure_ascii=False)


_REPR = reprlib.Repr()
_REPR.maxstring = 80
_REPR.maxother = 80
_REPR.maxlevel = 2


def _show(value: object) -> str:
    """Describe a value of any type for a message, shortened."""
    try:
        text = _REPR.repr(value)
    except ValueError:
        # repr() of an int longer than sys.get_int_max_str_digits()
        # (4300 by default, from CPython 3.10.7 on) raises ValueError.
        text = "<too large to show>"
    return f"{text} ({type(value).__name__})"


@dataclass(frozen=True)
class _NameRule:
    """A pattern that a kind of name must match, and its description."""

    kind: str
    pattern: re.Pattern[str]
    description: str

    def check(self, value: object, where: _Where) -> str:
        # fullmatch, because `$` in re.match also accepts a trailing "\n".
        if isinstance(value, str) and self.pattern.fullmatch(value):
            return value
        raise where.error(
            f"invalid {self.kind} name {_show(value)}: expected "
            f"{self.description}"
        )


_PLUGIN_NAME = _NameRule(
    "plugin",
    re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"),
    "1 to 64 characters from A-Z a-z 0-9 _ . -, "
    "starting with a letter or digit",
)
_CAPABILITY_NAME = _NameRule(
    "capability",
    re.compile(r"[a-z][a-z0-9_]{0,63}"),
    "1 to 64 characters from a-z 0-9 _, starting with a lowercase letter",
)
_ENV_NAME = _NameRule(
    "environment variable",
    re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}"),
    "1 to 128 characters from A-Z a-z 0-9 _, not starting with a digit",
)
_SECRET_NAME = _NameRule(
    "secret",
    re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}"),
    "1 to 128 characters from A-Z a-z 0-9 _ . -, starting with a letter or _",
)


def _check_table(
    value: object, where: _Where, known: Sequence[str] | None
) -> Mapping[str, Any]:
    """Check that ``value`` is a table whose keys are all in ``known``."""
    if not isinstance(value, Mapping):
        raise where.error(f"expected a table, got {_show(value)}")
    for key in value:
        if not isinstance(key, str):
            raise where.error(f"expected string keys, got {_show(key)}")
        if known is not None and key not in known:
            raise where.at(key).error(_unknown_key_message(key, known))
    return value


def _unknown_key_message(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f"unknown key {key!r}; did you mean {close[0]!r}?"
    return f"unknown key {key!r}; expected one of: {', '.join(known)}"


def _check_bool(value: object, where: _Where) -> bool:
    if not isinstance(value, bool):
        raise where.error(f"expected true or false, got {_show(value)}")
    return value


def _check_int(
    value: object, where: _Where, bounds: tuple[int, int, str]
) -> int:
    low, high, unit = bounds
    if _is_int(value) and low <= value <= high:
        return value
    raise where.error(
        f"expected an integer from {low} to {high} ({unit}), "
        f"got {_show(value)}"
    )


def _is_int(value: object) -> TypeGuard[int]:
    # bool is a subclass of int, but `memory_mb = true` is a mistake.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, float) or _is_int(value)


def _check_timeout(value: object, where: _Where) -> float:
    # NaN fails both comparisons, and infinity fails the upper bound.
    if _is_number(value) and 0 < value <= _MAX_TIMEOUT:
        return float(value)
    raise where.error(
        "expected a number of seconds greater than 0 and at most "
        f"{_MAX_TIMEOUT:g}, got {_show(value)}"
    )


def _check_resource(key: str, value: object, where: _Where) -> int | float:
    if key == "timeout":
        return _check_timeout(value, where)
    return _check_int(value, where, _INT_RESOURCE_BOUNDS[key])


def _check_user(value: object, where: _Where) -> str | int:
    if isinstance(value, str) and _USER_NAME.fullmatch(value):
        return _check_not_root(_known_user(value, where), value, where)
    if _is_int(value) and 0 <= value <= _MAX_UID:
        return _check_not_root(value, value, where)
    raise where.error(
        "expected a user name (1 to 32 characters from a-z 0-9 _ -, "
        f"starting with a-z or _) or a uid from 1 to {_MAX_UID}, "
        f"got {_show(value)}"
    )


def _known_user(name: str, where: _Where) -> int:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        raise where.error(
            f"user {name!r} does not exist on this machine; create it or "
            "give a uid"
        ) from None


def _check_not_root(uid: int, value: str | int, where: _Where) -> str | int:
    if uid == 0:
        raise where.error(
            f"plugins never run as root, got {_show(value)}; name an "
            "unprivileged user"
        )
    return value


def _check_unique_list(
    value: object,
    where: _Where,
    check_item: Callable[[object, _Where], str],
) -> tuple[str, ...]:
    """Check a list of items, rejecting a repeated item as a mistake."""
    if not isinstance(value, (list, tuple)):
        raise where.error(f"expected a list, got {_show(value)}")
    items: list[str] = []
    seen: set[str] = set()
    for index, item in enumerate(value):
        checked = check_item(item, where.item(index))
        if checked in seen:
            raise where.item(index).error(
                f"duplicate entry {checked!r}; list each entry once"
            )
        seen.add(checked)
        items.append(checked)
    return tuple(items)


def _check_path_syntax(value: object, where: _Where) -> str:
    """Check that a path is absolute and free of NUL and '..'."""
    if not isinstance(value, str):
        raise where.error(f"expected a path string, got {_show(value)}")
    if "\0" in value:
        raise where.error(f"path {_show(value)} contains a NUL character")
    if not os.path.isabs(value):
        raise where.error(
            f"path {value!r} is not absolute; write it starting with /"
        )
    # Normalising '..' away would grant a path other than the one read
    # by a reviewer whenever a component before it is a symlink.
    if ".." in value.split("/"):
        raise where.error(
            f"path {value!r} contains a '..' component; "
            "write the path without it"
        )
    return value


def _check_normalised_path(value: object, where: _Where) -> str:
    path = _check_path_syntax(value, where)
    if os.path.normpath(path) != path:
        raise where.error(
            f"path {path!r} is not normalised; use {os.path.normpath(path)!r}"
        )
    return path


def _check_existing_path(value: object, where: _Where) -> str:
    path = os.path.normpath(_check_path_syntax(value, where))
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise where.error(
            f"path {path!r} does not exist; "
            "create it first or remove it from the list"
        ) from None
    except OSError as err:
        raise where.error(
            f"failed to check path {path!r}: {err.strerror}"
        ) from err
    except ValueError as err:
        # A lone surrogate in a str path cannot be encoded to bytes.
        raise where.error(f"path {path!r} is not a valid file name") from err
    return path


def _check_existing_folder(value: object, where: _Where) -> str:
    """Check that a path is absolute, normalised and an existing folder."""
    path = _check_normalised_path(value, where)
    try:
        is_folder = stat.S_ISDIR(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        raise where.error(
            f"folder {path!r} does not exist; "
            "create it first or remove it from the list"
        ) from None
    except OSError as err:
        raise where.error(
            f"failed to check folder {path!r}: {err.strerror}"
        ) from err
    except ValueError as err:
        # A lone surrogate in a str path cannot be encoded to bytes.
        raise where.error(f"path {path!r} is not a valid file name") from err
    if not is_folder:
        raise where.error(
            f"path {path!r} is not a folder; list the folder that "
            "contains the files"
        )
    return path


def _check_readonly_conflict(
    readonly: bool, write: Sequence[str], where: _Where
) -> None:
    if readonly and write:
        raise where.error(
            "readonly = true forbids all writes, but the write list is "
            f"{list(write)!r}; remove one of the two (a plugin table "
            "inherits each of them from [defaults] unless it sets it)"
        )


_PORT_BOUNDS = (1, 65535, "TCP port")


def _parse_network(value: object, where: _Where) -> bool | tuple[int, ...]:
    """Parse ``network``: true, false or a list of TCP ports."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (list, tuple)):
        return _check_ports(value, where)
    raise where.error(
        "expected true, false or a list of TCP ports such as [443, 8080], "
        f"got {_show(value)}"
    )


def _check_network_field(value: object, where: _Where) -> None:
    # A tuple rather than a list keeps a Policy hashable.
    if isinstance(value, tuple):
        _check_ports(value, where)
    elif not isinstance(value, bool):
        raise where.error(
            f"expected True, False or a tuple of TCP ports, got {_show(value)}"
        )


def _check_ports(items: Sequence[object], where: _Where) -> tuple[int, ...]:
    if not items:
        raise where.error(
            "the list of TCP ports is empty; list at least one port, "
            "or write false to deny all network access"
        )
    ports: dict[int, None] = {}
    for index, item in enumerate(items):
        port = _check_int(item, where.item(index), _PORT_BOUNDS)
        if port in ports:
            raise where.item(index).error(
                f"duplicate entry {port}; list each entry once"
            )
        ports[port] = None
    return tuple(ports)


def _check_policy_fields(policy: Policy, where: _Where) -> None:
    """Check a Policy built directly in code, not read from a file."""
    if not isinstance(policy.capabilities, frozenset):
        raise where.at("capabilities").error(
            f"expected a frozenset, got {_show(policy.capabilities)}"
        )
    for name in sorted(policy.capabilities, key=repr):
        _CAPABILITY_NAME.check(name, where.at("capabilities"))
    _check_network_field(policy.network, where.at("network"))
    if not isinstance(policy.filesystem, FilesystemPolicy):
        raise where.at("filesystem").error(
            f"expected a FilesystemPolicy, got {_show(policy.filesystem)}"
        )
    if not isinstance(policy.resources, Resources):
        raise where.at("resources").error(
            f"expected a Resources, got {_show(policy.resources)}"
        )
    if policy.user is not None:
        _check_user(policy.user, where.at("user"))
    if not isinstance(policy.env, tuple):
        raise where.at("env").error(
            f"expected a tuple, got {_show(policy.env)}"
        )
    _check_unique_list(policy.env, where.at("env"), _ENV_NAME.check)
    _check_int(
        policy.max_message_bytes,
        where.at("max_message_bytes"),
        _MESSAGE_BYTES_BOUNDS,
    )
    _check_capability_data_fields(policy, where)


def _check_capability_data_fields(policy: Policy, where: _Where) -> None:
    """Check the ``secrets`` and ``files`` fields of a Policy."""
    if not isinstance(policy.secrets, tuple):
        raise where.at("secrets").error(
            f"expected a tuple, got {_show(policy.secrets)}"
        )
    _check_unique_list(policy.secrets, where.at("secrets"), _SECRET_NAME.check)
    if not isinstance(policy.files, FileAccessPolicy):
        raise where.at("files").error(
            f"expected a FileAccessPolicy, got {_show(policy.files)}"
        )


@dataclass(frozen=True)
class Resources:
    """Resource limits of one worker, where None inherits from a base.

    Each limit maps to one rlimit, except ``timeout``, which is the
    host's wall-clock limit per call in seconds.
    """

    memory_mb: int | None = None
    cpu_seconds: int | None = None
    file_descriptors: int | None = None
    processes: int | None = None
    file_size_mb: int | None = None
    timeout: float | None = None

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if value is not None:
                where = _Where("<Resources>", key=item.name)
                _check_resource(item.name, value, where)

    def merged_over(self, base: Resources) -> Resources:
        """Return ``base`` with every field that is set here replaced."""
        changes = {
            item.name: getattr(self, item.name)
            for item in dataclasses.fields(self)
            if getattr(self, item.name) is not None
        }
        return dataclasses.replace(base, **changes)


DEFAULT_RESOURCES = Resources(
    memory_mb=256,
    cpu_seconds=10,
    file_descriptors=64,
    processes=16,
    file_size_mb=16,
    timeout=30.0,
)


@dataclass(frozen=True)
class FilesystemPolicy:
    """Paths a plugin may read or write, on top of its scratch folder.

    Paths are absolute and normalised, and a path in ``write`` may also
    be read. ``readonly`` removes write access everywhere, the scratch
    folder included, so ``write`` must then be empty.
    """

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    readonly: bool = False

    def __post_init__(self) -> None:
        where = _Where("<FilesystemPolicy>")
        _check_bool(self.readonly, where.at("readonly"))
        for key in ("read", "write"):
            paths = getattr(self, key)
            if not isinstance(paths, tuple):
                raise where.at(key).error(
                    f"expected a tuple of paths, got {_show(paths)}"
                )
            for index, path in enumerate(paths):
                _check_normalised_path(path, where.at(key).item(index))
        _check_readonly_conflict(self.readonly, self.write, where)


@dataclass(frozen=True)
class FileAccessPolicy:
    """Folders whose files the host reads or writes for a plugin.

    Paths are absolute and normalised, and a folder in ``write`` may also
    be read. The host opens every file beneath one of these folders
    itself, on behalf of the ``read_file``, ``write_file`` and
    ``list_files`` capabilities.
    """

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        where = _Where("<FileAccessPolicy>")
        for key in _FILES_KEYS:
            paths = getattr(self, key)
            if not isinstance(paths, tuple):
                raise where.at(key).error(
                    f"expected a tuple of paths, got {_show(paths)}"
                )
            _check_unique_list(paths, where.at(key), _check_normalised_path)
            for index, path in enumerate(paths):
                _check_not_pseudo_filesystem(path, where.at(key).item(index))

    def readable(self) -> tuple[str, ...]:
        """Return the folders that may be read: ``read``, then ``write``."""
        return (*self.read, *(p for p in self.write if p not in self.read))


@dataclass(frozen=True)
class Policy:
    """The policy of one plugin after ``[defaults]`` has been applied.

    ``resources`` contains the limits as written in the file, and a
    field left as None there is inherited as described in
    PolicySet.effective_resources. ``user`` is a user name or uid to run
    as, and None keeps the host's default. ``env`` lists the names of
    the environment variables passed through. ``network`` is False (no
    network), True (no filter) or a tuple of the TCP ports that
    connect() may reach; the module docstring says which kernel layer
    enforces each form. ``secrets`` lists the
    names of the secrets the plugin may fetch, and ``files`` the folders
    the host reads and writes for it.
    """

    name: str
    capabilities: frozenset[str] = frozenset()
    network: bool | tuple[int, ...] = False
    filesystem: FilesystemPolicy = FilesystemPolicy()
    resources: Resources = Resources()
    user: str | int | None = None
    env: tuple[str, ...] = ()
    max_message_bytes: int = 1 << 20
    secrets: tuple[str, ...] = ()
    files: FileAccessPolicy = FileAccessPolicy()
    source: str = "<dict>"

    def __post_init__(self) -> None:
        where = _Where(self.source)
        if self.name != "*":
            _PLUGIN_NAME.check(self.name, where.at("name"))
            where = dataclasses.replace(where, plugin=self.name)
        _check_policy_fields(self, where)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PolicySet:
        """Read and validate a policy file."""
        source = os.fspath(path)
        return cls.from_dict(_read_toml(source), source=source)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, source: str = "<dict>"
    ) -> PolicySet:
        """Validate a whole policy file given as nested mappings.

        A plugin table is merged over ``[defaults]``. Scalars and each
        field of ``resources`` and ``filesystem`` override the default
        one by one, and so does each field of ``files``. A list
        (``capabilities``, ``env``, ``secrets``, ``filesystem.read``,
        ``filesystem.write``, ``files.read``, ``files.write``) that the
        plugin table sets replaces the default list as a whole.
        """
        return _parse_policy_file(data, source)


class PolicySet:
    """The policies of one file, with ``defaults`` for unlisted plugins."""

    def __init__(
        self,
        *,
        source: str,
        defaults: Policy,
        plugins: Mapping[str, Policy],
    ) -> None:
        self.source = source
        self.defaults = defaults
        self._plugins = dict(plugins)

    @classmethod
    def empty(cls) -> PolicySet:
        """Return a set without plugin tables: every plugin gets defaults."""
        source = "<empty>"
        return cls(
            source=source,
            defaults=Policy(name="*", source=source),
            plugins={},
        )

    def for_plugin(self, name: str) -> Policy:
        """Return the policy of ``name``, or the defaults if it has none."""
        _PLUGIN_NAME.check(name, _Where(self.source))
        policy = self._plugins.get(name)
        if policy is None:
            policy = dataclasses.replace(self.defaults, name=name)
        return policy

    def names(self) -> list[str]:
        """Return the names of the plugin tables, in file order."""
        return list(self._plugins)

    def effective_resources(
        self, name: str, host_defaults: Resources | None = None
    ) -> Resources:
        """Return the limits of ``name`` with every field set.

        Later sources win: DEFAULT_RESOURCES, then ``host_defaults``,
        then the file's ``[defaults]``, then ``[plugins.NAME]``.
        """
        base = DEFAULT_RESOURCES
        if host_defaults is not None:
            base = host_defaults.merged_over(base)
        return self.for_plugin(name).resources.merged_over(base)

    def __contains__(self, name: object) -> bool:
        return name in self._plugins

    def __iter__(self) -> Iterator[str]:
        return iter(self._plugins)

    def __repr__(self) -> str:
        return f"PolicySet(source={self.source!r}, plugins={self.names()!r})"


def _read_toml(path: str) -> dict[str, Any]:
    """Read a TOML file, raising PolicyError for every failure."""
    try:
        with open(path, "rb") as file:
            raw = file.read(_MAX_FILE_BYTES + 1)
    except (OSError, ValueError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise PolicyError(
            f"failed to read the file: {reason}", source=path
        ) from err
    if len(raw) > _MAX_FILE_BYTES:
        raise PolicyError(
            f"the file is larger than {_MAX_FILE_BYTES} bytes", source=path
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PolicyError(
            f"the file is not valid UTF-8 (byte {err.start}); "
            "save it as UTF-8",
            source=path,
        ) from err
    return _parse_toml(text, path)


def _parse_toml(text: str, path: str) -> dict[str, Any]:
    try:
        data: dict[str, Any] = tomllib.loads(text)
        return data
    except tomllib.TOMLDecodeError as err:
        message = f"invalid TOML: {err}"
    except RecursionError:
        message = "invalid TOML: arrays or tables are nested too deeply"
    except ValueError as err:
        # An integer longer than sys.get_int_max_str_digits() raises a
        # plain ValueError.
        message = f"invalid TOML: {err}"
    raise PolicyError(message, source=path)


def _parse_capabilities(value: object, where: _Where) -> frozenset[str]:
    return frozenset(_check_unique_list(value, where, _CAPABILITY_NAME.check))


def _parse_env(value: object, where: _Where) -> tuple[str, ...]:
    return _check_unique_list(value, where, _ENV_NAME.check)


def _parse_message_bytes(value: object, where: _Where) -> int:
    return _check_int(value, where, _MESSAGE_BYTES_BOUNDS)


def _parse_filesystem(value: object, where: _Where) -> dict[str, Any]:
    """Parse a filesystem table into the FilesystemPolicy fields it sets."""
    table = _check_table(value, where, _FILESYSTEM_KEYS)
    fields: dict[str, Any] = {}
    for key in ("read", "write"):
        if key in table:
            fields[key] = _check_unique_list(
                table[key], where.at(key), _check_existing_path
            )
    if "readonly" in table:
        fields["readonly"] = _check_bool(
            table["readonly"], where.at("readonly")
        )
    return fields


def _parse_secrets(value: object, where: _Where) -> tuple[str, ...]:
    return _check_unique_list(value, where, _SECRET_NAME.check)


def _parse_files(value: object, where: _Where) -> dict[str, Any]:
    """Parse a files table into the FileAccessPolicy fields it sets."""
    table = _check_table(value, where, _FILES_KEYS)
    return {
        key: _check_unique_list(raw, where.at(key), _check_files_folder)
        for key, raw in table.items()
    }


# Kernel pseudo-filesystems. Their files are views of processes, devices
# and kernel state, such as /proc/PID/environ of the host, which no
# plugin may reach through the host's file capabilities.
_PSEUDO_FILESYSTEMS = ("/proc", "/sys", "/dev")


def _check_files_folder(value: object, where: _Where) -> str:
    """Check a ``files`` folder: existing, and on no pseudo-filesystem.

    The check follows symbolic links, so a link to /proc is rejected too.
    """
    path = _check_existing_folder(value, where)
    _check_not_pseudo_filesystem(path, where)
    return path


def _check_not_pseudo_filesystem(path: str, where: _Where) -> None:
    """Reject a folder in /proc, /sys or /dev, following links.

    A FileAccessPolicy built in code gets this check too, so no way of
    making a policy lets the host open such a file for a plugin.
    """
    real = os.path.realpath(path)
    for root in _PSEUDO_FILESYSTEMS:
        if real == root or real.startswith(root + "/"):
            shown = repr(path)
            if real != path:
                shown += f" (which resolves to {real!r})"
            raise where.error(
                f"folder {shown} is in {root}, a kernel pseudo-filesystem "
                "that the host must not open for a plugin; choose a "
                "folder elsewhere"
            )


def _parse_resources(value: object, where: _Where) -> Resources:
    table = _check_table(value, where, _RESOURCE_KEYS)
    checked: dict[str, Any] = {
        key: _check_resource(key, raw, where.at(key))
        for key, raw in table.items()
    }
    return Resources(**checked)


_FIELD_PARSERS: dict[str, Callable[[object, _Where], Any]] = {
    "capabilities": _parse_capabilities,
    "network": _parse_network,
    "filesystem": _parse_filesystem,
    "resources": _parse_resources,
    "user": _check_user,
    "env": _parse_env,
    "max_message_bytes": _parse_message_bytes,
    "secrets": _parse_secrets,
    "files": _parse_files,
}


def _parse_policy_table(value: object, where: _Where) -> dict[str, Any]:
    """Parse a [defaults] or plugin table into the fields it sets."""
    table = _check_table(value, where, _POLICY_KEYS)
    return {
        key: _FIELD_PARSERS[key](raw, where.at(key))
        for key, raw in table.items()
    }


def _merge_fields(
    defaults: Mapping[str, Any], plugin: Mapping[str, Any]
) -> dict[str, Any]:
    """Merge the fields set by a plugin table over those of [defaults]."""
    merged = {**defaults, **plugin}
    if "filesystem" in defaults and "filesystem" in plugin:
        merged["filesystem"] = {
            **defaults["filesystem"],
            **plugin["filesystem"],
        }
    if "resources" in defaults and "resources" in plugin:
        merged["resources"] = plugin["resources"].merged_over(
            defaults["resources"]
        )
    if "files" in defaults and "files" in plugin:
        merged["files"] = {**defaults["files"], **plugin["files"]}
    return merged


def _build_policy(
    name: str, fields: Mapping[str, Any], where: _Where
) -> Policy:
    filesystem_fields = fields.get("filesystem", {})
    _check_readonly_conflict(
        filesystem_fields.get("readonly", False),
        filesystem_fields.get("write", ()),
        where.at("filesystem"),
    )
    other_fields = {
        k: v for k, v in fields.items() if k not in ("filesystem", "files")
    }
    return Policy(
        name=name,
        filesystem=FilesystemPolicy(**filesystem_fields),
        files=FileAccessPolicy(**fields.get("files", {})),
        source=where.source,
        **other_fields,
    )


def _parse_policy_file(data: object, source: str) -> PolicySet:
    """Validate a whole policy file and merge each plugin over defaults."""
    where = _Where(source)
    root = _check_table(data, where, _TOP_LEVEL_KEYS)
    default_fields = _parse_policy_table(
        root.get("defaults", {}), where.at("defaults")
    )
    defaults = _build_policy("*", default_fields, where.at("defaults"))
    plugin_tables = _check_table(
        root.get("plugins", {}), where.at("plugins"), None
    )
    plugins: dict[str, Policy] = {}
    for name, table in plugin_tables.items():
        _PLUGIN_NAME.check(name, where.at("plugins"))
        plugin_where = _Where(source, plugin=name).at("plugins").at(name)
        fields = _parse_policy_table(table, plugin_where)
        merged = _merge_fields(default_fields, fields)
        plugins[name] = _build_policy(name, merged, plugin_where)
    return PolicySet(source=source, defaults=defaults, plugins=plugins)
