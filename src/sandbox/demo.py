"""``sandbox demo``: run the example plugins and explain each outcome.

run_demo() creates the folders that examples/policies.toml names, starts
a loopback HTTP server for the uploader plugin and one PluginHost, then
runs one step per example plugin. Each step prints what the plugin
tried, the audit events that followed and the result. It returns True
when the plugin behaved as expected: each call meant to work returned
its result, and each attack failed with the error of the mechanism
meant to stop it.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import secrets
import socketserver
import stat
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from .broker import REDACTED
from .cli import (
    EXIT_FAILED,
    EXIT_OK,
    WIDTH,
    _escape,
    _load_policies,
    _print_field,
    _print_wrapped,
)
from .errors import PluginError, SandboxError
from .host import PluginHost
from .launcher import Identity
from .runtime import plan_host_uids, resolve_identity
from .uids import DEFAULT_PLUGIN_UIDS

__all__ = [
    "MECHANISM_ERRORS",
    "judge_attempt",
    "prepare_files_folders",
    "prepare_notification_folder",
    "run_demo",
]

NOTIFICATION_FOLDER = "/tmp/notifications"

# The uploader plugin's folders and port, as examples/policies.toml lists
# them: the host reads INPUT_FOLDER and writes REPORT_FOLDER for the
# plugin, and the plugin may connect to UPLOAD_PORT only.
FILES_FOLDER = "/tmp/sandbox-demo-files"
INPUT_FOLDER = "input"
REPORT_FOLDER = "reports"
INPUT_FILE = "measurements.csv"
INPUT_TEXT = "station,celsius\nharbour,11.5\nairport,9.0\nhill,6.25\n"
REPORT_FILE = "summary.txt"
UPLOADER = "uploader"
TOKEN_NAME = "UPLOAD_TOKEN"
LOOPBACK = "127.0.0.1"
UPLOAD_PORT = 47123
UNLISTED_PORT = 47124
# The report is a few lines long, and the cap bounds what the server
# reads.
MAX_UPLOAD_BYTES = 1 << 16

CAPABILITY_BROKER = "capability broker"
SOCKET_FAMILIES = "seccomp (socket families)"
LANDLOCK_TCP_PORTS = "Landlock (TCP port allowlist)"

# The error each mechanism gives, to check the plugin's claim of what
# stopped an attack against what actually happened.
MECHANISM_ERRORS = {
    "file permissions + Landlock": "EACCES",
    "Landlock (filesystem allowlist)": "EACCES",
    LANDLOCK_TCP_PORTS: "EACCES",
    SOCKET_FAMILIES: "EPERM",
    "seccomp (ptrace denied)": "EPERM",
    "seccomp (namespaces denied)": "EPERM",
    "uid drop + no capabilities": "EPERM",
    "uid drop + Landlock signal scope": "EPERM",
    "setsid (no controlling terminal)": "ENXIO",
    CAPABILITY_BROKER: "CapabilityDenied",
    "RLIMIT_AS": "MemoryError",
    "RLIMIT_NPROC": "EAGAIN",
}


def run_demo(
    plugin_dirs: list[str],
    policy_path: str | None,
    *,
    upload_token: str | None = None,
) -> int:
    """Run the example plugins and print what each one did.

    ``policy_path`` None means examples/policies.toml if it exists.
    ``upload_token`` is the secret that the uploader plugin fetches, a
    random one by default. Returns EXIT_OK when every step behaved as
    expected, else EXIT_FAILED.
    """
    token = secrets.token_hex(16) if upload_token is None else upload_token
    # Created before the policy loads, because the policy names these
    # folders and a policy path must exist.
    notes = [prepare_notification_folder(), prepare_files_folders()]
    policies = _load_policies(policy_path)
    events: Counter[str] = Counter()
    _print_wrapped(
        "sandbox demo: each plugin runs in its own worker process under "
        f"its policy from {policies.source}."
    )
    for note in notes:
        _print_wrapped(note)
    with (
        _serve_uploads(UPLOAD_PORT, token) as server,
        PluginHost(plugin_dirs, policies, max_workers=5) as host,
    ):
        host.provide_secret(UPLOADER, TOKEN_NAME, token)
        host.subscribe(lambda event: _show_audit_event(event, events))
        outcomes = [
            _demo_notification(host),
            _demo_env_protection(host),
            _demo_markdown(host),
            _demo_hostile(host),
            _demo_uploader(host, server, token),
        ]
    print()
    summary = ", ".join(f"{count} {name}" for name, count in events.items())
    _print_wrapped(f"audit events: {summary or 'none'}")
    return EXIT_OK if all(outcomes) else EXIT_FAILED


# -- audit events -------------------------------------------------------------

# Fields the demo shows of each audit event, when present.
AUDIT_FIELDS = (
    "pid",
    "uid",
    "capability",
    "secret",
    "path",
    "layer",
    "limit",
    "syscall_name",
    "syscall",
    "reported_by",
    "seconds",
    "reason",
)


def _show_audit_event(event: Mapping[str, Any], counts: Counter[str]) -> None:
    """Print one audit event on one line and count it by name."""
    name = str(event.get("event"))
    counts.update([name])
    shown = [f"{name} {event.get('plugin')}"]
    report = event.get("enforcement")
    if isinstance(report, dict):
        gaps = [
            layer
            for layer, entry in report.get("layers", {}).items()
            if entry.get("status") == "not_enforced"
        ]
        shown.append(f"gaps={','.join(gaps) or 'none'}")
    for key in AUDIT_FIELDS:
        if event.get(key) is not None:
            # /proc shows four uids; the first, the real uid, is enough.
            value = str(event[key]).split("\t", 1)[0]
            shown.append(f"{key}={value}")
    line = _escape(" ".join(shown), limit=WIDTH - len("  audit: "))
    print(f"  audit: {line}")


# -- the first four plugins ---------------------------------------------------


def prepare_notification_folder() -> str:
    """Create the notification plugin's folder if missing; return a note.

    The folder gets mode 0755 and, on a root host, the uid and gid that a
    PluginHost with the default plugin_uids gives the plugin named
    notification, so that its worker can write there and other users
    cannot. A sticky world-writable folder would let any local user
    create the log file first and read what the plugin appends to it.
    """
    identity = plugin_identity("notification")
    try:
        os.mkdir(NOTIFICATION_FOLDER, 0o755)
    except FileExistsError:
        folder_uid = os.lstat(NOTIFICATION_FOLDER).st_uid
        if identity is not None and folder_uid != identity.uid:
            return (
                f"{NOTIFICATION_FOLDER} exists and is left as it is, but "
                f"its owner is uid {folder_uid}, not the plugin's uid "
                f"{identity.uid}, so the plugin cannot write there. Remove "
                "it to let the demo create it again."
            )
        return f"{NOTIFICATION_FOLDER} exists and is left as it is."
    # O_NOFOLLOW, so that a symlink put in its place is never followed.
    fd = os.open(
        NOTIFICATION_FOLDER, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    )
    try:
        os.fchmod(fd, 0o755)
        if identity is not None:
            os.fchown(fd, identity.uid, identity.gid)
    finally:
        os.close(fd)
    owner = f"uid {identity.uid}" if identity else "this user"
    return f"Created {NOTIFICATION_FOLDER} (mode 0755, owned by {owner})."


def _demo_notification(host: PluginHost) -> bool:
    _print_plugin_header(host, "notification")
    params = {"message": "Build completed", "level": "info"}
    _print_field("tried", _show_call("send_alert", params))
    result, error = _call(host, "notification", "send_alert", params)
    if error is not None:
        _print_field("result", error)
        return False
    logged = result.get("logged_to") if isinstance(result, dict) else None
    _print_field("result", f"delivered; logged to {_escape(logged)}")
    for notification in host.notifications:
        _print_field(
            "host",
            f"received [{_escape(notification.level)}] "
            f"{_escape(notification.message)}",
        )
    return True


def _demo_env_protection(host: PluginHost) -> bool:
    plugin = "env-protection"
    _print_plugin_header(host, plugin)
    _print_field("tried", _show_call("visible_environment", {}))
    result, error = _call(host, plugin, "visible_environment", {})
    if error is not None:
        _print_field("result", error)
        return False
    names = sorted(result) if isinstance(result, dict) else []
    _print_field(
        "result",
        f"sees {_escape(', '.join(names)) or 'nothing'} ({len(names)} of "
        f"the host's {len(os.environ)} variables)",
    )
    succeeded = True
    for variable in ("HOME", "PATH"):
        params = {"name": variable}
        _print_field("tried", _show_call("read_variable", params))
        result, error = _call(host, plugin, "read_variable", params)
        succeeded &= error is None
        _print_field("result", error or _describe_read(result))
    return succeeded


def _describe_read(result: Any) -> str:
    if not isinstance(result, dict):
        return f"unexpected result {_escape(result)}"
    if result.get("denied"):
        return f"denied: {_escape(result['denied'])}"
    return f"allowed, value {_escape(repr(result.get('value')))}"


def _demo_markdown(host: PluginHost) -> bool:
    plugin = "markdown-render"
    _print_plugin_header(host, plugin)
    params = {"text": "# Sandboxed\n\nRendered *inside* a worker."}
    _print_field("tried", _show_call("to_html", params))
    result, error = _call(host, plugin, "to_html", params)
    if error is not None:
        _print_field("result", error)
        return False
    html = result.get("html") if isinstance(result, dict) else result
    version = (
        result.get("markdown_version") if isinstance(result, dict) else ""
    )
    _print_field("result", f"{_escape(html)} (Markdown {_escape(version)})")
    return True


def _demo_hostile(host: PluginHost) -> bool:
    plugin = "hostile"
    _print_plugin_header(host, plugin)
    _print_field("tried", "attempt_all(): every attack of its threat list")
    attempts, error = _call(host, plugin, "attempt_all", {})
    if error is not None:
        _print_field("result", error)
        return False
    if not isinstance(attempts, list):
        _print_field("result", f"unexpected result {_escape(attempts)}")
        return False
    confirmed = 0
    for attempt in attempts:
        verdict, claim_confirmed = judge_attempt(attempt)
        confirmed += claim_confirmed
        threat = attempt.get("threat") if isinstance(attempt, dict) else None
        _print_wrapped(
            f"{_escape(threat, limit=60)}: {verdict}", indent=2, hanging=2
        )
    _print_field(
        "result",
        f"{confirmed} of {len(attempts)} attacks stopped, each by the "
        "mechanism it names",
    )
    return confirmed == len(attempts)


def judge_attempt(attempt: object) -> tuple[str, bool]:
    """Check one hostile attempt and return (verdict, claim confirmed).

    The claim is confirmed when the attempt failed with the error that
    the mechanism it names produces. Anything else fails, a malformed
    attempt included.
    """
    if not isinstance(attempt, dict):
        return f"NOT STOPPED? unexpected entry {_escape(attempt)}", False
    if attempt.get("succeeded") is not False:
        detail = _escape(attempt.get("detail"), limit=200)
        return f"NOT STOPPED: the attack succeeded ({detail})", False
    observed = str(attempt.get("error")).split(":", 1)[0]
    claimed = str(attempt.get("stopped_by"))
    expected = MECHANISM_ERRORS.get(claimed)
    if expected is None:
        return (
            f"stopped ({_escape(observed)}), but by no known mechanism: "
            f"{_escape(claimed)}",
            False,
        )
    if observed != expected:
        return (
            f"stopped ({_escape(observed)}), but {claimed} would give "
            f"{expected}: the claim is not confirmed",
            False,
        )
    return f"stopped ({observed}) by {claimed}", True


# -- the uploader plugin ------------------------------------------------------


def plugin_identity(plugin: str) -> Identity | None:
    """Return the identity the demo's host gives ``plugin``'s workers.

    The uid registry (sandbox.uids) contains it, so asking first records the
    same uid the host reads when it starts. None: a host that is not root
    runs workers as itself.
    """
    uids = plan_host_uids({plugin: None}, DEFAULT_PLUGIN_UIDS, registry=None)
    return resolve_identity(
        None,
        as_root=os.geteuid() == 0,
        plugin_uid=uids.plugin_uids.get(plugin),
    )


def prepare_files_folders(base: str = FILES_FOLDER) -> str:
    """Create the uploader's folders and input file, and return a note.

    Creates ``base`` with the folders INPUT_FOLDER and REPORT_FOLDER in
    it, writes INPUT_FILE into the first and removes an earlier report
    from the second. The host opens files there with the plugin's uid,
    so the report folder belongs to that uid (on a root host) and the
    others to this user. Each is writable by its owner only, because
    another user's folder could change what the host reads or where it
    writes. Raises
    FileExistsError when a folder fails that check.
    """
    input_folder = os.path.join(base, INPUT_FOLDER)
    report_folder = os.path.join(base, REPORT_FOLDER)
    created = [
        folder
        for folder in (base, input_folder)
        if _make_private_folder(folder, None)
    ]
    if _make_private_folder(report_folder, plugin_identity("uploader")):
        created.append(report_folder)
    _write_input_file(input_folder)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(report_folder, REPORT_FILE))
    written = os.path.join(INPUT_FOLDER, INPUT_FILE)
    if not created:
        return f"{base} exists. Wrote {written} for the uploader plugin."
    return (
        f"Created {', '.join(created)}. Wrote {written} for the uploader "
        "plugin."
    )


def _make_private_folder(path: str, identity: Identity | None) -> bool:
    """Create folder ``path`` unless it exists, and return whether it did.

    The folder belongs to ``identity``, or to this user when None. Raises
    FileExistsError unless the path is a folder, not a symbolic link,
    that its owner alone can write.
    """
    try:
        os.mkdir(path, 0o755)
        created = True
    except FileExistsError:
        created = False
    if created and identity is not None:
        os.chown(path, identity.uid, identity.gid, follow_symlinks=False)
    info = os.lstat(path)
    owner = os.geteuid() if identity is None else identity.uid
    writable_by_others = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if (
        not stat.S_ISDIR(info.st_mode)
        or info.st_uid != owner
        or writable_by_others
    ):
        raise FileExistsError(
            f"{path} exists but is not a folder that only uid {owner} "
            "owns and can write; remove it to let the demo create it again"
        )
    return created


def _write_input_file(folder: str) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    fd = os.open(os.path.join(folder, INPUT_FILE), flags, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(INPUT_TEXT)


@dataclass(frozen=True)
class Upload:
    """One PUT request that the upload server received."""

    path: str
    size: int
    authorized: bool


class UploadServer(socketserver.TCPServer):
    """A loopback HTTP server that takes PUT requests with one token.

    A request is authorized when its Authorization header is
    ``Bearer TOKEN``. The server records each request in ``uploads``.
    """

    # The demo binds the same port on every run, and the previous run's
    # connections may still be in TIME_WAIT.
    allow_reuse_address = True

    def __init__(self, port: int, token: str) -> None:
        self.expected_authorization = f"Bearer {token}".encode()
        self.uploads: list[Upload] = []
        super().__init__((LOOPBACK, port), _UploadHandler)


class _UploadHandler(BaseHTTPRequestHandler):
    server: UploadServer
    # Seconds a client may stay silent before the server drops it, so
    # that a stalled connection cannot hang the demo.
    timeout = 5

    def do_PUT(self) -> None:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_UPLOAD_BYTES:
            self._reply(400, "invalid Content-Length\n")
            return
        body = self.rfile.read(length)
        header = self.headers.get("Authorization", "")
        authorized = hmac.compare_digest(
            header.encode("latin-1", "replace"),
            self.server.expected_authorization,
        )
        self.server.uploads.append(Upload(self.path, len(body), authorized))
        if authorized:
            self._reply(201, f"stored {len(body)} bytes\n")
        else:
            self._reply(401, "wrong token\n")

    def _reply(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the request log off the demo's output."""


@contextlib.contextmanager
def _serve_uploads(port: int, token: str) -> Iterator[UploadServer | None]:
    """Run an UploadServer in a thread; yield None if it cannot listen."""
    try:
        server = UploadServer(port, token)
    except OSError as error:
        _print_wrapped(
            f"The upload server cannot listen on {LOOPBACK}:{port} "
            f"({error.strerror}), so the uploader's upload will fail."
        )
        yield None
        return
    thread = threading.Thread(
        target=server.serve_forever, name="sandbox-demo-uploads", daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def _demo_uploader(
    host: PluginHost, server: UploadServer | None, token: str
) -> bool:
    _print_plugin_header(host, UPLOADER)
    outcomes = [
        _uploader_writes_report(host),
        _uploader_reads_passwd(host),
        _uploader_uploads_report(host, server),
        _uploader_error_hides_token(host, token),
        _uploader_connects_unlisted_port(host),
        _uploader_sends_datagram(host),
    ]
    return all(outcomes)


def _uploader_writes_report(host: PluginHost) -> bool:
    source = os.path.join(FILES_FOLDER, INPUT_FOLDER)
    report = os.path.join(FILES_FOLDER, REPORT_FOLDER, REPORT_FILE)
    params = {"source": source, "report": report}
    _print_field("tried", _show_call("write_report", params))
    result, error = _call(host, UPLOADER, "write_report", params)
    if error is not None:
        _print_field("result", error)
        return False
    written = result.get("written") if isinstance(result, dict) else None
    try:
        on_disk = os.path.getsize(report)
    except OSError as os_error:
        _print_field("result", f"FAILED: {_escape(os_error)}")
        return False
    if written != on_disk:
        _print_field(
            "result",
            f"FAILED: the plugin reported {_escape(result)}, but the "
            f"report on disk has {on_disk} bytes",
        )
        return False
    _print_field(
        "result",
        f"the host listed and read {_escape(result.get('files'))} file(s) "
        f"({_escape(result.get('read_bytes'))} bytes) in {source} and "
        f"wrote the {on_disk}-byte report for the plugin",
    )
    return True


def _uploader_reads_passwd(host: PluginHost) -> bool:
    params = {"path": "/etc/passwd"}
    return _uploader_probe(host, "read_path", params, CAPABILITY_BROKER)


def _uploader_uploads_report(
    host: PluginHost, server: UploadServer | None
) -> bool:
    report = os.path.join(FILES_FOLDER, REPORT_FOLDER, REPORT_FILE)
    params = {"report": report, "port": UPLOAD_PORT}
    _print_field("tried", _show_call("upload", params))
    result, error = _call(host, UPLOADER, "upload", params)
    if error is not None:
        _print_field("result", error)
        return False
    status = result.get("status") if isinstance(result, dict) else None
    if server is None:
        _print_field(
            "result",
            f"FAILED: the plugin got HTTP {_escape(status)} from a server "
            "that is not the demo's",
        )
        return False
    authorized = [upload for upload in server.uploads if upload.authorized]
    if status != 201 or not authorized:
        _print_field(
            "result",
            f"FAILED: the plugin got HTTP {_escape(status)}, and the server "
            f"received {len(authorized)} upload(s) with the right token",
        )
        return False
    _print_field(
        "result",
        f"HTTP 201: the server on {LOOPBACK}:{UPLOAD_PORT} received "
        f"{authorized[-1].size} bytes with the right token",
    )
    return True


def _uploader_error_hides_token(host: PluginHost, token: str) -> bool:
    _print_field("tried", _show_call("fail_with_token", {}))
    try:
        host.execute_plugin(UPLOADER, "fail_with_token", {})
    except PluginError as error:
        return _check_redacted(error, token)
    except SandboxError as error:
        _print_field("result", f"FAILED: {_escape(error)}")
        return False
    _print_field("result", "FAILED: the call returned instead of raising")
    return False


def _check_redacted(error: PluginError, token: str) -> bool:
    """Print the plugin's error if the token is redacted in it."""
    if token in str(error) or token in error.traceback:
        # The error itself is not printed, since it shows the token.
        _print_field("result", "FAILED: the error shows the token")
        return False
    if REDACTED not in error.message:
        _print_field(
            "result",
            f"FAILED: the error does not show {REDACTED}: {_escape(error)}",
        )
        return False
    _print_field(
        "result",
        f"the host shows the token as {REDACTED}: {_escape(error)}",
    )
    return True


def _uploader_connects_unlisted_port(host: PluginHost) -> bool:
    params = {"port": UNLISTED_PORT}
    return _uploader_probe(host, "connect_port", params, LANDLOCK_TCP_PORTS)


def _uploader_sends_datagram(host: PluginHost) -> bool:
    params = {"port": UPLOAD_PORT}
    return _uploader_probe(host, "send_datagram", params, SOCKET_FAMILIES)


def _uploader_probe(
    host: PluginHost, method: str, params: dict[str, Any], mechanism: str
) -> bool:
    """Run a probe that the policy must deny, by ``mechanism``."""
    _print_field("tried", _show_call(method, params))
    attempt, error = _call(host, UPLOADER, method, params)
    if error is not None:
        _print_field("result", error)
        return False
    if isinstance(attempt, dict):
        attempt = {**attempt, "stopped_by": mechanism}
    verdict, confirmed = judge_attempt(attempt)
    _print_field("result", verdict)
    return confirmed


# -- shared helpers -----------------------------------------------------------


def _call(
    host: PluginHost, plugin: str, method: str, params: dict[str, Any]
) -> tuple[Any, str | None]:
    """Return (result, None), or (None, a failure line) on SandboxError."""
    try:
        return host.execute_plugin(plugin, method, params), None
    except SandboxError as error:
        return None, f"FAILED: {_escape(error)}"


def _print_plugin_header(host: PluginHost, plugin: str) -> None:
    print()
    manifest = host.plugins.get(plugin)
    description = manifest.description if manifest else "not found"
    _print_wrapped(f"{plugin}: {_escape(description)}")


def _show_call(method: str, params: Mapping[str, Any]) -> str:
    arguments = ", ".join(f"{k}={json.dumps(v)}" for k, v in params.items())
    return f"{method}({arguments})"
