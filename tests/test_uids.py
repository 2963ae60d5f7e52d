"""Per-plugin uids: how they are chosen, and the workers that use them."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandbox
from conftest import (
    HostFactory,
    PluginWriter,
    run_python,
    run_script_as_nobody,
)
from sandbox import LaunchError, PluginHost, PolicyError
from sandbox.uids import (
    DEFAULT_PLUGIN_UIDS,
    assign_plugin_uids,
    candidate_uids,
    is_free_uid,
    kill_processes_of,
    plan_plugin_uids,
    register_plugin_uids,
)

IS_ROOT = os.geteuid() == 0
NOBODY = 65534
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs a root host")
PACKAGE_PARENT = str(Path(sandbox.__file__).resolve().parents[1])

PLAIN_SOURCE = """
import os
import re


def ids():
    return [os.getuid(), os.getgid(), os.getgroups()]


def write(path, text):
    with open(path, "w") as file:
        file.write(text)
    os.chmod(path, 0o600)


def read(path):
    with open(path) as file:
        return file.read()
"""
PLAIN_METHODS = ["ids", "write", "read"]


@pytest.fixture
def uid_registry(tmp_path: Path) -> Path:
    """A uid registry of this test's own, in a folder only root can change."""
    return tmp_path / "registry" / "plugin-uids.json"


def colliding_names(uids: range) -> tuple[str, str]:
    """Return two names whose first candidate uid is the same."""
    first_by_uid: dict[int, str] = {}
    for index in range(10 * len(uids)):
        name = f"plugin-{index}"
        uid = next(candidate_uids(name, uids))
        if uid in first_by_uid:
            return first_by_uid[uid], name
        first_by_uid[uid] = name
    raise AssertionError("no collision among many names")


# -- choosing uids ------------------------------------------------------------


def test_uid_same_in_another_interpreter() -> None:
    in_this_process = assign_plugin_uids(
        ["alpha", "beta"], DEFAULT_PLUGIN_UIDS
    )
    result = run_python(
        """
        import json
        from sandbox.uids import DEFAULT_PLUGIN_UIDS, assign_plugin_uids
        print(json.dumps(assign_plugin_uids(["beta", "alpha"],
                                            DEFAULT_PLUGIN_UIDS)))
        """
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == in_this_process


def test_uid_kept_when_plugins_added() -> None:
    alone = assign_plugin_uids(["alpha"], DEFAULT_PLUGIN_UIDS)
    together = assign_plugin_uids(
        ["alpha", "beta", "gamma"], DEFAULT_PLUGIN_UIDS
    )
    assert together["alpha"] == alone["alpha"]


def test_uids_distinct_and_in_range() -> None:
    # 200 names in 256 uids: many first candidates collide.
    uids = range(2_000_000_000, 2_000_000_256)
    names = [f"plugin-{index}" for index in range(200)]
    assigned = assign_plugin_uids(names, uids)
    assert sorted(assigned) == sorted(names)
    assert len(set(assigned.values())) == len(names)
    assert all(uid in uids for uid in assigned.values())


def test_collision_resolved_by_name_order() -> None:
    uids = range(2_000_000_000, 2_000_000_016)
    first, second = colliding_names(uids)
    shared_uid = next(candidate_uids(first, uids))
    forward = assign_plugin_uids([first, second], uids)
    backward = assign_plugin_uids([second, first], uids)
    assert forward == backward
    assert forward[min(first, second)] == shared_uid
    assert forward[max(first, second)] != shared_uid


# Ids that no real database entry uses; the tests below give them one.
LISTED_ID = 2_000_000_100
SKIPPED_CODE = f"""
import json
from sandbox.uids import assign_plugin_uids
uids = range({LISTED_ID}, {LISTED_ID} + 2)
print(json.dumps([assign_plugin_uids([n], uids)[n] for n in "abc"]))
"""


def run_with_databases(
    tmp_path: Path, passwd_line: str, group_line: str
) -> subprocess.CompletedProcess[str]:
    """Run SKIPPED_CODE with one line added to /etc/passwd and /etc/group.

    The copies are bind-mounted in a mount namespace of the child's own,
    so that the machine's databases stay as they are.
    """
    mounts = []
    for name, line in (("passwd", passwd_line), ("group", group_line)):
        copy = tmp_path / name
        copy.write_text(Path(f"/etc/{name}").read_text() + line)
        os.chmod(copy, 0o644)
        mounts.append(f"mount --bind {copy} /etc/{name}")
    script = " && ".join([*mounts, 'exec "$0" -c "$1"'])
    return subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation=private",
            "sh",
            "-c",
            script,
            sys.executable,
            SKIPPED_CODE,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=PACKAGE_PARENT),
        check=False,
    )


@needs_root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")
def test_passwd_entries_skipped(tmp_path: Path) -> None:
    assert is_free_uid(LISTED_ID), "the real databases list it already"
    passwd = f"listed:x:{LISTED_ID}:{LISTED_ID - 1}::/:/bin/false\n"
    completed = run_with_databases(tmp_path, passwd, "")
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == [LISTED_ID + 1] * 3


@needs_root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")
def test_group_entries_skipped(tmp_path: Path) -> None:
    assert is_free_uid(LISTED_ID), "the real databases list it already"
    group = f"listed:x:{LISTED_ID}:\n"
    completed = run_with_databases(tmp_path, "", group)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == [LISTED_ID + 1] * 3


@needs_root
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")
def test_host_uid_skipped() -> None:
    host_uid = assign_plugin_uids(["host"], DEFAULT_PLUGIN_UIDS)["host"]
    code = textwrap.dedent(
        f"""
        import json
        from sandbox.uids import assign_plugin_uids
        uids = range({host_uid}, {host_uid} + 2)
        print(json.dumps([assign_plugin_uids([n], uids)[n]
                          for n in ("alpha", "beta", "gamma")]))
        """
    )
    completed = subprocess.run(
        [
            "setpriv",
            f"--reuid={host_uid}",
            f"--regid={host_uid}",
            "--clear-groups",
            sys.executable,
            "-c",
            code,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(
            os.environ, PYTHONPATH=str(Path(sandbox.__file__).parents[1])
        ),
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == [host_uid + 1] * 3


def test_full_range_raises() -> None:
    uids = range(2_000_000_000, 2_000_000_002)
    with pytest.raises(ValueError, match="no free uid left"):
        assign_plugin_uids(["alpha", "beta", "gamma"], uids)


@pytest.mark.parametrize(
    "uids",
    [range(0, 100), range(5, 5), range(2**32 - 10, 2**32)],
    ids=["root", "empty", "past-uid-max"],
)
def test_invalid_range_raises(uids: range) -> None:
    with pytest.raises(ValueError, match="plugin_uids"):
        plan_plugin_uids(["alpha"], uids, as_root=False)


def test_host_rejects_invalid_range(plugin_root: Path) -> None:
    with pytest.raises(ValueError, match="uid 0 is root"):
        PluginHost([plugin_root], plugin_uids=range(0, 100))


def test_no_uids_without_root_or_range() -> None:
    assert (
        plan_plugin_uids(["alpha"], DEFAULT_PLUGIN_UIDS, as_root=False) == {}
    )
    assert plan_plugin_uids(["alpha"], None, as_root=True) == {}


# -- the registry -------------------------------------------------------------

SMALL_RANGE = range(2_000_000_000, 2_000_000_016)


@needs_root
def test_registered_uid_kept_on_collision(uid_registry: Path) -> None:
    first, second = colliding_names(SMALL_RANGE)
    later, earlier = max(first, second), min(first, second)
    installed, _ = register_plugin_uids([later], SMALL_RANGE, uid_registry)
    both, _ = register_plugin_uids([later, earlier], SMALL_RANGE, uid_registry)
    assert both[later] == installed[later]
    assert both[earlier] != installed[later]


@needs_root
def test_uninstalled_plugin_keeps_uid_reserved(uid_registry: Path) -> None:
    first, second = colliding_names(SMALL_RANGE)
    gone, _ = register_plugin_uids([first], SMALL_RANGE, uid_registry)
    newcomer, owners = register_plugin_uids(
        [second], SMALL_RANGE, uid_registry
    )
    assert newcomer[second] != gone[first]
    assert owners[gone[first]] == first


@needs_root
def test_registry_file_private_and_readable(uid_registry: Path) -> None:
    assigned, _ = register_plugin_uids(["alpha"], SMALL_RANGE, uid_registry)
    assert stat.S_IMODE(uid_registry.stat().st_mode) == 0o600
    assert stat.S_IMODE(uid_registry.parent.stat().st_mode) == 0o700
    data = json.loads(uid_registry.read_text())
    assert list(data["ranges"].values()) == [assigned]


@needs_root
def test_registry_tables_per_range(uid_registry: Path) -> None:
    other = range(2_000_000_000, 2_000_000_020)
    small, _ = register_plugin_uids(["alpha"], SMALL_RANGE, uid_registry)
    large, _ = register_plugin_uids(["beta"], other, uid_registry)
    assert large["beta"] != small["alpha"]
    again, _ = register_plugin_uids(["alpha"], other, uid_registry)
    assert again["alpha"] not in (small["alpha"], large["beta"])


@needs_root
@pytest.mark.parametrize("mode", [0o770, 0o707, 0o1777])
def test_registry_folder_writable_by_others_raises(
    uid_registry: Path, mode: int
) -> None:
    uid_registry.parent.mkdir()
    os.chmod(uid_registry.parent, mode)
    with pytest.raises(PermissionError, match="not safe"):
        register_plugin_uids(["alpha"], SMALL_RANGE, uid_registry)
    assert not uid_registry.exists()


@needs_root
def test_registry_folder_of_other_owner_raises(uid_registry: Path) -> None:
    uid_registry.parent.mkdir(mode=0o700)
    os.chown(uid_registry.parent, NOBODY, NOBODY)
    with pytest.raises(PermissionError, match=f"owned by uid {NOBODY}"):
        register_plugin_uids(["alpha"], SMALL_RANGE, uid_registry)


@needs_root
def test_registry_below_other_owner_raises(tmp_path: Path) -> None:
    outer = tmp_path / "outer"
    outer.mkdir(mode=0o755)
    os.chown(outer, NOBODY, NOBODY)
    registry = outer / "registry" / "plugin-uids.json"
    with pytest.raises(PermissionError, match=re.escape(str(outer))):
        register_plugin_uids(["alpha"], SMALL_RANGE, registry)


@needs_root
@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        '{"version": 2, "ranges": {}}',
        '{"version": 1, "ranges": {"x": {"a": "1"}}}',
        '{"version": 1, "ranges": {"x": {"a": 5}, "y": {"b": 5}}}',
    ],
    ids=["not-json", "version", "uid-type", "uid-twice"],
)
def test_invalid_registry_raises(uid_registry: Path, text: str) -> None:
    uid_registry.parent.mkdir(mode=0o700)
    uid_registry.write_text(text)
    with pytest.raises(ValueError, match=r"uid registry .* is invalid"):
        register_plugin_uids(["alpha"], SMALL_RANGE, uid_registry)
    assert uid_registry.read_text() == text


@needs_root
def test_host_keeps_uid_after_collider_installed(
    write_plugin: PluginWriter, make_host: HostFactory, uid_registry: Path
) -> None:
    first, second = colliding_names(SMALL_RANGE)
    later, earlier = max(first, second), min(first, second)
    write_plugin(later, PLAIN_SOURCE, PLAIN_METHODS)
    host = make_host(plugin_uids=SMALL_RANGE, uid_registry=uid_registry)
    installed_uid = host.execute_plugin(later, "ids")[0]
    host.close()
    write_plugin(earlier, PLAIN_SOURCE, PLAIN_METHODS)
    host = make_host(plugin_uids=SMALL_RANGE, uid_registry=uid_registry)
    assert host.execute_plugin(later, "ids")[0] == installed_uid
    assert host.execute_plugin(earlier, "ids")[0] != installed_uid


def test_kill_refuses_root_and_own_uid() -> None:
    for uid in {0, os.getuid(), os.geteuid()}:
        with pytest.raises(ValueError, match="never kills"):
            kill_processes_of(uid)


# -- workers ------------------------------------------------------------------


@pytest.fixture
def write_folder() -> Iterator[Path]:
    """A folder that plugins' policies let them write, sticky like /tmp."""
    folder = Path(f"/tmp/sandbox-test-uids-{os.getpid()}")
    folder.mkdir(mode=0o1777)
    os.chmod(folder, 0o1777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@needs_root
def test_worker_runs_as_plugin_uid(
    write_plugin: PluginWriter, make_host: HostFactory, uid_registry: Path
) -> None:
    write_plugin("plain", PLAIN_SOURCE, PLAIN_METHODS)
    expected = assign_plugin_uids(["plain"], DEFAULT_PLUGIN_UIDS)["plain"]
    host = make_host(uid_registry=uid_registry)
    assert host.execute_plugin("plain", "ids") == [expected, expected, []]


@needs_root
def test_policy_user_wins(
    write_plugin: PluginWriter, make_host: HostFactory, uid_registry: Path
) -> None:
    write_plugin("named", PLAIN_SOURCE, PLAIN_METHODS)
    host = make_host(
        {"plugins": {"named": {"user": "nobody"}}}, uid_registry=uid_registry
    )
    assert host.execute_plugin("named", "ids") == [NOBODY, NOBODY, []]


@needs_root
def test_files_readable_after_host_restart(
    write_plugin: PluginWriter,
    make_host: HostFactory,
    write_folder: Path,
    uid_registry: Path,
) -> None:
    write_plugin("keeper", PLAIN_SOURCE, PLAIN_METHODS)
    policies = {
        "plugins": {"keeper": {"filesystem": {"write": [str(write_folder)]}}}
    }
    kept_path = str(write_folder / "kept.txt")
    first = make_host(policies, uid_registry=uid_registry)
    first.execute_plugin(
        "keeper", "write", {"path": kept_path, "text": "mine"}
    )
    first.close()
    second = make_host(policies, uid_registry=uid_registry)
    assert (
        second.execute_plugin("keeper", "read", {"path": kept_path}) == "mine"
    )


@needs_root
def test_unreadable_plugin_names_its_uid(
    write_plugin: PluginWriter, make_host: HostFactory, uid_registry: Path
) -> None:
    folder = write_plugin("private", PLAIN_SOURCE, PLAIN_METHODS)
    os.chmod(folder, 0o700)
    uid = assign_plugin_uids(["private"], DEFAULT_PLUGIN_UIDS)["private"]
    host = make_host(uid_registry=uid_registry)
    with pytest.raises(LaunchError, match=f"not readable by uid {uid} "):
        host.execute_plugin("private", "ids")


UNPRIVILEGED_SCRIPT = """
import json
import os
import re
import shutil
import sys
import tempfile

from sandbox import PluginHost

plugin_dir = sys.argv[1]
scratch_root = tempfile.mkdtemp(prefix="sandbox-test-scratch-")
choices = {
    "default": {},
    "explicit": {"plugin_uids": range(2_000_000_000, 2_000_000_100)},
    "none": {"plugin_uids": None},
}
report = {"host_ids": [os.getuid(), os.getgid(), os.getgroups()]}
try:
    for label, options in choices.items():
        host = PluginHost([plugin_dir], scratch_root=scratch_root, **options)
        with host:
            report[label] = host.execute_plugin("plain", "ids")
    try:
        PluginHost([plugin_dir], plugin_uids=range(0, 100))
    except ValueError as error:
        report["invalid"] = str(error)
finally:
    shutil.rmtree(scratch_root, ignore_errors=True)
print(json.dumps(report))
"""


@needs_root
@pytest.mark.skipif(shutil.which("runuser") is None, reason="needs runuser")
def test_unprivileged_host_ignores_plugin_uids(
    write_plugin: PluginWriter, plugin_root: Path
) -> None:
    write_plugin("plain", PLAIN_SOURCE, PLAIN_METHODS)
    completed = run_script_as_nobody(
        plugin_root,
        "unprivileged_host.py",
        UNPRIVILEGED_SCRIPT,
        str(plugin_root),
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    host_ids = report["host_ids"]
    assert host_ids[:2] == [NOBODY, NOBODY]
    assert report["default"] == host_ids
    assert report["explicit"] == host_ids
    assert report["none"] == host_ids
    assert "uid 0 is root" in report["invalid"]


# -- policy users -------------------------------------------------------------


@needs_root
def test_policy_user_of_other_plugin_raises(
    write_plugin: PluginWriter, make_host: HostFactory, uid_registry: Path
) -> None:
    write_plugin("owner", PLAIN_SOURCE, PLAIN_METHODS)
    write_plugin("taker", PLAIN_SOURCE, PLAIN_METHODS)
    owner_uid = make_host(uid_registry=uid_registry).execute_plugin(
        "owner", "ids"
    )[0]
    policies = {"plugins": {"taker": {"user": owner_uid}}}
    with pytest.raises(PolicyError, match="uid of plugin 'owner'") as caught:
        make_host(policies, uid_registry=uid_registry)
    assert caught.value.plugin == "taker"
    assert caught.value.key == "user"


@needs_root
def test_policy_user_of_uninstalled_plugin_raises(
    write_plugin: PluginWriter, make_host: HostFactory, uid_registry: Path
) -> None:
    gone, _ = register_plugin_uids(["gone"], DEFAULT_PLUGIN_UIDS, uid_registry)
    write_plugin("taker", PLAIN_SOURCE, PLAIN_METHODS)
    policies = {"plugins": {"taker": {"user": gone["gone"]}}}
    with pytest.raises(PolicyError, match="uid of plugin 'gone'"):
        make_host(policies, uid_registry=uid_registry)


@needs_root
def test_policy_user_in_uid_range_raises(
    write_plugin: PluginWriter, make_host: HostFactory, uid_registry: Path
) -> None:
    write_plugin("taker", PLAIN_SOURCE, PLAIN_METHODS)
    own = assign_plugin_uids(["taker"], DEFAULT_PLUGIN_UIDS)["taker"]
    unused = next(
        uid for uid in DEFAULT_PLUGIN_UIDS if uid != own and is_free_uid(uid)
    )
    policies = {"plugins": {"taker": {"user": unused}}}
    with pytest.raises(PolicyError, match="lies in plugin_uids") as caught:
        make_host(policies, uid_registry=uid_registry)
    assert caught.value.key == "user"
    # The same uid is no plugin's when the host gives out no uids.
    shared = make_host(policies, plugin_uids=None, uid_registry=uid_registry)
    assert shared.execute_plugin("taker", "ids")[0] == unused


@needs_root
@pytest.mark.parametrize("user", ["nobody", "daemon", 1])
def test_same_policy_user_twice_raises(
    write_plugin: PluginWriter,
    make_host: HostFactory,
    uid_registry: Path,
    user: str | int,
) -> None:
    write_plugin("first", PLAIN_SOURCE, PLAIN_METHODS)
    write_plugin("second", PLAIN_SOURCE, PLAIN_METHODS)
    policies = {"defaults": {"user": user}}
    with pytest.raises(PolicyError, match="also the user of") as caught:
        make_host(policies, uid_registry=uid_registry)
    assert caught.value.plugin == "second"
    assert caught.value.key == "user"


@needs_root
def test_same_user_by_name_and_uid_raises(
    write_plugin: PluginWriter, make_host: HostFactory, uid_registry: Path
) -> None:
    write_plugin("first", PLAIN_SOURCE, PLAIN_METHODS)
    write_plugin("second", PLAIN_SOURCE, PLAIN_METHODS)
    policies = {
        "plugins": {"first": {"user": "daemon"}, "second": {"user": 1}}
    }
    with pytest.raises(PolicyError, match="also the user of plugin 'first'"):
        make_host(policies, uid_registry=uid_registry)


@needs_root
def test_shared_user_allowed_by_host_option(
    write_plugin: PluginWriter, make_host: HostFactory, uid_registry: Path
) -> None:
    write_plugin("first", PLAIN_SOURCE, PLAIN_METHODS)
    write_plugin("second", PLAIN_SOURCE, PLAIN_METHODS)
    host = make_host(
        {"defaults": {"user": "nobody"}},
        uid_registry=uid_registry,
        allow_shared_users=True,
    )
    assert host.execute_plugin("first", "ids")[0] == NOBODY
    assert host.execute_plugin("second", "ids")[0] == NOBODY


@needs_root
def test_shared_nobody_mode_accepts_nobody(
    write_plugin: PluginWriter, make_host: HostFactory
) -> None:
    write_plugin("first", PLAIN_SOURCE, PLAIN_METHODS)
    write_plugin("second", PLAIN_SOURCE, PLAIN_METHODS)
    host = make_host({"defaults": {"user": "nobody"}}, plugin_uids=None)
    assert host.execute_plugin("first", "ids")[0] == NOBODY
    assert host.execute_plugin("second", "ids")[0] == NOBODY
    with pytest.raises(PolicyError, match="also the user of"):
        make_host({"defaults": {"user": "daemon"}}, plugin_uids=None)
