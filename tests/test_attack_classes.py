"""One attack per class, run inside a real worker beside a bystander.

Each test starts a host with two plugins: an attacker, whose methods run
the attack through real system calls in a real worker, and a bystander,
which counts its calls. The bystander completes one call before the
attack and keeps serving calls, in a steady stream from another thread,
while the attack runs. Afterwards every test checks that the bystander
lost no call and kept its state (one worker, counts without a gap) and
that the host still serves the attacker and has no child other than the
two workers.

Attacker methods return "ok" or the errno name of what the kernel
returned, so that each assert names the mechanism that stopped the
attack: EPERM or ENOSYS from the seccomp filter, EACCES from Landlock,
SIGSYS (PolicyViolation) for a foreign system call convention.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import shutil
import signal
import socket
import sys
import sysconfig
import tempfile
import textwrap
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pyseccomp
import pytest

from conftest import HostFactory, PluginWriter
from sandbox import (
    LaunchError,
    PluginCrashed,
    PluginError,
    PluginHost,
    Policy,
    PolicyViolation,
    ProtocolError,
    landlock,
    spawnplan,
)
from sandbox.runtime import worker_runtime
from sandbox.spawnplan import WORKER_BASE_ENVIRONMENT
from seccomp_probe import run_probe

pytestmark = pytest.mark.uses_host

IS_ROOT = os.geteuid() == 0
NOBODY = 65534
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs a root host")
x86_64_only = pytest.mark.skipif(
    os.uname().machine != "x86_64", reason="x86_64 system call conventions"
)
ABI = landlock.abi_version()

ATTACKER = "attacker"
BYSTANDER = "bystander"
# Pause between two bystander calls, so that the stream leaves the CPU to
# the attack on a small machine.
STREAM_PAUSE = 0.01
# RLIMIT_NPROC counts every task of the worker uid on the machine, so
# attacks that fork or start threads get room beyond the default of 16.
ROOM_TO_FORK = {"resources": {"processes": 256}}

# Helpers every attacker plugin starts with.
ATTACKER_PRELUDE = """\
import ctypes
import errno
import os

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _name(code):
    return errno.errorcode.get(code, str(code))


def _attempt(action):
    # "ok", or the errno name of the OSError that action raised.
    try:
        action()
    except OSError as error:
        return _name(error.errno)
    return "ok"


def _raw(number, *args):
    ctypes.set_errno(0)
    words = [ctypes.c_long(arg) for arg in args]
    result = _libc.syscall(ctypes.c_long(number), *words)
    if result == -1:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def _syscall(number, *args):
    return _attempt(lambda: _raw(number, *args))


def ping():
    return "pong"

"""

BYSTANDER_SOURCE = """
import os

_count = 0


def bump():
    global _count
    _count += 1
    return {"pid": os.getpid(), "count": _count}
"""


def syscall_number(name: str) -> int:
    number: int = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    assert number >= 0, f"no native number for {name}"
    return number


def syscall_numbers(*names: str) -> dict[str, int]:
    return {name: syscall_number(name) for name in names}


class Bystander:
    """A counting plugin called in a steady stream from another thread."""

    def __init__(self, host: PluginHost) -> None:
        self.host = host
        first = host.execute_plugin(BYSTANDER, "bump")
        assert first["count"] == 1
        self.pid: int = first["pid"]
        self.results: list[dict[str, int]] = [first]
        self.errors: list[BaseException] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._stream, daemon=True)
        self._thread.start()

    def _stream(self) -> None:
        while not self._stopping.is_set():
            try:
                result = self.host.execute_plugin(BYSTANDER, "bump")
            except Exception as error:  # recorded for check_intact
                self.errors.append(error)
                return
            self.results.append(result)
            self._stopping.wait(STREAM_PAUSE)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(60)

    def check_intact(self) -> None:
        """Fail unless every call succeeded, in order, on one worker."""
        self.stop()
        assert not self._thread.is_alive()
        assert self.errors == []
        self.results.append(self.host.execute_plugin(BYSTANDER, "bump"))
        counts = [result["count"] for result in self.results]
        assert counts == list(range(1, len(counts) + 1))
        assert {result["pid"] for result in self.results} == {self.pid}


class Arena:
    """Writes the attacker and bystander plugins and starts their host."""

    def __init__(
        self,
        write_plugin: PluginWriter,
        make_host: HostFactory,
        plugin_root: Path,
    ) -> None:
        self._write_plugin = write_plugin
        self._make_host = make_host
        self.plugin_root = plugin_root
        self.bystanders: list[Bystander] = []

    def plugins(self, source: str, methods: list[str]) -> Path:
        """Write both plugins; return the attacker's folder."""
        code = ATTACKER_PRELUDE + textwrap.dedent(source)
        folder = self._write_plugin(ATTACKER, code, ["ping", *methods])
        self._write_plugin(BYSTANDER, BYSTANDER_SOURCE, ["bump"])
        return folder

    @property
    def bystander_folder(self) -> Path:
        return self.plugin_root / BYSTANDER

    def start(
        self, policy: dict[str, Any] | None = None, **options: Any
    ) -> tuple[PluginHost, Bystander]:
        """Start a host; the bystander has completed its first call."""
        tables = {"plugins": {ATTACKER: policy}} if policy else None
        host = self._make_host(tables, **options)
        return host, self.watch(host)

    def watch(self, host: PluginHost) -> Bystander:
        bystander = Bystander(host)
        self.bystanders.append(bystander)
        return bystander


@pytest.fixture
def arena(
    write_plugin: PluginWriter, make_host: HostFactory, plugin_root: Path
) -> Iterator[Arena]:
    created = Arena(write_plugin, make_host, plugin_root)
    yield created
    for bystander in created.bystanders:
        bystander.stop()


def attack(host: PluginHost, method: str, **params: Any) -> Any:
    return host.execute_plugin(ATTACKER, method, params)


def worker_pid(host: PluginHost, plugin: str) -> int:
    pid: int = host.worker_status(plugin)["pid"]
    return pid


def check_aftermath(host: PluginHost, bystander: Bystander) -> None:
    """Fail unless the bystander lost nothing and the host is sound.

    The attacker serves a call again (on a fresh worker if the attack
    killed its own), and the host's children are exactly the two live workers.
    """
    bystander.check_intact()
    assert attack(host, "ping") == "pong"
    workers = {worker_pid(host, ATTACKER), worker_pid(host, BYSTANDER)}
    children = psutil.Process().children()
    assert {child.pid for child in children} == workers
    assert [c.pid for c in children if c.status() == "zombie"] == []


def is_running(pid: int) -> bool:
    try:
        status: str = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return False
    return status != "zombie"


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


@pytest.fixture
def scratch_folder() -> Iterator[Path]:
    """Return a folder that every uid may enter; removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="sandbox-attack-"))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def open_to_all(path: Path, text: str) -> Path:
    """Write a file that the worker uid may read and write by its mode.

    A denial of such a file can only come from the sandbox.
    """
    path.write_text(text)
    os.chmod(path, 0o666)
    return path


# -- A. system call filter ------------------------------------------------


@x86_64_only
def test_x32_unshare_kills_worker(arena: Arena) -> None:
    arena.plugins(
        """
        X32_SYSCALL_BIT = 0x40000000


        def x32_call(number, args):
            return _syscall(X32_SYSCALL_BIT | number, *args)
        """,
        ["x32_call"],
    )
    host, bystander = arena.start()
    clone_newuser = 0x10000000
    with pytest.raises(PolicyViolation) as killed:
        attack(
            host,
            "x32_call",
            number=syscall_number("unshare"),
            args=[clone_newuser],
        )
    assert killed.value.signal == signal.SIGSYS
    assert killed.value.plugin == ATTACKER
    check_aftermath(host, bystander)


# mov eax, 20 (getpid in the i386 table); int 0x80; ret
I386_GETPID = bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3])


def i386_getpid() -> int:
    import ctypes
    import mmap

    protection = mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=protection)
    page.write(I386_GETPID)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    return int(ctypes.CFUNCTYPE(ctypes.c_int)(address)())


@x86_64_only
def test_int80_socketcall_kills_worker(arena: Arena) -> None:
    if run_probe(i386_getpid).signal is not None:
        pytest.skip("kernel without IA32 emulation")
    arena.plugins(
        """
        import mmap

        # push rbx; mov eax, 102 (socketcall); mov ebx, 1 (SYS_SOCKET);
        # xor ecx, ecx; int 0x80; pop rbx; ret
        STUB = bytes.fromhex("53b866000000bb0100000031c9cd805bc3")


        def i386_socketcall():
            protection = mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC
            page = mmap.mmap(-1, mmap.PAGESIZE, prot=protection)
            page.write(STUB)
            address = ctypes.addressof(ctypes.c_char.from_buffer(page))
            return ctypes.CFUNCTYPE(ctypes.c_int)(address)()
        """,
        ["i386_socketcall"],
    )
    host, bystander = arena.start()
    with pytest.raises(PolicyViolation) as killed:
        attack(host, "i386_socketcall")
    assert killed.value.signal == signal.SIGSYS
    check_aftermath(host, bystander)


CLONE_NAMESPACES_SOURCE = """
import signal
import threading

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000


def _child_or_wait(pid):
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def _spawn(number, *args):
    return _attempt(lambda: _child_or_wait(_raw(number, *args)))


def namespaces(numbers):
    flags = CLONE_NEWUSER | CLONE_NEWNS
    # struct clone_args: flags, pidfd, child_tid, parent_tid,
    # exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup.
    clone_args = (ctypes.c_uint64 * 11)(flags, 0, 0, 0, signal.SIGCHLD)
    address = ctypes.addressof(clone_args)
    size = ctypes.sizeof(clone_args)
    outcomes = {
        "clone3": _spawn(numbers["clone3"], address, size),
        "clone": _spawn(numbers["clone"], flags | signal.SIGCHLD, 0, 0, 0, 0),
        "unshare": _syscall(numbers["unshare"], CLONE_NEWUSER),
    }
    started = []
    threads = [
        threading.Thread(target=started.append, args=(index,))
        for index in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outcomes["threads"] = sorted(started)
    outcomes["uid"] = os.getuid()
    return outcomes
"""


def test_clone3_enosys_keeps_threads(arena: Arena) -> None:
    """ENOSYS, not EPERM, for clone3: glibc then creates threads with
    clone(), whose namespace flags the filter can read."""
    arena.plugins(CLONE_NAMESPACES_SOURCE, ["namespaces"])
    host, bystander = arena.start(ROOM_TO_FORK)
    uid_before = host.worker_status(ATTACKER)["uid"][0]
    numbers = syscall_numbers("clone3", "clone", "unshare")
    outcomes = attack(host, "namespaces", numbers=numbers)
    assert outcomes == {
        "clone3": "ENOSYS",
        "clone": "EPERM",
        "unshare": "EPERM",
        "threads": list(range(8)),
        "uid": uid_before,
    }
    check_aftermath(host, bystander)


IO_URING_SOURCE = """
def io_uring(numbers):
    # struct io_uring_params is 120 bytes; all zero requests the defaults.
    params = ctypes.create_string_buffer(120)
    address = ctypes.addressof(params)
    return {
        "setup": _syscall(numbers["io_uring_setup"], 8, address),
        "enter": _syscall(numbers["io_uring_enter"], -1, 1, 0, 0, 0, 0),
        "register": _syscall(numbers["io_uring_register"], -1, 0, 0, 0),
    }
"""


def test_io_uring_setup_denied(arena: Arena) -> None:
    """Unfiltered, the kernel runs the setup, which fails with ENOMEM
    under the worker's RLIMIT_MEMLOCK of 0 (with kernel.io_uring_disabled
    at 0), and enter and register fail with EBADF."""
    arena.plugins(IO_URING_SOURCE, ["io_uring"])
    host, bystander = arena.start()
    numbers = syscall_numbers(
        "io_uring_setup", "io_uring_enter", "io_uring_register"
    )
    outcomes = attack(host, "io_uring", numbers=numbers)
    assert outcomes == {
        "setup": "EPERM",
        "enter": "EPERM",
        "register": "EPERM",
    }
    check_aftermath(host, bystander)


# System calls newer than most denylists, by name, denied with EPERM.
NEW_MOUNT_AND_PIDFD_CALLS = (
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "pidfd_getfd",
)
# First number past the filter's reviewed table, and the end of the sweep.
FIRST_UNREVIEWED = 451
SWEEP_END = 600
# Mount-family system calls in the unreviewed range: EPERM, not ENOSYS.
NEWER_MOUNT_CALLS = {457: "statmount", 458: "listmount", 467: "open_tree_attr"}

NUMBER_SWEEP_SOURCE = """
def sweep(numbers):
    # Every argument 0: calls the filter missed fail on NULL pointers or
    # invalid descriptors, or change nothing outside this worker.
    return {str(number): _syscall(number, 0, 0, 0, 0, 0, 0)
            for number in numbers}
"""


def test_new_syscalls_never_run(arena: Arena) -> None:
    arena.plugins(NUMBER_SWEEP_SOURCE, ["sweep"])
    host, bystander = arena.start()
    named = [syscall_number(name) for name in NEW_MOUNT_AND_PIDFD_CALLS]
    swept = list(range(FIRST_UNREVIEWED, SWEEP_END + 1))
    outcomes = attack(host, "sweep", numbers=named + swept)
    expected = {str(number): "EPERM" for number in named}
    for number in swept:
        denied = number in NEWER_MOUNT_CALLS
        expected[str(number)] = "EPERM" if denied else "ENOSYS"
    for number, outcome in outcomes.items():
        print(f"{number:>4} {outcome}")
    assert outcomes == expected
    check_aftermath(host, bystander)


PTRACE_SOURCE = """
import signal

PTRACE_TRACEME = 0
PTRACE_ATTACH = 16
PTRACE_SEIZE = 0x4206


def _traceme_in_child(number):
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write_end, _syscall(number, PTRACE_TRACEME, 0, 0, 0).encode())
        os._exit(0)
    os.close(write_end)
    outcome = os.read(read_end, 64).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    return outcome


def trace(number, targets):
    outcomes = {"traceme": _traceme_in_child(number)}
    child = os.fork()
    if child == 0:
        signal.pause()
        os._exit(0)
    try:
        for label, pid in {**targets, "child": child}.items():
            for request, name in ((PTRACE_ATTACH, "attach"),
                                  (PTRACE_SEIZE, "seize")):
                outcomes[f"{name} {label}"] = _syscall(number, request, pid,
                                                       0, 0)
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
    return outcomes
"""


def test_ptrace_denied_on_every_target(arena: Arena) -> None:
    arena.plugins(PTRACE_SOURCE, ["trace"])
    host, bystander = arena.start(ROOM_TO_FORK)
    targets = {"bystander": bystander.pid, "host": os.getpid()}
    outcomes = attack(
        host, "trace", number=syscall_number("ptrace"), targets=targets
    )
    expected = {"traceme": "EPERM"}
    for label in ("bystander", "host", "child"):
        expected[f"attach {label}"] = "EPERM"
        expected[f"seize {label}"] = "EPERM"
    assert outcomes == expected
    assert is_running(bystander.pid)
    check_aftermath(host, bystander)


FILE_HANDLE_SOURCE = """
import struct

AT_FDCWD = -100
MAX_HANDLE_SZ = 128
FILEID_INO32_GEN = 1


def handles(numbers, folder, guessed):
    # struct file_handle: handle_bytes, handle_type, f_handle[].
    handle = ctypes.create_string_buffer(8 + MAX_HANDLE_SZ)
    struct.pack_into("=Ii", handle, 0, MAX_HANDLE_SZ, 0)
    mount_id = ctypes.c_int(0)
    path = ctypes.create_string_buffer(
        os.path.join(folder, "attacker.py").encode()
    )
    named = _syscall(numbers["name_to_handle_at"], AT_FDCWD,
                     ctypes.addressof(path), ctypes.addressof(handle),
                     ctypes.addressof(mount_id), 0)
    inode = os.stat(guessed).st_ino
    forged = ctypes.create_string_buffer(
        struct.pack("=IiII", 8, FILEID_INO32_GEN, inode & 0xFFFFFFFF, 0)
    )
    mount_fd = os.open(folder, os.O_RDONLY)
    try:
        opened = _syscall(numbers["open_by_handle_at"], mount_fd,
                          ctypes.addressof(forged), os.O_RDONLY)
    finally:
        os.close(mount_fd)
    return {"name_to_handle_at": named, "open_by_handle_at": opened}
"""


def test_file_handles_denied(arena: Arena) -> None:
    """Unfiltered, name_to_handle_at succeeds on the plugin's own file.

    open_by_handle_at also needs CAP_DAC_READ_SEARCH, which the worker
    lacks, so its EPERM would come from the kernel too.
    """
    folder = arena.plugins(FILE_HANDLE_SOURCE, ["handles"])
    host, bystander = arena.start()
    numbers = syscall_numbers("name_to_handle_at", "open_by_handle_at")
    outcomes = attack(
        host,
        "handles",
        numbers=numbers,
        folder=str(folder),
        guessed="/etc/shadow",
    )
    assert outcomes == {
        "name_to_handle_at": "EPERM",
        "open_by_handle_at": "EPERM",
    }
    assert int(host.worker_status(ATTACKER)["kernel"]["CapEff"], 16) == 0
    check_aftermath(host, bystander)


PATH_RACE_SOURCE = """
import sys
import threading
import time

O_RDONLY = 0
AT_FDCWD = -100


def race(allowed, forbidden, seconds):
    # Landlock checks the opened file itself, so a path rewritten by
    # another thread while the kernel reads it opens nothing forbidden.
    sys.setswitchinterval(1e-5)
    size = max(len(allowed), len(forbidden)) + 1
    path = ctypes.create_string_buffer(size)
    targets = [allowed.encode(), forbidden.encode()]
    stopping = threading.Event()

    def flip():
        while not stopping.is_set():
            for target in targets:
                ctypes.memset(path, 0, size)
                ctypes.memmove(path, target, len(target))

    flipper = threading.Thread(target=flip)
    flipper.start()
    counts = {"allowed": 0, "forbidden": 0}
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            fd = _libc.openat(AT_FDCWD, path, O_RDONLY)
            if fd < 0:
                name = _name(ctypes.get_errno())
                counts[name] = counts.get(name, 0) + 1
                continue
            content = os.read(fd, 64).decode()
            os.close(fd)
            counts[content] = counts.get(content, 0) + 1
    finally:
        stopping.set()
        flipper.join()
    return counts
"""


def test_path_race_opens_nothing_forbidden(
    arena: Arena, scratch_folder: Path
) -> None:
    folder = arena.plugins(PATH_RACE_SOURCE, ["race"])
    allowed = folder / "allowed.txt"
    allowed.write_text("allowed")
    os.chmod(allowed, 0o644)
    forbidden = scratch_folder / "forbidden.txt"
    forbidden.write_text("forbidden")
    os.chmod(forbidden, 0o644)
    host, bystander = arena.start(ROOM_TO_FORK)
    counts = attack(
        host,
        "race",
        allowed=str(allowed),
        forbidden=str(forbidden),
        seconds=2.0,
    )
    assert counts["forbidden"] == 0
    assert counts["allowed"] > 0
    assert counts.get("EACCES", 0) > 0
    check_aftermath(host, bystander)


USERFAULTFD_SOURCE = """
UFFD_USER_MODE_ONLY = 1


def userfaultfd(number):
    return {
        "flags 0": _syscall(number, 0),
        "user mode only": _syscall(number, UFFD_USER_MODE_ONLY),
        "device": _attempt(
            lambda: os.close(os.open("/dev/userfaultfd", os.O_RDWR))
        ),
    }
"""


def test_userfaultfd_denied(arena: Arena) -> None:
    """Unfiltered, UFFD_USER_MODE_ONLY works for any user."""
    arena.plugins(USERFAULTFD_SOURCE, ["userfaultfd"])
    host, bystander = arena.start()
    outcomes = attack(
        host, "userfaultfd", number=syscall_number("userfaultfd")
    )
    # Landlock allows no path under /dev; a missing node fails its lookup.
    device = "EACCES" if os.path.exists("/dev/userfaultfd") else "ENOENT"
    assert outcomes == {
        "flags 0": "EPERM",
        "user mode only": "EPERM",
        "device": device,
    }
    check_aftermath(host, bystander)


KEYRING_SOURCE = """
# Special keyring ids (linux/keyctl.h) and keyctl operations.
KEY_SPEC_PROCESS_KEYRING = -2
KEY_SPEC_USER_KEYRING = -4
KEYCTL_CLEAR = 7
KEYCTL_SEARCH = 10


def _text(value):
    return ctypes.addressof(ctypes.create_string_buffer(value.encode()))


def keyrings(numbers):
    # Targets the worker's own process keyring wherever a call would
    # change something, so that a missing rule changes nothing outside it.
    kind = ctypes.create_string_buffer(b"user")
    name = ctypes.create_string_buffer(b"sandbox-canary")
    payload = ctypes.create_string_buffer(b"secret")
    addresses = [ctypes.addressof(b) for b in (kind, name, payload)]
    return {
        "add_key": _syscall(numbers["add_key"], *addresses, 6,
                            KEY_SPEC_PROCESS_KEYRING),
        "search @u": _syscall(numbers["keyctl"], KEYCTL_SEARCH,
                              KEY_SPEC_USER_KEYRING, addresses[0],
                              addresses[1], 0),
        "clear": _syscall(numbers["keyctl"], KEYCTL_CLEAR,
                          KEY_SPEC_PROCESS_KEYRING),
        "request_key": _syscall(numbers["request_key"], addresses[0],
                                addresses[1], 0, 0),
    }
"""


def test_keyring_calls_denied(arena: Arena) -> None:
    arena.plugins(KEYRING_SOURCE, ["keyrings"])
    host, bystander = arena.start()
    numbers = syscall_numbers("add_key", "keyctl", "request_key")
    outcomes = attack(host, "keyrings", numbers=numbers)
    assert outcomes == {
        "add_key": "EPERM",
        "search @u": "EPERM",
        "clear": "EPERM",
        "request_key": "EPERM",
    }
    check_aftermath(host, bystander)


PERF_SOURCE = """
import struct

PERF_TYPE_SOFTWARE = 1
PERF_ATTR_SIZE_VER0 = 64
# exclude_kernel and exclude_hv, so that perf_event_paranoid 2 allows a
# process to count its own user-space events.
EXCLUDE_KERNEL_AND_HV = (1 << 5) | (1 << 6)


def perf(number, bystander):
    attr = ctypes.create_string_buffer(PERF_ATTR_SIZE_VER0)
    struct.pack_into("=IIQQQQQ", attr, 0, PERF_TYPE_SOFTWARE,
                     PERF_ATTR_SIZE_VER0, 0, 0, 0, 0, EXCLUDE_KERNEL_AND_HV)
    address = ctypes.addressof(attr)
    return {
        "self": _syscall(number, address, 0, -1, -1, 0),
        "bystander": _syscall(number, address, bystander, -1, -1, 0),
        "system-wide": _syscall(number, address, -1, 0, -1, 0),
    }
"""


def test_perf_event_open_denied(arena: Arena) -> None:
    """Unfiltered, counting the worker's own user-space events works."""
    arena.plugins(PERF_SOURCE, ["perf"])
    host, bystander = arena.start()
    outcomes = attack(
        host,
        "perf",
        number=syscall_number("perf_event_open"),
        bystander=bystander.pid,
    )
    assert outcomes == dict.fromkeys(
        ("self", "bystander", "system-wide"), "EPERM"
    )
    check_aftermath(host, bystander)


# -- B. terminal, descriptors, environment, privileges ----------------------

TERMINAL_SOURCE = """
import fcntl
import termios

TIOCLINUX = 0x541C
PASTE_SELECTION = b"\\x03"


def _push(fd, text):
    for char in text:
        fcntl.ioctl(fd, termios.TIOCSTI, bytes([char]))


def terminal(pty_path):
    outcomes = {"session": os.getsid(0), "pid": os.getpid()}
    outcomes["/dev/tty"] = _attempt(lambda: os.close(os.open("/dev/tty",
                                                            os.O_RDWR)))
    for fd in (0, 1, 2):
        outcomes[f"TIOCSTI fd {fd}"] = _attempt(lambda: _push(fd, b"x"))
    # Without O_NOCTTY a session leader makes the terminal its own
    # controlling terminal, where the kernel itself allows TIOCSTI.
    tty_fd = os.open(pty_path, os.O_RDONLY)
    try:
        outcomes["TIOCSTI pty"] = _attempt(lambda: _push(tty_fd, b"id\\n"))
        outcomes["TIOCLINUX pty"] = _attempt(
            lambda: fcntl.ioctl(tty_fd, TIOCLINUX, PASTE_SELECTION)
        )
    finally:
        os.close(tty_fd)
    return outcomes
"""


@pytest.fixture
def pseudo_terminal() -> Iterator[tuple[int, str]]:
    """Open a raw pty readable by every uid; yield (follower fd, path)."""
    leader, follower = os.openpty()
    tty.setraw(follower)
    os.set_blocking(follower, False)
    path = os.ttyname(follower)
    os.chmod(path, 0o644)
    try:
        yield follower, path
    finally:
        os.close(follower)
        os.close(leader)


def read_pending(fd: int) -> bytes:
    try:
        return os.read(fd, 1024)
    except BlockingIOError:
        return b""


def test_terminal_injection_denied(
    arena: Arena, pseudo_terminal: tuple[int, str]
) -> None:
    """Unfiltered, TIOCSTI on /dev/null gives ENOTTY and on the pty
    EACCES (Landlock grants no IOCTL_DEV right)."""
    follower, path = pseudo_terminal
    arena.plugins(TERMINAL_SOURCE, ["terminal"])
    host, bystander = arena.start({"filesystem": {"read": [path]}})
    outcomes = attack(host, "terminal", pty_path=path)
    assert outcomes.pop("session") == outcomes.pop("pid")
    assert outcomes == {
        "/dev/tty": "EACCES",
        "TIOCSTI fd 0": "EPERM",
        "TIOCSTI fd 1": "EPERM",
        "TIOCSTI fd 2": "EPERM",
        "TIOCSTI pty": "EPERM",
        "TIOCLINUX pty": "EPERM",
    }
    assert read_pending(follower) == b""
    check_aftermath(host, bystander)


DESCRIPTOR_SOURCE = """
import stat

KINDS = {stat.S_IFCHR: "chr", stat.S_IFREG: "reg", stat.S_IFDIR: "dir",
         stat.S_IFSOCK: "sock", stat.S_IFIFO: "fifo", stat.S_IFBLK: "blk",
         stat.S_IFLNK: "lnk"}


def descriptors(leaked):
    found = {}
    for fd in range(4096):
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            continue
        found[str(fd)] = KINDS.get(stat.S_IFMT(mode), oct(mode))
    uses = {}
    for fd in leaked:
        uses[f"fchdir {fd}"] = _attempt(lambda: os.fchdir(fd))
        uses[f"openat {fd}"] = _attempt(
            lambda: os.close(os.open("..", os.O_RDONLY, dir_fd=fd))
        )
        uses[f"read {fd}"] = _attempt(lambda: os.read(fd, 1))
    return {"open": found, "uses": uses}
"""


def test_host_descriptors_not_inherited(
    arena: Arena, scratch_folder: Path
) -> None:
    arena.plugins(DESCRIPTOR_SOURCE, ["descriptors"])
    secret = open_to_all(scratch_folder / "secret.txt", "secret")
    leaked = [
        os.open(scratch_folder, os.O_RDONLY | os.O_DIRECTORY),
        os.open(secret, os.O_RDWR),
    ]
    try:
        for fd in leaked:
            os.set_inheritable(fd, True)
        host, bystander = arena.start()
        outcomes = attack(host, "descriptors", leaked=leaked)
    finally:
        for fd in leaked:
            os.close(fd)
    expected = {"0": "chr", "1": "reg", "2": "reg"}
    if host.transport == "stream":
        expected["3"] = "sock"
    assert outcomes["open"] == expected
    assert set(outcomes["uses"].values()) == {"EBADF"}
    assert len(outcomes["uses"]) == 3 * len(leaked)
    check_aftermath(host, bystander)


SOCKET_SCAN_SOURCE = """
import socket


def sockets(port):
    families = {}
    sent = {}
    for fd in range(1024):
        try:
            copy = os.dup(fd)
        except OSError:
            continue
        try:
            found = socket.socket(fileno=copy)
        except OSError:
            os.close(copy)
            continue
        with found:
            families[str(fd)] = found.family.name
            if found.family in (socket.AF_INET, socket.AF_INET6):
                sent[str(fd)] = _attempt(lambda: found.send(b"leak"))
    connect = _attempt(
        lambda: socket.create_connection(("127.0.0.1", port), 5).close()
    )
    return {"families": families, "sent": sent, "connect": connect}
"""


@pytest.fixture
def loopback_listener() -> Iterator[socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    with listener:
        yield listener


def test_inherited_sockets_unusable(
    arena: Arena, loopback_listener: socket.socket
) -> None:
    arena.plugins(SOCKET_SCAN_SOURCE, ["sockets"])
    port = loopback_listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = loopback_listener.accept()
    with client, accepted:
        client.set_inheritable(True)
        host, bystander = arena.start()
        outcomes = attack(host, "sockets", port=port)
        accepted.setblocking(False)
        with pytest.raises(BlockingIOError):
            accepted.recv(64)
        loopback_listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            loopback_listener.accept()
    expected_families = {}
    if host.transport == "stream":
        expected_families["3"] = "AF_UNIX"
    assert outcomes == {
        "families": expected_families,
        "sent": {},
        "connect": "EPERM",
    }
    check_aftermath(host, bystander)


ENVIRONMENT_SOURCE = """
import sys


def environment():
    return {
        "environ": dict(os.environ),
        "argv": sys.orig_argv,
        "proc environ": _attempt(lambda: open("/proc/self/environ").read()),
        "proc cmdline": _attempt(lambda: open("/proc/self/cmdline").read()),
    }
"""

CANARY_ENVIRONMENT = {
    "CANARY_TOKEN": "canary-token-value",
    "AWS_SECRET_ACCESS_KEY": "canary-aws-secret",
    "SSH_AUTH_SOCK": "/tmp/canary-agent.sock",
    "LD_PRELOAD": "/nonexistent/canary-preload.so",
    "PYTHONSTARTUP": "/nonexistent/canary-startup.py",
    "XDG_RUNTIME_DIR": "/tmp/canary-runtime",
}


def test_environment_carries_no_secrets(
    arena: Arena, monkeypatch: pytest.MonkeyPatch
) -> None:
    arena.plugins(ENVIRONMENT_SOURCE, ["environment"])
    for name, value in CANARY_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SANDBOX_LISTED", "listed-value")
    host, bystander = arena.start({"env": ["SANDBOX_LISTED"]})
    outcomes = attack(host, "environment")
    environ = outcomes["environ"]
    # CPython may add LC_CTYPE when it coerces the C locale (PEP 538).
    environ.pop("LC_CTYPE", None)
    assert environ == {
        **WORKER_BASE_ENVIRONMENT,
        "SANDBOX_LISTED": "listed-value",
    }
    reported = repr(outcomes)
    for value in CANARY_ENVIRONMENT.values():
        assert value not in reported
    assert outcomes["proc environ"] == "EACCES"
    assert outcomes["proc cmdline"] == "EACCES"
    check_aftermath(host, bystander)


SET_ID_SOURCE = """
import subprocess

REPORT = "import os; print(os.getresuid(), os.getresgid())"


def run_set_id(path):
    done = subprocess.run([path, "-I", "-S", "-c", REPORT],
                          capture_output=True, text=True, check=False)
    return {"stdout": done.stdout.strip(), "returncode": done.returncode}


def run_system(paths):
    outcomes = {}
    for path in paths:
        outcomes[path] = _attempt(
            lambda: subprocess.run([path, "--help"], capture_output=True)
        )
    return outcomes
"""
SET_ID_REPORT = "import os; print(os.getresuid(), os.getresgid())"
SYSTEM_SET_ID_BINARIES = ("/usr/bin/su", "/usr/bin/passwd", "/usr/bin/sudo")


def make_set_id_interpreter(folder: Path) -> Path:
    """Copy the interpreter into ``folder`` as a set-uid, set-gid root
    program."""
    copy = folder / "python-set-id"
    shutil.copyfile(os.path.realpath(sys.executable), copy)
    os.chown(copy, 0, 0)
    os.chmod(copy, 0o6755)
    return copy


@needs_root
def test_set_id_binaries_give_nothing(arena: Arena) -> None:
    folder = arena.plugins(SET_ID_SOURCE, ["run_set_id", "run_system"])
    copy = make_set_id_interpreter(folder)
    # Without no_new_privs, the copy gives a process of user nobody root.
    control = subprocess_as_nobody(
        [str(copy), "-I", "-S", "-c", SET_ID_REPORT]
    )
    assert control == "(65534, 0, 0) (65534, 0, 0)"
    host, bystander = arena.start(ROOM_TO_FORK)
    uid, gid = worker_ids(host)
    outcome = attack(host, "run_set_id", path=str(copy))
    assert outcome == {
        "stdout": f"{(uid, uid, uid)} {(gid, gid, gid)}",
        "returncode": 0,
    }
    present = [p for p in SYSTEM_SET_ID_BINARIES if os.path.exists(p)]
    # Landlock grants no execute right under /usr/bin but the interpreter.
    assert attack(host, "run_system", paths=present) == dict.fromkeys(
        present, "EACCES"
    )
    status = proc_status(worker_pid(host, ATTACKER))
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"
    for field in ("CapEff", "CapPrm", "CapAmb", "CapBnd"):
        assert int(status[field], 16) == 0
    check_aftermath(host, bystander)


def worker_ids(host: PluginHost) -> tuple[int, int]:
    """Return the attacker worker's uid and gid as the host read them."""
    kernel = host.worker_status(ATTACKER)["kernel"]
    uids = {int(uid) for uid in kernel["Uid"].split()}
    gids = {int(gid) for gid in kernel["Gid"].split()}
    assert len(uids) == 1
    assert len(gids) == 1
    return uids.pop(), gids.pop()


def subprocess_as_nobody(argv: list[str]) -> str:
    import subprocess

    done = subprocess.run(
        argv,
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.strip()


PRIVILEGE_SOURCE = """
def privileges():
    return {
        "uids": list(os.getresuid()),
        "gids": list(os.getresgid()),
        "groups": os.getgroups(),
        "setresuid": _attempt(lambda: os.setresuid(0, 0, 0)),
        "setresgid": _attempt(lambda: os.setresgid(0, 0, 0)),
        "setgroups": _attempt(lambda: os.setgroups([0])),
    }
"""
HOST_GROUP = 12345


@needs_root
def test_privilege_drop_complete(arena: Arena) -> None:
    arena.plugins(PRIVILEGE_SOURCE, ["privileges"])
    saved_groups = os.getgroups()
    os.setgroups([HOST_GROUP])
    try:
        host, bystander = arena.start()
        outcomes = attack(host, "privileges")
    finally:
        os.setgroups(saved_groups)
    uid, gid = worker_ids(host)
    assert uid != 0
    assert gid != 0
    assert outcomes == {
        "uids": [uid] * 3,
        "gids": [gid] * 3,
        "groups": [],
        "setresuid": "EPERM",
        "setresgid": "EPERM",
        "setgroups": "EPERM",
    }
    status = proc_status(worker_pid(host, ATTACKER))
    assert status["Groups"] == ""
    check_aftermath(host, bystander)


CORE_DUMP_SOURCE = """
import resource

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3


def undo_hardening(numbers):
    # struct rlimit64 {soft, hard}: ask for 1 MiB of core file.
    requested = (ctypes.c_uint64 * 2)(1 << 20, 1 << 20)
    return {
        "core limit": list(resource.getrlimit(resource.RLIMIT_CORE)),
        "raise core limit": _syscall(numbers["prlimit64"], 0,
                                     resource.RLIMIT_CORE,
                                     ctypes.addressof(requested), 0),
        "set dumpable": _syscall(numbers["prctl"], PR_SET_DUMPABLE, 1, 0, 0,
                                 0),
        "dumpable": _raw(numbers["prctl"], PR_GET_DUMPABLE, 0, 0, 0, 0),
    }


def crash_in(folder):
    os.chdir(folder)
    os.abort()
"""


def test_crash_leaves_no_core(arena: Arena, scratch_folder: Path) -> None:
    arena.plugins(CORE_DUMP_SOURCE, ["undo_hardening", "crash_in"])
    dump_folder = scratch_folder / "dumps"
    dump_folder.mkdir()
    os.chmod(dump_folder, 0o1777)
    host, bystander = arena.start(
        {"filesystem": {"write": [str(dump_folder)]}}
    )
    numbers = syscall_numbers("prlimit64", "prctl")
    assert attack(host, "undo_hardening", numbers=numbers) == {
        "core limit": [0, 0],
        # The kernel: raising a hard limit needs CAP_SYS_RESOURCE.
        "raise core limit": "EPERM",
        # The filter: dumpable may only be turned off.
        "set dumpable": "EPERM",
        "dumpable": 0,
    }
    started = time.monotonic()
    with pytest.raises(PluginCrashed) as crashed:
        attack(host, "crash_in", folder=str(dump_folder))
    assert type(crashed.value) is PluginCrashed
    assert crashed.value.signal == signal.SIGABRT
    assert time.monotonic() - started < 10
    assert os.listdir(dump_folder) == []
    check_aftermath(host, bystander)


POISON_SOURCE = """
import sys


def _create(path):
    with open(path, "x") as file:
        file.write("import os  # planted")


def poison(folders, scratch_name):
    outcomes = {
        folder: _attempt(lambda: _create(os.path.join(folder, scratch_name)))
        for folder in folders
    }
    outcomes["scratch"] = _attempt(lambda: _create(scratch_name))
    outcomes["dont_write_bytecode"] = sys.dont_write_bytecode
    outcomes["pycache_prefix"] = sys.pycache_prefix
    return outcomes
"""


def test_shared_code_not_writable(arena: Arena) -> None:
    folder = arena.plugins(POISON_SOURCE, ["poison"])
    # Caches open to every uid by their mode, as a careless install leaves
    # them, so only Landlock keeps the worker out of these.
    caches = [folder / "__pycache__", arena.bystander_folder / "__pycache__"]
    for cache in caches:
        cache.mkdir()
        os.chmod(cache, 0o777)
    interpreter = os.path.realpath(sys.executable)
    shared = [
        *map(str, caches),
        str(folder),
        str(arena.bystander_folder),
        sysconfig.get_paths()["stdlib"],
        *worker_runtime(interpreter).sys_path,
        os.path.dirname(interpreter),
    ]
    host, bystander = arena.start()
    planted = "bystander.cpython-planted.pyc"
    outcomes = attack(host, "poison", folders=shared, scratch_name=planted)
    expected: dict[str, Any] = dict.fromkeys(shared, "EACCES")
    expected.update(
        scratch="ok", dont_write_bytecode=True, pycache_prefix=None
    )
    assert outcomes == expected
    for target in shared:
        assert not os.path.exists(os.path.join(target, planted))
    check_aftermath(host, bystander)


CONFIGURATION_SOURCE = """
import socket


def _overwrite(path):
    with open(path, "w") as file:
        file.write("capabilities = ['notify']\\n")


def rewrite(paths, new_file_in):
    outcomes = {path: _attempt(lambda: _overwrite(path)) for path in paths}
    outcomes[new_file_in] = _attempt(
        lambda: _overwrite(os.path.join(new_file_in, "injected.toml"))
    )
    return outcomes


def network():
    return _attempt(lambda: socket.socket().close())


def exit_now():
    os._exit(0)
"""


@pytest.fixture
def policy_file(scratch_folder: Path) -> Path:
    """A policy file open to every uid by its mode and folder."""
    folder = scratch_folder / "policies"
    folder.mkdir()
    os.chmod(folder, 0o777)
    path = folder / "policy.toml"
    text = f'[plugins.{ATTACKER}]\nnetwork = false\nenv = ["HOME"]\n'
    return open_to_all(path, text)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_configuration_not_writable(
    arena: Arena, policy_file: Path, pytestconfig: pytest.Config
) -> None:
    folder = arena.plugins(
        CONFIGURATION_SOURCE, ["rewrite", "network", "exit_now"]
    )
    configuration = [folder / "plugin.toml", folder / "attacker.py"]
    for path in configuration:
        os.chmod(path, 0o666)
    configuration.append(policy_file)
    digests = {path: file_digest(path) for path in configuration}
    transport = pytestconfig.getoption("--transport")
    with PluginHost(
        [arena.plugin_root], Policy.load(policy_file), transport=transport
    ) as host:
        bystander = arena.watch(host)
        outcomes = attack(
            host,
            "rewrite",
            paths=[str(path) for path in configuration],
            new_file_in=host.scratch_root,
        )
        expected = dict.fromkeys(map(str, configuration), "EACCES")
        expected[host.scratch_root] = "EACCES"
        assert outcomes == expected
        first_pid = worker_pid(host, ATTACKER)
        with pytest.raises(PluginCrashed):
            attack(host, "exit_now")
        assert attack(host, "network") == "EPERM"
        assert worker_pid(host, ATTACKER) != first_pid
        assert host.worker_status(ATTACKER)["kernel"]["Seccomp"] == "2"
        for path, digest in digests.items():
            assert file_digest(path) == digest
        check_aftermath(host, bystander)


EXECUTABLE_SOURCE = """
def overwrite(paths, o_path_target):
    outcomes = {
        path: _attempt(lambda: os.close(os.open(path, os.O_WRONLY)))
        for path in paths
    }
    handle = os.open(o_path_target, os.O_PATH)
    try:
        outcomes["reopen O_PATH"] = _attempt(
            lambda: os.close(os.open(f"/proc/self/fd/{handle}", os.O_RDWR))
        )
    finally:
        os.close(handle)
    return outcomes
"""


def loaded_library(fragment: str) -> str:
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fragment in os.path.basename(fields[5]):
            return os.path.realpath(fields[5])
    raise LookupError(f"no mapped library named like {fragment!r}")


def test_executables_not_writable(arena: Arena) -> None:
    arena.plugins(EXECUTABLE_SOURCE, ["overwrite"])
    interpreter = os.path.realpath(sys.executable)
    native = Path(spawnplan.__file__).with_name("_native.abi3.so")
    binaries = [Path(interpreter), Path(loaded_library("libc.so")), native]
    digests = {path: file_digest(path) for path in binaries}
    host, bystander = arena.start()
    paths = [
        "/proc/self/exe",
        f"/proc/{os.getpid()}/exe",
        *map(str, binaries),
    ]
    outcomes = attack(
        host, "overwrite", paths=paths, o_path_target=interpreter
    )
    assert outcomes == {
        **dict.fromkeys(paths, "EACCES"),
        "reopen O_PATH": "EACCES",
    }
    for path, digest in digests.items():
        assert file_digest(path) == digest
    check_aftermath(host, bystander)


# -- D. Landlock ----------------------------------------------------------

TRUNCATE_SOURCE = """
def truncate(paths):
    outcomes = {}
    for path in paths:
        outcomes[f"truncate {path}"] = _attempt(lambda: os.truncate(path, 0))
        outcomes[f"O_RDONLY|O_TRUNC {path}"] = _attempt(
            lambda: os.close(os.open(path, os.O_RDONLY | os.O_TRUNC))
        )
        outcomes[f"O_WRONLY|O_TRUNC {path}"] = _attempt(
            lambda: os.close(os.open(path, os.O_WRONLY | os.O_TRUNC))
        )
    return outcomes
"""


@pytest.mark.skipif(ABI < 3, reason="truncation is handled from ABI 3")
def test_truncate_read_only_denied(arena: Arena, scratch_folder: Path) -> None:
    arena.plugins(TRUNCATE_SOURCE, ["truncate"])
    readable_folder = scratch_folder / "readable"
    readable_folder.mkdir()
    readable = open_to_all(readable_folder / "data.txt", "keep me")
    outside = open_to_all(scratch_folder / "outside.txt", "keep me too")
    host, bystander = arena.start(
        {"filesystem": {"read": [str(readable_folder)]}}
    )
    paths = [str(readable), str(outside)]
    outcomes = attack(host, "truncate", paths=paths)
    assert set(outcomes.values()) == {"EACCES"}
    assert len(outcomes) == 3 * len(paths)
    assert readable.read_text() == "keep me"
    assert outside.read_text() == "keep me too"
    check_aftermath(host, bystander)


DEVICE_SOURCE = """
import fcntl
import termios


def _terminal_query(fd):
    fcntl.ioctl(fd, termios.TCGETS, bytes(64))


def devices(candidates):
    reachable = []
    outcomes = {}
    for path in candidates:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            continue
        reachable.append(path)
        outcomes[path] = _attempt(lambda: _terminal_query(fd))
        os.close(fd)
    # Opened by the launcher before Landlock, so only the driver checks it.
    outcomes["fd 0"] = _attempt(lambda: _terminal_query(0))
    return {"reachable": reachable, "ioctl": outcomes}
"""
# Device nodes whose opening changes nothing.
HARMLESS_DEVICES = (
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/ptmx",
)


@pytest.mark.skipif(ABI < 5, reason="device ioctls are handled from ABI 5")
def test_device_ioctl_denied(arena: Arena) -> None:
    arena.plugins(DEVICE_SOURCE, ["devices"])
    host, bystander = arena.start({"filesystem": {"read": ["/dev/null"]}})
    present = [path for path in HARMLESS_DEVICES if os.path.exists(path)]
    outcomes = attack(host, "devices", candidates=present)
    assert outcomes == {
        "reachable": ["/dev/null"],
        "ioctl": {"/dev/null": "EACCES", "fd 0": "ENOTTY"},
    }
    check_aftermath(host, bystander)


REPARENT_SOURCE = """
def reparent(read_only):
    source = os.path.join(read_only, "input.txt")
    with open("own.txt", "w") as file:
        file.write("own")
    outcomes = {
        "link in": _attempt(lambda: os.link(source, "linked.txt")),
        "rename in": _attempt(lambda: os.rename(source, "moved.txt")),
        "link out": _attempt(
            lambda: os.link("own.txt", os.path.join(read_only, "own.txt"))
        ),
        "rename out": _attempt(
            lambda: os.rename("own.txt", os.path.join(read_only, "own.txt"))
        ),
    }
    outcomes["write through link"] = _attempt(
        lambda: os.close(os.open("linked.txt", os.O_WRONLY))
    )
    return outcomes
"""


@pytest.mark.skipif(ABI < 2, reason="reparenting is handled from ABI 2")
def test_reparenting_cannot_widen_rights(
    arena: Arena, scratch_folder: Path
) -> None:
    """A link that would give a file more rights under its new name fails
    with EXDEV (REFER). A rename out of the read-only folder lacks its
    REMOVE_FILE right and one into it its MAKE_REG right: EACCES."""
    arena.plugins(REPARENT_SOURCE, ["reparent"])
    read_only = scratch_folder / "read-only"
    read_only.mkdir()
    os.chmod(read_only, 0o777)
    source = open_to_all(read_only / "input.txt", "input")
    host, bystander = arena.start({"filesystem": {"read": [str(read_only)]}})
    outcomes = attack(host, "reparent", read_only=str(read_only))
    assert outcomes == {
        "link in": "EXDEV",
        "rename in": "EACCES",
        "link out": "EACCES",
        "rename out": "EACCES",
        "write through link": "ENOENT",
    }
    assert sorted(os.listdir(read_only)) == ["input.txt"]
    assert source.read_text() == "input"
    check_aftermath(host, bystander)


LANDLOCK_TABLE_SOURCE = """
import fcntl
import signal
import termios


def _terminal_query(path):
    with open(path, "rb") as device:
        fcntl.ioctl(device, termios.TCGETS, bytes(64))


def exit_now():
    os._exit(0)


def probes(own_file, bystander):
    return {
        "truncate": _attempt(lambda: os.truncate(own_file, 0)),
        "ioctl_dev": _attempt(lambda: _terminal_query("/dev/null")),
        "signal": _attempt(lambda: os.kill(bystander, signal.SIGCONT)),
    }
"""


@pytest.mark.skipif(ABI < 6, reason="signal scoping needs ABI 6")
def test_landlock_rights_not_downgraded(
    arena: Arena, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every probe is denied under the kernel's ABI. A host that can only
    build an ABI 3 ruleset, which lacks IOCTL_DEV, TCP and scope rights,
    refuses to start the plugin in strict mode."""
    folder = arena.plugins(LANDLOCK_TABLE_SOURCE, ["probes", "exit_now"])
    own_file = open_to_all(folder / "data.txt", "data")
    host, bystander = arena.start({"filesystem": {"read": ["/dev/null"]}})
    events: list[dict[str, Any]] = []
    host.subscribe(events.append)
    outcomes = attack(
        host, "probes", own_file=str(own_file), bystander=bystander.pid
    )
    assert outcomes == {
        "truncate": "EACCES",
        "ioctl_dev": "EACCES",
        # Landlock scopes signals to the sender's domain, so the signal
        # fails even where both workers share one uid.
        "signal": "EPERM",
    }
    assert own_file.read_text() == "data"

    with pytest.raises(PluginCrashed):
        attack(host, "exit_now")
    old_abi = functools.partial(landlock.build_ruleset, abi=3)
    monkeypatch.setattr(landlock, "build_ruleset", old_abi)
    with pytest.raises(LaunchError) as refused:
        attack(host, "ping")
    assert refused.value.stage == "landlock"
    assert refused.value.errno == errno.EOPNOTSUPP
    missing = [e for e in events if e["event"] == "protection_missing"]
    assert [e["plugin"] for e in missing] == [ATTACKER]

    monkeypatch.undo()
    check_aftermath(host, bystander)


@pytest.mark.xfail(
    strict=True,
    reason="network = true opens every destination, loopback and "
    "link-local included; policies have no per-destination rules",
)
def test_network_plugin_cannot_reach_loopback(
    arena: Arena, loopback_listener: socket.socket
) -> None:
    arena.plugins(
        """
        import socket


        def connect(port):
            return _attempt(
                lambda: socket.create_connection(("127.0.0.1", port), 5)
            )
        """,
        ["connect"],
    )
    host, bystander = arena.start({"network": True})
    port = loopback_listener.getsockname()[1]
    outcome = attack(host, "connect", port=port)
    loopback_listener.setblocking(False)
    with pytest.raises(BlockingIOError):
        loopback_listener.accept()
    assert outcome in ("EACCES", "EPERM")
    check_aftermath(host, bystander)


# -- E. Python-level guards -----------------------------------------------

INTROSPECTION_SOURCE = """
import gc
import socket

from sandbox.plugin import CapabilityDenied, read_env


def _server():
    for thing in gc.get_objects():
        if type(thing).__name__ == "Server" and hasattr(thing, "channel"):
            return thing
    raise LookupError("no Server object in this worker")


def escalate(secret):
    server = _server()
    # Everything the worker's Python code does is the plugin's to change,
    # its own view of the granted capabilities included.
    server.granted = frozenset(["notify", "read_env"])
    try:
        read_env("HOME")
        capability = "granted"
    except CapabilityDenied:
        capability = "denied"
    return {
        "server found": type(server).__module__,
        "read_env": capability,
        "socket": _attempt(lambda: socket.socket().close()),
        "secret": _attempt(lambda: open(secret).read()),
    }


def forge():
    server = _server()
    server.channel.send_result(2**31, {"forged": True})
    server.channel.send_result(2**31 + 1, "success for another call")
    return "done"
"""


def test_worker_python_hijack_contained(
    arena: Arena, scratch_folder: Path
) -> None:
    arena.plugins(INTROSPECTION_SOURCE, ["escalate", "forge"])
    secret = scratch_folder / "secret.txt"
    secret.write_text("secret")
    os.chmod(secret, 0o644)
    host, bystander = arena.start()
    events: list[dict[str, Any]] = []
    host.subscribe(events.append)
    assert attack(host, "escalate", secret=str(secret)) == {
        "server found": "sandbox.worker",
        "read_env": "denied",
        "socket": "EPERM",
        "secret": "EACCES",
    }
    hijacked_pid = worker_pid(host, ATTACKER)
    with pytest.raises(ProtocolError, match="never made"):
        attack(host, "forge")
    assert not is_running(hijacked_pid)
    violations = [e for e in events if e["event"] == "protocol_violation"]
    assert [e["plugin"] for e in violations] == [ATTACKER]
    check_aftermath(host, bystander)


DEEP_RECURSION_SOURCE = """
import sys


def nested_repr(depth):
    sys.setrecursionlimit(depth * 2)
    nested = []
    for _ in range(depth):
        nested = [nested]
    return len(repr(nested))
"""


def test_c_stack_overflow_fails_one_call(arena: Arena) -> None:
    """Up to CPython 3.11, repr() of nested lists recurses in C as deep
    as the recursion limit allows, so the worker overflows its 8 MiB
    stack. Later versions bound C recursion and raise RecursionError."""
    arena.plugins(DEEP_RECURSION_SOURCE, ["nested_repr"])
    host, bystander = arena.start()
    crashed_pid = worker_pid(host, ATTACKER)
    if sys.version_info < (3, 12):
        with pytest.raises(PluginCrashed) as crashed:
            attack(host, "nested_repr", depth=200_000)
        assert type(crashed.value) is PluginCrashed
        assert crashed.value.signal == signal.SIGSEGV
        assert not is_running(crashed_pid)
    else:
        with pytest.raises(PluginError) as failed:
            attack(host, "nested_repr", depth=200_000)
        assert failed.value.type_name == "RecursionError"
    check_aftermath(host, bystander)
