"""The sandbox command line, run through main() and the installed script.

Every command here starts real sandboxed workers; nothing is mocked.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sandbox
from conftest import PluginWriter
from sandbox import Policy, demo, landlock, verify
from sandbox.cli import main
from sandbox.uids import (
    DEFAULT_PLUGIN_UIDS,
    assign_plugin_uids,
    plan_uids,
    registry_location,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
PLUGINS = str(EXAMPLES / "plugins")
POLICIES = str(EXAMPLES / "policies.toml")
SCRIPT = REPO / ".venv" / "bin" / "sandbox"
IS_ROOT = os.geteuid() == 0
STATUSES = {"enforced", "available", "missing"}
WIDTH = 79

PLUGIN_OPTIONS = ["--plugins", PLUGINS, "--policy", POLICIES]


pytestmark = pytest.mark.usefixtures("example_folders")


def run(
    capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, str, str]:
    """Run main(argv) and return (exit status, stdout, stderr)."""
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def line_of(output: str, first_word: str) -> str:
    """Return the first output line that starts with ``first_word``."""
    for line in output.splitlines():
        if line.split(" ", 1)[0] == first_word:
            return line
    raise AssertionError(f"no line starts with {first_word!r}:\n{output}")


def flat(text: str) -> str:
    """Join wrapped lines, so that a phrase can be found across a break."""
    return " ".join(text.split())


def probe_uid() -> int:
    """The uid a root host gives the probe worker of ``sandbox verify``."""
    names = [verify.PROBE_PLUGIN, verify.PROBE_NET_PLUGIN]
    return assign_plugin_uids(names, DEFAULT_PLUGIN_UIDS)[verify.PROBE_PLUGIN]


def too_wide(output: str) -> list[str]:
    return [line for line in output.splitlines() if len(line) > WIDTH]


def hostile_threats() -> list[str]:
    """Return the threat names of the hostile example plugin."""
    path = EXAMPLES / "plugins" / "hostile" / "hostile.py"
    spec = importlib.util.spec_from_file_location("hostile_threats", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.THREATS)


# -- verify ------------------------------------------------------------------


def test_verify_reports_seccomp_enforced(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, _ = run(capsys, "verify")
    assert status == 0, out
    assert line_of(out, "seccomp").split()[1] == "enforced"
    assert line_of(out, "no_new_privs").split()[1] == "enforced"
    assert too_wide(out) == []


def test_verify_reports_landlock_abi(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, _ = run(capsys, "verify")
    assert status == 0, out
    landlock_line = line_of(out, "landlock")
    assert landlock_line.split()[1] == "enforced"
    assert f"Landlock ABI {landlock.abi_version()};" in landlock_line


@pytest.mark.skipif(not IS_ROOT, reason="only a root host drops the uid")
def test_verify_reports_uid_drop_as_root(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, _ = run(capsys, "verify")
    assert status == 0, out
    uid = probe_uid()
    assert line_of(out, "uid_drop").split()[1] == "enforced"
    assert f"runs as uid {uid} (no passwd" in line_of(out, "uid_drop")
    assert line_of(out, "capabilities").split()[1] == "enforced"


def test_verify_json_has_report_keys(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, _ = run(capsys, "verify", "--json")
    data = json.loads(out)
    assert status == 0
    for key in ("protections", "worker_status", "landlock_abi", "ok"):
        assert key in data
    assert data["ok"] is True
    assert data["probe_error"] is None
    assert data["landlock_abi"] == landlock.abi_version()
    assert set(data["protections"]) == set(verify.PROTECTION_NAMES)
    for name, protection in data["protections"].items():
        assert protection["status"] in STATUSES, name


def test_verify_json_matches_worker_report(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, out, _ = run(capsys, "verify", "--json")
    data = json.loads(out)
    worker, protections = data["worker_status"], data["protections"]
    assert worker["seccomp"] == 2
    assert protections["seccomp"]["status"] == "enforced"
    assert worker["no_new_privs"] == 1
    assert protections["no_new_privs"]["status"] == "enforced"
    assert worker["dumpable"] == 0
    assert protections["dumpable_off"]["status"] == "enforced"


def test_verify_policy_lists_each_plugin(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, _ = run(capsys, "verify", "--policy", POLICIES)
    assert status == 0, out
    names = Policy.load(POLICIES).names()
    assert names
    for name in names:
        assert f"plugin {name} needs:" in out
    assert "plugins without a table ([defaults]" in out
    assert too_wide(out) == []


def test_verify_policy_json_lists_needs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, _ = run(capsys, "verify", "--json", "--policy", POLICIES)
    data = json.loads(out)
    assert status == 0
    assert set(data["plugins"]) == set(Policy.load(POLICIES).names())
    for name, entry in data["plugins"].items():
        assert "seccomp" in entry["needs"], name
        assert entry["missing"] == [], name


@pytest.mark.skipif(not IS_ROOT, reason="only a root host drops the uid")
def test_verify_policy_plans_each_plugin_uid(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, _ = run(capsys, "verify", "--json", "--policy", POLICIES)
    assert status == 0, out
    data = json.loads(out)
    names = Policy.load(POLICIES).names()
    # The registry that the command used, which now contains every name.
    plan = plan_uids(
        names,
        DEFAULT_PLUGIN_UIDS,
        as_root=True,
        registry=registry_location(None),
    )
    planned = {}
    for name in names:
        layers = data["plugins"][name]["enforcement"]["layers"]
        planned[name] = layers["uid_gid"]["requested"]["uid"]
    assert planned == dict(plan.plugin_uids)
    assert all(uid in DEFAULT_PLUGIN_UIDS for uid in planned.values())
    assert len(set(planned.values())) == len(names)
    defaults = data["defaults"]["enforcement"]["layers"]["uid_gid"]
    assert defaults["requested"]["uid"] is None
    assert defaults["requested"]["uid_range"] == [
        DEFAULT_PLUGIN_UIDS.start,
        DEFAULT_PLUGIN_UIDS[-1],
    ]


@pytest.fixture
def unreadable_python(tmp_path: Path) -> str:
    """Copy this interpreter into a folder only root can enter."""
    folder = tmp_path / "private"
    folder.mkdir(mode=0o700)
    copy = folder / "python3"
    shutil.copy2(os.path.realpath(sys.executable), copy)
    return str(copy)


@pytest.mark.skipif(not IS_ROOT, reason="only a root host drops the uid")
def test_verify_unreadable_python_fails(
    capsys: pytest.CaptureFixture[str], unreadable_python: str
) -> None:
    status, out, _ = run(
        capsys, "verify", "--python", unreadable_python, "--policy", POLICIES
    )
    assert status == 1
    assert "The probe worker failed" in out
    assert f"is not readable by uid {probe_uid()}" in flat(out)
    assert line_of(out, "uid_drop").split()[1] == "available"
    assert "MISSING: needed protections are not in force" in flat(out)


@pytest.mark.skipif(not IS_ROOT, reason="only a root host drops the uid")
def test_verify_json_unreadable_python_missing(
    capsys: pytest.CaptureFixture[str], unreadable_python: str
) -> None:
    status, out, _ = run(
        capsys,
        "verify",
        "--json",
        "--python",
        unreadable_python,
        "--policy",
        POLICIES,
    )
    data = json.loads(out)
    assert status == 1
    assert data["ok"] is False
    assert "not readable by uid" in data["probe_error"]
    assert data["protections"]["uid_drop"]["in_force"] is False
    assert "uid_drop" in data["plugins"]["notification"]["missing"]


@pytest.mark.skipif(not SCRIPT.exists(), reason="no installed script")
def test_installed_script_runs_verify() -> None:
    completed = subprocess.run(
        [str(SCRIPT), "verify"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert line_of(completed.stdout, "seccomp").split()[1] == "enforced"
    expected = f"Landlock ABI {landlock.abi_version()}"
    assert expected in completed.stdout


# -- requirements ------------------------------------------------------------


def test_requirements_follow_network_and_root() -> None:
    policies = Policy.from_dict(
        {"plugins": {"online": {"network": True}, "offline": {}}}
    )
    as_root = verify.requirements_for(policies, as_root=True)
    as_user = verify.requirements_for(policies, as_root=False)
    assert "landlock_tcp" not in as_root["online"]
    assert "landlock_tcp" in as_root["offline"]
    assert "uid_drop" in as_root["online"]
    assert "uid_drop" not in as_user["online"]
    assert "capabilities" not in as_user["offline"]


def test_missing_for_lists_unmet_needs() -> None:
    protections = tuple(
        verify.Protection(
            name, "available" if name == "uid_drop" else "enforced", ""
        )
        for name in verify.PROTECTION_NAMES
    )
    report = verify.MachineReport(
        protections, as_root=True, interpreter="", landlock_abi=7
    )
    needs = {"a": ["seccomp", "uid_drop"], "b": ["seccomp"]}
    assert verify.missing_for(report, needs) == {"a": ["uid_drop"], "b": []}


def test_unobservable_available_counts() -> None:
    unobservable = verify.Protection(
        "landlock_tcp", "available", "", checked_in_worker=False
    )
    observable = verify.Protection("seccomp", "available", "")
    assert unobservable.in_force is True
    assert observable.in_force is False


# -- call --------------------------------------------------------------------


def test_call_prints_result_as_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    params = {"text": "hi", "count": 2, "nested": {"list": [1, None]}}
    status, out, err = run(
        capsys, "call", "echo", "echo", json.dumps(params), *PLUGIN_OPTIONS
    )
    assert status == 0, err
    assert json.loads(out) == params


def test_call_uses_example_defaults(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    status, out, err = run(capsys, "call", "echo", "noop")
    assert status == 0, err
    assert json.loads(out) is None


def test_call_escapes_control_characters(
    capsys: pytest.CaptureFixture[str],
) -> None:
    params = {"text": "\x1b[2J\x9b31m"}
    status, out, err = run(
        capsys, "call", "echo", "echo", json.dumps(params), *PLUGIN_OPTIONS
    )
    assert status == 0, err
    assert "\x1b" not in out
    assert "\x9b" not in out
    assert json.loads(out) == params


def test_call_prints_bytes_as_base64(
    capsys: pytest.CaptureFixture[str],
    write_plugin: PluginWriter,
    plugin_root: Path,
) -> None:
    write_plugin("binary", "def get():\n    return b'\\x00hi'\n", ["get"])
    status, out, err = run(
        capsys, "call", "binary", "get", "--plugins", str(plugin_root)
    )
    assert status == 0, err
    assert json.loads(out) == {"$bytes_base64": "AGhp"}


def test_call_invalid_json_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, err = run(
        capsys, "call", "echo", "echo", "{text: 1}", *PLUGIN_OPTIONS
    )
    assert status == 2
    assert out == ""
    assert err.startswith("sandbox: error: invalid JSON argument")


def test_call_non_object_json_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, err = run(
        capsys, "call", "echo", "echo", "[1, 2]", *PLUGIN_OPTIONS
    )
    assert status == 2
    assert out == ""
    assert "must be an object" in flat(err)
    assert "got a JSON array" in flat(err)


def test_call_unknown_plugin_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, err = run(
        capsys, "call", "no-such-plugin", "echo", *PLUGIN_OPTIONS
    )
    assert status == 1
    assert out == ""
    assert err.startswith("sandbox: error: no plugin named 'no-such-plugin'")


def test_call_plugin_exception_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, err = run(
        capsys, "call", "echo", "noop", '{"unexpected": 1}', *PLUGIN_OPTIONS
    )
    assert status == 1
    assert out == ""
    assert "plugin 'echo' raised TypeError" in flat(err)


def test_call_rejects_zero_timeout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, _, err = run(
        capsys, "call", "echo", "noop", "--timeout", "0", *PLUGIN_OPTIONS
    )
    assert status == 2
    assert "expected seconds greater than 0" in flat(err)


def test_version_option(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--version")
    assert status == 0
    assert out.strip() == f"sandbox {sandbox.__version__}"


# -- demo --------------------------------------------------------------------


def test_demo_stops_every_threat(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "demo", *PLUGIN_OPTIONS)
    assert status == 0, out + err
    assert "NOT STOPPED" not in out
    threats = hostile_threats()
    assert threats
    for threat in threats:
        assert f"  {threat}: stopped (" in out, threat
    assert f"{len(threats)} of {len(threats)} attacks stopped" in flat(out)


def test_demo_reports_plugins_and_audit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, err = run(capsys, "demo", *PLUGIN_OPTIONS)
    assert status == 0, out + err
    assert "delivered; logged to /tmp/notifications/alerts.log" in out
    assert "denied: variable 'PATH' is not in the env allowlist" in flat(out)
    assert "<h1>Sandboxed</h1>" in out
    audit = flat(out[out.index("audit events:") :])
    started = re.search(r"(\d+) worker_started", audit)
    stopped = re.search(r"(\d+) worker_stopped", audit)
    assert started is not None, audit
    assert stopped is not None, audit
    assert started.group(1) == stopped.group(1)
    assert too_wide(out) == []


def attempt(**fields: Any) -> dict[str, Any]:
    return {"threat": "t", "kind": "k", **fields}


def test_judge_flags_successful_attack() -> None:
    verdict, confirmed = demo.judge_attempt(
        attempt(
            succeeded=True,
            error=None,
            detail="connected",
            stopped_by="seccomp (socket families)",
        )
    )
    assert confirmed is False
    assert verdict.startswith("NOT STOPPED")


def test_judge_rejects_wrong_errno() -> None:
    verdict, confirmed = demo.judge_attempt(
        attempt(
            succeeded=False,
            error="EPERM",
            stopped_by="Landlock (filesystem allowlist)",
        )
    )
    assert confirmed is False
    assert "not confirmed" in verdict


def test_judge_accepts_matching_errno() -> None:
    verdict, confirmed = demo.judge_attempt(
        attempt(
            succeeded=False,
            error="CapabilityDenied: capability 'shell' is not granted",
            stopped_by="capability broker",
        )
    )
    assert confirmed is True
    assert verdict == "stopped (CapabilityDenied) by capability broker"


def test_demo_creates_notification_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "notifications"
    monkeypatch.setattr(demo, "NOTIFICATION_FOLDER", str(folder))
    demo.prepare_notification_folder()
    info = folder.stat()
    uids = assign_plugin_uids(["notification"], DEFAULT_PLUGIN_UIDS)
    owner = uids["notification"] if IS_ROOT else os.getuid()
    assert info.st_mode & 0o7777 == 0o755
    assert info.st_uid == owner
    note = demo.prepare_notification_folder()
    assert "exists and is left as it is" in note


# -- demo: the uploader plugin -----------------------------------------------

LOOPBACK = "127.0.0.1"
UPLOADER_DENIALS = {
    "read_path": "stopped (CapabilityDenied) by capability broker",
    "connect_port": "stopped (EACCES) by Landlock (TCP port allowlist)",
    "send_datagram": "stopped (EPERM) by seccomp (socket families)",
}


@pytest.fixture
def upload_token() -> str:
    return "token-" + secrets.token_hex(16)


def run_demo(policy: str, token: str) -> int:
    return demo.run_demo([PLUGINS], policy, upload_token=token)


def uploader_results(output: str) -> dict[str, str]:
    """Map each method the uploader section tried to its result text.

    Wrapped result lines are joined, and audit lines are left out.
    """
    start = output.index("\nuploader: ")
    section = output[start : output.index("\naudit events:", start)]
    results: dict[str, str] = {}
    method, in_result = "", False
    for line in section.splitlines():
        if line.startswith("  tried:"):
            method = line.split()[1].split("(", 1)[0]
            in_result = False
        elif line.startswith("  result:"):
            results[method] = line.removeprefix("  result:").strip()
            in_result = True
        elif in_result and line.startswith(" " * 10):
            results[method] += " " + line.strip()
        else:
            in_result = False
    return results


def expected_report() -> bytes:
    """The report that the uploader writes for the demo's input file."""
    data = demo.INPUT_TEXT.encode()
    line_count = data.count(b"\n")
    return (
        f"{demo.INPUT_FILE}: {line_count} lines, {len(data)} bytes\n".encode()
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
    return port


def policy_with_ports(folder: Path, ports: list[int]) -> str:
    """Copy the example policy with the uploader's network set to ``ports``."""
    text = Path(POLICIES).read_text()
    listed = f"network = [{demo.UPLOAD_PORT}]"
    assert text.count(listed) == 1
    path = folder / "policies.toml"
    path.write_text(text.replace(listed, f"network = {ports}"))
    return str(path)


def test_demo_uploader_writes_and_uploads(
    capsys: pytest.CaptureFixture[str], upload_token: str
) -> None:
    status = run_demo(POLICIES, upload_token)
    out = capsys.readouterr().out
    assert status == 0, out
    results = uploader_results(out)
    report = Path(demo.FILES_FOLDER, demo.REPORT_FOLDER, demo.REPORT_FILE)
    assert report.read_bytes() == expected_report()
    assert (
        f"wrote the {len(expected_report())}-byte report"
        in (results["write_report"])
    )
    assert results["upload"].startswith("HTTP 201:")
    assert "with the right token" in results["upload"]
    assert too_wide(out) == []


def test_demo_uploader_denials(
    capsys: pytest.CaptureFixture[str], upload_token: str
) -> None:
    status = run_demo(POLICIES, upload_token)
    out = capsys.readouterr().out
    assert status == 0, out
    results = uploader_results(out)
    for method, verdict in UPLOADER_DENIALS.items():
        assert results[method] == verdict, method
    assert "audit: capability_denied uploader capability=read_file" in out


def test_demo_uploader_redacts_token(
    capfd: pytest.CaptureFixture[str], upload_token: str
) -> None:
    status = run_demo(POLICIES, upload_token)
    out, err = capfd.readouterr()
    assert status == 0, out + err
    redacted = uploader_results(out)["fail_with_token"]
    assert redacted.startswith("the host shows the token as [redacted]")
    assert "the server rejected token [redacted]" in redacted
    assert upload_token not in out
    assert upload_token not in err
    assert "secret=UPLOAD_TOKEN" in out


def test_demo_fails_when_port_not_denied(
    capsys: pytest.CaptureFixture[str],
    upload_token: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    policy = policy_with_ports(tmp_path, [port, demo.UNLISTED_PORT])
    monkeypatch.setattr(demo, "UPLOAD_PORT", port)
    status = run_demo(policy, upload_token)
    out = capsys.readouterr().out
    results = uploader_results(out)
    assert status == 1
    assert results["connect_port"].startswith("stopped (ECONNREFUSED)")
    assert "not confirmed" in results["connect_port"]
    assert results["upload"].startswith("HTTP 201:")


@pytest.fixture
def busy_port() -> Iterator[int]:
    """Listen on a free loopback port, closing every connection at once."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((LOOPBACK, 0))
    listener.listen()
    listener.settimeout(0.1)
    stop = threading.Event()

    def close_connections() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            connection.close()

    thread = threading.Thread(target=close_connections, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    listener.close()


def test_demo_reports_busy_upload_port(
    capsys: pytest.CaptureFixture[str],
    upload_token: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    busy_port: int,
) -> None:
    policy = policy_with_ports(tmp_path, [busy_port])
    monkeypatch.setattr(demo, "UPLOAD_PORT", busy_port)
    status = run_demo(policy, upload_token)
    out = capsys.readouterr().out
    assert status == 1
    assert f"cannot listen on {LOOPBACK}:{busy_port}" in flat(out)
    assert uploader_results(out)["upload"].startswith("FAILED:")


def test_files_folders_created_private(tmp_path: Path) -> None:
    base = tmp_path / "files"
    note = demo.prepare_files_folders(str(base))
    assert note.startswith(f"Created {base}")
    uploader = demo.plugin_identity("uploader")
    report_owner = os.geteuid() if uploader is None else uploader.uid
    owners = {
        base: os.geteuid(),
        base / "input": os.geteuid(),
        base / "reports": report_owner,
    }
    for folder, owner in owners.items():
        info = folder.lstat()
        assert info.st_uid == owner, folder
        assert info.st_mode & 0o022 == 0, folder
    assert (base / "input" / demo.INPUT_FILE).read_text() == demo.INPUT_TEXT
    stale = base / "reports" / demo.REPORT_FILE
    stale.write_text("from an earlier run")
    note = demo.prepare_files_folders(str(base))
    assert note.startswith(f"{base} exists")
    assert not stale.exists()


def make_symlink(base: Path) -> None:
    target = base.parent / "elsewhere"
    target.mkdir()
    base.symlink_to(target)


def make_group_writable(base: Path) -> None:
    base.mkdir()
    base.chmod(0o775)


def make_owned_by_nobody(base: Path) -> None:
    base.mkdir()
    os.chown(base, 65534, 65534)


FOREIGN_FOLDERS = [make_symlink, make_group_writable]
if IS_ROOT:
    FOREIGN_FOLDERS.append(make_owned_by_nobody)


@pytest.mark.parametrize(
    "make_folder", FOREIGN_FOLDERS, ids=lambda make: make.__name__
)
def test_files_folders_reject_foreign(
    tmp_path: Path, make_folder: Any
) -> None:
    base = tmp_path / "files"
    make_folder(base)
    with pytest.raises(FileExistsError, match="remove it"):
        demo.prepare_files_folders(str(base))
    assert not (base / "input").exists()
