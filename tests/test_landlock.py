"""Landlock rulesets enforced for real, each in a forked child.

The child sets no_new_privs, enforces the ruleset, tries one operation and
sends back "OK" or the errno name over a pipe, so the test process itself
is never restricted.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import secrets
import signal
import socket
import termios
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from sandbox import landlock
from sandbox.landlock import LandlockError, RulesetSpec

ABI = landlock.abi_version()
PR_SET_NO_NEW_PRIVS = 38
_libc = ctypes.CDLL(None, use_errno=True)

needs_truncate = pytest.mark.skipif(ABI < 3, reason="needs Landlock ABI 3")
needs_network = pytest.mark.skipif(ABI < 4, reason="needs Landlock ABI 4")
needs_ioctl_dev = pytest.mark.skipif(ABI < 5, reason="needs Landlock ABI 5")
needs_scopes = pytest.mark.skipif(ABI < 6, reason="needs Landlock ABI 6")


def _set_no_new_privs() -> None:
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


def _outcome_in_child(ruleset_fd: int, operation: Callable[[], object]) -> str:
    """Run in the forked child: restrict, try ``operation``, name the result.

    Setup failures get a distinct prefix so that they can never pass for a
    denial by Landlock.
    """
    try:
        _set_no_new_privs()
        landlock.restrict_self(ruleset_fd)
    except BaseException as error:
        return f"SETUP FAILED: {error!r}"
    try:
        operation()
    except OSError as error:
        return errno.errorcode.get(error.errno or 0, f"errno {error.errno}")
    except BaseException as error:
        return f"UNEXPECTED: {error!r}"
    return "OK"


def outcome(spec: RulesetSpec, operation: Callable[[], object]) -> str:
    """Return "OK" or the errno name of ``operation`` run under ``spec``."""
    ruleset_fd, _ = landlock.build_ruleset(spec)
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:
            result = "UNEXPECTED: no result"
            try:
                os.close(read_end)
                result = _outcome_in_child(ruleset_fd, operation)
            finally:
                os.write(write_end, result.encode("utf-8", "replace"))
                os._exit(0)
        os.close(write_end)
        write_end = -1
        with os.fdopen(read_end, "rb") as reader:
            read_end = -1
            message = reader.read().decode()
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(ruleset_fd)
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, message
    return message


def read_file(path: Path) -> Callable[[], bytes]:
    return path.read_bytes


def write_new_file(path: Path) -> Callable[[], int]:
    return lambda: path.write_text("written")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Make allowed/, sibling/, rw/, rw2/ and ro/, each holding data.txt."""
    for name in ("allowed", "sibling", "rw", "rw2", "ro"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "data.txt").write_text(f"{name} data")
    return tmp_path


@pytest.fixture
def sleeping_sibling() -> Iterator[int]:
    """Fork an unrestricted process that sleeps; kill and reap it after."""
    pid = os.fork()
    if pid == 0:
        try:
            time.sleep(60)
        finally:
            os._exit(0)
    try:
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_abi_version_is_supported() -> None:
    assert ABI >= 1


def test_handled_fs_access_follows_abi() -> None:
    assert not handled_has(1, landlock.ACCESS_FS_REFER)
    assert handled_has(2, landlock.ACCESS_FS_REFER)
    assert not handled_has(2, landlock.ACCESS_FS_TRUNCATE)
    assert handled_has(3, landlock.ACCESS_FS_TRUNCATE)
    assert not handled_has(4, landlock.ACCESS_FS_IOCTL_DEV)
    assert handled_has(5, landlock.ACCESS_FS_IOCTL_DEV)
    assert landlock.handled_fs_access(0) == 0


def handled_has(abi: int, right: int) -> bool:
    return bool(landlock.handled_fs_access(abi) & right)


def test_access_names_lists_bits() -> None:
    assert landlock.access_names(landlock.FS_READ) == [
        "EXECUTE",
        "READ_FILE",
        "READ_DIR",
    ]
    assert landlock.access_names(1 << 40) == [hex(1 << 40)]
    assert landlock.access_names(3, "net") == ["BIND_TCP", "CONNECT_TCP"]


def test_ruleset_handles_every_right_of_abi(tree: Path) -> None:
    ruleset_fd, report = landlock.build_ruleset(RulesetSpec())
    os.close(ruleset_fd)
    assert report.abi == ABI
    assert report.handled_fs == landlock.handled_fs_access(ABI)
    if ABI >= 4:
        assert report.handled_net == (
            landlock.ACCESS_NET_BIND_TCP | landlock.ACCESS_NET_CONNECT_TCP
        )
    if ABI >= 6:
        assert report.scoped == (
            landlock.SCOPE_SIGNAL | landlock.SCOPE_ABSTRACT_UNIX_SOCKET
        )
        assert report.missing == ()


def test_older_abi_reports_missing() -> None:
    ruleset_fd, report = landlock.build_ruleset(RulesetSpec(), abi=3)
    os.close(ruleset_fd)
    assert report.handled_net == 0
    assert report.scoped == 0
    assert "TRUNCATE" not in report.missing
    for name in (
        "IOCTL_DEV",
        "BIND_TCP",
        "CONNECT_TCP",
        "SCOPE_SIGNAL",
        "SCOPE_ABSTRACT_UNIX_SOCKET",
    ):
        assert name in report.missing


def test_abi_one_does_not_report_refer() -> None:
    # ABI 1 denies every cross-directory link or rename, so it loses
    # nothing by not knowing REFER.
    ruleset_fd, report = landlock.build_ruleset(
        RulesetSpec(restrict_tcp=False), abi=1
    )
    os.close(ruleset_fd)
    assert "REFER" not in report.missing
    assert "TRUNCATE" in report.missing
    assert "BIND_TCP" not in report.missing


def test_ruleset_fd_is_close_on_exec() -> None:
    ruleset_fd, _ = landlock.build_ruleset(RulesetSpec())
    try:
        assert fcntl.fcntl(ruleset_fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    finally:
        os.close(ruleset_fd)


def test_build_leaves_host_unrestricted(tree: Path) -> None:
    ruleset_fd, _ = landlock.build_ruleset(
        RulesetSpec(read=(str(tree / "allowed"),))
    )
    os.close(ruleset_fd)
    assert (tree / "sibling" / "data.txt").read_text() == "sibling data"


def test_missing_path_raises_naming_it(tree: Path) -> None:
    missing = str(tree / "no-such-dir")
    open_before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(LandlockError) as caught:
        landlock.build_ruleset(
            RulesetSpec(read=(str(tree / "allowed"), missing))
        )
    assert caught.value.path == missing
    assert caught.value.errno == errno.ENOENT
    assert missing in str(caught.value)
    assert len(os.listdir("/proc/self/fd")) == open_before


def test_read_allowed_dir(tree: Path) -> None:
    spec = RulesetSpec(read=(str(tree / "allowed"),))
    assert outcome(spec, read_file(tree / "allowed" / "data.txt")) == "OK"
    assert outcome(spec, lambda: os.listdir(tree / "allowed")) == "OK"


def test_read_sibling_dir_denied(tree: Path) -> None:
    spec = RulesetSpec(read=(str(tree / "allowed"),))
    sibling = tree / "sibling"
    assert outcome(spec, read_file(sibling / "data.txt")) == "EACCES"
    assert outcome(spec, lambda: os.listdir(sibling)) == "EACCES"


def test_write_allowed_dir(tree: Path) -> None:
    spec = RulesetSpec(write=(str(tree / "rw"),))
    assert outcome(spec, write_new_file(tree / "rw" / "new.txt")) == "OK"
    assert outcome(spec, lambda: os.mkdir(tree / "rw" / "sub")) == "OK"
    assert outcome(spec, lambda: os.unlink(tree / "rw" / "data.txt")) == "OK"


def test_write_read_only_dir_denied(tree: Path) -> None:
    read_only = tree / "ro"
    spec = RulesetSpec(read=(str(read_only),), write=(str(tree / "rw"),))
    assert outcome(spec, write_new_file(read_only / "new.txt")) == "EACCES"
    append = partial(open, read_only / "data.txt", "a")
    assert outcome(spec, append) == "EACCES"
    unlink = partial(os.unlink, read_only / "data.txt")
    assert outcome(spec, unlink) == "EACCES"
    assert outcome(spec, lambda: os.mkdir(read_only / "sub")) == "EACCES"


def test_symlink_out_of_allowed_dir_denied(tree: Path) -> None:
    allowed = tree / "allowed"
    (allowed / "escape").symlink_to(tree / "sibling" / "data.txt")
    (allowed / "inner").symlink_to(allowed / "data.txt")
    spec = RulesetSpec(read=(str(allowed),))
    assert outcome(spec, read_file(allowed / "escape")) == "EACCES"
    assert outcome(spec, read_file(allowed / "inner")) == "OK"


def test_dotdot_out_of_allowed_dir_denied(tree: Path) -> None:
    allowed = tree / "allowed"
    spec = RulesetSpec(read=(str(allowed),))
    escape = Path(f"{allowed}/../sibling/data.txt")
    back_in = Path(f"{allowed}/../allowed/data.txt")
    assert outcome(spec, read_file(escape)) == "EACCES"
    assert outcome(spec, read_file(back_in)) == "OK"


@needs_truncate
def test_truncate_read_only_file_denied(tree: Path) -> None:
    read_only = tree / "ro" / "data.txt"
    writable = tree / "rw" / "data.txt"
    spec = RulesetSpec(read=(str(tree / "ro"),), write=(str(tree / "rw"),))
    assert outcome(spec, lambda: os.truncate(read_only, 0)) == "EACCES"
    assert read_only.read_text() == "ro data"
    assert outcome(spec, lambda: os.truncate(writable, 0)) == "OK"
    assert writable.read_text() == ""


def refer_spec(tree: Path) -> RulesetSpec:
    return RulesetSpec(
        read=(str(tree / "ro"),),
        write=(str(tree / "rw"), str(tree / "rw2")),
    )


def test_rename_between_writable_dirs(tree: Path) -> None:
    source = tree / "rw" / "data.txt"
    target = tree / "rw2" / "moved.txt"
    assert outcome(refer_spec(tree), lambda: source.rename(target)) == "OK"
    assert target.read_text() == "rw data"


def test_link_between_writable_dirs(tree: Path) -> None:
    source = tree / "rw" / "data.txt"
    target = tree / "rw2" / "linked.txt"
    assert outcome(refer_spec(tree), lambda: os.link(source, target)) == "OK"
    assert target.read_text() == "rw data"


def test_rename_into_read_only_dir_denied(tree: Path) -> None:
    source = tree / "rw" / "data.txt"
    target = tree / "ro" / "moved.txt"
    result = outcome(refer_spec(tree), lambda: source.rename(target))
    assert result == "EACCES"
    assert source.exists()
    assert not target.exists()


def test_link_into_read_only_dir_denied(tree: Path) -> None:
    source = tree / "rw" / "data.txt"
    target = tree / "ro" / "linked.txt"
    result = outcome(refer_spec(tree), lambda: os.link(source, target))
    assert result == "EACCES"
    assert not target.exists()


def test_file_rule_reads_only_that_file(tree: Path) -> None:
    allowed = tree / "allowed"
    (allowed / "other.txt").write_text("other")
    spec = RulesetSpec(read=(str(allowed / "data.txt"),))
    assert outcome(spec, read_file(allowed / "data.txt")) == "OK"
    assert outcome(spec, read_file(allowed / "other.txt")) == "EACCES"
    assert outcome(spec, lambda: os.listdir(allowed)) == "EACCES"


def test_file_rule_writes_only_that_file(tree: Path) -> None:
    writable = tree / "rw" / "data.txt"
    spec = RulesetSpec(write=(str(writable),))
    assert outcome(spec, lambda: writable.write_text("new")) == "OK"
    assert writable.read_text() == "new"
    other = tree / "rw" / "other.txt"
    assert outcome(spec, write_new_file(other)) == "EACCES"


@needs_ioctl_dev
def test_device_ioctl_denied() -> None:
    # /dev/null fails a terminal ioctl with ENOTTY, so EACCES can only
    # come from Landlock refusing the ioctl itself.
    def terminal_ioctl() -> None:
        with open("/dev/null", "rb") as device:
            fcntl.ioctl(device, termios.TCGETS, bytes(64))

    with pytest.raises(OSError) as unrestricted:
        terminal_ioctl()
    assert unrestricted.value.errno == errno.ENOTTY
    spec = RulesetSpec(read=("/dev/null",))
    assert outcome(spec, terminal_ioctl) == "EACCES"


@pytest.fixture
def tcp_server() -> Iterator[int]:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


def connect_tcp(port: int) -> Callable[[], None]:
    def connect() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
            client.connect(("127.0.0.1", port))

    return connect


@needs_network
def test_tcp_connect_denied(tcp_server: int) -> None:
    spec = RulesetSpec(restrict_tcp=True)
    assert outcome(spec, connect_tcp(tcp_server)) == "EACCES"


@needs_network
def test_tcp_connect_allowed_unrestricted(tcp_server: int) -> None:
    spec = RulesetSpec(restrict_tcp=False)
    assert outcome(spec, connect_tcp(tcp_server)) == "OK"


@needs_scopes
def test_signal_outside_domain_denied(sleeping_sibling: int) -> None:
    spec = RulesetSpec(scope_signals=True)
    kill = partial(os.kill, sleeping_sibling, signal.SIGTERM)
    assert outcome(spec, kill) == "EPERM"
    assert os.waitpid(sleeping_sibling, os.WNOHANG) == (0, 0)
    assert outcome(spec, lambda: os.kill(os.getpid(), 0)) == "OK"


@needs_scopes
def test_signal_allowed_without_scope(sleeping_sibling: int) -> None:
    spec = RulesetSpec(scope_signals=False)
    kill = partial(os.kill, sleeping_sibling, signal.SIGTERM)
    assert outcome(spec, kill) == "OK"


@pytest.fixture
def abstract_server() -> Iterator[str]:
    name = f"\0sandbox-landlock-test-{os.getpid()}-{secrets.token_hex(8)}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with server:
        server.bind(name)
        server.listen(8)
        yield name


def connect_unix(name: str) -> Callable[[], None]:
    def connect() -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(name)

    return connect


@needs_scopes
def test_abstract_unix_connect_denied(abstract_server: str) -> None:
    spec = RulesetSpec(scope_abstract_unix=True)
    assert outcome(spec, connect_unix(abstract_server)) == "EPERM"


@needs_scopes
def test_abstract_unix_allowed_without_scope(abstract_server: str) -> None:
    spec = RulesetSpec(scope_abstract_unix=False)
    assert outcome(spec, connect_unix(abstract_server)) == "OK"
