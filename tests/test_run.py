"""``sandbox run``: real commands under a policy, started by the launcher.

main() runs in this process, and the command writes straight to the
descriptors that capfd captures.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.cli import main
from sandbox.run import COMMAND_PATH, TIMEOUT_STATUS
from sandbox.uids import DEFAULT_PLUGIN_UIDS, plan_uids, registry_location

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / ".venv" / "bin" / "sandbox"
IS_ROOT = os.geteuid() == 0
PYTHON = shutil.which("python3", path=COMMAND_PATH)

pytestmark = pytest.mark.linux


def run(capfd: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``sandbox run ARGV`` and return (exit status, stdout, stderr)."""
    status = main(["run", *argv])
    captured = capfd.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """Return a folder outside the command's rules that every uid may use.

    Its permission bits allow everything, so only Landlock can deny.
    """
    folder = Path(tempfile.mkdtemp(prefix="sandbox-test-run-"))
    os.chmod(folder, 0o777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def policy_file(shared_folder: Path) -> Iterator[Path]:
    path = shared_folder / "policy.toml"
    yield path


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """Return a TCP socket listening on a free loopback port."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(5)
    yield server
    server.close()


def connect_command(port: int) -> list[str]:
    assert PYTHON is not None
    code = (
        "import socket\n"
        f"socket.create_connection(('127.0.0.1', {port}), 5).close()\n"
        "print('connected')"
    )
    return [PYTHON, "-c", code]


def test_run_true_exits_zero(capfd: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capfd, "--", "/bin/true")
    assert status == 0, err


def test_run_returns_command_status(
    capfd: pytest.CaptureFixture[str],
) -> None:
    status, _, _ = run(capfd, "--", "/bin/sh", "-c", "exit 3")
    assert status == 3


def test_run_without_separator(capfd: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capfd, "sh", "-c", "echo plain")
    assert status == 0
    assert out == "plain\n"


def test_run_missing_command_exits_127(
    capfd: pytest.CaptureFixture[str],
) -> None:
    status, _, err = run(capfd, "--", "no-such-command-here")
    assert status == 127
    assert "no-such-command-here" in err


def test_run_without_command_is_usage_error(
    capfd: pytest.CaptureFixture[str],
) -> None:
    status, _, err = run(capfd, "--")
    assert status == 2
    assert "no command given" in err


def test_run_shadow_file_denied(capfd: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capfd, "--", "cat", "/etc/shadow")
    assert status != 0
    assert out == ""
    assert "Permission denied" in err


def test_run_file_outside_read_set_denied(
    capfd: pytest.CaptureFixture[str], shared_folder: Path
) -> None:
    secret = shared_folder / "secret.txt"
    secret.write_text("top secret\n")
    os.chmod(secret, 0o644)
    status, out, err = run(capfd, "--", "cat", str(secret))
    assert status != 0
    assert "top secret" not in out
    assert "Permission denied" in err


def test_run_policy_read_path_allowed(
    capfd: pytest.CaptureFixture[str],
    shared_folder: Path,
    policy_file: Path,
) -> None:
    secret = shared_folder / "secret.txt"
    secret.write_text("shared text\n")
    os.chmod(secret, 0o644)
    policy_file.write_text(
        f'[defaults]\nfilesystem = {{ read = ["{shared_folder}"] }}\n'
    )
    status, out, err = run(
        capfd, "--policy", str(policy_file), "--", "cat", str(secret)
    )
    assert status == 0, err
    assert out == "shared text\n"


def test_run_plugin_table_applies(
    capfd: pytest.CaptureFixture[str],
    shared_folder: Path,
    policy_file: Path,
) -> None:
    secret = shared_folder / "secret.txt"
    secret.write_text("reader text\n")
    os.chmod(secret, 0o644)
    policy_file.write_text(
        f'[plugins.reader]\nfilesystem = {{ read = ["{shared_folder}"] }}\n'
    )
    options = ["--policy", str(policy_file)]
    command = ["--", "/bin/sh", "-c", f"cat {secret}; id -u"]
    status, out, err = run(capfd, *options, "--plugin", "reader", *command)
    assert status == 0, err
    text, uid = out.splitlines()
    assert text == "reader text"
    if IS_ROOT:
        expected = plan_uids(
            ["reader"],
            DEFAULT_PLUGIN_UIDS,
            as_root=True,
            registry=registry_location(None),
        ).plugin_uids["reader"]
        assert int(uid) == expected
    status, out, err = run(capfd, *options, *command)
    assert "reader text" not in out
    assert "Permission denied" in err


def test_run_write_outside_scratch_denied(
    capfd: pytest.CaptureFixture[str], shared_folder: Path
) -> None:
    target = shared_folder / "written.txt"
    status, _, err = run(capfd, "--", "/bin/sh", "-c", f"echo x > {target}")
    assert status != 0
    assert "Permission denied" in err
    assert not target.exists()


def test_run_writes_to_working_folder(
    capfd: pytest.CaptureFixture[str],
) -> None:
    script = "echo kept > note.txt && cat note.txt && pwd"
    status, out, err = run(capfd, "--", "/bin/sh", "-c", script)
    assert status == 0, err
    content, working_folder = out.splitlines()
    assert content == "kept"
    assert not os.path.exists(working_folder)


@pytest.mark.skipif(not IS_ROOT, reason="switching uids needs root")
def test_run_as_root_drops_uid(capfd: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capfd, "--", "id", "-u")
    assert status == 0, err
    uid = int(out)
    assert uid != 0
    assert uid != os.getuid()


def test_run_network_denied_by_default(
    capfd: pytest.CaptureFixture[str], listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    listener.settimeout(0.5)
    status, out, err = run(capfd, "--", *connect_command(port))
    assert status != 0
    assert "connected" not in out
    assert "Error" in err
    with pytest.raises(TimeoutError):
        listener.accept()


def test_run_network_port_allowed(
    capfd: pytest.CaptureFixture[str],
    listener: socket.socket,
    policy_file: Path,
) -> None:
    port = listener.getsockname()[1]
    policy_file.write_text(f"[defaults]\nnetwork = [{port}]\n")
    accepted: list[socket.socket] = []
    acceptor = threading.Thread(
        target=lambda: accepted.append(listener.accept()[0])
    )
    acceptor.start()
    try:
        status, out, err = run(
            capfd, "--policy", str(policy_file), "--", *connect_command(port)
        )
    finally:
        acceptor.join(10)
        for connection in accepted:
            connection.close()
    assert status == 0, err
    assert out == "connected\n"
    assert len(accepted) == 1


def test_run_timeout_kills_and_exits_124(
    capfd: pytest.CaptureFixture[str],
) -> None:
    started = time.monotonic()
    status, _, err = run(capfd, "--timeout", "1", "--", "sleep", "60")
    elapsed = time.monotonic() - started
    assert status == TIMEOUT_STATUS
    assert elapsed < 10
    assert "timed out" in err


def test_run_kills_leftover_processes(
    capfd: pytest.CaptureFixture[str],
) -> None:
    status, out, err = run(capfd, "--", "/bin/sh", "-c", "sleep 60 & echo $!")
    assert status == 0, err
    leftover = int(out)
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{leftover}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{leftover}")


def test_run_forwards_sigterm_to_command() -> None:
    script = (
        "trap 'echo caught; exit 5' TERM; echo ready; "
        "while :; do sleep 0.1; done"
    )
    child = subprocess.Popen(
        [str(SCRIPT), "run", "--", "/bin/sh", "-c", script],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        child.send_signal(signal.SIGTERM)
        status = child.wait(timeout=10)
        rest = child.stdout.read()
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert rest == "caught\n"
    assert status == 5


def test_run_hides_host_variable(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDBOX_TEST_HOST_SECRET", "hunter2")
    status, out, err = run(capfd, "--", "env")
    assert status == 0, err
    assert "hunter2" not in out
    assert out == f"PATH={COMMAND_PATH}\n"


def test_run_passes_listed_variable(
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    policy_file: Path,
) -> None:
    monkeypatch.setenv("SANDBOX_TEST_LISTED", "visible")
    policy_file.write_text('[defaults]\nenv = ["SANDBOX_TEST_LISTED"]\n')
    status, out, err = run(
        capfd,
        "--policy",
        str(policy_file),
        "--",
        "/bin/sh",
        "-c",
        'echo "[$SANDBOX_TEST_LISTED]"',
    )
    assert status == 0, err
    assert out == "[visible]\n"


def test_run_closes_other_descriptors(
    capfd: pytest.CaptureFixture[str], shared_folder: Path
) -> None:
    assert PYTHON is not None
    fd = os.open(shared_folder, os.O_RDONLY)
    os.set_inheritable(fd, True)
    try:
        code = f"import os\nos.fstat({fd})"
        status, _, err = run(capfd, "--", PYTHON, "-c", code)
    finally:
        os.close(fd)
    assert status != 0
    assert "Bad file descriptor" in err


@pytest.mark.skipif(
    platform.machine() != "x86_64", reason="x32 system calls are x86_64's"
)
def test_run_reports_seccomp_kill(capfd: pytest.CaptureFixture[str]) -> None:
    assert PYTHON is not None
    # getpid through the x32 ABI, which the seccomp program kills.
    code = "import ctypes\nctypes.CDLL(None).syscall(0x40000000 + 39)"
    status, _, err = run(capfd, "--", PYTHON, "-c", code)
    assert status == 128 + signal.SIGSYS
    assert "seccomp" in err


def test_run_invalid_policy_exits_2(
    capfd: pytest.CaptureFixture[str], policy_file: Path
) -> None:
    policy_file.write_text("[defaults]\nnetwork = 'sometimes'\n")
    status, _, err = run(capfd, "--policy", str(policy_file), "--", "true")
    assert status == 2
    assert str(policy_file) in err
    assert "network" in err


def test_run_missing_policy_exits_2(
    capfd: pytest.CaptureFixture[str], shared_folder: Path
) -> None:
    missing = shared_folder / "missing.toml"
    status, _, err = run(capfd, "--policy", str(missing), "--", "true")
    assert status == 2
    assert str(missing) in err
