"""What a plugin can reach from inside a real worker started by PluginHost.

Every test runs a probe plugin under a policy and checks the outcome the
kernel gave it. The folders and files a probe attacks are created by the
test with permission bits that let the worker's uid in, so a denial comes
from the sandbox (Landlock, seccomp, the uid switch), not from the file
mode. Probe methods return {"ok": value} or {"error": exception type,
"errno": errno name} so that each assert names the outcome.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyseccomp
import pytest

from sandbox import (
    PluginCrashed,
    PluginError,
    PluginHost,
    PolicyViolation,
    ProtocolError,
)
from sandbox.spawnplan import WORKER_BASE_ENVIRONMENT
from sandbox.uids import DEFAULT_PLUGIN_UIDS, assign_plugin_uids

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs a root host")

PROBE_SOURCE = """
import ctypes
import errno
import os
import socket
import time

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _outcome(action):
    try:
        value = action()
    except OSError as error:
        code = errno.errorcode.get(error.errno, str(error.errno))
        return {"error": type(error).__name__, "errno": code}
    return {"ok": value}


def _read(path):
    with open(path, "rb") as file:
        return file.read().decode(errors="replace")


def _write(path, text):
    with open(path, "w") as file:
        return file.write(text)


def read_file(path):
    return _outcome(lambda: _read(path))


def open_file(path):
    return _outcome(lambda: os.close(os.open(path, os.O_RDONLY)))


def write_file(path, text):
    return _outcome(lambda: _write(path, text))


def make_symlink(target, link):
    return _outcome(lambda: os.symlink(target, link))


def make_dir(path):
    return _outcome(lambda: os.mkdir(path))


def change_mode(path, mode):
    return _outcome(lambda: os.chmod(path, mode))


def environment():
    return dict(os.environ)


def connect(port):
    def exchange():
        address = ("127.0.0.1", port)
        with socket.create_connection(address, timeout=10) as conn:
            return conn.recv(64).decode()

    return _outcome(exchange)


def open_socket(family, kind):
    return _outcome(lambda: socket.socket(family, kind).close())


def unix_pair():
    def exchange():
        left, right = socket.socketpair(socket.AF_UNIX)
        with left, right:
            left.sendall(b"ping")
            return right.recv(4).decode()

    return _outcome(exchange)


def raw_syscall(number, args):
    ctypes.set_errno(0)
    words = [ctypes.c_long(arg) for arg in args]
    result = _libc.syscall(ctypes.c_long(number), *words)
    if result == -1:
        code = ctypes.get_errno()
        return {"error": "OSError", "errno": errno.errorcode.get(code)}
    return {"ok": result}


def change_id(call_name):
    calls = {
        "setuid": lambda: os.setuid(0),
        "setgid": lambda: os.setgid(0),
        "setgroups": lambda: os.setgroups([0]),
    }
    return _outcome(calls[call_name])


def send_signal(pid, number):
    return _outcome(lambda: os.kill(pid, number))


def echo(value):
    return value


def big_result(size):
    return "x" * size


def nan_result():
    return float("nan")


def fail(text, repeat, lone_surrogate):
    # Built here because the params of a call cannot carry such a message.
    surrogate = chr(0xDC80) if lone_surrogate else ""
    raise ValueError(text * repeat + surrogate)


def write_channel(data_hex):
    data = bytes.fromhex(data_hex)
    rings = _shared_rings()
    if rings is None:
        # Descriptor 3 is the worker's end of the socket to the host.
        return os.write(3, data)
    _write_to_host_ring(rings, data)
    # The worker's own reply would overwrite these bytes, so wait for the
    # host to kill the worker first.
    time.sleep(60)


def _shared_rings():
    # A plugin can reach the mapping as native code could; gc finds it
    # without /proc, which Landlock hides.
    import gc

    for thing in gc.get_objects():
        if type(thing).__name__ == "ShmTransport":
            from sandbox.shm import ffi

            return int(ffi.cast("uintptr_t", thing._segment.base))
    return None


def _write_to_host_ring(base, data):
    # Offsets and the wake-up as csrc/ring.h lays them out.
    to_worker = ctypes.c_uint64.from_address(base + 8).value
    to_host = ctypes.c_uint64.from_address(base + 16).value
    control = base + 512
    producer = ctypes.c_uint64.from_address(control)
    area = base + 4096 + to_worker
    for index, byte in enumerate(data, producer.value):
        ctypes.c_uint8.from_address(area + index % to_host).value = byte
    producer.value += len(data)
    ctypes.c_uint32.from_address(control + 132).value += 1
    futex = {"x86_64": 202, "aarch64": 98}[os.uname().machine]
    _libc.syscall(futex, ctypes.c_void_p(control + 132), 1, 2**31 - 1, 0)
"""
PROBE_METHODS = [
    "read_file",
    "open_file",
    "write_file",
    "make_symlink",
    "make_dir",
    "change_mode",
    "environment",
    "connect",
    "open_socket",
    "unix_pair",
    "raw_syscall",
    "change_id",
    "send_signal",
    "echo",
    "big_result",
    "nan_result",
    "fail",
    "write_channel",
]

EACCES = {"error": "PermissionError", "errno": "EACCES"}
EPERM = {"error": "PermissionError", "errno": "EPERM"}

StartProbes = Callable[..., PluginHost]
MakeFolder = Callable[[int], Path]


@pytest.fixture
def start_probes(
    write_plugin: Callable[..., Path], make_host: Callable[..., PluginHost]
) -> StartProbes:
    """Write one probe plugin per keyword and return a host running them.

    Each keyword's value is that plugin's policy table (None: defaults).
    """

    def start(**policies: Mapping[str, Any] | None) -> PluginHost:
        for name in policies:
            write_plugin(name, PROBE_SOURCE, PROBE_METHODS)
        tables = {name: dict(p) for name, p in policies.items() if p}
        return make_host({"plugins": tables} if tables else None)

    return start


@pytest.fixture
def make_folder() -> Iterator[MakeFolder]:
    """Create temporary folders with a given mode; removed afterwards."""
    folders: list[str] = []

    def make(mode: int) -> Path:
        folder = tempfile.mkdtemp(prefix="sandbox-isolation-")
        os.chmod(folder, mode)
        folders.append(folder)
        return Path(folder)

    yield make
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def world_readable_file(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    os.chmod(path, 0o644)
    return path


def call(host: PluginHost, plugin: str, method: str, **params: Any) -> Any:
    return host.execute_plugin(plugin, method, params)


def worker_pid(host: PluginHost, plugin: str) -> int:
    pid: int = host.worker_status(plugin)["pid"]
    return pid


def is_running(pid: int) -> bool:
    """Return whether ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


# -- filesystem ---------------------------------------------------------------


@dataclass
class Folders:
    """A world-readable secret, a read-allowed folder and two writable ones.

    ``write`` is in the policy's write list, ``outside`` is in no list.
    """

    secret: Path
    shared: Path
    write: Path
    outside: Path


@pytest.fixture
def folders(make_folder: MakeFolder) -> Folders:
    secret_dir = make_folder(0o755)
    shared_dir = make_folder(0o755)
    found = Folders(
        secret=world_readable_file(secret_dir, "secret.txt", "top secret"),
        shared=world_readable_file(shared_dir, "shared.txt", "shared text"),
        write=make_folder(0o1777),
        outside=make_folder(0o1777),
    )
    return found


@pytest.fixture
def fs_host(start_probes: StartProbes, folders: Folders) -> PluginHost:
    return start_probes(
        fs={
            "filesystem": {
                "read": [str(folders.shared.parent)],
                "write": [str(folders.write)],
            }
        }
    )


def test_read_outside_allowlist_denied(
    fs_host: PluginHost, folders: Folders
) -> None:
    outcome = call(fs_host, "fs", "read_file", path=str(folders.secret))
    assert outcome == EACCES


def test_read_listed_path_allowed(
    fs_host: PluginHost, folders: Folders
) -> None:
    outcome = call(fs_host, "fs", "read_file", path=str(folders.shared))
    assert outcome == {"ok": "shared text"}


def test_write_listed_folder_allowed(
    fs_host: PluginHost, folders: Folders
) -> None:
    target = folders.write / "out.txt"
    outcome = call(fs_host, "fs", "write_file", path=str(target), text="hi")
    assert outcome == {"ok": 2}
    assert target.read_text() == "hi"


def test_write_outside_allowlist_denied(
    fs_host: PluginHost, folders: Folders
) -> None:
    target = folders.outside / "out.txt"
    outcome = call(fs_host, "fs", "write_file", path=str(target), text="hi")
    assert outcome == EACCES
    assert not target.exists()


def test_symlink_in_scratch_cannot_read_out(
    fs_host: PluginHost, folders: Folders
) -> None:
    created = call(
        fs_host, "fs", "make_symlink", target=str(folders.secret), link="link"
    )
    assert created == {"ok": None}
    assert call(fs_host, "fs", "read_file", path="link") == EACCES


def test_symlink_in_scratch_cannot_write_out(
    fs_host: PluginHost, folders: Folders
) -> None:
    target = folders.outside / "out.txt"
    created = call(
        fs_host, "fs", "make_symlink", target=str(target), link="link"
    )
    assert created == {"ok": None}
    outcome = call(fs_host, "fs", "write_file", path="link", text="hi")
    assert outcome == EACCES
    assert not target.exists()


def test_symlink_in_write_folder_cannot_reach_out(
    fs_host: PluginHost, folders: Folders
) -> None:
    (folders.write / "secret").symlink_to(folders.secret)
    (folders.write / "elsewhere").symlink_to(folders.outside)
    read = call(fs_host, "fs", "read_file", path=str(folders.write / "secret"))
    target = folders.write / "elsewhere" / "out.txt"
    written = call(fs_host, "fs", "write_file", path=str(target), text="hi")
    assert read == EACCES
    assert written == EACCES
    assert not (folders.outside / "out.txt").exists()


def test_dotdot_paths_cannot_reach_out(
    fs_host: PluginHost, folders: Folders
) -> None:
    up_from_shared = (
        f"{folders.shared.parent}/../{folders.secret.parent.name}/secret.txt"
    )
    up_from_write = f"{folders.write}/../{folders.outside.name}/out.txt"
    read = call(fs_host, "fs", "read_file", path=up_from_shared)
    written = call(fs_host, "fs", "write_file", path=up_from_write, text="hi")
    assert read == EACCES
    assert written == EACCES
    assert not (folders.outside / "out.txt").exists()


def test_scratch_writable_by_default(start_probes: StartProbes) -> None:
    host = start_probes(scratch=None)
    outcome = call(host, "scratch", "write_file", path="out.txt", text="hi")
    assert outcome == {"ok": 2}


def test_readonly_scratch_not_writable(start_probes: StartProbes) -> None:
    host = start_probes(frozen={"filesystem": {"readonly": True}})
    written = call(host, "frozen", "write_file", path="out.txt", text="hi")
    created_dir = call(host, "frozen", "make_dir", path="sub")
    assert written == EACCES
    assert created_dir == EACCES


def test_readonly_scratch_chmod_does_not_help(
    start_probes: StartProbes,
) -> None:
    """The worker owns its scratch folder, so it may change the mode bits;
    Landlock still denies the write."""
    host = start_probes(frozen={"filesystem": {"readonly": True}})
    call(host, "frozen", "change_mode", path=".", mode=0o700)
    written = call(host, "frozen", "write_file", path="out.txt", text="hi")
    assert written == EACCES


# -- network ------------------------------------------------------------------


@dataclass
class LoopbackServer:
    """A TCP server on 127.0.0.1 that greets and counts every connection."""

    port: int
    accepted: list[tuple[str, int]] = field(default_factory=list)


@pytest.fixture
def loopback_server() -> Iterator[LoopbackServer]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    server = LoopbackServer(listener.getsockname()[1])
    stopping = threading.Event()

    def serve() -> None:
        while not stopping.is_set():
            try:
                conn, peer = listener.accept()
            except TimeoutError:
                continue
            with conn:
                server.accepted.append(peer)
                conn.sendall(b"hello")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server
    stopping.set()
    thread.join()
    listener.close()


def test_tcp_connect_denied_by_default(
    start_probes: StartProbes, loopback_server: LoopbackServer
) -> None:
    host = start_probes(offline=None)
    outcome = call(host, "offline", "connect", port=loopback_server.port)
    assert outcome.get("error") == "PermissionError"
    assert loopback_server.accepted == []


def test_tcp_connect_allowed_with_network(
    start_probes: StartProbes, loopback_server: LoopbackServer
) -> None:
    host = start_probes(online={"network": True})
    outcome = call(host, "online", "connect", port=loopback_server.port)
    assert outcome == {"ok": "hello"}
    assert len(loopback_server.accepted) == 1


# (family, type) per case. Without the seccomp filter, AF_PACKET with a
# valid type would still fail with EPERM because it needs CAP_NET_RAW.
# Type 15 is invalid, so the kernel alone would give EINVAL instead.
# AF_UNIX is denied too: it would reach the host's unix sockets.
SOCKET_CASES = {
    "AF_UNIX": (socket.AF_UNIX, socket.SOCK_STREAM),
    "AF_INET": (socket.AF_INET, socket.SOCK_STREAM),
    "AF_INET6": (socket.AF_INET6, socket.SOCK_STREAM),
    "AF_PACKET": (17, 15),
    "AF_NETLINK": (16, socket.SOCK_RAW),
}


@pytest.mark.parametrize("case", SOCKET_CASES)
def test_socket_family_denied(start_probes: StartProbes, case: str) -> None:
    family, kind = SOCKET_CASES[case]
    host = start_probes(offline=None)
    outcome = call(host, "offline", "open_socket", family=family, kind=kind)
    assert outcome == EPERM


def test_unix_socketpair_works(start_probes: StartProbes) -> None:
    host = start_probes(offline=None)
    assert call(host, "offline", "unix_pair") == {"ok": "ping"}


# -- credentials and process state --------------------------------------------


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


HOST_GROUP = 12345


@pytest.fixture
def worker_status(start_probes: StartProbes) -> Iterator[dict[str, str]]:
    """Return a worker's /proc status fields.

    A root host gets a supplementary group first, which the worker must
    not inherit.
    """
    saved_groups = os.getgroups()
    if IS_ROOT:
        os.setgroups([HOST_GROUP])
    try:
        host = start_probes(plain=None)
        yield proc_status(worker_pid(host, "plain"))
    finally:
        if IS_ROOT:
            os.setgroups(saved_groups)


@needs_root
def test_worker_ids_are_the_plugins_own(
    worker_status: dict[str, str],
) -> None:
    uid = assign_plugin_uids(["plain"], DEFAULT_PLUGIN_UIDS)["plain"]
    assert worker_status["Uid"].split() == [str(uid)] * 4
    assert worker_status["Gid"].split() == [str(uid)] * 4
    assert worker_status["Groups"] == ""


@needs_root
def test_worker_has_no_capabilities(worker_status: dict[str, str]) -> None:
    assert int(worker_status["CapEff"], 16) == 0
    assert int(worker_status["CapPrm"], 16) == 0
    assert int(worker_status["CapBnd"], 16) == 0


def test_worker_no_new_privs_and_seccomp(
    worker_status: dict[str, str],
) -> None:
    assert worker_status["NoNewPrivs"] == "1"
    assert worker_status["Seccomp"] == "2"


@needs_root
@pytest.mark.parametrize("call_name", ["setuid", "setgid", "setgroups"])
def test_worker_cannot_regain_root(
    start_probes: StartProbes, call_name: str
) -> None:
    host = start_probes(plain=None)
    outcome = call(host, "plain", "change_id", call_name=call_name)
    assert outcome == EPERM


# -- environment --------------------------------------------------------------


def test_environment_only_policy_names(
    start_probes: StartProbes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDBOX_TEST_SECRET", "do-not-leak")
    monkeypatch.setenv("SANDBOX_TEST_VISIBLE", "listed")
    host = start_probes(envprobe={"env": ["SANDBOX_TEST_VISIBLE"]})
    seen = call(host, "envprobe", "environment")
    # CPython itself may add LC_CTYPE when it coerces the C locale to
    # C.UTF-8 (PEP 538); /proc/PID/environ below shows what it was given.
    seen.pop("LC_CTYPE", None)
    expected = {**WORKER_BASE_ENVIRONMENT, "SANDBOX_TEST_VISIBLE": "listed"}
    assert seen == expected
    if not IS_ROOT:
        return  # only root may read a non-dumpable process's environ
    environ = Path(f"/proc/{worker_pid(host, 'envprobe')}/environ")
    entries = environ.read_bytes().split(b"\0")
    given = sorted(e.decode() for e in entries if e)
    assert given == sorted(f"{k}={v}" for k, v in expected.items())


# -- messages -----------------------------------------------------------------

# The smallest max_message_bytes a policy allows.
MESSAGE_LIMIT = 1024
FRAME_HEADER = struct.Struct(">I")


def frame(payload: bytes) -> bytes:
    return FRAME_HEADER.pack(len(payload)) + payload


@pytest.fixture
def message_host(start_probes: StartProbes) -> PluginHost:
    host = start_probes(
        small={"max_message_bytes": MESSAGE_LIMIT}, bystander=None
    )
    assert call(host, "bystander", "echo", value="warm") == "warm"
    return host


def test_oversized_params_rejected_before_send(
    message_host: PluginHost,
) -> None:
    pid = worker_pid(message_host, "small")
    with pytest.raises(ProtocolError, match="exceeds the maximum"):
        call(message_host, "small", "echo", value="x" * MESSAGE_LIMIT)
    assert call(message_host, "small", "echo", value="after") == "after"
    assert worker_pid(message_host, "small") == pid


def test_oversized_result_is_clear_error(message_host: PluginHost) -> None:
    pid = worker_pid(message_host, "small")
    # The channel's limit, not a fault of the plugin's code.
    with pytest.raises(ProtocolError, match="exceeds the maximum"):
        call(message_host, "small", "big_result", size=MESSAGE_LIMIT)
    assert call(message_host, "small", "echo", value="after") == "after"
    assert worker_pid(message_host, "small") == pid


# (text, repeat, lone_surrogate) of a ValueError message whose error reply
# cannot be sent whole: too long, or not encodable as UTF-8 JSON.
UNSENDABLE_MESSAGES = {
    "long": ("long ", MESSAGE_LIMIT, False),
    "lone-surrogate": ("bad ", 1, True),
}


@pytest.mark.parametrize("case", UNSENDABLE_MESSAGES)
def test_unsendable_exception_is_plugin_error(
    message_host: PluginHost, case: str
) -> None:
    text, repeat, lone_surrogate = UNSENDABLE_MESSAGES[case]
    pid = worker_pid(message_host, "small")
    with pytest.raises(PluginError) as failure:
        call(
            message_host,
            "small",
            "fail",
            text=text,
            repeat=repeat,
            lone_surrogate=lone_surrogate,
        )
    assert failure.value.type_name == "ValueError"
    assert failure.value.message.startswith(text)
    assert call(message_host, "small", "echo", value="after") == "after"
    assert worker_pid(message_host, "small") == pid


def test_nan_result_is_clear_error(message_host: PluginHost) -> None:
    with pytest.raises(PluginError, match="JSON"):
        call(message_host, "small", "nan_result")
    assert call(message_host, "small", "echo", value="after") == "after"


HOSTILE_FRAMES = {
    "invalid-utf8": frame(b"\xff\xfe" * 8),
    "huge-length": b"\xff\xff\xff\xff" + b"{}",
    # Valid but for the NaN: a capability request the host would serve.
    "nan": frame(
        b'{"jsonrpc":"2.0","id":7,"method":"capability.notify",'
        b'"params":{"message":NaN}}'
    ),
}


@pytest.mark.parametrize("case", HOSTILE_FRAMES)
def test_hostile_frame_kills_worker(
    message_host: PluginHost, case: str
) -> None:
    events: list[dict[str, Any]] = []
    message_host.subscribe(events.append)
    hostile_pid = worker_pid(message_host, "small")
    bystander_pid = worker_pid(message_host, "bystander")
    with pytest.raises(ProtocolError):
        call(
            message_host,
            "small",
            "write_channel",
            data_hex=HOSTILE_FRAMES[case].hex(),
        )
    assert not is_running(hostile_pid)
    violations = [e for e in events if e["event"] == "protocol_violation"]
    assert [e["plugin"] for e in violations] == ["small"]
    assert call(message_host, "bystander", "echo", value="ok") == "ok"
    assert worker_pid(message_host, "bystander") == bystander_pid
    assert call(message_host, "small", "echo", value="again") == "again"
    assert worker_pid(message_host, "small") != hostile_pid


# -- seccomp in the worker ----------------------------------------------------

CLONE_NEWUSER = 0x10000000
PTRACE_ATTACH = 16

# Arguments chosen so that the unfiltered kernel gives another result for
# a worker's uid: ptrace ESRCH (no pid 0), mount EFAULT (NULL target), bpf
# EINVAL (unknown command), io_uring_setup EFAULT (NULL params), keyctl
# EOPNOTSUPP (unknown operation), unshare success (unprivileged user
# namespaces are on by default).
DENIED_CALLS = {
    "ptrace": [PTRACE_ATTACH, 0, 0, 0],
    "unshare": [CLONE_NEWUSER],
    "mount": [0, 0, 0, 0, 0],
    "bpf": [999, 0, 0],
    "io_uring_setup": [0, 0],
    "keyctl": [9999, 0, 0],
}


def syscall_number(name: str) -> int:
    number: int = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    assert number >= 0, f"no native number for {name}"
    return number


@pytest.mark.parametrize("name", DENIED_CALLS)
def test_denied_syscall_fails_eperm(
    start_probes: StartProbes, name: str
) -> None:
    host = start_probes(plain=None)
    outcome = call(
        host,
        "plain",
        "raw_syscall",
        number=syscall_number(name),
        args=DENIED_CALLS[name],
    )
    assert outcome == {"error": "OSError", "errno": "EPERM"}


def test_clone3_fails_enosys(start_probes: StartProbes) -> None:
    """Unfiltered, clone3 with a NULL, zero-sized argument gives EINVAL."""
    host = start_probes(plain=None)
    outcome = call(
        host,
        "plain",
        "raw_syscall",
        number=syscall_number("clone3"),
        args=[0, 0],
    )
    assert outcome == {"error": "OSError", "errno": "ENOSYS"}


X32_SYSCALL_BIT = 0x40000000
X32_GETPID = X32_SYSCALL_BIT | 39


@pytest.mark.skipif(
    os.uname().machine != "x86_64", reason="the x32 ABI is x86_64 only"
)
def test_x32_syscall_is_policy_violation(start_probes: StartProbes) -> None:
    host = start_probes(plain=None, bystander=None)
    bystander_pid = worker_pid(host, "bystander")
    with pytest.raises(PolicyViolation) as violation:
        call(host, "plain", "raw_syscall", number=X32_GETPID, args=[])
    assert isinstance(violation.value, PluginCrashed)
    assert violation.value.signal == signal.SIGSYS
    assert call(host, "bystander", "echo", value="ok") == "ok"
    assert worker_pid(host, "bystander") == bystander_pid


# -- plugins against each other -----------------------------------------------


@pytest.fixture
def two_workers(start_probes: StartProbes) -> tuple[PluginHost, int]:
    """Start plugins alpha and beta; return the host and beta's pid."""
    host = start_probes(alpha=None, beta=None)
    call(host, "alpha", "echo", value="up")
    return host, worker_pid(host, "beta")


@pytest.mark.parametrize(
    "number", [0, signal.SIGKILL], ids=["probe", "SIGKILL"]
)
def test_cannot_signal_other_worker(
    two_workers: tuple[PluginHost, int], number: int
) -> None:
    host, beta_pid = two_workers
    outcome = call(host, "alpha", "send_signal", pid=beta_pid, number=number)
    assert outcome == EPERM
    assert is_running(beta_pid)
    assert call(host, "beta", "echo", value="alive") == "alive"
    assert worker_pid(host, "beta") == beta_pid


@pytest.mark.parametrize("entry", ["environ", "mem"])
def test_cannot_open_other_worker_proc(
    two_workers: tuple[PluginHost, int], entry: str
) -> None:
    host, beta_pid = two_workers
    path = f"/proc/{beta_pid}/{entry}"
    outcome = call(host, "alpha", "open_file", path=path)
    assert outcome.get("error") == "PermissionError"
