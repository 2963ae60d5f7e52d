"""The interpreter, paths and identity a worker needs from this machine.

A worker runs as another uid under a Landlock ruleset, so everything it
loads (the interpreter, its shared libraries, the standard library, this
package) must be both readable by that uid and covered by a read rule.
"""

from __future__ import annotations

import errno
import functools
import importlib.util
import os
import pwd
import stat
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .errors import LaunchError, PolicyError
from .launcher import Identity
from .uids import UidPlan, plan_uids, registry_location

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_USER = "nobody"

# Read by the dynamic loader and by time.localtime(); they hold no secrets.
_SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")


@dataclass(frozen=True)
class WorkerRuntime:
    """The interpreter a worker runs and the paths it must be able to read."""

    interpreter: str
    sys_path: tuple[str, ...]
    read_paths: tuple[str, ...]


def resolve_interpreter(python: str | None = None) -> str:
    """Return the real path of the interpreter workers run.

    The default is this process's own interpreter, resolved through venv
    links: workers start with -I -S and get their sys.path from the host,
    so the venv's bin/python adds nothing. Raises LaunchError with ENOENT
    or EACCES for an interpreter that is missing or not executable.
    """
    candidate = python or sys.executable
    if not candidate:
        raise LaunchError(
            "interpreter",
            errno.ENOENT,
            "sys.executable is empty; pass python=",
        )
    interpreter = os.path.realpath(candidate)
    if not os.path.isfile(interpreter):
        raise LaunchError(
            "interpreter",
            errno.ENOENT,
            f"interpreter {candidate} not found; pass python= the path of "
            "an existing Python interpreter",
        )
    if not os.access(interpreter, os.X_OK):
        raise LaunchError(
            "interpreter",
            errno.EACCES,
            f"interpreter {candidate} is not executable",
        )
    return interpreter


@functools.lru_cache(maxsize=8)
def worker_runtime(interpreter: str) -> WorkerRuntime:
    """Collect the sys.path and read rules for workers of ``interpreter``."""
    sys_path = _package_paths()
    libraries = _loaded_library_dirs(interpreter)
    stdlib = _stdlib_dirs(interpreter)
    read = _existing([interpreter, *libraries, *stdlib, *sys_path])
    read += _existing(_SYSTEM_FILES)
    return WorkerRuntime(
        interpreter, tuple(sys_path), tuple(dict.fromkeys(read))
    )


def _package_paths() -> list[str]:
    """Return the folders that hold this package and its worker imports."""
    paths = [os.path.dirname(PACKAGE_DIR)]
    for module in ("_cffi_backend", "prctl", "_prctl", "orjson"):
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin:
            origin = os.path.realpath(spec.origin)
            # A package's origin is its __init__.py, one folder further in.
            if spec.submodule_search_locations is not None:
                origin = os.path.dirname(origin)
            paths.append(os.path.dirname(origin))
    return list(dict.fromkeys(paths))


def _loaded_library_dirs(interpreter: str) -> list[str]:
    """Return the folders of the shared objects the interpreter maps.

    A short probe run of the interpreter itself is the one source that
    agrees with its dynamic loader, whatever the distribution's layout.
    """
    probe = (
        "import _ctypes, _json, _socket, _struct, math, select, os\n"
        # Only Landlock reads the result, and only Linux has the file.
        "if os.path.exists('/proc/self/maps'):\n"
        "    print(open('/proc/self/maps').read())"
    )
    try:
        maps = subprocess.run(
            [interpreter, "-I", "-S", "-c", probe],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except OSError as error:
        # The errno is the one execve() returned, ENOENT for a missing file.
        raise LaunchError(
            "interpreter",
            error.errno or errno.ENOEXEC,
            f"cannot run the interpreter {interpreter}",
        ) from error
    except subprocess.SubprocessError as error:
        raise LaunchError(
            "interpreter",
            errno.ENOEXEC,
            f"the interpreter {interpreter} failed a test run: {error}",
        ) from error
    dirs = []
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        path = fields[5] if len(fields) == 6 else ""
        if path.startswith("/") and ".so" in os.path.basename(path):
            dirs.append(os.path.dirname(os.path.realpath(path)))
    return list(dict.fromkeys(dirs))


def _stdlib_dirs(interpreter: str) -> list[str]:
    if os.path.realpath(sys.executable) == interpreter:
        paths = sysconfig.get_paths(
            vars={"base": sys.base_prefix, "platbase": sys.base_exec_prefix}
        )
        return [paths["stdlib"], paths["platstdlib"]]
    out = subprocess.run(
        [
            interpreter,
            "-I",
            "-S",
            "-c",
            "import sysconfig as s; p = s.get_paths(); "
            "print(p['stdlib']); print(p['platstdlib'])",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return out.split()


def _existing(paths: Iterable[str]) -> list[str]:
    return [os.path.realpath(p) for p in paths if os.path.exists(p)]


def resolve_identity(
    user: str | int | None,
    *,
    as_root: bool,
    plugin_uid: int | None = None,
) -> Identity | None:
    """Return the identity workers switch to, or None to keep the host's.

    A root host never runs plugins as root. A user the policy names comes
    first, then ``plugin_uid`` (the plugin's own uid, with the same gid),
    then ``nobody``. A host that is not root cannot switch, so it ignores
    ``plugin_uid``, and naming a user other than its own is an error.
    """
    if not as_root:
        if user is not None and _lookup(user).pw_uid != os.getuid():
            raise LaunchError(
                "identity",
                1,
                f"cannot run workers as {user!r} without root; remove "
                "'user' from the policy or start the host as root",
            )
        return None
    if user is None and plugin_uid is not None:
        identity = Identity(plugin_uid, plugin_uid, ())
    else:
        entry = _lookup(DEFAULT_USER if user is None else user)
        identity = Identity(entry.pw_uid, entry.pw_gid, ())
    if identity.uid == 0:
        raise LaunchError(
            "identity", 1, "refusing to run a plugin as root (uid 0)"
        )
    return identity


def plan_host_uids(
    users: Mapping[str, str | int | None],
    plugin_uids: range | None,
    *,
    registry: str | os.PathLike[str] | None,
    source: str | None = None,
    allow_shared_users: bool = False,
) -> UidPlan:
    """Return the uids of a host's plugins after checking their users.

    ``users`` maps each plugin to its policy's ``user``. A root host
    reads the uids from the registry (sandbox.uids.plan_uids, with
    registry_location() applied to ``registry``) and then runs
    check_policy_users() on them.
    """
    as_root = os.geteuid() == 0
    plan = plan_uids(
        users,
        plugin_uids,
        as_root=as_root,
        registry=registry_location(registry),
    )
    if as_root:
        check_policy_users(
            users,
            plan,
            source=source,
            allow_shared_users=allow_shared_users,
        )
    return plan


def check_policy_users(
    users: Mapping[str, str | int | None],
    plan: UidPlan,
    *,
    source: str | None = None,
    allow_shared_users: bool = False,
) -> None:
    """Raise PolicyError where a policy ``user`` would share another's uid.

    ``users`` maps each plugin of a root host to its policy's ``user``.
    A user may not be the uid of another plugin, in the registry or not,
    nor any uid of the plugin_uids range, whatever ``allow_shared_users``
    is. Two plugins whose policies name the same user (by name or uid)
    are rejected too, unless ``allow_shared_users`` is true. The one
    exception is ``nobody`` when plugins share one uid (``plan`` has no
    range): every plugin runs as it there by design.
    """
    shared_default = (
        _lookup(DEFAULT_USER).pw_uid if plan.uid_range is None else None
    )
    named_by: dict[int, str] = {}
    for plugin in sorted(users):
        user = users[plugin]
        if user is None:
            continue
        uid = _lookup(user).pw_uid
        claim = plan.claim_of(uid, plugin)
        if claim is not None:
            raise PolicyError(
                f"user {user!r} is not allowed: {claim}, and sharing a uid "
                "would let this plugin's workers own another plugin's "
                "files and processes; name a user of its own, or remove "
                "'user' so that the host gives the plugin a uid of its own",
                source=source,
                plugin=plugin,
                key="user",
            )
        if uid == shared_default or allow_shared_users:
            continue
        first = named_by.setdefault(uid, plugin)
        if first != plugin:
            raise PolicyError(
                f"user {user!r} (uid {uid}) is also the user of plugin "
                f"{first!r}, so the two plugins would share one uid and "
                "the kernel's per-uid checks (file owners, pathname "
                "sockets, RLIMIT_NPROC) would not separate them; give "
                "each plugin a user of its own, or pass "
                "allow_shared_users=True to the host to accept that",
                source=source,
                plugin=plugin,
                key="user",
            )


def _lookup(user: str | int) -> pwd.struct_passwd:
    try:
        if isinstance(user, int):
            return pwd.getpwuid(user)
        return pwd.getpwnam(user)
    except KeyError:
        if isinstance(user, int):
            # A uid with no passwd entry is valid; its gid is the same.
            return pwd.struct_passwd(
                (str(user), "x", user, user, "", "/", "/bin/false")
            )
        raise LaunchError(
            "identity", 2, f"user {user!r} not found in the passwd database"
        ) from None


def unreadable_path(path: str, identity: Identity | None) -> str | None:
    """Return the first component of ``path`` the identity cannot reach.

    Checks permission bits only, as the kernel's DAC check would for a
    process with that uid, gid and no supplementary groups.
    """
    if identity is None:
        return None
    current = "/"
    for part in os.path.realpath(path).split("/")[1:]:
        current = os.path.join(current, part)
        try:
            info = os.stat(current)
        except OSError:
            return current
        need = stat.S_IXOTH if stat.S_ISDIR(info.st_mode) else stat.S_IROTH
        if not _allowed(info, identity, need):
            return current
    return None


def _allowed(info: os.stat_result, identity: Identity, other_bit: int) -> bool:
    shift = 0
    if info.st_uid == identity.uid:
        shift = 6
    elif info.st_gid == identity.gid or info.st_gid in identity.groups:
        shift = 3
    return bool(info.st_mode & (other_bit << shift))


def check_runtime_readable(
    runtime: WorkerRuntime, extra: Iterable[str], identity: Identity | None
) -> None:
    """Raise LaunchError, saying what to do, when a worker could not load."""
    for path in (runtime.interpreter, *runtime.sys_path, *extra):
        blocked = unreadable_path(path, identity)
        if blocked is None:
            continue
        assert identity is not None
        raise LaunchError(
            "runtime",
            13,
            f"{path} is not readable by uid {identity.uid} (blocked at "
            f"{blocked}). Workers run as that uid: use an interpreter and "
            "a package location it can read, e.g. a virtual environment "
            "made with /usr/bin/python3 outside /root (python=... selects "
            "the interpreter), or choose another user in the policy",
        )
