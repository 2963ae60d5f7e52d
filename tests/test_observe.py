"""Observe mode: real workers, real kernel records, real enforcement after.

A probe plugin reads a file, writes one, lists a folder, reads an
environment variable, connects to a loopback server and calls notify.
Observe mode must let every step run, and the policy it suggests must
grant exactly those needs: enough for the same call to pass under
enforcement, where the default policy makes it fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import sandbox.observe
from sandbox import PluginError, Policy
from sandbox.cli import main as cli_main
from sandbox.observe import Observation, Usage, observe_plugin
from sandbox.uids import DEFAULT_PLUGIN_UIDS, register_plugin_uids

if sys.version_info >= (3, 11):
    import tomllib
else:  # tomllib is in the standard library from Python 3.11 on.
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

from conftest import HostFactory, PluginWriter

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(
    not IS_ROOT, reason="reading audit records needs CAP_AUDIT_READ"
)
TOKEN_NAME = "SANDBOX_OBSERVE_TEST_TOKEN"
NOBODY = 65534

PROBE_SOURCE = """
import os
import socket

from sandbox.plugin import notify


def run(source, target, listed, port):
    with open(os.path.join(source, "input.txt")) as file:
        text = file.read()
    with open(os.path.join(target, "output.txt"), "w") as file:
        file.write(text.upper())
    names = sorted(os.listdir(listed))
    token = os.environ.get("SANDBOX_OBSERVE_TEST_TOKEN")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        reply = conn.recv(16).decode()
    notify("probe ran")
    return {"text": text, "names": names, "token": token, "reply": reply}
"""

MEMFD_SOURCE = """
import os


def run():
    fd = os.memfd_create("probe")
    os.close(fd)
    return "made a memfd"
"""


@dataclass
class Folders:
    source: Path
    target: Path
    listed: Path


@pytest.fixture
def folders() -> Iterator[Folders]:
    """Three folders the worker's uid may use, by their permission bits."""
    root = Path(tempfile.mkdtemp(prefix="sandbox-observe-"))
    os.chmod(root, 0o755)
    created = Folders(root / "source", root / "target", root / "listed")
    for folder in (created.source, created.listed):
        folder.mkdir(mode=0o755)
    created.target.mkdir()
    os.chmod(created.target, 0o777)
    (created.source / "input.txt").write_text("hello")
    os.chmod(created.source / "input.txt", 0o644)
    (created.listed / "entry").write_text("")
    yield created
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def loopback_port() -> Iterator[int]:
    """Serve "pong" to each connection on a loopback TCP port."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"pong")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(TOKEN_NAME, "t0k3n")
    return "t0k3n"


def _probe_params(folders: Folders, port: int) -> dict[str, Any]:
    return {
        "source": str(folders.source),
        "target": str(folders.target),
        "listed": str(folders.listed),
        "port": port,
    }


@pytest.fixture
def uid_registry(tmp_path: Path) -> Path:
    """A uid registry of this test's own, in a folder only root can change."""
    return tmp_path / "registry" / "plugin-uids.json"


@pytest.fixture
def observed(
    write_plugin: PluginWriter,
    plugin_root: Path,
    folders: Folders,
    loopback_port: int,
    token: str,
    uid_registry: Path,
) -> Observation:
    write_plugin("probe", PROBE_SOURCE, ["run"], ("notify",))
    return observe_plugin(
        [plugin_root],
        "probe",
        [("run", _probe_params(folders, loopback_port))],
        uid_registry=uid_registry,
    )


def _plugin_policy(toml_text: str) -> Policy:
    return Policy.from_dict(tomllib.loads(toml_text)).for_plugin("probe")


def test_observed_call_succeeds(observed: Observation) -> None:
    assert [call.error for call in observed.calls] == [None]
    assert observed.succeeded


def test_observed_folders_exact(
    observed: Observation, folders: Folders
) -> None:
    assert observed.read == (str(folders.listed), str(folders.source))
    assert observed.write == (str(folders.target),)
    assert not observed.readonly


def test_observed_network_port(
    observed: Observation, loopback_port: int
) -> None:
    assert observed.network == (loopback_port,)
    assert ("connect", socket.AF_INET, "127.0.0.1", loopback_port) in (
        observed.endpoints
    )


@needs_root
def test_kernel_logged_socket(observed: Observation) -> None:
    assert "socket" in observed.denied_syscalls


def test_observed_env_and_capability(observed: Observation) -> None:
    assert observed.env == (TOKEN_NAME,)
    assert observed.capabilities == ("notify",)


def test_observed_worker_gets_no_host_variable(
    observed: Observation, token: str
) -> None:
    # The name is recorded, but the value stays in the host: the worker's
    # environment is the policy's allowlist, as under enforcement.
    assert observed.calls[0].result["token"] is None
    assert TOKEN_NAME in observed.env


def test_observed_usage_measured(observed: Observation) -> None:
    usage = observed.usage
    assert usage.memory_mb > 0
    assert usage.file_descriptors >= 4
    assert usage.processes >= 1
    assert usage.largest_file_bytes >= len("HELLO")
    assert usage.longest_call_seconds > 0


def test_suggested_toml_parses(
    observed: Observation, folders: Folders, loopback_port: int
) -> None:
    policy = _plugin_policy(observed.suggested_policy_toml())
    assert policy.filesystem.read == (str(folders.listed), str(folders.source))
    assert policy.filesystem.write == (str(folders.target),)
    assert policy.network == (loopback_port,)
    assert policy.env == (TOKEN_NAME,)
    assert policy.capabilities == frozenset({"notify"})
    assert policy.resources == observed.suggested_resources()


def test_suggested_policy_enforced(
    observed: Observation,
    folders: Folders,
    loopback_port: int,
    token: str,
    make_host: HostFactory,
    uid_registry: Path,
) -> None:
    host = make_host(
        tomllib.loads(observed.suggested_policy_toml()),
        uid_registry=uid_registry,
    )
    result = host.execute_plugin(
        "probe", "run", _probe_params(folders, loopback_port)
    )
    assert result == {
        "text": "hello",
        "names": ["entry"],
        "token": token,
        "reply": "pong",
    }


def test_suggested_policy_loads(observed: Observation, tmp_path: Path) -> None:
    policy_file = tmp_path / "suggested.toml"
    policy_file.write_text(observed.suggested_policy_toml())
    policy = Policy.load(policy_file).for_plugin("probe")
    assert policy.filesystem.write == (observed.write[0],)


def test_default_policy_enforced_fails(
    observed: Observation,
    folders: Folders,
    loopback_port: int,
    make_host: HostFactory,
    uid_registry: Path,
) -> None:
    host = make_host(uid_registry=uid_registry)
    with pytest.raises(PluginError) as caught:
        host.execute_plugin(
            "probe", "run", _probe_params(folders, loopback_port)
        )
    assert caught.value.type_name == "PermissionError"


@needs_root
def test_denied_syscall_runs_and_is_noted(
    write_plugin: PluginWriter,
    plugin_root: Path,
    make_host: HostFactory,
    uid_registry: Path,
) -> None:
    write_plugin("memfd", MEMFD_SOURCE, ["run"])
    observation = observe_plugin(
        [plugin_root], "memfd", [("run", {})], uid_registry=uid_registry
    )
    assert observation.succeeded
    assert "memfd_create" in observation.denied_syscalls
    assert any("memfd_create" in note for note in observation.notes)
    with pytest.raises(PluginError):
        make_host(uid_registry=uid_registry).execute_plugin("memfd", "run")


def test_unobserved_plugin_readonly(
    write_plugin: PluginWriter, plugin_root: Path, uid_registry: Path
) -> None:
    write_plugin("quiet", "def run():\n    return 1\n", ["run"])
    observation = observe_plugin(
        [plugin_root], "quiet", [("run", {})], uid_registry=uid_registry
    )
    policy = Policy.from_dict(
        tomllib.loads(observation.suggested_policy_toml())
    ).for_plugin("quiet")
    assert policy.filesystem.readonly
    assert policy.filesystem.read == ()
    assert policy.network is False
    assert policy.env == ()


def test_toml_escapes_hostile_text(folders: Folders) -> None:
    odd = folders.listed / 'quote"back\\slash'
    odd.mkdir()
    observation = Observation(
        plugin="probe",
        calls=(),
        read=(str(odd),),
        write=(),
        readonly=True,
        network=False,
        capabilities=(),
        env=(),
        secrets=(),
        denied_syscalls=(),
        endpoints=(("connect", 2, "evil\n[plugins.x]\nnetwork = true", 1),),
        commands=(),
        usage=Usage(),
        notes=("line one\nnetwork = true",),
    )
    data = tomllib.loads(observation.suggested_policy_toml())
    assert set(data["plugins"]) == {"probe"}
    assert data["plugins"]["probe"]["filesystem"]["read"] == [str(odd)]
    assert data["plugins"]["probe"]["network"] is False


def test_cli_prints_policy(
    write_plugin: PluginWriter,
    plugin_root: Path,
    folders: Folders,
    loopback_port: int,
    token: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_plugin("probe", PROBE_SOURCE, ["run"], ("notify",))
    params = _probe_params(folders, loopback_port)
    status = cli_main(
        [
            "observe",
            "probe",
            "run",
            "--params",
            json.dumps(params),
            "--plugin-dir",
            str(plugin_root),
        ]
    )
    assert status == 0
    policy = _plugin_policy(capsys.readouterr().out)
    assert policy.filesystem.write == (str(folders.target),)


READ_ENV_SOURCE = """
from sandbox.errors import CapabilityDenied
from sandbox.plugin import read_env


def run(name):
    try:
        return {"value": read_env(name)}
    except CapabilityDenied:
        return {"value": None, "denied": True}
"""


def test_read_env_answers_only_the_policy_list(
    write_plugin: PluginWriter,
    plugin_root: Path,
    token: str,
    uid_registry: Path,
) -> None:
    write_plugin("probe", READ_ENV_SOURCE, ["run"], ("read_env",))
    observation = observe_plugin(
        [plugin_root],
        "probe",
        [("run", {"name": TOKEN_NAME})],
        uid_registry=uid_registry,
    )
    # The broker denies the host's value, yet the name is suggested.
    assert observation.calls[0].result == {"value": None, "denied": True}
    assert observation.env == (TOKEN_NAME,)
    assert observation.capabilities == ("read_env",)


GROUP_SOURCE = """
import errno
import os


def leave_group():
    # The worker leads its session, so only a child can try setsid().
    results = []
    for call in (os.setsid, lambda: os.setpgid(0, 0)):
        pid = os.fork()
        if pid == 0:
            try:
                call()
            except OSError as error:
                os._exit(error.errno)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        results.append(errno.errorcode.get(os.waitstatus_to_exitcode(status)))
    return results
"""


def test_observed_worker_cannot_leave_group(
    write_plugin: PluginWriter, plugin_root: Path, uid_registry: Path
) -> None:
    write_plugin("grouped", GROUP_SOURCE, ["leave_group"])
    observation = observe_plugin(
        [plugin_root],
        "grouped",
        [("leave_group", {})],
        uid_registry=uid_registry,
    )
    assert observation.calls[0].result == ["EPERM", "EPERM"]


def _start_as(uid: int) -> int:
    """Fork a child that runs as ``uid`` in a session of its own and sleeps."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            time.sleep(60)
        finally:
            os._exit(0)
    return pid


def _end(pid: int) -> int:
    """Kill ``pid`` if it still runs, reap it and return its wait status."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]


def _is_running(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as stat_file:
        state = stat_file.read().rsplit(")", 1)[1].split()[0]
    return state != "Z"


QUIET_SOURCE = "def run():\n    return 1\n"


@needs_root
def test_observe_kills_processes_of_plugin_uid(
    write_plugin: PluginWriter, plugin_root: Path, uid_registry: Path
) -> None:
    write_plugin("quiet", QUIET_SOURCE, ["run"])
    uid = register_plugin_uids(["quiet"], DEFAULT_PLUGIN_UIDS, uid_registry)[
        0
    ]["quiet"]
    # Outside the worker's process group, as a process of the plugin
    # that escaped it would be.
    pid = _start_as(uid)
    try:
        observation = observe_plugin(
            [plugin_root], "quiet", [("run", {})], uid_registry=uid_registry
        )
        time.sleep(0.2)
        survived = _is_running(pid)
    finally:
        status = _end(pid)
    assert observation.succeeded
    assert not survived
    assert os.WIFSIGNALED(status)
    assert os.WTERMSIG(status) == signal.SIGKILL


@needs_root
@pytest.mark.parametrize(
    "options",
    [{"plugin_uids": None}, {"policies": {"plugins": {"quiet": {"user": 1}}}}],
    ids=["shared-nobody", "policy-user"],
)
def test_observe_spares_uid_not_its_own(
    write_plugin: PluginWriter,
    plugin_root: Path,
    uid_registry: Path,
    options: dict[str, Any],
) -> None:
    write_plugin("quiet", QUIET_SOURCE, ["run"])
    policies = options.get("policies")
    uid = NOBODY if policies is None else 1
    pid = _start_as(uid)
    try:
        observation = observe_plugin(
            [plugin_root],
            "quiet",
            [("run", {})],
            policies=Policy.from_dict(policies) if policies else None,
            plugin_uids=options.get("plugin_uids", DEFAULT_PLUGIN_UIDS),
            uid_registry=uid_registry,
        )
        time.sleep(0.2)
        survived = _is_running(pid)
    finally:
        _end(pid)
    assert observation.succeeded
    assert survived


@needs_root
def test_failed_cleanup_becomes_note(
    write_plugin: PluginWriter,
    plugin_root: Path,
    uid_registry: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(uid: int) -> bool:
        raise PermissionError(1, "cannot switch to the plugin's uid")

    monkeypatch.setattr(sandbox.observe, "kill_processes_of", refuse)
    write_plugin("quiet", "def run():\n    return 1\n", ["run"])
    observation = observe_plugin(
        [plugin_root], "quiet", [("run", {})], uid_registry=uid_registry
    )
    assert observation.calls[0].result == 1
    assert any("could not end the processes" in n for n in observation.notes)
