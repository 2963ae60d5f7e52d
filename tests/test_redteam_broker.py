"""Attacks on the capability broker, each with the protection it meets.

A secret that a plugin sends back as a capability name, an argument or
a path stays out of audit events. A root host opens files with the
plugin's uid, so file modes apply. A failing handler is audited, and
the plugin gets none of its text. Listings, event text and environment
values are bounded, escaped or checked before they reach a reply or an
event.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import tracemalloc
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import IS_ROOT, HostFactory, PluginWriter
from sandbox import PluginHost, PolicyError
from sandbox.fileaccess import open_in_identity_thread
from sandbox.launcher import Identity
from sandbox.policy import FileAccessPolicy, Policy, PolicySet

RUNNER = """
import os

from sandbox.plugin import CapabilityDenied, call_capability


def attempt(capability, params):
    try:
        return {"ok": call_capability(capability, **params)}
    except CapabilityDenied as error:
        return {"denied": str(error)}


def attempt_any(capability, params):
    try:
        return {"ok": call_capability(capability, **params)}
    except Exception as error:
        return {"error": type(error).__name__, "message": str(error)}


def leak_secret(name, via, folder):
    secret = call_capability("get_secret", name=name)
    requests = {
        "capability": [(secret, {})],
        "arguments": [
            ("read_file", {"path": secret}),
            ("read_file", {secret: 1}),
            ("get_secret", {"name": secret}),
            ("read_env", {"name": secret}),
        ],
        "paths": [
            ("read_file", {"path": folder + "/" + secret}),
            ("list_files", {"path": folder + "/" + secret}),
            ("read_file", {"path": folder + "//" + secret}),
            ("read_file", {"path": "/nowhere/" + secret}),
        ],
    }
    outcomes = []
    for capability, params in requests[via]:
        try:
            call_capability(capability, **params)
        except Exception as error:
            outcomes.append(str(error))
    return outcomes


def write_private(path, data):
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    os.write(fd, data.encode())
    os.close(fd)
    return os.getuid()


def whoami():
    return [os.getuid(), os.getgid()]


def echo(value):
    return value
"""

Events = list[dict[str, Any]]

# A 100-character token: cut to 80 characters for a message before
# redaction, it would no longer match the secret.
LONG_SECRET = "ghp_" + "Q7" * 48
# repr() doubles the backslash and escapes the quote, so an escaped copy
# would no longer match the secret.
BACKSLASH_SECRET = "pa\\ss-w0rd"
QUOTED_SECRET = "pa\\ss'w\"0rd-7c1e"
SECRETS = {
    "long": LONG_SECRET,
    "backslash": BACKSLASH_SECRET,
    "backslash-quote": QUOTED_SECRET,
}
UNPRINTABLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def attempt(
    host: PluginHost, plugin: str, capability: str, **params: Any
) -> Any:
    return host.execute_plugin(
        plugin, "attempt", {"capability": capability, "params": params}
    )


def attempt_any(
    host: PluginHost, plugin: str, capability: str, **params: Any
) -> Any:
    return host.execute_plugin(
        plugin, "attempt_any", {"capability": capability, "params": params}
    )


def secret_pieces(secret: str) -> set[str]:
    """Return the first 24 characters, raw and as repr() escapes them."""
    return {secret[:24], repr(secret)[1:-1][:24]}


def leaked_pieces(events: Events, secret: str) -> list[str]:
    values = "\n".join(str(v) for e in events for v in e.values())
    return [piece for piece in secret_pieces(secret) if piece in values]


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="sandbox-redteam-"))
    os.chmod(folder, 0o1777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _secret_host(
    write_plugin: PluginWriter, make_host: HostFactory, folder: Path
) -> tuple[PluginHost, Events]:
    caps = ("get_secret", "read_file", "list_files", "read_env")
    write_plugin("leaker", RUNNER, ["leak_secret", "echo"], caps)
    host = make_host(
        {
            "plugins": {
                "leaker": {
                    "capabilities": list(caps),
                    "secrets": ["TOKEN"],
                    "files": {"read": [str(folder)]},
                }
            }
        }
    )
    events: Events = []
    host.subscribe(events.append)
    return host, events


def test_secret_as_capability_name_redacted(
    write_plugin: PluginWriter, make_host: HostFactory, shared_folder: Path
) -> None:
    denied = _check_redacted(
        write_plugin, make_host, shared_folder, "tok-3f9a1c7e", "capability"
    )
    assert denied[0]["capability"] == "<invalid name, 12 characters>"


@pytest.mark.parametrize("secret", SECRETS.values(), ids=SECRETS.keys())
@pytest.mark.parametrize("via", ["arguments", "paths"])
def test_secret_as_argument_redacted(
    write_plugin: PluginWriter,
    make_host: HostFactory,
    shared_folder: Path,
    secret: str,
    via: str,
) -> None:
    denied = _check_redacted(
        write_plugin, make_host, shared_folder, secret, via
    )
    reasons = "\n".join(e["reason"] for e in denied)
    assert "[redacted]" in reasons


def _check_redacted(
    write_plugin: PluginWriter,
    make_host: HostFactory,
    folder: Path,
    secret: str,
    via: str,
) -> Events:
    host, events = _secret_host(write_plugin, make_host, folder)
    host.provide_secret("leaker", "TOKEN", secret)
    outcomes = host.execute_plugin(
        "leaker",
        "leak_secret",
        {"name": "TOKEN", "via": via, "folder": str(folder)},
    )
    denied = [e for e in events if e["event"] == "capability_denied"]
    assert len(denied) == len(outcomes) > 0
    leaked = leaked_pieces(denied, secret)
    assert not leaked, [e.get("reason") for e in denied]
    return denied


def test_invalid_capability_name_not_recorded(
    write_plugin: PluginWriter, make_host: HostFactory
) -> None:
    write_plugin("caller", RUNNER, ["attempt"])
    host = make_host()
    events: Events = []
    host.subscribe(events.append)
    name = "Not A Name: hunter2"
    outcome = attempt(host, "caller", name)
    assert "invalid capability name" in outcome["denied"]
    assert "hunter2" not in outcome["denied"]
    (denied,) = [e for e in events if e["event"] == "capability_denied"]
    assert denied["capability"] == f"<invalid name, {len(name)} characters>"
    assert "hunter2" not in str(denied)


def _shared_pair(
    write_plugin: PluginWriter, make_host: HostFactory, folder: Path
) -> PluginHost:
    caps = ("read_file", "write_file", "list_files")
    write_plugin("intruder", RUNNER, ["attempt", "whoami"], caps)
    write_plugin("owner", RUNNER, ["write_private"])
    return make_host(
        {
            "plugins": {
                "intruder": {
                    "capabilities": list(caps),
                    "files": {"write": [str(folder)]},
                },
                "owner": {"filesystem": {"write": [str(folder)]}},
            }
        }
    )


@pytest.mark.skipif(not IS_ROOT, reason="per-plugin uids need a root host")
def test_broker_respects_file_owner(
    write_plugin: PluginWriter, make_host: HostFactory, shared_folder: Path
) -> None:
    host = _shared_pair(write_plugin, make_host, shared_folder)
    private = shared_folder / "owner-state"
    owner_uid = host.execute_plugin(
        "owner",
        "write_private",
        {"path": str(private), "data": "owner private state"},
    )
    assert private.stat().st_uid == owner_uid != 0
    root_key = shared_folder / "root-only.key"
    root_key.write_text("root private key")
    os.chmod(root_key, 0o600)
    root_folder = shared_folder / "root-only"
    root_folder.mkdir(mode=0o700)
    outcomes = {
        "read owner": attempt(
            host, "intruder", "read_file", path=str(private)
        ),
        "read root": attempt(
            host, "intruder", "read_file", path=str(root_key)
        ),
        "write owner": attempt(
            host,
            "intruder",
            "write_file",
            path=str(private),
            data=b"clobbered",
        ),
        "list root": attempt(
            host, "intruder", "list_files", path=str(root_folder)
        ),
        "create in root folder": attempt(
            host,
            "intruder",
            "write_file",
            path=f"{root_folder}/planted",
            data=b"planted",
        ),
    }
    assert private.read_text() == "owner private state"
    assert not (root_folder / "planted").exists()
    assert all("denied" in o for o in outcomes.values()), outcomes
    assert all(
        "Permission denied" in o["denied"] for o in outcomes.values()
    ), outcomes


def _thread_credentials() -> dict[str, str]:
    """Return the Uid, Gid, Groups and CapEff lines of this thread."""
    tid = threading.get_native_id()
    wanted = ("Uid", "Gid", "Groups", "CapEff")
    lines = Path(f"/proc/self/task/{tid}/status").read_text().splitlines()
    return {
        key: value.strip()
        for key, _, value in (line.partition(":") for line in lines)
        if key in wanted
    }


@pytest.mark.skipif(not IS_ROOT, reason="per-plugin uids need a root host")
def test_created_file_belongs_to_plugin(
    write_plugin: PluginWriter, make_host: HostFactory, shared_folder: Path
) -> None:
    host = _shared_pair(write_plugin, make_host, shared_folder)
    uid, gid = host.execute_plugin("intruder", "whoami")
    assert uid != 0
    before = _thread_credentials()
    path = shared_folder / "report.txt"
    outcome = attempt(
        host, "intruder", "write_file", path=str(path), data=b"report"
    )
    assert outcome == {"ok": 6}
    info = path.stat()
    assert (info.st_uid, info.st_gid) == (uid, gid)
    # The host's thread that served the call is still root: the 4th Uid
    # field is the file-system uid.
    after = _thread_credentials()
    assert after["Uid"].split()[3] == "0"
    assert after["Gid"].split()[3] == "0"
    assert after == before


@pytest.mark.skipif(not IS_ROOT, reason="switching identity needs root")
@pytest.mark.parametrize("groups", [(), (100, 200)], ids=["none", "two"])
def test_open_thread_takes_identity(groups: tuple[int, ...]) -> None:
    seen: dict[str, str] = {}

    def open_file() -> int:
        seen.update(_thread_credentials())
        return os.open("/dev/null", os.O_RDONLY)

    before = _thread_credentials()
    fd = open_in_identity_thread(Identity(65534, 65533, groups), open_file)
    os.close(fd)
    assert seen["Uid"].split()[3] == "65534"
    assert seen["Gid"].split()[3] == "65533"
    assert seen["Groups"].split() == [str(group) for group in groups]
    assert int(seen["CapEff"], 16) == 0
    assert _thread_credentials() == before


@pytest.mark.linux
@pytest.mark.skipif(not IS_ROOT, reason="per-plugin uids need a root host")
def test_proc_folder_hides_host_environment(
    write_plugin: PluginWriter,
    plugin_root: Path,
    pytestconfig: pytest.Config,
) -> None:
    # No policy may name /proc. Past that first layer (forced here by
    # changing a frozen policy after its checks), the plugin's uid is
    # what must stop this read.
    with pytest.raises(PolicyError, match="pseudo-filesystem"):
        FileAccessPolicy(read=("/proc",))
    files = FileAccessPolicy()
    object.__setattr__(files, "read", ("/proc",))
    write_plugin("reader", RUNNER, ["attempt"], ("read_file",))
    reader = Policy(
        name="reader",
        capabilities=frozenset({"read_file"}),
        files=files,
    )
    policies = PolicySet(
        source="<code>",
        defaults=Policy(name="*", source="<code>"),
        plugins={"reader": reader},
    )
    transport = pytestconfig.getoption("--transport")
    with PluginHost([plugin_root], policies, transport=transport) as host:
        with open(f"/proc/{os.getpid()}/environ", "rb") as file:
            expected = file.read(4096)
        assert expected
        outcome = attempt(
            host, "reader", "read_file", path=f"/proc/{os.getpid()}/environ"
        )
    # The value is not shown: it is the host's environment.
    leaked = len(outcome.get("ok", b""))
    assert "denied" in outcome, f"read {leaked} bytes of the environment"
    assert "Permission denied" in outcome["denied"]


def _failing_host(
    write_plugin: PluginWriter, make_host: HostFactory, error: Exception
) -> tuple[PluginHost, Events]:
    """Return a host whose ``lookup`` handler raises ``error``."""
    methods = ["attempt", "attempt_any", "echo"]
    write_plugin("caller", RUNNER, methods, ("lookup",))
    host = make_host({"plugins": {"caller": {"capabilities": ["lookup"]}}})
    events: Events = []
    host.subscribe(events.append)

    def lookup(plugin: str, params: dict[str, Any]) -> None:
        raise error

    host.register_capability("lookup", lookup)
    return host, events


def test_failing_handler_is_audited(
    write_plugin: PluginWriter, make_host: HostFactory
) -> None:
    host, events = _failing_host(
        write_plugin, make_host, KeyError("no such row")
    )
    with contextlib.suppress(Exception):
        attempt(host, "caller", "lookup")
    lookups = [e for e in events if e.get("capability") == "lookup"]
    assert [e["event"] for e in lookups] == ["capability_failed"]
    assert lookups[0]["reason"] == "KeyError: 'no such row'"


@pytest.mark.parametrize("secret", SECRETS.values(), ids=SECRETS.keys())
def test_failing_handler_text_stays_in_host(
    write_plugin: PluginWriter,
    make_host: HostFactory,
    caplog: pytest.LogCaptureFixture,
    secret: str,
) -> None:
    # str(KeyError(x)) is repr(x), escaped, and the handler's text may
    # contain any of the host's data.
    host, events = _failing_host(
        write_plugin, make_host, KeyError(f"row for {secret} at db:5432")
    )
    host.provide_secret("caller", "TOKEN", secret)
    with caplog.at_level(logging.ERROR, logger="sandbox.broker"):
        outcome = attempt_any(host, "caller", "lookup")
    assert outcome["error"] == "RuntimeError"
    assert "capability lookup failed in the host" in outcome["message"]
    assert "db:5432" not in outcome["message"]
    (failed,) = [e for e in events if e["event"] == "capability_failed"]
    assert "[redacted] at db:5432" in failed["reason"]
    assert not leaked_pieces([failed], secret), failed["reason"]
    records = [r for r in caplog.records if r.name == "sandbox.broker"]
    assert len(records) == 1
    message = records[0].getMessage()
    assert "lookup" in message
    assert "\n" not in message
    assert not any(piece in message for piece in secret_pieces(secret))
    assert host.execute_plugin("caller", "echo", {"value": 3}) == 3


def test_secret_with_lone_surrogate_rejected(
    write_plugin: PluginWriter, make_host: HostFactory
) -> None:
    write_plugin("caller", RUNNER, ["echo"])
    host = make_host()
    with pytest.raises(ValueError, match="not valid UTF-8"):
        host.provide_secret("caller", "TOKEN", "abc\udc80")


# -- listings -----------------------------------------------------------------

MIN_MESSAGE_BYTES = 1024


def test_list_files_stops_at_reply_size(
    write_plugin: PluginWriter, make_host: HostFactory, shared_folder: Path
) -> None:
    # 20000 names of 200 characters: about 5 MB as Python strings, read
    # in full by a listing that checks the size only at the end.
    for index in range(20000):
        name = f"{index:06d}" + "n" * 194
        os.close(os.open(shared_folder / name, os.O_CREAT | os.O_WRONLY))
    write_plugin("lister", RUNNER, ["attempt"], ("list_files",))
    host = make_host(
        {
            "plugins": {
                "lister": {
                    "capabilities": ["list_files"],
                    "files": {"read": [str(shared_folder)]},
                    "max_message_bytes": 65536,
                }
            }
        }
    )
    attempt(host, "lister", "list_files", path="/nowhere")  # start it
    tracemalloc.start()
    try:
        outcome = attempt(
            host, "lister", "list_files", path=str(shared_folder)
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "larger than the maximum of 65280 bytes" in outcome["denied"]
    assert peak < 1 << 20, f"peak of {peak} bytes while listing"


def test_list_files_within_limit_sorted(
    write_plugin: PluginWriter, make_host: HostFactory, shared_folder: Path
) -> None:
    names = [f"entry-{index:03d}" for index in range(50)]
    for name in reversed(names):
        (shared_folder / name).write_text("")
    write_plugin("lister", RUNNER, ["attempt"], ("list_files",))
    host = make_host(
        {
            "plugins": {
                "lister": {
                    "capabilities": ["list_files"],
                    "files": {"read": [str(shared_folder)]},
                    "max_message_bytes": MIN_MESSAGE_BYTES,
                }
            }
        }
    )
    outcome = attempt(host, "lister", "list_files", path=str(shared_folder))
    assert outcome == {"ok": names}
    (shared_folder / ("x" * 200)).write_text("")
    outcome = attempt(host, "lister", "list_files", path=str(shared_folder))
    assert "larger than the maximum" in outcome["denied"]


# -- text in events -----------------------------------------------------------

HOSTILE_TEXT = "a\nFAKE event\x1b[2J\x1b]0;title\x07\r\u009b31m\u202egnp.exe"


def test_event_fields_hold_no_control_characters(
    write_plugin: PluginWriter, make_host: HostFactory, shared_folder: Path
) -> None:
    caps = ("read_file", "get_secret", "read_env", "shout", "lookup")
    methods = ["attempt", "attempt_any"]
    write_plugin("caller", RUNNER, methods, caps)
    host = make_host(
        {
            "plugins": {
                "caller": {
                    "capabilities": list(caps),
                    "files": {"read": [str(shared_folder)]},
                }
            }
        }
    )

    def fail(plugin: str, params: dict[str, Any]) -> None:
        raise ValueError(str(params.get("text")))

    host.register_capability("shout", lambda plugin, params: None)
    host.register_capability("lookup", fail)
    events: Events = []
    host.subscribe(events.append)
    requests: list[tuple[str, dict[str, Any]]] = [
        (HOSTILE_TEXT, {}),
        ("read_file", {"path": "/" + HOSTILE_TEXT}),
        ("read_file", {"path": f"{shared_folder}/{HOSTILE_TEXT}"}),
        ("read_file", {"path": "relative" + HOSTILE_TEXT}),
        ("read_file", {HOSTILE_TEXT: 1}),
        ("get_secret", {"name": HOSTILE_TEXT}),
        ("read_env", {"name": HOSTILE_TEXT}),
        ("lookup", {"text": HOSTILE_TEXT}),
    ]
    for capability, params in requests:
        attempt_any(host, "caller", capability, **params)
    capability_events = [
        e for e in events if e["event"].startswith("capability_")
    ]
    assert len(capability_events) == len(requests)
    for event in capability_events:
        for key, value in event.items():
            text = str(value)
            bad = [c for c in text if unicodedata.category(c) in UNPRINTABLE]
            assert not bad, (key, text)
    reasons = "\n".join(e["reason"] for e in capability_events)
    assert "\\x1b[2J" in reasons


def test_event_field_length_bounded(
    write_plugin: PluginWriter, make_host: HostFactory
) -> None:
    write_plugin("caller", RUNNER, ["attempt"], ("lookup",))
    host = make_host({"plugins": {"caller": {"capabilities": ["lookup"]}}})

    def fail(plugin: str, params: dict[str, Any]) -> None:
        raise ValueError("x" * 100_000)

    host.register_capability("lookup", fail)
    events: Events = []
    host.subscribe(events.append)
    with contextlib.suppress(Exception):
        attempt(host, "caller", "lookup")
    (failed,) = [e for e in events if e["event"] == "capability_failed"]
    assert 100 < len(failed["reason"]) <= 1003


# -- environment --------------------------------------------------------------

NOT_UTF8_NAME = "SANDBOX_TEST_NOT_UTF8"


def test_read_env_not_utf8_denied(
    write_plugin: PluginWriter,
    make_host: HostFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_plugin("reader", RUNNER, ["attempt", "echo"], ("read_env",))
    host = make_host(
        {
            "plugins": {
                "reader": {
                    "capabilities": ["read_env"],
                    "env": [NOT_UTF8_NAME],
                }
            }
        }
    )
    events: Events = []
    host.subscribe(events.append)
    monkeypatch.setitem(os.environb, NOT_UTF8_NAME.encode(), b"caf\xe9")
    outcome = attempt(host, "reader", "read_env", name=NOT_UTF8_NAME)
    assert outcome == {
        "denied": f"variable {NOT_UTF8_NAME} is not valid UTF-8"
    }
    assert host.execute_plugin("reader", "echo", {"value": 4}) == 4
    kinds = [e["event"] for e in events]
    assert "protocol_violation" not in kinds
    assert "capability_denied" in kinds
    monkeypatch.setitem(os.environb, NOT_UTF8_NAME.encode(), "café".encode())
    outcome = attempt(host, "reader", "read_env", name=NOT_UTF8_NAME)
    assert outcome == {"ok": "café"}
