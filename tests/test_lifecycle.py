"""Worker lifecycle and failure handling, against real sandboxed workers.

Every failure a plugin can cause (a crash, a limit, a hang, an exception,
a bad import) must end in one typed error for that call only. The host
process, which is this test process, and the other plugins carry on. No
worker, descriptor or scratch folder may outlive its host.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import REPO, HostFactory, PluginWriter, run_script_as_nobody
from sandbox import (
    PluginCrashed,
    PluginError,
    PluginHost,
    PluginNotFound,
    PluginTimeout,
    Policy,
    PolicyError,
    ProtocolError,
    ResourceLimitExceeded,
    SandboxError,
)

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to inspect or switch users"
)

MEMORY_MB = 64
# Small limits keep the file fast. The timeout is far above the CPU limit,
# so a CPU test can only pass through the CPU limit.
LIMITS = {
    "defaults": {
        "resources": {"memory_mb": MEMORY_MB, "cpu_seconds": 1, "timeout": 20}
    }
}
# Time allowed for the kernel to end orphaned workers.
DEATH_WAIT = 5.0
MIB = 1 << 20

FAULTY_SOURCE = """
    import ctypes
    import os
    import signal
    import sys
    import time


    def pid():
        return os.getpid()


    def echo(**params):
        return params


    def segfault():
        ctypes.string_at(0)


    def abort():
        os.abort()


    def exit_three():
        sys.exit(3)


    def exit_zero_at_once():
        os._exit(0)


    def large_text(megabytes):
        return "x" * (megabytes << 20)

    def allocate_at_once(megabytes):
        return len(bytearray(megabytes << 20))


    def allocate_in_chunks(megabytes):
        chunks = [bytearray(1 << 20) for _ in range(megabytes)]
        return len(chunks)


    def spin():
        while True:
            pass


    def spin_ignoring_sigxcpu():
        signal.signal(signal.SIGXCPU, lambda signum, frame: None)
        while True:
            pass


    def sleep(seconds):
        time.sleep(seconds)


    def fail(message):
        raise ValueError(message)


    def read(path):
        try:
            with open(path) as file:
                return file.read()
        except OSError as error:
            return type(error).__name__
"""
FAULTY_METHODS = [
    "pid",
    "echo",
    "segfault",
    "abort",
    "exit_three",
    "exit_zero_at_once",
    "allocate_at_once",
    "allocate_in_chunks",
    "large_text",
    "spin",
    "spin_ignoring_sigxcpu",
    "sleep",
    "fail",
    "read",
    "listed_but_missing",
]

SMALL_SOURCE = """
    import os
    import time

    from sandbox.plugin import notify


    def pid():
        return os.getpid()


    def tag(thread, index):
        return [__name__, thread, index, os.getpid()]


    def busy(seconds):
        notify("busy")
        time.sleep(seconds)
        return os.getpid()
"""
SMALL_METHODS = ["pid", "tag", "busy"]


def notify_policy(*names: str) -> dict[str, Any]:
    return {"plugins": {name: {"capabilities": ["notify"]} for name in names}}


@pytest.fixture
def faulty(write_plugin: PluginWriter) -> Path:
    return write_plugin("faulty", FAULTY_SOURCE, FAULTY_METHODS)


@pytest.fixture
def bystander(write_plugin: PluginWriter) -> Path:
    return write_plugin("bystander", SMALL_SOURCE, SMALL_METHODS)


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """Return a folder every uid can read, for scratch roots and scripts."""
    folder = Path(tempfile.mkdtemp(prefix="sandbox-test-shared-"))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def is_running(pid: int) -> bool:
    """Return whether ``pid`` is a process that has not exited."""
    try:
        status = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return False
    return bool(status != psutil.STATUS_ZOMBIE)


def wait_until_gone(pids: list[int], seconds: float) -> list[int]:
    """Return the pids still running after at most ``seconds``."""
    deadline = time.monotonic() + seconds
    running = [pid for pid in pids if is_running(pid)]
    while running and time.monotonic() < deadline:
        time.sleep(0.05)
        running = [pid for pid in running if is_running(pid)]
    return running


def wait_for_notification(host: PluginHost) -> None:
    """Wait until a plugin's ``busy`` call has begun."""
    deadline = time.monotonic() + 10
    while not host.notifications:
        assert time.monotonic() < deadline, "no plugin call began"
        time.sleep(0.01)


def call_in_thread(
    host: PluginHost, plugin: str, method: str, params: dict[str, Any]
) -> tuple[threading.Thread, list[object]]:
    """Start a call on a thread, with a list for its result or error."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(host.execute_plugin(plugin, method, params))
        except SandboxError as error:
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def live_children() -> list[int]:
    return [
        child.pid
        for child in psutil.Process().children()
        if is_running(child.pid)
    ]


def open_descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def worker_descriptors(pid: int) -> list[int]:
    return sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))


# -- crashes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "signal_number", "exit_code"),
    [
        ("segfault", signal.SIGSEGV, None),
        ("abort", signal.SIGABRT, None),
        ("exit_three", None, 3),
        ("exit_zero_at_once", None, 0),
    ],
)
def test_crash_fails_only_its_call(
    make_host: HostFactory,
    faulty: Path,
    bystander: Path,
    method: str,
    signal_number: int | None,
    exit_code: int | None,
) -> None:
    host = make_host(LIMITS)
    bystander_pid = host.execute_plugin("bystander", "pid")
    crashed_pid = host.execute_plugin("faulty", "pid")

    with pytest.raises(PluginCrashed) as caught:
        host.execute_plugin("faulty", method)

    error = caught.value
    assert type(error) is PluginCrashed
    assert error.plugin == "faulty"
    assert error.signal == signal_number
    assert error.exit_code == exit_code
    assert not is_running(crashed_pid)
    assert host.execute_plugin("bystander", "pid") == bystander_pid
    fresh_pid = host.execute_plugin("faulty", "pid")
    assert fresh_pid != crashed_pid
    assert host.execute_plugin("faulty", "echo", {"a": [1]}) == {"a": [1]}


# -- resource limits -------------------------------------------------------


@pytest.mark.parametrize("method", ["allocate_at_once", "allocate_in_chunks"])
def test_memory_limit_fails_the_call(
    make_host: HostFactory, faulty: Path, method: str
) -> None:
    host = make_host(LIMITS)
    host.execute_plugin("faulty", "pid")
    rss_before = psutil.Process().memory_info().rss

    with pytest.raises(ResourceLimitExceeded) as caught:
        host.execute_plugin("faulty", method, {"megabytes": 10 * MEMORY_MB})

    assert caught.value.limit == "memory_mb"
    assert caught.value.plugin == "faulty"
    growth = psutil.Process().memory_info().rss - rss_before
    assert growth < 16 * MIB
    assert host.execute_plugin("faulty", "echo", {"a": 1}) == {"a": 1}


def test_oversized_result_near_memory_limit_fails_cleanly(
    make_host: HostFactory, faulty: Path
) -> None:
    # Encoding a third of the address space limit as JSON would need more
    # memory than is left, so the size check must come before any crash.
    host = make_host(LIMITS)
    worker_pid = host.execute_plugin("faulty", "pid")
    with pytest.raises(SandboxError) as caught:
        host.execute_plugin("faulty", "large_text", {"megabytes": 20})
    assert not isinstance(caught.value, PluginCrashed)
    assert "exceeds the maximum" in str(caught.value)
    assert host.execute_plugin("faulty", "pid") == worker_pid


def test_cpu_limit_stops_busy_loop(
    make_host: HostFactory, faulty: Path
) -> None:
    host = make_host(LIMITS)
    host.execute_plugin("faulty", "pid")

    with pytest.raises(ResourceLimitExceeded) as caught:
        host.execute_plugin("faulty", "spin")

    assert caught.value.limit == "cpu_seconds"
    assert host.execute_plugin("faulty", "echo", {"a": 1}) == {"a": 1}


def test_cpu_hard_limit_kills_sigxcpu_handler(
    make_host: HostFactory, faulty: Path
) -> None:
    host = make_host(LIMITS)
    host.execute_plugin("faulty", "pid")
    started = time.monotonic()

    with pytest.raises(ResourceLimitExceeded) as caught:
        host.execute_plugin("faulty", "spin_ignoring_sigxcpu")

    elapsed = time.monotonic() - started
    assert caught.value.limit == "cpu_seconds"
    # A worker cannot use more CPU time than wall-clock time, so more than
    # 1.5 s shows that the handler outlived the 1 s soft limit.
    assert elapsed > 1.5


def test_timeout_kills_sleeping_worker(
    make_host: HostFactory, faulty: Path
) -> None:
    host = make_host(LIMITS)
    sleeping_pid = host.execute_plugin("faulty", "pid")
    started = time.monotonic()

    with pytest.raises(PluginTimeout) as caught:
        host.execute_plugin("faulty", "sleep", {"seconds": 60}, timeout=1.0)

    assert caught.value.seconds == 1.0
    assert time.monotonic() - started < 4
    # The host has reaped the worker, so not even a zombie is left.
    assert not psutil.pid_exists(sleeping_pid)
    fresh_pid = host.execute_plugin("faulty", "pid")
    assert fresh_pid != sleeping_pid


# -- the host process ends -------------------------------------------------

HOST_SCRIPT = """
    import sys
    import threading
    import time

    from sandbox import PluginHost, Policy, SandboxError

    plugin_dir, scratch_root, ending = sys.argv[1:]
    policies = Policy.from_dict(
        {"plugins": {"second": {"capabilities": ["notify"]}}}
    )
    host = PluginHost([plugin_dir], policies, scratch_root=scratch_root)
    pids = [host.execute_plugin(name, "pid") for name in ("first", "second")]


    def call_busy():
        try:
            host.execute_plugin("second", "busy", {"seconds": 60})
        except SandboxError:
            pass


    # The second worker is inside a call and never reads its channel, so
    # when the host is killed only the kernel's parent-death signal can end
    # it. The thread is a daemon, so a normal exit does not wait for it.
    threading.Thread(target=call_busy, daemon=True).start()
    while not host.notifications:
        time.sleep(0.01)
    print(" ".join(map(str, pids)), flush=True)
    if ending == "sleep":
        time.sleep(60)
    # Otherwise the interpreter exits without host.close().
"""


def start_host_process(
    plugin_root: Path, shared_folder: Path, ending: str
) -> tuple[subprocess.Popen[str], list[int]]:
    script = shared_folder / "host_script.py"
    script.write_text(textwrap.dedent(HOST_SCRIPT))
    scratch_root = shared_folder / "scratch"
    command = [
        str(REPO / ".venv/bin/python"),
        str(script),
        str(plugin_root),
        str(scratch_root),
        ending,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    pids = [int(pid) for pid in line.split()]
    assert len(pids) == 2, f"host script printed {line!r}"
    return process, pids


@pytest.fixture
def two_plugins(write_plugin: PluginWriter) -> None:
    write_plugin("first", SMALL_SOURCE, SMALL_METHODS)
    write_plugin("second", SMALL_SOURCE, SMALL_METHODS, ("notify",))


@pytest.mark.usefixtures("two_plugins")
def test_killed_host_leaves_no_worker(
    plugin_root: Path, shared_folder: Path
) -> None:
    process, pids = start_host_process(plugin_root, shared_folder, "sleep")
    try:
        assert all(is_running(pid) for pid in pids)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=10)

    assert wait_until_gone(pids, DEATH_WAIT) == []


@pytest.mark.usefixtures("two_plugins")
def test_exiting_host_leaves_nothing(
    plugin_root: Path, shared_folder: Path
) -> None:
    process, pids = start_host_process(plugin_root, shared_folder, "exit")

    assert process.wait(timeout=10) == 0
    assert wait_until_gone(pids, DEATH_WAIT) == []
    assert os.listdir(shared_folder / "scratch") == []


# -- closing ---------------------------------------------------------------


@pytest.mark.parametrize("closing", ["close", "context manager"])
def test_close_releases_everything(
    faulty: Path,
    bystander: Path,
    plugin_root: Path,
    shared_folder: Path,
    closing: str,
) -> None:
    scratch_root = shared_folder / "scratch"
    descriptors_before = open_descriptors()
    host = PluginHost([plugin_root], scratch_root=str(scratch_root))

    with host:
        pids = [host.execute_plugin(name, "pid") for name in host.plugins]
        assert len(os.listdir(scratch_root)) == 2
        if closing == "close":
            host.close()

    assert not any(psutil.pid_exists(pid) for pid in pids)
    assert os.listdir(scratch_root) == []
    assert open_descriptors() == descriptors_before
    with pytest.raises(SandboxError, match="closed"):
        host.execute_plugin("bystander", "pid")
    host.close()


def test_close_ends_call_in_progress(
    write_plugin: PluginWriter, plugin_root: Path, shared_folder: Path
) -> None:
    write_plugin("alpha", SMALL_SOURCE, SMALL_METHODS, ("notify",))
    write_plugin("beta", SMALL_SOURCE, SMALL_METHODS)
    scratch_root = shared_folder / "scratch"
    descriptors_before = open_descriptors()
    host = PluginHost(
        [plugin_root],
        Policy.from_dict(notify_policy("alpha")),
        scratch_root=str(scratch_root),
    )
    pids = [host.execute_plugin(name, "pid") for name in ("alpha", "beta")]
    thread, outcome = call_in_thread(host, "alpha", "busy", {"seconds": 60})
    wait_for_notification(host)
    started = time.monotonic()

    host.close()

    assert time.monotonic() - started < 5
    thread.join(10)
    assert len(outcome) == 1
    assert isinstance(outcome[0], PluginCrashed)
    assert not any(psutil.pid_exists(pid) for pid in pids)
    assert os.listdir(scratch_root) == []
    assert open_descriptors() == descriptors_before


# -- the pool ----------------------------------------------------------------


@pytest.fixture
def three_plugins(write_plugin: PluginWriter) -> None:
    for name in ("alpha", "beta", "gamma"):
        write_plugin(name, SMALL_SOURCE, SMALL_METHODS, ("notify",))


def count_live_workers_at_start(host: PluginHost) -> list[int]:
    """Return a list that receives the live worker count at each start."""
    counts: list[int] = []

    def count(event: dict[str, Any]) -> None:
        if event["event"] == "worker_started":
            counts.append(len(live_children()))

    host.subscribe(count)
    return counts


@pytest.mark.usefixtures("three_plugins")
def test_pool_stops_least_recently_used(make_host: HostFactory) -> None:
    host = make_host(max_workers=2)
    live_at_start = count_live_workers_at_start(host)

    alpha = host.execute_plugin("alpha", "pid")
    beta = host.execute_plugin("beta", "pid")
    assert host.execute_plugin("alpha", "pid") == alpha
    gamma = host.execute_plugin("gamma", "pid")

    assert not is_running(beta)
    assert is_running(alpha)
    assert is_running(gamma)
    assert sorted(live_children()) == sorted([alpha, gamma])
    host.execute_plugin("beta", "pid")
    assert not is_running(alpha)
    assert len(live_at_start) == 4
    assert max(live_at_start) <= 2


@pytest.mark.usefixtures("three_plugins")
def test_pool_lets_busy_worker_finish(make_host: HostFactory) -> None:
    host = make_host(notify_policy("alpha"), max_workers=1)
    alpha = host.execute_plugin("alpha", "pid")
    live_at_start = count_live_workers_at_start(host)
    thread, outcome = call_in_thread(host, "alpha", "busy", {"seconds": 2})
    wait_for_notification(host)

    beta = host.execute_plugin("beta", "pid")

    thread.join(10)
    assert outcome == [alpha]
    assert not is_running(alpha)
    assert is_running(beta)
    assert live_at_start == [1]


@pytest.mark.usefixtures("three_plugins")
def test_pool_under_contention(make_host: HostFactory) -> None:
    host = make_host(max_workers=1)
    live_at_start = count_live_workers_at_start(host)
    names = ("alpha", "beta", "gamma")

    def run_calls(thread: int) -> list[tuple[list[Any], list[Any]]]:
        outcomes = []
        for index in range(8):
            name = names[(thread + index) % 3]
            got = host.execute_plugin(
                name, "tag", {"thread": thread, "index": index}
            )
            outcomes.append((got[:3], [name, thread, index]))
        return outcomes

    # Switching threads often makes a thread lose its worker to another
    # thread's eviction between the lookup and the call.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(run_calls, range(4)))
    finally:
        sys.setswitchinterval(switch_interval)

    calls = [outcome for outcomes in results for outcome in outcomes]
    assert len(calls) == 32
    for got, expected in calls:
        assert got == expected
    assert max(live_at_start) == 1
    assert len(live_children()) == 1


def test_threads_get_their_own_replies(
    make_host: HostFactory, write_plugin: PluginWriter
) -> None:
    write_plugin("left", SMALL_SOURCE, SMALL_METHODS)
    write_plugin("right", SMALL_SOURCE, SMALL_METHODS)
    host = make_host()
    pids = {
        name: host.execute_plugin(name, "tag", {"thread": -1, "index": 0})[3]
        for name in ("left", "right")
    }
    start = threading.Barrier(8)

    def run_calls(thread: int) -> list[tuple[list[Any], list[Any]]]:
        start.wait()
        outcomes = []
        for index in range(25):
            name = ("left", "right")[(thread + index) % 2]
            got = host.execute_plugin(
                name, "tag", {"thread": thread, "index": index}
            )
            outcomes.append((got, [name, thread, index, pids[name]]))
        return outcomes

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run_calls, range(8)))

    calls = [outcome for outcomes in results for outcome in outcomes]
    assert len(calls) == 200
    for got, expected in calls:
        assert got == expected


# -- errors the caller gets --------------------------------------------------


def test_import_failure_gives_plugin_error(
    make_host: HostFactory, write_plugin: PluginWriter, bystander: Path
) -> None:
    write_plugin(
        "broken",
        'raise RuntimeError("broken at import")\n\ndef pid():\n    pass\n',
        ["pid"],
    )
    host = make_host()
    bystander_pid = host.execute_plugin("bystander", "pid")

    for _ in range(2):
        with pytest.raises(PluginError) as caught:
            host.execute_plugin("broken", "pid")
        error = caught.value
        assert error.plugin == "broken"
        assert error.type_name == "RuntimeError"
        assert error.message == "broken at import"
        assert "broken.py" in error.traceback
        assert 'raise RuntimeError("broken at import")' in error.traceback

    assert host.execute_plugin("bystander", "pid") == bystander_pid


def test_unknown_names_give_plugin_not_found(
    make_host: HostFactory, faulty: Path
) -> None:
    host = make_host()
    worker_pid = host.execute_plugin("faulty", "pid")

    with pytest.raises(PluginNotFound, match="no plugin named 'nowhere'"):
        host.execute_plugin("nowhere", "pid")
    with pytest.raises(PluginNotFound, match="no method 'unlisted'"):
        host.execute_plugin("faulty", "unlisted")
    with pytest.raises(PluginNotFound, match="listed_but_missing"):
        host.execute_plugin("faulty", "listed_but_missing")

    assert host.execute_plugin("faulty", "pid") == worker_pid


@pytest.mark.parametrize(
    "params",
    [[1, 2], "text", 7],
    ids=["list", "string", "integer"],
)
def test_params_not_a_mapping(
    make_host: HostFactory, faulty: Path, params: Any
) -> None:
    host = make_host()
    worker_pid = host.execute_plugin("faulty", "pid")

    with pytest.raises(ProtocolError, match="params must be a mapping"):
        host.execute_plugin("faulty", "echo", params)

    assert host.execute_plugin("faulty", "pid") == worker_pid


@pytest.mark.parametrize(
    "params",
    [{"value": {1, 2}}, {"value": float("nan")}, {"value": object()}],
    ids=["set", "nan", "object"],
)
def test_params_not_json(
    make_host: HostFactory, faulty: Path, params: dict[str, Any]
) -> None:
    host = make_host()
    worker_pid = host.execute_plugin("faulty", "pid")

    with pytest.raises(ProtocolError, match="cannot be encoded as JSON"):
        host.execute_plugin("faulty", "echo", params)

    assert host.execute_plugin("faulty", "pid") == worker_pid
    assert host.execute_plugin("faulty", "echo", {"a": 1}) == {"a": 1}


def test_plugin_exception_gives_plugin_error(
    make_host: HostFactory, faulty: Path
) -> None:
    host = make_host()
    worker_pid = host.execute_plugin("faulty", "pid")

    with pytest.raises(PluginError) as caught:
        host.execute_plugin("faulty", "fail", {"message": "x"})

    error = caught.value
    assert error.plugin == "faulty"
    assert error.type_name == "ValueError"
    assert error.message == "x"
    assert "faulty.py" in error.traceback
    assert "raise ValueError(message)" in error.traceback
    assert host.execute_plugin("faulty", "pid") == worker_pid


# -- identity and descriptors ------------------------------------------------

UNPRIVILEGED_SCRIPT = """
    import json
    import os
    import shutil
    import sys
    import tempfile

    from sandbox import PluginHost

    plugin_dir, secret = sys.argv[1:]
    scratch_root = tempfile.mkdtemp(prefix="sandbox-test-scratch-")
    try:
        with PluginHost([plugin_dir], scratch_root=scratch_root) as host:
            report = {
                "host_uid": os.getuid(),
                "status": host.worker_status("faulty"),
                "secret": host.execute_plugin(
                    "faulty", "read", {"path": secret}
                ),
            }
    finally:
        shutil.rmtree(scratch_root, ignore_errors=True)
    print(json.dumps(report))
"""


@needs_root
@pytest.mark.skipif(shutil.which("runuser") is None, reason="needs runuser")
def test_unprivileged_host(
    faulty: Path, plugin_root: Path, shared_folder: Path
) -> None:
    secret = plugin_root / "secret.txt"
    secret.write_text("root only\n")
    os.chmod(secret, 0o600)
    completed = run_script_as_nobody(
        shared_folder,
        "unprivileged_host.py",
        UNPRIVILEGED_SCRIPT,
        str(plugin_root),
        str(secret),
    )

    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert report["host_uid"] == 65534
    assert report["status"]["uid"] == [report["host_uid"]] * 3
    assert report["status"]["no_new_privs"] == 1
    assert report["status"]["seccomp"] == 2
    assert report["secret"] == "PermissionError"


@needs_root
def test_worker_keeps_only_its_descriptors(
    make_host: HostFactory, faulty: Path
) -> None:
    inherited = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(inherited, True)
    try:
        host = make_host()
        pid = host.execute_plugin("faulty", "pid")
        descriptors = worker_descriptors(pid)
        maps = Path(f"/proc/{pid}/maps").read_text()
        channel_target = (
            os.readlink(f"/proc/{pid}/fd/3") if 3 in descriptors else ""
        )
    finally:
        os.close(inherited)

    if host.transport == "shm":
        # The worker closes the memfd once it has mapped the rings.
        assert descriptors == [0, 1, 2]
        assert "/memfd:sandbox-channel" in maps
    else:
        assert descriptors == [0, 1, 2, 3]
        assert channel_target.startswith("socket:")


def test_printing_plugin_stays_under_file_limit(
    write_plugin: PluginWriter, make_host: HostFactory
) -> None:
    write_plugin(
        "chatty",
        """
        import sys

        def talk(size):
            sys.stdout.write("x" * size)
            sys.stdout.flush()
            return size
        """,
        ["talk"],
    )
    host = make_host(
        {"plugins": {"chatty": {"resources": {"file_size_mb": 2}}}}
    )
    # 12 MiB of output in all, six times the worker's file size limit.
    for _ in range(192):
        assert host.execute_plugin("chatty", "talk", {"size": 64 * 1024}) > 0


def test_broken_manifest_spares_other_plugins(
    write_plugin: PluginWriter, make_host: HostFactory, plugin_root: Path
) -> None:
    write_plugin("healthy", "def ping():\n    return 'pong'\n", ["ping"])
    broken = write_plugin("broken", "def ping():\n    return 1\n", ["ping"])
    (broken / "plugin.toml").write_text('name = "broken"\nentry = 5\n')
    host = make_host()
    assert host.execute_plugin("healthy", "ping") == "pong"
    with pytest.raises(PolicyError) as caught:
        host.execute_plugin("broken", "ping")
    assert "plugin.toml" in str(caught.value)
    assert caught.value.key is not None


def test_failed_start_kills_spawned_worker(
    bystander: Path,
    plugin_root: Path,
    shared_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sandbox.process import WorkerProcess

    def fail_after_spawn(self: WorkerProcess, pid: int) -> None:
        spawned.append(pid)
        raise RuntimeError("step after the spawn failed")

    spawned: list[int] = []
    monkeypatch.setattr(WorkerProcess, "_watch_for_kill", fail_after_spawn)
    scratch_root = shared_folder / "scratch"
    children_before = set(live_children())
    with PluginHost([plugin_root], scratch_root=str(scratch_root)) as host:
        with pytest.raises(RuntimeError, match="after the spawn"):
            host.execute_plugin("bystander", "pid")
        assert len(spawned) == 1
        assert not psutil.pid_exists(spawned[0])
        assert set(live_children()) == children_before
        assert os.listdir(scratch_root) == []
