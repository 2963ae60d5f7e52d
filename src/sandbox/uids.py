"""Per-plugin uids: the uid a root host gives each plugin's workers.

Each plugin gets a uid of its own, so the kernel's per-uid checks
(signals, ptrace, /proc, file ownership, RLIMIT_NPROC) separate plugins
from each other even where another layer fails. The gid is the same
number, and workers get no supplementary groups.

A root host records every assignment in a registry file (name -> uid;
see registry_location for where it is)
and keeps it across restarts, so a plugin can still open the files it
wrote. A name already in the registry keeps its uid. A new name gets the
first free candidate that the registry does not hold, trying candidates
in an order that starts at a SHA-256 hash of the name. Candidates that a
passwd or group entry already uses, the host's own uids and a few
special numbers are skipped. So a plugin installed later never takes the
uid of one installed earlier, whatever name it chose: the hash is not
keyed, and a name that hashes to an installed plugin's uid is found in a
fraction of a second. Registry entries are never removed or moved; a
plugin that is uninstalled keeps its uid reserved.

Without a registry (a host that is not root, which cannot switch uids,
and the pure functions below) the uids follow from the names alone:
when two names land on the same uid, the name that sorts first keeps it.

NOTE: two root hosts that share a registry and a range give plugins of
the same name the same uid. Give each host its own registry file, or its
own range, where that matters.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import hashlib
import json
import os
import pwd
import signal
import stat
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

# The first 64 Ki ids of the range 1879048192 to 2147483647, which
# systemd's docs/UIDS-GIDS.md lists as unused: above its container ranges
# (524288 to 1879048191) and below 2**31, where code that stores ids as
# signed 32-bit numbers breaks. useradd hands out /etc/subuid blocks from
# SUB_UID_MIN to SUB_UID_MAX, by default 100000 to 600100000 (login.defs).
DEFAULT_PLUGIN_UIDS = range(0x7000_0000, 0x7000_0000 + 0x1_0000)

# 0 is root, 65534 the overflow uid that NFS and user namespaces show for
# unmapped owners, and 65535 and 2**32 - 1 are (uid_t) -1 in 16 and 32
# bits, which chown() and setresuid() take as "leave unchanged".
_SPECIAL_IDS = frozenset({0, 65534, 65535, 2**32 - 1})
_MAX_ID = 2**32 - 2


def check_uid_range(uids: range) -> None:
    """Raise ValueError unless ``uids`` is a non-empty range of valid uids."""
    if not isinstance(uids, range):
        raise ValueError(
            f"plugin_uids must be a range or None, got {type(uids).__name__}"
        )
    if len(uids) == 0:
        raise ValueError(f"plugin_uids is empty: {uids!r}")
    lowest, highest = min(uids), max(uids)
    if lowest < 1 or highest > _MAX_ID:
        raise ValueError(
            f"plugin_uids must lie within 1 to {_MAX_ID}, got {lowest} to "
            f"{highest}; uid 0 is root"
        )


def candidate_uids(name: str, uids: range) -> Iterator[int]:
    """Yield every uid of ``uids`` once, starting at the hash of ``name``."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    start = int.from_bytes(digest[:8], "big") % len(uids)
    for offset in range(len(uids)):
        yield uids[(start + offset) % len(uids)]


def is_free_uid(number: int) -> bool:
    """Return whether ``number`` can serve as both uid and gid of a plugin.

    A number that the passwd or group database lists belongs to someone,
    and workers running as it would reach that user's or group's files.
    """
    if number in _SPECIAL_IDS or number in (os.getuid(), os.geteuid()):
        return False
    try:
        pwd.getpwuid(number)
    except KeyError:
        pass
    else:
        return False
    try:
        grp.getgrgid(number)
    except KeyError:
        return True
    return False


def assign_plugin_uids(
    names: Iterable[str],
    uids: range,
    *,
    registered: Mapping[str, int] | None = None,
    reserved: Collection[int] = (),
) -> dict[str, int]:
    """Return a distinct free uid from ``uids`` for each plugin name.

    A name in ``registered`` keeps the uid recorded there. Every other
    name gets its first free candidate that neither ``registered`` nor
    ``reserved`` holds, in name order.

    Raises ValueError for an invalid range, for a registered uid outside
    ``uids`` or no longer free, and when the range has fewer free uids
    than there are plugins.
    """
    check_uid_range(uids)
    registered = registered or {}
    taken = {*reserved, *registered.values()}
    assigned: dict[str, int] = {}
    for name in sorted(set(names)):
        if name in registered:
            assigned[name] = _check_registered(name, registered[name], uids)
            continue
        uid = _first_free(name, uids, taken)
        if uid is None:
            raise ValueError(
                f"plugin_uids {uids!r} has no free uid left for plugin "
                f"{name!r}: every number is taken by a passwd or group "
                "entry or another plugin; choose a larger range"
            )
        taken.add(uid)
        assigned[name] = uid
    return assigned


def plan_plugin_uids(
    names: Iterable[str], uids: range | None, *, as_root: bool
) -> dict[str, int]:
    """Return the uid of each plugin, or {} when workers share one uid.

    Plugins share a uid when ``uids`` is None, and on a host that is not
    root, which cannot switch uids at all. The range is checked either
    way, so that a mistake shows before the host runs as root. Reads no
    registry: see plan_uids() for what a host uses.
    """
    if uids is None:
        return {}
    check_uid_range(uids)
    return assign_plugin_uids(names, uids) if as_root else {}


@dataclass(frozen=True)
class UidPlan:
    """The uid of each plugin of one host, and the uids kept for plugins.

    ``plugin_uids`` is empty when the plugins share one uid. ``uid_range``
    is the range that per-plugin uids come from, or None. ``owners`` maps
    each uid given to a plugin to its name, including the uids that the
    registry keeps for plugins this host does not load.
    """

    plugin_uids: Mapping[str, int]
    uid_range: range | None = None
    owners: Mapping[int, str] = field(default_factory=dict)

    def claim_of(self, uid: int, plugin: str) -> str | None:
        """Return why ``plugin`` may not run as ``uid``, or None if it may.

        A uid of the range belongs to per-plugin uids, whether or not a
        plugin has it yet, and a uid the registry records belongs to its
        plugin wherever it lies.
        """
        owner = self.owners.get(uid)
        if owner is not None and owner != plugin:
            return f"uid {uid} is the uid of plugin {owner!r}"
        in_range = self.uid_range is not None and uid in self.uid_range
        if in_range and uid != self.plugin_uids.get(plugin):
            return (
                f"uid {uid} lies in plugin_uids {self.uid_range!r}, which "
                "the host keeps for plugins of their own, so a plugin "
                "installed later could get it"
            )
        return None


def plan_uids(
    names: Iterable[str],
    uids: range | None,
    *,
    as_root: bool,
    registry: str | os.PathLike[str] | None,
) -> UidPlan:
    """Return the uids of a host's plugins, recording new ones in ``registry``.

    Plugins share a uid when ``uids`` is None and on a host that is not
    root; then no registry is read. A root host with a range reads and
    updates ``registry`` under a lock (see register_plugin_uids). With
    ``registry`` None it assigns uids from the names alone.
    """
    if uids is None:
        return UidPlan({})
    check_uid_range(uids)
    if not as_root:
        return UidPlan({})
    if registry is None:
        assigned = assign_plugin_uids(names, uids)
        owners = {uid: name for name, uid in assigned.items()}
        return UidPlan(assigned, uids, owners)
    assigned, owners = register_plugin_uids(names, uids, registry)
    return UidPlan(assigned, uids, owners)


def _check_registered(name: str, uid: int, uids: range) -> int:
    if uid not in uids:
        raise ValueError(
            f"the uid registry gives plugin {name!r} uid {uid}, outside "
            f"plugin_uids {uids!r}, in the table of that range; restore "
            "the registry file from a backup"
        )
    if not is_free_uid(uid):
        raise ValueError(
            f"uid {uid}, which the uid registry keeps for plugin {name!r}, "
            "now has a passwd or group entry (or is the host's own uid), "
            "so the plugin's workers would reach that user's or group's "
            "files; remove that entry, or remove the plugin from the "
            "registry file to give it a new uid"
        )
    return uid


def _first_free(name: str, uids: range, taken: set[int]) -> int | None:
    for uid in candidate_uids(name, uids):
        if uid not in taken and is_free_uid(uid):
            return uid
    return None


# A process of the uid can kill the helper before the helper's kill(-1)
# runs; each try after that is another chance to be first.
_SWEEP_TRIES = 5


def kill_processes_of(uid: int) -> bool:
    """Send SIGKILL to every process whose real or saved uid is ``uid``.

    A forked helper switches all its uids to ``uid`` and calls
    kill(-1, SIGKILL), so the kernel chooses the targets with its own
    permission check, all in one system call. A scan of /proc followed
    by kill() per pid could hit a pid that another process took over in
    between. The kernel also fails a fork
    whose parent has SIGKILL pending, so no new child escapes. Only call
    it with a per-plugin uid: it ends every process of that uid on the
    machine. Returns False when processes of the uid killed the helper
    first on every try.

    Raises ValueError for uid 0 and for the caller's own uids, and
    OSError when the caller cannot switch uids (it is not root).
    """
    if uid == 0 or uid in (os.getuid(), os.geteuid()):
        raise ValueError(
            f"uid {uid} is root or the caller's own uid, whose processes "
            "kill_processes_of() never kills"
        )
    for _ in range(_SWEEP_TRIES):
        status = _run_kill_helper(uid)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            return True
        if os.WIFEXITED(status):
            raise PermissionError(
                f"cannot switch to uid {uid} to kill its processes: "
                f"{os.strerror(os.WEXITSTATUS(status))}"
            )
    return False


def _run_kill_helper(uid: int) -> int:
    pid = os.fork()
    if pid == 0:
        # Only system calls from here: the child of a threaded process
        # must not take a lock another thread may have held at the fork.
        code = 1
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            os.kill(-1, signal.SIGKILL)
            code = 0
        except ProcessLookupError:
            code = 0  # ESRCH: no process of the uid was left.
        except OSError as error:
            code = error.errno or 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


# -- the registry ------------------------------------------------------------

# /var/lib keeps programs' state across reboots, unlike /tmp and /run, and
# only root may write to it on common Linux distributions.
DEFAULT_UID_REGISTRY = "/var/lib/sandbox/plugin-uids.json"
# Names another registry file when the host is given none: for the command
# line, and for test runs that must not touch the machine's file.
REGISTRY_ENVIRONMENT = "SANDBOX_UID_REGISTRY"
_REGISTRY_VERSION = 1
_REGISTRY_MODE = 0o600
_FOLDER_MODE = 0o700
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def registry_location(requested: str | os.PathLike[str] | None) -> str:
    """Return the registry file to use: ``requested``, else the default.

    The default is $SANDBOX_UID_REGISTRY when set, else
    DEFAULT_UID_REGISTRY.
    """
    if requested is not None:
        return os.fspath(requested)
    return os.environ.get(REGISTRY_ENVIRONMENT) or DEFAULT_UID_REGISTRY


def register_plugin_uids(
    names: Iterable[str], uids: range, registry: str | os.PathLike[str]
) -> tuple[dict[str, int], dict[int, str]]:
    """Assign uids as assign_plugin_uids() does, keeping them in a file.

    ``registry`` is a JSON file (mode 0600) that contains one table of
    name -> uid per range. Its folder is created (mode 0700) if missing,
    and it and every folder above it must be owned by root and writable
    by nobody else, except that a sticky folder such as /tmp may lie
    above. No component of the path may be a symbolic link. The file is
    read and rewritten under an exclusive flock() of a lock file beside
    it, so hosts starting at the same time agree.
    Returns the uid of each name and the owner of every uid the registry
    records, in any range.

    Raises PermissionError for a folder that others could change,
    ValueError for a file that is not a valid registry, and OSError when
    the folder or file cannot be opened or written.
    """
    path = os.path.abspath(os.fspath(registry))
    folder, filename = os.path.split(path)
    folder_fd = _open_trusted_folder(folder)
    try:
        with _exclusive_lock(folder_fd, f"{filename}.lock"):
            tables = _read_registry(folder_fd, filename, path)
            table = tables.setdefault(_range_key(uids), {})
            owners = _owners(tables)
            assigned = assign_plugin_uids(
                names, uids, registered=table, reserved=owners
            )
            added = {n: u for n, u in assigned.items() if n not in table}
            if added:
                table.update(added)
                _write_registry(folder_fd, filename, tables)
                owners.update((uid, name) for name, uid in added.items())
    finally:
        os.close(folder_fd)
    return assigned, owners


def _range_key(uids: range) -> str:
    step = uids.step if len(uids) > 1 else 1
    key = f"{uids[0]}-{uids[-1]}"
    return key if step == 1 else f"{key}/{step}"


def _owners(tables: Mapping[str, Mapping[str, int]]) -> dict[int, str]:
    return {
        uid: name for table in tables.values() for name, uid in table.items()
    }


def _open_trusted_folder(folder: str) -> int:
    """Open ``folder``, creating it, once no one but root can change it.

    Only root may be able to replace the registry, because the uid it
    records for a plugin owns the plugin's files. The path is walked as
    given, from "/": each folder is opened from the checked one above it
    without following links and then checked, so a folder swapped in
    after a check is never used. A symbolic link on the path is
    rejected, because its target was never checked. A missing last
    folder is created only after the folder above it passed.
    """
    parts = [part for part in folder.split("/") if part]
    fd = os.open("/", _FOLDER_FLAGS)
    try:
        current = "/"
        _check_root_only(fd, current, folder, final=not parts)
        for index, part in enumerate(parts):
            final = index == len(parts) - 1
            current = os.path.join(current, part)
            child = _open_child_folder(fd, part, current, folder, final=final)
            os.close(fd)
            fd = child
            _check_root_only(fd, current, folder, final=final)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_child_folder(
    parent_fd: int, name: str, current: str, folder: str, *, final: bool
) -> int:
    """Open folder ``name`` of a checked parent without following a link.

    Creates the registry's own folder (``final``) when it is missing.
    """
    try:
        return os.open(name, _FOLDER_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        if not final:
            raise
    except OSError as error:
        # O_NOFOLLOW fails a symbolic link with ELOOP, and O_DIRECTORY
        # with ENOTDIR when the link's target is not a folder.
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            _reject_symlink(parent_fd, name, current, folder)
        raise
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, _FOLDER_MODE, dir_fd=parent_fd)
    return os.open(name, _FOLDER_FLAGS, dir_fd=parent_fd)


def _reject_symlink(
    parent_fd: int, name: str, current: str, folder: str
) -> None:
    """Raise PermissionError if ``name`` is a symbolic link."""
    info = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    if stat.S_ISLNK(info.st_mode):
        raise PermissionError(
            f"the uid registry folder {folder} is not safe: {current} is a "
            f"symbolic link of uid {info.st_uid}, and the folders it leads "
            "to are not checked; give the uid_registry path without "
            "symbolic links"
        )


def _check_root_only(
    fd: int, current: str, folder: str, *, final: bool
) -> None:
    """Raise PermissionError unless only root can change ``current``.

    A folder above the registry's may be sticky and writable by all, as
    /tmp is, because others cannot rename or remove a folder of root
    there. The registry's own folder may not be writable by others.
    """
    info = os.fstat(fd)
    others_write = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    sticky = bool(info.st_mode & stat.S_ISVTX) and not final
    if info.st_uid == 0 and (not others_write or sticky):
        return
    raise PermissionError(
        f"the uid registry folder {folder} is not safe: {current} is owned "
        f"by uid {info.st_uid} with mode {stat.S_IMODE(info.st_mode):o}, "
        "so a user other than root could replace the registry; make "
        "every folder on the path owned by root and not writable by "
        "group or others, or choose another uid_registry"
    )


@contextlib.contextmanager
def _exclusive_lock(folder_fd: int, name: str) -> Iterator[None]:
    fd = os.open(
        name,
        os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
        _REGISTRY_MODE,
        dir_fd=folder_fd,
    )
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        # Closing the last descriptor of the file releases the lock.
        os.close(fd)


def _read_registry(
    folder_fd: int, filename: str, path: str
) -> dict[str, dict[str, int]]:
    try:
        fd = os.open(
            filename,
            os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
            dir_fd=folder_fd,
        )
    except FileNotFoundError:
        return {}
    with open(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != 0:
            raise PermissionError(
                f"the uid registry {path} is not a regular file of root"
            )
        text = file.read()
    try:
        data = json.loads(text)
    except ValueError as error:
        raise _invalid(path, f"not JSON ({error})") from None
    return _check_tables(data, path)


def _check_tables(data: object, path: str) -> dict[str, dict[str, int]]:
    if not isinstance(data, dict) or data.get("version") != _REGISTRY_VERSION:
        raise _invalid(path, f"expected version {_REGISTRY_VERSION}")
    ranges = data.get("ranges")
    if not isinstance(ranges, dict):
        raise _invalid(path, "expected a 'ranges' object")
    tables: dict[str, dict[str, int]] = {}
    seen: dict[int, str] = {}
    for key, table in ranges.items():
        if not isinstance(table, dict):
            raise _invalid(path, f"range {key!r} is not an object")
        for name, uid in table.items():
            if type(uid) is not int or not 1 <= uid <= _MAX_ID:
                raise _invalid(path, f"plugin {name!r} has uid {uid!r}")
            if uid in seen:
                raise _invalid(
                    path, f"uid {uid} is kept for {seen[uid]!r} and {name!r}"
                )
            seen[uid] = name
        tables[key] = dict(table)
    return tables


def _invalid(path: str, detail: str) -> ValueError:
    return ValueError(
        f"the uid registry {path} is invalid: {detail}; restore it from a "
        "backup, because plugins' uids, and with them their files, "
        "follow from it"
    )


def _write_registry(
    folder_fd: int, filename: str, tables: Mapping[str, Mapping[str, int]]
) -> None:
    """Replace the registry file, so a crash leaves the old or new one."""
    text = json.dumps(
        {"version": _REGISTRY_VERSION, "ranges": tables},
        indent=1,
        sort_keys=True,
    )
    temporary = f".{filename}.new"
    fd = os.open(
        temporary,
        os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
        _REGISTRY_MODE,
        dir_fd=folder_fd,
    )
    with open(fd, "w", encoding="utf-8") as file:
        os.fchmod(file.fileno(), _REGISTRY_MODE)
        file.write(text + "\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, filename, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
    os.fsync(folder_fd)
