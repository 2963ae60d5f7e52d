"""A plugin that attacks its own sandbox, one threat at a time.

Each attempt returns what was tried, whether it worked, the error the
kernel or the host gave and the mechanism expected to stop it
(``stopped_by``). Nothing here is meant to succeed.
"""

import ctypes
import errno
import fcntl
import os
import resource
import signal
import socket
import termios

from sandbox.plugin import CapabilityDenied, call_capability, read_env

_libc = ctypes.CDLL(None, use_errno=True)


def _errno_name(number):
    return errno.errorcode.get(number, str(number))


def _attempt(function):
    try:
        detail = function()
    except CapabilityDenied as error:
        return {"succeeded": False, "error": f"CapabilityDenied: {error}"}
    except OSError as error:
        name = (
            _errno_name(error.errno) if error.errno else type(error).__name__
        )
        return {"succeeded": False, "error": name}
    except Exception as error:  # every outcome is reported
        return {
            "succeeded": False,
            "error": f"{type(error).__name__}: {error}",
        }
    return {"succeeded": True, "error": None, "detail": detail}


def _raise_errno():
    number = ctypes.get_errno()
    raise OSError(number, os.strerror(number))


def read_host_secret_file():
    with open("/etc/shadow", "rb") as file:
        return len(file.read())


def read_root_home():
    return os.listdir("/root")


def write_outside_allowlist():
    with open("/tmp/hostile-was-here", "w") as file:
        file.write("x")
    return "/tmp/hostile-was-here"


def escape_through_symlink():
    os.symlink("/etc", "escape")
    with open("escape/passwd", "rb") as file:
        return len(file.read())


def connect_to_network():
    with socket.create_connection(("127.0.0.1", 22), timeout=2):
        return "connected"


def open_inet_socket():
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()
    return "socket created"


def regain_root():
    if _libc.setuid(0) != 0:
        _raise_errno()
    return os.getuid()


def ptrace_the_host():
    ptrace_attach = 16
    if _libc.ptrace(ptrace_attach, os.getppid(), None, None) != 0:
        _raise_errno()
    return "attached"


def signal_the_host():
    os.kill(os.getppid(), signal.SIGTERM)
    return "signal sent"


def read_host_memory():
    with open(f"/proc/{os.getppid()}/environ", "rb") as file:
        return len(file.read())


def inject_terminal_input():
    fd = os.open("/dev/tty", os.O_RDWR)
    fcntl.ioctl(fd, termios.TIOCSTI, b"x")
    return "injected"


def unshare_user_namespace():
    clone_newuser = 0x10000000
    if _libc.unshare(clone_newuser) != 0:
        _raise_errno()
    return "new namespace"


def read_host_environment():
    return {"visible": sorted(os.environ), "via_host": read_env("HOME")}


def request_unknown_capability():
    return call_capability("shell", command="id")


def allocate_memory():
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    block = bytearray(limit)
    return len(block)


def fork_many():
    children = []
    try:
        for _ in range(10_000):
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            children.append(pid)
    finally:
        for pid in children:
            os.waitpid(pid, 0)
    return len(children)


# Names of the mechanisms that stop the threats, as THREATS claims them.
# The host checks each claim against the error the attempt got.
FILE_ACCESS = "file permissions + Landlock"
LANDLOCK_FILES = "Landlock (filesystem allowlist)"
SOCKET_FAMILIES = "seccomp (socket families)"
NO_PRIVILEGE = "uid drop + no capabilities"
PTRACE_DENIED = "seccomp (ptrace denied)"
NAMESPACES_DENIED = "seccomp (namespaces denied)"
SIGNAL_SCOPE = "uid drop + Landlock signal scope"
BROKER = "capability broker"

# threat: (function, kind, mechanism that stops it first). Where the
# kernel checks file permissions before Landlock (a file the worker uid
# cannot read), both are named. /dev/tty is readable by everyone, so
# Landlock denies opening it before setsid or the seccomp ioctl rule can.
THREATS = {
    "read /etc/shadow": (read_host_secret_file, "filesystem", FILE_ACCESS),
    "list /root": (read_root_home, "filesystem", FILE_ACCESS),
    "write outside the allowlist": (
        write_outside_allowlist,
        "filesystem",
        LANDLOCK_FILES,
    ),
    "escape through a symlink": (
        escape_through_symlink,
        "filesystem",
        LANDLOCK_FILES,
    ),
    "TCP connect to 127.0.0.1": (
        connect_to_network,
        "network",
        SOCKET_FAMILIES,
    ),
    "open an AF_INET socket": (open_inet_socket, "network", SOCKET_FAMILIES),
    "setuid(0)": (regain_root, "privilege", NO_PRIVILEGE),
    "ptrace the host": (ptrace_the_host, "cross-process", PTRACE_DENIED),
    "SIGTERM the host": (signal_the_host, "cross-process", SIGNAL_SCOPE),
    "read the host's /proc environ": (
        read_host_memory,
        "cross-process",
        FILE_ACCESS,
    ),
    "TIOCSTI on /dev/tty": (
        inject_terminal_input,
        "terminal",
        LANDLOCK_FILES,
    ),
    "unshare a user namespace": (
        unshare_user_namespace,
        "privilege",
        NAMESPACES_DENIED,
    ),
    "see the host environment": (
        read_host_environment,
        "exfiltration",
        BROKER,
    ),
    "use an ungranted capability": (
        request_unknown_capability,
        "capability",
        BROKER,
    ),
    "allocate past the memory limit": (
        allocate_memory,
        "resources",
        "RLIMIT_AS",
    ),
    "fork 10000 processes": (fork_many, "resources", "RLIMIT_NPROC"),
}


def attempt(threat: str) -> dict:
    function, kind, stopped_by = THREATS[threat]
    return {
        "threat": threat,
        "kind": kind,
        "stopped_by": stopped_by,
        **_attempt(function),
    }


def attempt_all() -> list:
    return [attempt(threat) for threat in THREATS]
