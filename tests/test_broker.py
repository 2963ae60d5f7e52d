"""Brokered capabilities through real workers: schemas, secrets, files.

Each plugin method catches CapabilityDenied itself and returns it as
{"denied": message}, which shows that the denial reached the plugin as
that exception. After every rejected call, a bystander plugin and the
rejected plugin itself must still serve calls.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import IS_ROOT, HostFactory, PluginWriter
from sandbox import PluginCrashed, PluginError, PluginHost
from sandbox.broker import (
    MESSAGE_ENVELOPE_BYTES,
    Argument,
    redact_secrets,
    secret_forms,
)
from sandbox.fileaccess import openat2
from sandbox.process import LOG_TAIL_BYTES

ATTEMPT = """
import os
import sys

from sandbox.plugin import CapabilityDenied, call_capability, get_secret


def attempt(capability, params):
    try:
        return {"ok": call_capability(capability, **params)}
    except CapabilityDenied as error:
        return {"denied": str(error)}


def raise_secret(name):
    raise ValueError("the token is " + get_secret(name))


def print_secret_and_exit(name, filler):
    token = get_secret(name)
    sys.stdout.write("token " + token + "\\n" + token + "y" * filler + "\\n")
    sys.stdout.flush()
    os._exit(3)


def echo(value):
    return value
"""

FILE_CAPABILITIES = ("read_file", "write_file", "list_files")
SECRET_NAME = "API_TOKEN"
MESSAGE_LIMIT = 65536
FILE_LIMIT = MESSAGE_LIMIT - MESSAGE_ENVELOPE_BYTES

Events = list[dict[str, Any]]


def attempt(
    host: PluginHost, plugin: str, capability: str, **params: Any
) -> Any:
    return host.execute_plugin(
        plugin, "attempt", {"capability": capability, "params": params}
    )


def check_still_serving(host: PluginHost, plugin: str) -> None:
    """Check that the bystander and ``plugin`` still serve calls."""
    assert host.execute_plugin("bystander", "echo", {"value": 1}) == 1
    assert host.execute_plugin(plugin, "echo", {"value": 2}) == 2


def denials(events: Events, capability: str) -> Events:
    return [
        e
        for e in events
        if e["event"] == "capability_denied" and e["capability"] == capability
    ]


# -- schemas ------------------------------------------------------------------

ECHO_SCHEMA = {
    "text": Argument(str, max_length=8),
    "count": Argument(int, required=False),
}


@pytest.fixture
def schema_host(
    write_plugin: PluginWriter, make_host: HostFactory
) -> tuple[PluginHost, list[dict[str, Any]], Events]:
    write_plugin("caller", ATTEMPT, ["attempt", "echo"], ("shout", "notify"))
    write_plugin("bystander", ATTEMPT, ["echo"])
    host = make_host(
        {"plugins": {"caller": {"capabilities": ["shout", "notify"]}}}
    )
    handled: list[dict[str, Any]] = []

    def shout(plugin: str, params: dict[str, Any]) -> str:
        handled.append(params)
        return str(params["text"]).upper()

    host.register_capability("shout", shout, schema=ECHO_SCHEMA)
    events: Events = []
    host.subscribe(events.append)
    return host, handled, events


def test_schema_accepts_matching_arguments(
    schema_host: tuple[PluginHost, list[dict[str, Any]], Events],
) -> None:
    host, handled, events = schema_host
    outcome = attempt(host, "caller", "shout", text="hi", count=2)
    assert outcome == {"ok": "HI"}
    assert handled == [{"text": "hi", "count": 2}]
    granted = [e for e in events if e["event"] == "capability_granted"]
    assert [e["capability"] for e in granted] == ["shout"]


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"text": 5}, "must be str, got int"),
        ({"text": "hi", "count": True}, "must be int, got bool"),
        ({"count": 1}, "needs argument 'text'"),
        ({"text": "hi", "extra": 1}, "takes no argument 'extra'"),
        ({"text": "x" * 9}, "the maximum is 8"),
    ],
    ids=["wrong-type", "bool-for-int", "missing", "extra", "too-long"],
)
def test_schema_rejects_bad_arguments(
    schema_host: tuple[PluginHost, list[dict[str, Any]], Events],
    params: dict[str, Any],
    reason: str,
) -> None:
    host, handled, events = schema_host
    outcome = attempt(host, "caller", "shout", **params)
    assert reason in outcome["denied"]
    assert handled == []
    denied = denials(events, "shout")
    assert len(denied) == 1
    assert reason in denied[0]["reason"]
    check_still_serving(host, "caller")


def test_notify_schema_rejects_number(
    schema_host: tuple[PluginHost, list[dict[str, Any]], Events],
) -> None:
    host, _, events = schema_host
    outcome = attempt(host, "caller", "notify", message=5)
    assert "must be str" in outcome["denied"]
    assert len(denials(events, "notify")) == 1
    assert list(host.notifications) == []


def test_unchecked_handler_gets_params_as_sent(
    write_plugin: PluginWriter, make_host: HostFactory
) -> None:
    write_plugin("caller", ATTEMPT, ["attempt"], ("raw",))
    host = make_host({"plugins": {"caller": {"capabilities": ["raw"]}}})
    host.register_capability("raw", lambda plugin, params: sorted(params))
    outcome = attempt(host, "caller", "raw", anything=[1], goes=None)
    assert outcome == {"ok": ["anything", "goes"]}


# -- secrets ------------------------------------------------------------------


@pytest.fixture
def token() -> str:
    return secrets.token_hex(16)


@pytest.fixture
def secret_host(
    write_plugin: PluginWriter,
    make_host: HostFactory,
    token: str,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[PluginHost, Events]:
    # The same value in the host's environment, under a name no policy
    # passes through, must not reach the worker's environment either.
    monkeypatch.setenv("SANDBOX_TEST_HOST_TOKEN", token)
    methods = ["attempt", "raise_secret", "print_secret_and_exit", "echo"]
    caps = ("get_secret", "read_env")
    write_plugin("keeper", ATTEMPT, methods, caps)
    write_plugin("unlisted", ATTEMPT, methods, caps)
    write_plugin("bystander", ATTEMPT, ["echo"])
    host = make_host(
        {
            "defaults": {"capabilities": ["get_secret", "read_env"]},
            "plugins": {"keeper": {"secrets": [SECRET_NAME]}},
        }
    )
    host.provide_secret("keeper", SECRET_NAME, token)
    events: Events = []
    host.subscribe(events.append)
    return host, events


def test_granted_plugin_gets_secret(
    secret_host: tuple[PluginHost, Events], token: str
) -> None:
    host, events = secret_host
    assert attempt(host, "keeper", "get_secret", name=SECRET_NAME) == {
        "ok": token
    }
    granted = [e for e in events if e["event"] == "capability_granted"]
    assert granted[-1]["secret"] == SECRET_NAME


def test_secret_outside_policy_denied(
    secret_host: tuple[PluginHost, Events], token: str
) -> None:
    host, events = secret_host
    outcome = attempt(host, "unlisted", "get_secret", name=SECRET_NAME)
    assert "not in the secrets list" in outcome["denied"]
    assert token not in json.dumps(outcome)
    assert denials(events, "get_secret")[0]["secret"] == SECRET_NAME
    check_still_serving(host, "unlisted")


def test_secret_listed_but_missing_denied(
    write_plugin: PluginWriter, make_host: HostFactory
) -> None:
    write_plugin("keeper", ATTEMPT, ["attempt"], ("get_secret",))
    write_plugin("other", ATTEMPT, ["attempt"], ("get_secret",))
    host = make_host(
        {
            "plugins": {
                "keeper": {
                    "capabilities": ["get_secret"],
                    "secrets": [SECRET_NAME],
                },
                "other": {"secrets": [SECRET_NAME]},
            }
        }
    )
    host.provide_secret("other", SECRET_NAME, "belongs-to-another-plugin")
    outcome = attempt(host, "keeper", "get_secret", name=SECRET_NAME)
    assert "has not provided secret" in outcome["denied"]


def test_secret_absent_from_worker_environ(
    secret_host: tuple[PluginHost, Events], token: str
) -> None:
    if not IS_ROOT:
        pytest.skip("only root may read a non-dumpable process's environ")
    host, _ = secret_host
    assert attempt(host, "keeper", "get_secret", name=SECRET_NAME) == {
        "ok": token
    }
    pid = host.worker_status("keeper")["pid"]
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert environ  # the worker has an environment, so the check can fail
    assert token.encode() not in environ


def test_secret_absent_from_audit_records(
    secret_host: tuple[PluginHost, Events], token: str
) -> None:
    host, events = secret_host
    attempt(host, "keeper", "get_secret", name=SECRET_NAME)
    # The plugin passes the value where the host echoes arguments.
    attempt(host, "keeper", "get_secret", name=token)
    attempt(host, "keeper", "read_env", name=token)
    assert len(denials(events, "get_secret")) == 1
    assert len(denials(events, "read_env")) == 1
    records = json.dumps(events)
    assert token not in records
    assert "[redacted]" in records


def test_secret_redacted_in_plugin_error(
    secret_host: tuple[PluginHost, Events], token: str
) -> None:
    host, events = secret_host
    with pytest.raises(PluginError) as info:
        host.execute_plugin("keeper", "raise_secret", {"name": SECRET_NAME})
    error = info.value
    assert "the token is [redacted]" in error.message
    assert token not in str(error)
    assert token not in error.traceback
    assert "[redacted]" in error.traceback
    assert token not in json.dumps(events)
    check_still_serving(host, "keeper")


def test_secret_redacted_in_crash_log_tail(
    secret_host: tuple[PluginHost, Events], token: str
) -> None:
    host, events = secret_host
    with pytest.raises(PluginCrashed) as info:
        host.execute_plugin(
            "keeper",
            "print_secret_and_exit",
            {"name": SECRET_NAME, "filler": 10},
        )
    assert info.value.exit_code == 3
    assert info.value.detail.startswith("[redacted]")
    assert token not in str(info.value)
    assert token not in json.dumps(events)
    check_still_serving(host, "keeper")


def test_secret_split_by_log_window_redacted(
    secret_host: tuple[PluginHost, Events], token: str
) -> None:
    host, _ = secret_host
    # The last line is longer than the tail the host reads, and the start
    # of that tail falls in the middle of the token.
    filler = LOG_TAIL_BYTES - len(token) // 2
    with pytest.raises(PluginCrashed) as info:
        host.execute_plugin(
            "keeper",
            "print_secret_and_exit",
            {"name": SECRET_NAME, "filler": filler},
        )
    detail = info.value.detail
    assert detail.startswith("y")
    assert token[-8:] not in detail


def test_redact_prefers_longer_secret() -> None:
    text = redact_secrets("abc abcdef", ["abc", "abcdef"])
    assert text == "[redacted] [redacted]"


BUILTIN_CAPABILITIES = (
    "notify",
    "read_env",
    "get_secret",
    "read_file",
    "write_file",
    "list_files",
)


@pytest.mark.parametrize("name", BUILTIN_CAPABILITIES)
def test_builtin_capability_not_replaced(
    write_plugin: PluginWriter, make_host: HostFactory, name: str
) -> None:
    write_plugin("caller", ATTEMPT, ["attempt"], (name,))
    host = make_host({"plugins": {"caller": {"capabilities": [name]}}})
    with pytest.raises(ValueError) as caught:
        host.register_capability(name, lambda plugin, params: "replaced")
    assert f"capability {name!r} is built in" in str(caught.value)
    if name == "notify":
        outcome = attempt(host, "caller", name, message="hi")
        assert outcome == {"ok": None}
        assert [n.message for n in host.notifications] == ["hi"]


def test_custom_capability_registered_twice(
    write_plugin: PluginWriter, make_host: HostFactory
) -> None:
    write_plugin("caller", ATTEMPT, ["attempt"], ("shout",))
    host = make_host({"plugins": {"caller": {"capabilities": ["shout"]}}})
    host.register_capability("shout", lambda plugin, params: "first")
    host.register_capability("shout", lambda plugin, params: "second")
    assert attempt(host, "caller", "shout") == {"ok": "second"}


def test_secret_for_unknown_plugin_rejected(
    write_plugin: PluginWriter, make_host: HostFactory, token: str
) -> None:
    write_plugin("keeper", ATTEMPT, ["attempt"], ("get_secret",))
    host = make_host()
    with pytest.raises(ValueError) as caught:
        host.provide_secret("keepr", SECRET_NAME, token)
    message = str(caught.value)
    assert "no plugin named 'keepr'" in message
    assert "known plugins: keeper" in message
    assert token not in message


def test_secret_outside_policy_logged(
    write_plugin: PluginWriter,
    make_host: HostFactory,
    token: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    write_plugin("keeper", ATTEMPT, ["attempt"], ("get_secret",))
    host = make_host(
        {
            "plugins": {
                "keeper": {
                    "capabilities": ["get_secret"],
                    "secrets": [SECRET_NAME],
                }
            }
        }
    )
    with caplog.at_level(logging.WARNING, logger="sandbox.host"):
        host.provide_secret("keeper", SECRET_NAME, token)
        host.provide_secret("keeper", "OTHER_TOKEN", token + "x")
    records = [r for r in caplog.records if r.name == "sandbox.host"]
    assert len(records) == 1
    message = records[0].getMessage()
    assert "'OTHER_TOKEN'" in message
    assert "'keeper'" in message
    assert token not in message
    outcome = attempt(host, "keeper", "get_secret", name="OTHER_TOKEN")
    assert "not in the secrets list" in outcome["denied"]


# -- files --------------------------------------------------------------------


@pytest.fixture
def tree() -> Iterator[dict[str, Path]]:
    # A root host opens files as the plugin's uid, which needs search
    # permission on the whole path: pytest's tmp_path is mode 700.
    base = Path(tempfile.mkdtemp(prefix="sandbox-broker-"))
    os.chmod(base, 0o755)
    folders = {
        name: base / name for name in ("box", "readonly", "swapped", "outside")
    }
    for folder in folders.values():
        folder.mkdir(mode=0o755)
    os.chmod(folders["box"], 0o777)
    (folders["outside"] / "secret.txt").write_text("outside data")
    (folders["readonly"] / "notes.txt").write_text("read only")
    yield folders
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def file_host(
    write_plugin: PluginWriter, make_host: HostFactory, tree: dict[str, Path]
) -> tuple[PluginHost, Events]:
    write_plugin("filer", ATTEMPT, ["attempt", "echo"], FILE_CAPABILITIES)
    write_plugin("bystander", ATTEMPT, ["echo"])
    files = {
        "read": [str(tree["readonly"]), str(tree["swapped"])],
        "write": [str(tree["box"])],
    }
    host = make_host(
        {
            "plugins": {
                "filer": {
                    "capabilities": list(FILE_CAPABILITIES),
                    "files": files,
                    "max_message_bytes": MESSAGE_LIMIT,
                }
            }
        }
    )
    events: Events = []
    host.subscribe(events.append)
    return host, events


def test_write_read_list_inside_folder(
    file_host: tuple[PluginHost, Events], tree: dict[str, Path]
) -> None:
    host, events = file_host
    box = tree["box"]
    (box / "sub").mkdir(mode=0o777)
    os.chmod(box / "sub", 0o777)
    path = f"{box}/sub/report.bin"
    data = bytes(range(256)) * 4
    assert attempt(host, "filer", "write_file", path=path, data=data) == {
        "ok": len(data)
    }
    assert (box / "sub" / "report.bin").read_bytes() == data
    assert attempt(host, "filer", "read_file", path=path) == {"ok": data}
    assert attempt(host, "filer", "list_files", path=str(box)) == {
        "ok": ["sub"]
    }
    assert attempt(host, "filer", "list_files", path=f"{box}/sub") == {
        "ok": ["report.bin"]
    }
    notes = f"{tree['readonly']}/notes.txt"
    assert attempt(host, "filer", "read_file", path=notes) == {
        "ok": b"read only"
    }
    granted = [e for e in events if e["event"] == "capability_granted"]
    assert granted[0]["path"] == path


def test_overwrite_replaces_content(
    file_host: tuple[PluginHost, Events], tree: dict[str, Path]
) -> None:
    host, _ = file_host
    target = tree["box"] / "file.txt"
    target.write_bytes(b"a much longer old content")
    os.chmod(target, 0o666)
    attempt(host, "filer", "write_file", path=str(target), data=b"new")
    assert target.read_bytes() == b"new"


EscapeSetup = Callable[[dict[str, Path]], tuple[str, dict[str, Any], str]]


def _dotdot(tree: dict[str, Path]) -> tuple[str, dict[str, Any], str]:
    path = f"{tree['box']}/../outside/secret.txt"
    return "read_file", {"path": path}, "'..'"


def _absolute_outside(
    tree: dict[str, Path],
) -> tuple[str, dict[str, Any], str]:
    path = f"{tree['outside']}/secret.txt"
    return "read_file", {"path": path}, "not in a folder"


def _etc_passwd(tree: dict[str, Path]) -> tuple[str, dict[str, Any], str]:
    return "read_file", {"path": "/etc/passwd"}, "not in a folder"


def _relative(tree: dict[str, Path]) -> tuple[str, dict[str, Any], str]:
    return "read_file", {"path": "box/file"}, "not absolute"


def _nul(tree: dict[str, Path]) -> tuple[str, dict[str, Any], str]:
    path = f"{tree['box']}/a\0b"
    return "read_file", {"path": path}, "NUL"


def _symlink_out(tree: dict[str, Path]) -> tuple[str, dict[str, Any], str]:
    (tree["box"] / "link").symlink_to(tree["outside"] / "secret.txt")
    return "read_file", {"path": f"{tree['box']}/link"}, "symbolic link"


def _relative_symlink_out(
    tree: dict[str, Path],
) -> tuple[str, dict[str, Any], str]:
    (tree["box"] / "sub").mkdir()
    (tree["box"] / "sub" / "up").symlink_to("../../outside")
    path = f"{tree['box']}/sub/up/secret.txt"
    return "read_file", {"path": path}, "symbolic link"


def _symlink_write_out(
    tree: dict[str, Path],
) -> tuple[str, dict[str, Any], str]:
    (tree["box"] / "link").symlink_to(tree["outside"] / "secret.txt")
    params = {"path": f"{tree['box']}/link", "data": b"overwritten"}
    return "write_file", params, "symbolic link"


def _dangling_symlink_write(
    tree: dict[str, Path],
) -> tuple[str, dict[str, Any], str]:
    (tree["box"] / "link").symlink_to(tree["outside"] / "created.txt")
    params = {"path": f"{tree['box']}/link", "data": b"created"}
    return "write_file", params, "symbolic link"


def _symlink_to_proc_root(
    tree: dict[str, Path],
) -> tuple[str, dict[str, Any], str]:
    (tree["box"] / "root").symlink_to("/proc/self/root")
    path = f"{tree['box']}/root{tree['outside']}/secret.txt"
    return "read_file", {"path": path}, "symbolic link"


def _swapped_folder(
    tree: dict[str, Path],
) -> tuple[str, dict[str, Any], str]:
    # The allowlisted folder itself, replaced by a symlink after the
    # policy was loaded.
    swapped = tree["swapped"]
    swapped.rename(swapped.with_name("swapped.old"))
    swapped.symlink_to(tree["outside"])
    return "read_file", {"path": f"{swapped}/secret.txt"}, "symbolic link"


def _hard_link(tree: dict[str, Path]) -> tuple[str, dict[str, Any], str]:
    os.link(tree["outside"] / "secret.txt", tree["box"] / "linked")
    return "read_file", {"path": f"{tree['box']}/linked"}, "hard links"


def _fifo_read(tree: dict[str, Path]) -> tuple[str, dict[str, Any], str]:
    os.mkfifo(tree["box"] / "fifo")
    return "read_file", {"path": f"{tree['box']}/fifo"}, "not a regular"


def _fifo_write(tree: dict[str, Path]) -> tuple[str, dict[str, Any], str]:
    os.mkfifo(tree["box"] / "fifo")
    params = {"path": f"{tree['box']}/fifo", "data": b"x"}
    return "write_file", params, "not a regular"


def _device(tree: dict[str, Path]) -> tuple[str, dict[str, Any], str]:
    # The same device as /dev/zero, where a read never reaches an end.
    os.mknod(tree["box"] / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))
    return "read_file", {"path": f"{tree['box']}/zero"}, "not a regular"


def _too_large_write(
    tree: dict[str, Path],
) -> tuple[str, dict[str, Any], str]:
    params = {"path": f"{tree['box']}/big", "data": b"x" * (FILE_LIMIT + 1)}
    return "write_file", params, "larger than the maximum"


def _too_large_read(
    tree: dict[str, Path],
) -> tuple[str, dict[str, Any], str]:
    (tree["box"] / "big").write_bytes(b"x" * (FILE_LIMIT + 1))
    return "read_file", {"path": f"{tree['box']}/big"}, "larger than"


def _write_read_only_folder(
    tree: dict[str, Path],
) -> tuple[str, dict[str, Any], str]:
    params = {"path": f"{tree['readonly']}/notes.txt", "data": b"x"}
    return "write_file", params, "may write"


def _list_outside(tree: dict[str, Path]) -> tuple[str, dict[str, Any], str]:
    return "list_files", {"path": str(tree["outside"])}, "may list"


ESCAPES: dict[str, EscapeSetup] = {
    "dotdot": _dotdot,
    "absolute-outside": _absolute_outside,
    "etc-passwd": _etc_passwd,
    "relative": _relative,
    "nul": _nul,
    "symlink-out": _symlink_out,
    "relative-symlink-out": _relative_symlink_out,
    "symlink-write-out": _symlink_write_out,
    "dangling-symlink-write": _dangling_symlink_write,
    "symlink-to-proc-root": _symlink_to_proc_root,
    "swapped-folder": _swapped_folder,
    "hard-link": _hard_link,
    "fifo-read": _fifo_read,
    "fifo-write": _fifo_write,
    "device": _device,
    "too-large-write": _too_large_write,
    "too-large-read": _too_large_read,
    "write-read-only-folder": _write_read_only_folder,
    "list-outside": _list_outside,
}


@pytest.mark.parametrize("setup", ESCAPES.values(), ids=ESCAPES.keys())
def test_file_escape_denied(
    file_host: tuple[PluginHost, Events],
    tree: dict[str, Path],
    setup: EscapeSetup,
) -> None:
    host, events = file_host
    capability, params, reason = setup(tree)
    outcome = attempt(host, "filer", capability, **params)
    assert reason in outcome.get("denied", ""), outcome
    assert len(denials(events, capability)) == 1
    assert (tree["outside"] / "secret.txt").read_text() == "outside data"
    assert not (tree["outside"] / "created.txt").exists()
    check_still_serving(host, "filer")


def test_too_large_write_creates_nothing(
    file_host: tuple[PluginHost, Events], tree: dict[str, Path]
) -> None:
    host, _ = file_host
    path = f"{tree['box']}/big"
    data = b"x" * (FILE_LIMIT + 1)
    outcome = attempt(host, "filer", "write_file", path=path, data=data)
    assert "larger than the maximum" in outcome["denied"]
    assert not (tree["box"] / "big").exists()
    exact = b"x" * FILE_LIMIT
    outcome = attempt(host, "filer", "write_file", path=path, data=exact)
    assert outcome == {"ok": FILE_LIMIT}


@pytest.fixture
def mount_in_box(tree: dict[str, Path]) -> Iterator[Path]:
    """Mount a tmpfs on a subfolder of the writable folder.

    The file on it is writable by everyone, so only the mount point
    stops a plugin from reading or writing it.
    """
    mount_point = tree["box"] / "mnt"
    mount_point.mkdir(mode=0o755)
    options = "size=1m,mode=0755"
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
        check=True,
    )
    try:
        (mount_point / "data.txt").write_text("mounted data")
        os.chmod(mount_point / "data.txt", 0o666)
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


@pytest.mark.skipif(not IS_ROOT, reason="mounting a tmpfs needs root")
@pytest.mark.parametrize(
    ("capability", "relative", "data"),
    [
        ("read_file", "mnt/data.txt", None),
        ("write_file", "mnt/data.txt", b"overwritten"),
        ("list_files", "mnt", None),
    ],
    ids=["read", "write", "list"],
)
def test_mount_beneath_folder_not_crossed(
    file_host: tuple[PluginHost, Events],
    tree: dict[str, Path],
    mount_in_box: Path,
    capability: str,
    relative: str,
    data: bytes | None,
) -> None:
    host, events = file_host
    params: dict[str, Any] = {"path": f"{tree['box']}/{relative}"}
    if data is not None:
        params["data"] = data
    outcome = attempt(host, "filer", capability, **params)
    assert "leads out of its folder" in outcome.get("denied", ""), outcome
    assert len(denials(events, capability)) == 1
    assert (mount_in_box / "data.txt").read_text() == "mounted data"
    check_still_serving(host, "filer")


@pytest.mark.parametrize(
    "relative", ["../outside/secret.txt", "@OUTSIDE@/secret.txt"]
)
def test_openat2_keeps_paths_beneath_folder(
    tree: dict[str, Path], relative: str
) -> None:
    # The lexical checks reject these paths before openat2 receives them, so
    # this shows the kernel's check on its own.
    (tree["box"] / "inside.txt").write_text("inside")
    relative = relative.replace("@OUTSIDE@", str(tree["outside"]))
    folder_fd = os.open(tree["box"], os.O_PATH | os.O_DIRECTORY)
    try:
        inside = openat2(folder_fd, "inside.txt", os.O_RDONLY)
        os.close(inside)
        with pytest.raises(OSError) as info:
            openat2(folder_fd, relative, os.O_RDONLY)
        assert info.value.errno == errno.EXDEV
    finally:
        os.close(folder_fd)


@pytest.mark.parametrize("entry", ["@PID@/root", "self/root", "self"])
def test_openat2_rejects_magic_links(
    tree: dict[str, Path], entry: str
) -> None:
    # A policy cannot name /proc as a files folder, so this shows on its
    # own that openat2 would not follow its magic links (PID/root leads
    # to the root of another process) nor the symlink "self".
    relative = f"{entry.replace('@PID@', str(os.getpid()))}{tree['outside']}"
    proc_fd = os.open("/proc", os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as info:
            openat2(proc_fd, f"{relative}/secret.txt", os.O_RDONLY)
        assert info.value.errno == errno.ELOOP
    finally:
        os.close(proc_fd)


def test_file_mode_denial_names_uid(
    file_host: tuple[PluginHost, Events], tree: dict[str, Path]
) -> None:
    host, _ = file_host
    locked = tree["box"] / "locked"
    locked.mkdir()
    os.chmod(locked, 0o555)
    requested = host.enforcement_report("filer")["layers"]["uid_gid"]
    uid = requested["requested"]["uid"] if IS_ROOT else os.geteuid()
    params = {"path": f"{locked}/report.txt", "data": b"x"}
    outcome = attempt(host, "filer", "write_file", **params)
    denied = outcome["denied"]
    assert "Permission denied" in denied
    assert f"as uid {uid};" in denied
    assert "must be writable by that uid" in denied
    outcome = attempt(host, "filer", "read_file", path=str(locked))
    assert "as uid" not in outcome["denied"]
    assert not (locked / "report.txt").exists()


# -- secrets in oversized replies and escaped text ----------------------------

KEY_ERROR_SOURCE = """
from sandbox.plugin import get_secret


def raise_key_error(name):
    raise KeyError(get_secret(name))
"""


def test_oversized_secret_reply_denied(
    write_plugin: PluginWriter,
    make_host: HostFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    write_plugin("keeper", ATTEMPT, ["attempt", "echo"], ("get_secret",))
    write_plugin("bystander", ATTEMPT, ["echo"])
    host = make_host(
        {
            "plugins": {
                "keeper": {
                    "capabilities": ["get_secret"],
                    "secrets": [SECRET_NAME],
                    "max_message_bytes": 1024,
                }
            }
        }
    )
    # Random, so that any 16 characters of it found in a text are a leak.
    long_secret = secrets.token_hex(1000)
    host.provide_secret("keeper", SECRET_NAME, long_secret)
    events: Events = []
    host.subscribe(events.append)
    pid_before = host.worker_status("keeper")["pid"]

    with caplog.at_level(logging.DEBUG):
        outcome = attempt(host, "keeper", "get_secret", name=SECRET_NAME)
    assert "larger than the plugin's max_message_bytes" in outcome["denied"]

    failed = [e for e in events if e["event"] == "capability_failed"]
    assert len(failed) == 1
    assert failed[0]["capability"] == "get_secret"

    texts = {
        "reply": json.dumps(outcome),
        "events": json.dumps(events),
        "logs": "\n".join(record.getMessage() for record in caplog.records),
    }
    for where, text in texts.items():
        assert long_secret[:16] not in text, where

    assert host.worker_status("keeper")["pid"] == pid_before
    check_still_serving(host, "keeper")


def test_escaped_secret_redacted_in_plugin_error(
    write_plugin: PluginWriter, make_host: HostFactory
) -> None:
    write_plugin(
        "keeper", KEY_ERROR_SOURCE, ["raise_key_error"], ("get_secret",)
    )
    host = make_host(
        {
            "plugins": {
                "keeper": {
                    "capabilities": ["get_secret"],
                    "secrets": [SECRET_NAME],
                }
            }
        }
    )
    # repr() escapes the quote, backslash and newline, so the raw value
    # never appears in str(KeyError(secret)).
    head, tail = secrets.token_hex(8), secrets.token_hex(8)
    escaped_secret = f"{head}'\"\\\n{tail}"
    host.provide_secret("keeper", SECRET_NAME, escaped_secret)
    with pytest.raises(PluginError) as info:
        host.execute_plugin("keeper", "raise_key_error", {"name": SECRET_NAME})
    error = info.value
    assert error.type_name == "KeyError"
    assert "[redacted]" in error.message
    assert "[redacted]" in error.traceback
    for part in (head, tail):
        assert part not in error.message
        assert part not in error.traceback
        assert part not in str(error)


def test_secret_forms_cover_repr_and_json() -> None:
    value = "a'b\"c\\d\ne"
    forms = secret_forms(value)
    assert repr(value)[1:-1] in forms
    assert json.dumps(value)[1:-1] in forms
    assert value in forms
