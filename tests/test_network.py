"""The ``network`` setting, enforced on real workers started by PluginHost.

Every test starts a probe plugin under one form of ``network`` next to a
bystander plugin with the default policy. The servers a probe attacks
run in the test on 127.0.0.1 (ephemeral ports unless noted) and record
every connection or datagram, so a denial is checked twice: by the
errno the probe saw and by what reached the server. After each attack
the bystander must still reply from the same worker. Probe methods
return {"ok": value} or {"error": exception type, "errno": errno name}.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyseccomp
import pytest

from sandbox import PluginHost, Policy, landlock, seccomp, verify

PROBE_SOURCE = """
import ctypes
import errno
import socket
import struct

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_TIMEOUT = 10


def _outcome(action):
    try:
        value = action()
    except OSError as error:
        code = errno.errorcode.get(error.errno, str(error.errno))
        return {"error": type(error).__name__, "errno": code}
    return {"ok": value}


def tcp_exchange(address, port, family_name):
    def exchange():
        family = getattr(socket, family_name)
        with socket.socket(family, socket.SOCK_STREAM) as conn:
            conn.settimeout(_TIMEOUT)
            conn.connect((address, port))
            return conn.recv(64).decode()

    return _outcome(exchange)


def mptcp_connect(port):
    def exchange():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262) as conn:
            conn.settimeout(_TIMEOUT)
            conn.connect(("127.0.0.1", port))
            return conn.recv(64).decode()

    return _outcome(exchange)


def fast_open(port):
    def send():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as conn:
            conn.settimeout(_TIMEOUT)
            address = ("127.0.0.1", port)
            return conn.sendto(b"data", socket.MSG_FASTOPEN, address)

    return _outcome(send)


def udp_exchange(port, payload_hex):
    def exchange():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as conn:
            conn.settimeout(_TIMEOUT)
            conn.sendto(bytes.fromhex(payload_hex), ("127.0.0.1", port))
            return conn.recv(512).hex()

    return _outcome(exchange)


def resolve(name):
    def lookup():
        found = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
        return sorted({entry[4][0] for entry in found})

    try:
        return _outcome(lookup)
    except socket.gaierror as error:
        return {"error": "gaierror", "errno": error.errno}


def bind_tcp(port):
    def bind():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as conn:
            conn.bind(("127.0.0.1", port))
            return conn.getsockname()[1]

    return _outcome(bind)


def listen_unbound():
    def listen():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as conn:
            conn.listen()
            return conn.getsockname()[1]

    return _outcome(listen)


def unix_exchange(address_hex):
    def exchange():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(_TIMEOUT)
            conn.connect(bytes.fromhex(address_hex))
            return conn.recv(64).decode()

    return _outcome(exchange)


def raw_socket(number, family, kind, protocol):
    # Through syscall() so that any 64-bit value reaches the kernel,
    # which socket.socket() would reject or truncate first.
    ctypes.set_errno(0)
    args = [ctypes.c_long(value) for value in (family, kind, protocol)]
    fd = _libc.syscall(ctypes.c_long(number), *args)
    if fd == -1:
        code = ctypes.get_errno()
        return {"error": "OSError", "errno": errno.errorcode.get(code)}
    _libc.close(fd)
    return {"ok": fd}


def echo(value):
    return value
"""
PROBE_METHODS = [
    "tcp_exchange",
    "mptcp_connect",
    "fast_open",
    "udp_exchange",
    "resolve",
    "bind_tcp",
    "listen_unbound",
    "unix_exchange",
    "raw_socket",
    "echo",
]

EPERM = {"error": "OSError", "errno": "EPERM"}
PERMISSION_EPERM = {"error": "PermissionError", "errno": "EPERM"}
PERMISSION_EACCES = {"error": "PermissionError", "errno": "EACCES"}
GREETING = "hello"
# An unlisted port in an allowlist that also never matches a test server:
# 1 is below every ephemeral port.
OTHER_PORT = 1
SOCKET_NUMBER = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, "socket")

# The "false" and "allowlist" forms, which must deny the same non-TCP
# attacks. The allowlist names OTHER_PORT only, unless a test adds the
# port it attacks to show that listing a port does not open it for
# anything but TCP connect().
DENYING_FORMS = ["false", "allowlist"]


def network_setting(form: str, *ports: int) -> bool | list[int]:
    if form == "allowlist":
        return [OTHER_PORT, *ports]
    return {"false": False, "true": True}[form]


# -- servers run by the tests -------------------------------------------------


@dataclass
class TcpServer:
    """A TCP server on 127.0.0.1 that greets and records each connection."""

    port: int
    accepted: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class UdpServer:
    """A UDP server that records each datagram and sends ``reply``."""

    port: int
    reply: Callable[[bytes], bytes]
    received: list[bytes] = field(default_factory=list)


def _serve_tcp(listener: socket.socket, server: TcpServer) -> None:
    try:
        while True:
            conn, peer = listener.accept()
            with conn:
                server.accepted.append(peer)
                conn.sendall(GREETING.encode())
    except OSError:
        return  # the fixture closed the listener


def _serve_udp(sock: socket.socket, server: UdpServer) -> None:
    try:
        while True:
            data, peer = sock.recvfrom(4096)
            if peer is None:
                return  # shutdown() ended the wait
            server.received.append(data)
            sock.sendto(server.reply(data), peer)
    except OSError:
        return


class ServerPool:
    """Servers started by one test; close() stops them all."""

    def __init__(self) -> None:
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    def tcp(self, host: str = "127.0.0.1", port: int = 0) -> TcpServer:
        listener = socket.create_server((host, port))
        server = TcpServer(listener.getsockname()[1])
        self._start(listener, _serve_tcp, server)
        return server

    def udp(
        self,
        reply: Callable[[bytes], bytes],
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> UdpServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((host, port))
        server = UdpServer(sock.getsockname()[1], reply)
        self._start(sock, _serve_udp, server)
        return server

    def unix(self, address: str | bytes) -> list[bytes]:
        """Serve a unix stream socket and return its list of peers."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(address)
        listener.listen()
        accepted: list[bytes] = []

        def serve(sock: socket.socket, peers: list[bytes]) -> None:
            try:
                while True:
                    conn, _ = sock.accept()
                    with conn:
                        peers.append(b"peer")
                        conn.sendall(GREETING.encode())
            except OSError:
                return

        self._start(listener, serve, accepted)
        return accepted

    def _start(
        self, sock: socket.socket, target: Callable[..., None], state: Any
    ) -> None:
        self._sockets.append(sock)
        thread = threading.Thread(target=target, args=(sock, state))
        thread.daemon = True
        thread.start()
        self._threads.append(thread)

    def close(self) -> None:
        for sock in self._sockets:
            # shutdown() wakes a thread blocked in accept() or recvfrom().
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)


@pytest.fixture
def servers() -> Iterator[ServerPool]:
    pool = ServerPool()
    yield pool
    pool.close()


# -- a minimal DNS server -----------------------------------------------------

DNS_ANSWER_ADDRESS = "192.0.2.7"


def dns_query(name: str) -> bytes:
    """Build a standard query for the A record of ``name``."""
    header = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    labels = b"".join(
        bytes([len(part)]) + part.encode() for part in name.split(".")
    )
    return header + labels + b"\0" + struct.pack("!HH", 1, 1)


def dns_answer(query: bytes) -> bytes:
    """Answer any A query with DNS_ANSWER_ADDRESS, echoing the question."""
    if len(query) < 12:
        return b""
    ident, flags = struct.unpack("!HH", query[:4])
    header = struct.pack(
        "!HHHHHH", ident, 0x8180 | (flags & 0x0100), 1, 1, 0, 0
    )
    question = query[12:]
    record = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4)
    return header + question + record + socket.inet_aton(DNS_ANSWER_ADDRESS)


@pytest.fixture
def loopback_resolver(servers: ServerPool) -> UdpServer:
    """A DNS server on 127.0.0.1:53, where a worker's lookups go.

    Landlock keeps /etc/resolv.conf out of the worker's read rules, and
    glibc then sends queries to 127.0.0.1 port 53, its default.
    """
    try:
        return servers.udp(dns_answer, port=53)
    except OSError as error:
        pytest.skip(f"cannot serve DNS on 127.0.0.1:53: {error}")


# -- hosts --------------------------------------------------------------------

StartProbe = Callable[..., PluginHost]


@pytest.fixture
def start_probe(
    write_plugin: Callable[..., Path], make_host: Callable[..., PluginHost]
) -> StartProbe:
    """Return a host with a ``probe`` under ``table`` and a ``bystander``.

    The bystander runs with the default policy and has replied to one
    call before the host is returned.
    """

    def start(table: Mapping[str, Any]) -> PluginHost:
        for name in ("probe", "bystander"):
            write_plugin(name, PROBE_SOURCE, PROBE_METHODS)
        host = make_host({"plugins": {"probe": dict(table)}})
        assert call(host, "bystander", "echo", value="warm") == "warm"
        return host

    return start


def call(host: PluginHost, plugin: str, method: str, **params: Any) -> Any:
    return host.execute_plugin(plugin, method, params)


def worker_pid(host: PluginHost, plugin: str) -> int:
    pid: int = host.worker_status(plugin)["pid"]
    return pid


@pytest.fixture
def bystander_pid() -> Iterator[Callable[[PluginHost], None]]:
    """Record the bystander's pid, and check at teardown that it replies."""
    seen: list[tuple[PluginHost, int]] = []

    def remember(host: PluginHost) -> None:
        seen.append((host, worker_pid(host, "bystander")))

    yield remember
    for host, pid in seen:
        assert call(host, "bystander", "echo", value="after") == "after"
        assert worker_pid(host, "bystander") == pid


@pytest.fixture
def probe_host(
    start_probe: StartProbe, bystander_pid: Callable[[PluginHost], None]
) -> StartProbe:
    """start_probe, with the bystander checked after the test's attack."""

    def start(table: Mapping[str, Any]) -> PluginHost:
        host = start_probe(table)
        bystander_pid(host)
        return host

    return start


# -- false and allowlist: what both deny --------------------------------------


def test_false_denies_tcp_connect(
    probe_host: StartProbe, servers: ServerPool
) -> None:
    server = servers.tcp()
    host = probe_host({"network": False})
    outcome = call(
        host,
        "probe",
        "tcp_exchange",
        address="127.0.0.1",
        port=server.port,
        family_name="AF_INET",
    )
    assert outcome == PERMISSION_EPERM
    assert server.accepted == []


@pytest.mark.parametrize("form", DENYING_FORMS)
def test_udp_denied(
    probe_host: StartProbe, servers: ServerPool, form: str
) -> None:
    server = servers.udp(lambda data: data)
    host = probe_host({"network": network_setting(form, server.port)})
    outcome = call(
        host, "probe", "udp_exchange", port=server.port, payload_hex="70696e67"
    )
    assert outcome == PERMISSION_EPERM
    assert server.received == []


@pytest.mark.parametrize("form", DENYING_FORMS)
def test_name_lookup_sends_nothing(
    probe_host: StartProbe, loopback_resolver: UdpServer, form: str
) -> None:
    host = probe_host({"network": network_setting(form, 53)})
    outcome = call(host, "probe", "resolve", name="example.invalid")
    assert outcome.get("error") == "gaierror"
    assert loopback_resolver.received == []


@pytest.mark.parametrize("form", DENYING_FORMS)
def test_dns_query_over_udp_denied(
    probe_host: StartProbe, servers: ServerPool, form: str
) -> None:
    server = servers.udp(dns_answer)
    host = probe_host({"network": network_setting(form, server.port)})
    query = dns_query("example.invalid").hex()
    outcome = call(
        host, "probe", "udp_exchange", port=server.port, payload_hex=query
    )
    assert outcome == PERMISSION_EPERM
    assert server.received == []


@pytest.fixture
def unix_folder() -> Iterator[Path]:
    """A folder that every uid may enter, for the host's unix socket."""
    folder = Path(tempfile.mkdtemp(prefix="sandbox-network-"))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def serve_pathname_socket(servers: ServerPool, folder: Path) -> list[bytes]:
    path = folder / "host.sock"
    accepted = servers.unix(str(path))
    # Any uid may connect, so only the sandbox can stop the worker.
    os.chmod(path, 0o777)
    return accepted


@pytest.mark.parametrize("form", DENYING_FORMS)
def test_host_pathname_socket_denied(
    probe_host: StartProbe,
    servers: ServerPool,
    unix_folder: Path,
    form: str,
) -> None:
    accepted = serve_pathname_socket(servers, unix_folder)
    host = probe_host(
        {
            "network": network_setting(form),
            "filesystem": {"read": [str(unix_folder)]},
        }
    )
    address = str(unix_folder / "host.sock").encode().hex()
    outcome = call(host, "probe", "unix_exchange", address_hex=address)
    assert outcome == PERMISSION_EPERM
    assert accepted == []


@pytest.mark.parametrize("form", [*DENYING_FORMS, "true"])
def test_host_abstract_socket_denied(
    probe_host: StartProbe, servers: ServerPool, form: str
) -> None:
    # seccomp denies socket(AF_UNIX) under false and an allowlist.
    # Under true the worker gets the socket, and Landlock's scope on
    # abstract unix sockets denies the connect().
    address = b"\0sandbox-network-test-" + uuid.uuid4().hex.encode()
    accepted = servers.unix(address)
    host = probe_host({"network": network_setting(form)})
    outcome = call(host, "probe", "unix_exchange", address_hex=address.hex())
    assert outcome == PERMISSION_EPERM
    assert accepted == []


# (family, type, protocol) passed to socket() through syscall(). The
# comment of each case gives what the kernel alone returns to a worker
# without capabilities, so each case separates the filter from the kernel.
SOCKET_CASES = {
    # EINVAL: type 15 is not a socket type.
    "AF_PACKET": (17, 15, 0),
    # Success: NETLINK_ROUTE needs no privilege.
    "AF_NETLINK raw": (16, socket.SOCK_RAW, 0),
    # ESOCKTNOSUPPORT. Under an allowlist only the family check denies it.
    "AF_NETLINK stream": (16, socket.SOCK_STREAM, 0),
    # EPROTONOSUPPORT: raw sockets need a protocol number.
    "AF_INET raw": (socket.AF_INET, socket.SOCK_RAW, 0),
    # Success: a UDP socket.
    "AF_INET6 datagram": (socket.AF_INET6, socket.SOCK_DGRAM, 0),
    # Success: a unix socket, which could reach the host's sockets.
    "AF_UNIX stream": (socket.AF_UNIX, socket.SOCK_STREAM, 0),
    # EAFNOSUPPORT or ESOCKTNOSUPPORT (45 is AF_MCTP on Linux 5.15+).
    "family 45": (45, socket.SOCK_STREAM, 0),
    # Success or EAFNOSUPPORT, depending on whether vsock is loaded.
    "AF_VSOCK": (40, socket.SOCK_STREAM, 0),
    # Success: the kernel reads the int 2, AF_INET, and makes a TCP
    # socket. Only a 64-bit comparison denies it.
    "family with upper bits": (1 << 32 | socket.AF_INET, 1, 0),
    # Success where MPTCP is enabled: a stream socket that Landlock's
    # TCP rules skip.
    "AF_INET MPTCP": (socket.AF_INET, socket.SOCK_STREAM, 262),
    # Success where SCTP is loaded, EPROTONOSUPPORT elsewhere.
    "AF_INET SCTP": (socket.AF_INET, socket.SOCK_STREAM, 132),
}


@pytest.mark.parametrize("form", DENYING_FORMS)
@pytest.mark.parametrize("case", SOCKET_CASES)
def test_socket_by_number_denied(
    probe_host: StartProbe, form: str, case: str
) -> None:
    family, kind, protocol = SOCKET_CASES[case]
    host = probe_host({"network": network_setting(form)})
    outcome = call(
        host,
        "probe",
        "raw_socket",
        number=SOCKET_NUMBER,
        family=family,
        kind=kind,
        protocol=protocol,
    )
    assert outcome == EPERM


# -- allowlist: TCP connect to listed ports only ------------------------------


def test_allowlist_connects_to_listed_port(
    probe_host: StartProbe, servers: ServerPool
) -> None:
    listed = servers.tcp()
    unlisted = servers.tcp()
    host = probe_host({"network": [listed.port]})

    def exchange(port: int, address: str, family_name: str) -> Any:
        return call(
            host,
            "probe",
            "tcp_exchange",
            address=address,
            port=port,
            family_name=family_name,
        )

    assert exchange(listed.port, "127.0.0.1", "AF_INET") == {"ok": GREETING}
    assert exchange(unlisted.port, "127.0.0.1", "AF_INET") == (
        PERMISSION_EACCES
    )
    # An IPv4-mapped IPv6 address reaches the same servers over AF_INET6.
    mapped = "::ffff:127.0.0.1"
    assert exchange(listed.port, mapped, "AF_INET6") == {"ok": GREETING}
    assert exchange(unlisted.port, mapped, "AF_INET6") == PERMISSION_EACCES
    assert len(listed.accepted) == 2
    assert unlisted.accepted == []


def test_allowlist_denies_mptcp_to_unlisted_port(
    probe_host: StartProbe, servers: ServerPool
) -> None:
    unlisted = servers.tcp()
    host = probe_host({"network": [OTHER_PORT]})
    outcome = call(host, "probe", "mptcp_connect", port=unlisted.port)
    assert outcome == PERMISSION_EPERM
    assert unlisted.accepted == []


def test_allowlist_denies_fast_open_to_unlisted_port(
    probe_host: StartProbe, servers: ServerPool
) -> None:
    # sendto() with MSG_FASTOPEN connects without calling connect().
    unlisted = servers.tcp()
    host = probe_host({"network": [OTHER_PORT]})
    outcome = call(host, "probe", "fast_open", port=unlisted.port)
    assert outcome == PERMISSION_EACCES
    assert unlisted.accepted == []


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_allowlist_denies_bind(probe_host: StartProbe) -> None:
    free = free_tcp_port()
    host = probe_host({"network": [free]})
    # Listing a port allows connect() to it, not bind().
    assert call(host, "probe", "bind_tcp", port=free) == PERMISSION_EACCES
    assert call(host, "probe", "bind_tcp", port=0) == PERMISSION_EACCES


def test_allowlist_denies_listen(probe_host: StartProbe) -> None:
    host = probe_host({"network": [OTHER_PORT]})
    assert call(host, "probe", "listen_unbound") == PERMISSION_EPERM


# -- true: no filter ----------------------------------------------------------


def test_true_allows_tcp_and_udp(
    probe_host: StartProbe, servers: ServerPool
) -> None:
    tcp = servers.tcp()
    udp = servers.udp(dns_answer)
    host = probe_host({"network": True})
    outcome = call(
        host,
        "probe",
        "tcp_exchange",
        address="127.0.0.1",
        port=tcp.port,
        family_name="AF_INET",
    )
    assert outcome == {"ok": GREETING}
    assert len(tcp.accepted) == 1
    query = dns_query("example.invalid")
    outcome = call(
        host, "probe", "udp_exchange", port=udp.port, payload_hex=query.hex()
    )
    assert outcome == {"ok": dns_answer(query).hex()}
    assert udp.received == [query]


def test_true_name_lookup_reaches_resolver(
    probe_host: StartProbe, loopback_resolver: UdpServer
) -> None:
    # The control for test_name_lookup_sends_nothing: with sockets
    # allowed, the worker's lookup does reach the test's resolver.
    host = probe_host({"network": True})
    outcome = call(host, "probe", "resolve", name="example.invalid")
    assert outcome == {"ok": [DNS_ANSWER_ADDRESS]}
    assert loopback_resolver.received != []


def test_true_reaches_host_pathname_socket(
    probe_host: StartProbe, servers: ServerPool, unix_folder: Path
) -> None:
    # The control for test_host_pathname_socket_denied: the folder and
    # socket modes let the worker in, so the denial there is seccomp's.
    accepted = serve_pathname_socket(servers, unix_folder)
    host = probe_host(
        {"network": True, "filesystem": {"read": [str(unix_folder)]}}
    )
    address = str(unix_folder / "host.sock").encode().hex()
    outcome = call(host, "probe", "unix_exchange", address_hex=address)
    assert outcome == {"ok": GREETING}
    assert len(accepted) == 1


# -- what the layers are asked to enforce -------------------------------------


def test_allowlist_ruleset_reports_missing_tcp_below_abi_4() -> None:
    spec = landlock.RulesetSpec(connect_tcp_ports=(443,))
    fd, report = landlock.build_ruleset(spec, abi=3)
    os.close(fd)
    assert report.handled_net == 0
    assert "BIND_TCP" in report.missing
    assert "CONNECT_TCP" in report.missing


def test_allowlist_ruleset_handles_tcp_from_abi_4() -> None:
    spec = landlock.RulesetSpec(connect_tcp_ports=(443, 8080))
    fd, report = landlock.build_ruleset(spec, abi=4)
    os.close(fd)
    assert report.handled_net == (
        landlock.ACCESS_NET_BIND_TCP | landlock.ACCESS_NET_CONNECT_TCP
    )
    assert "CONNECT_TCP" not in report.missing


@pytest.mark.parametrize("ports", [(0,), (65536,), (True,), ("443",)])
def test_ruleset_spec_rejects_bad_port(ports: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError, match="TCP port"):
        landlock.RulesetSpec(connect_tcp_ports=ports)


def test_ruleset_spec_ports_need_restrict_tcp() -> None:
    with pytest.raises(ValueError, match="restrict_tcp"):
        landlock.RulesetSpec(restrict_tcp=False, connect_tcp_ports=(443,))


def test_filter_spec_tcp_only_needs_network() -> None:
    with pytest.raises(ValueError, match="network"):
        seccomp.FilterSpec(network=False, tcp_only=True)


def test_tcp_only_program_lists_its_rules() -> None:
    program = seccomp.build_filter(
        seccomp.FilterSpec(network=True, tcp_only=True)
    )
    assert "listen" in program.denied
    assert "socket" not in program.denied
    assert any(entry.startswith("socket (domain") for entry in program.denied)


@pytest.mark.parametrize(
    ("network", "needs_tcp"),
    [(False, True), ((443,), True), (True, False)],
)
def test_needed_protections_follow_network(
    network: bool | tuple[int, ...], needs_tcp: bool
) -> None:
    policy = Policy(name="x", network=network)
    needs = verify.needed_protections(policy, as_root=False)
    assert (verify.LANDLOCK_TCP in needs) is needs_tcp


# -- the network namespace of a root host ------------------------------------


def network_namespace(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root creates one")
@pytest.mark.parametrize(
    ("form", "own_namespace"),
    [("false", True), ("allowlist", False), ("true", False)],
)
def test_only_false_gets_empty_namespace(
    probe_host: StartProbe, form: str, own_namespace: bool
) -> None:
    host = probe_host({"network": network_setting(form)})
    probe = network_namespace(worker_pid(host, "probe"))
    assert (probe != network_namespace(os.getpid())) is own_namespace
    mechanisms = host.enforcement_report("probe")["layers"]["network"]
    netns = "netns: an empty network namespace"
    assert (netns in mechanisms["enforced"].get("mechanisms", [])) is (
        own_namespace
    )
