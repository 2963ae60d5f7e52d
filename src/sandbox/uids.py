"""Per-plugin uids: the uid a root host gives each plugin's workers.

Each plugin gets a uid of its own, so the kernel's per-uid checks
(signals, ptrace, /proc, file ownership, RLIMIT_NPROC) separate plugins
from each other even where another layer fails. The gid is the same
number, and workers get no supplementary groups.

The uid is derived from a hash of the plugin name, so a plugin keeps it
across host restarts and can still open the files it wrote. Candidates
that a passwd or group entry already uses, the host's own uids and a few
special numbers are skipped. When two plugins of one host land on the
same uid, the name that sorts first keeps it and the other takes the next
free uid. So a plugin's uid changes only when the range, the passwd or
group database, or the set of plugins that collide with it changes.

NOTE: with the same range, two root hosts on one machine give plugins of
the same name the same uid, and a new plugin that takes an old plugin's
name gets its files. Give each host its own range where that matters.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
from collections.abc import Iterable, Iterator

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


def assign_plugin_uids(names: Iterable[str], uids: range) -> dict[str, int]:
    """Return a distinct free uid from ``uids`` for each plugin name.

    Raises ValueError for an invalid range, or when the range has fewer
    free uids than there are plugins.
    """
    check_uid_range(uids)
    taken: set[int] = set()
    assigned: dict[str, int] = {}
    for name in sorted(set(names)):
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
    way, so that a mistake shows before the host runs as root.
    """
    if uids is None:
        return {}
    check_uid_range(uids)
    return assign_plugin_uids(names, uids) if as_root else {}


def _first_free(name: str, uids: range, taken: set[int]) -> int | None:
    for uid in candidate_uids(name, uids):
        if uid not in taken and is_free_uid(uid):
            return uid
    return None
