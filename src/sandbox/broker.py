"""The capability broker: the host's side of every capability call.

A plugin requests a capability over its channel, and CapabilityBroker
decides and carries it out. A call succeeds only if the plugin's
plugin.toml lists the capability, its policy grants it, a handler is
registered and the arguments match the handler's schema. Every request
becomes one audit event: ``capability_granted``, ``capability_denied``,
or ``capability_failed`` when the handler raised anything but
CapabilityDenied. Text that the plugin sent reaches an event only with
the plugin's secrets replaced, then with unprintable characters escaped
and its length bounded.

Built-in capabilities, each denied unless the policy grants it:

- ``read_env(name)``: a host environment variable named in ``env``.
- ``get_secret(name)``: a secret that the host gave the plugin with
  provide_secret() and that the policy names in ``secrets``.
- ``read_file(path)``, ``write_file(path, data)``, ``list_files(path)``:
  files beneath the folders of the policy's ``files`` table, opened by
  the host with openat2(2) so that no symlink, ``..``, magic link or
  mount point leads out of the folder. On a root host, each open runs
  with the file-system identity of the plugin's workers, so file
  permissions apply as they would to the plugin. PluginFiles, in
  sandbox.fileaccess, serves these three.

PluginHost registers ``notify`` itself, because it keeps the
notifications.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from .audit import AuditLog, printable_text
from .errors import CapabilityDenied, SandboxError
from .fileaccess import PluginFiles
from .manifest import PluginManifest
from .policy import _CAPABILITY_NAME, _PLUGIN_NAME, _SECRET_NAME, Policy

if TYPE_CHECKING:
    from .launcher import Identity

__all__ = [
    "Argument",
    "CapabilityBroker",
    "CapabilityHandler",
    "Schema",
    "check_arguments",
    "redact_secrets",
]

logger = logging.getLogger("sandbox.broker")

CapabilityHandler = Callable[[str, dict[str, Any]], Any]
Redactor = Callable[[str], str]
IdentityLookup = Callable[[str], "Identity | None"]

REDACTED = "[redacted]"
# A secret must fit in one reply with room to spare.
MAX_SECRET_CHARS = 65536
# Room for the JSON-RPC envelope around a file's bytes in one message,
# so that a reply of at most max_message_bytes - this always fits.
MESSAGE_ENVELOPE_BYTES = 256
MAX_PATH_CHARS = 4096
# Bounds of the plugin text in an audit event: a reason, and any other
# field (a path, a name).
MAX_REASON_CHARS = 1000
MAX_FIELD_CHARS = 512
_MAX_SHOWN_CHARS = 80


@dataclass(frozen=True)
class Argument:
    """One argument of a capability: its types, and whether it is needed.

    ``types`` are matched exactly, so ``int`` does not accept True, and
    ``type(None)`` accepts None. ``max_length`` bounds the len() of a
    str, bytes or list value.
    """

    types: type | tuple[type, ...]
    required: bool = True
    max_length: int | None = None

    def __post_init__(self) -> None:
        types = self.types if isinstance(self.types, tuple) else (self.types,)
        if not types or not all(isinstance(t, type) for t in types):
            raise TypeError(
                f"Argument types must be a type or a tuple of types, got "
                f"{self.types!r}"
            )
        if self.max_length is not None and self.max_length < 0:
            raise ValueError(
                f"max_length must be at least 0, got {self.max_length}"
            )

    def accepts_type(self, value: object) -> bool:
        types = self.types if isinstance(self.types, tuple) else (self.types,)
        return type(value) in types

    def type_names(self) -> str:
        types = self.types if isinstance(self.types, tuple) else (self.types,)
        return " or ".join(t.__name__ for t in types)


Schema = Mapping[str, Argument]


def check_arguments(
    capability: str,
    schema: Schema,
    params: object,
    *,
    redact: Redactor | None = None,
) -> None:
    """Raise CapabilityDenied unless ``params`` matches ``schema``.

    Every required argument must be present, no argument outside the
    schema may be, and each value must have one of its types and at most
    its maximum length. ``redact`` replaces secrets in an argument name
    that the message shows, before the name is escaped and shortened.
    """
    if not isinstance(params, dict):
        raise CapabilityDenied(
            f"capability {capability!r} needs its arguments as an object"
        )
    for name in params:
        if name not in schema:
            expected = ", ".join(schema) or "none"
            raise CapabilityDenied(
                f"capability {capability!r} takes no argument "
                f"{_shown(name, redact)}; its arguments are: {expected}"
            )
    for name, argument in schema.items():
        if name in params:
            _check_value(capability, name, argument, params[name])
        elif argument.required:
            raise CapabilityDenied(
                f"capability {capability!r} needs argument {name!r}"
            )


def _check_value(
    capability: str, name: str, argument: Argument, value: object
) -> None:
    if not argument.accepts_type(value):
        raise CapabilityDenied(
            f"argument {name!r} of capability {capability!r} must be "
            f"{argument.type_names()}, got {type(value).__name__}"
        )
    limit = argument.max_length
    if (
        limit is not None
        and isinstance(value, (str, bytes, list))
        and len(value) > limit
    ):
        raise CapabilityDenied(
            f"argument {name!r} of capability {capability!r} is "
            f"{len(value)} long; the maximum is {limit}"
        )


def redact_secrets(text: str, secrets: Iterable[str]) -> str:
    """Replace each occurrence of a secret value in ``text``.

    Longer values go first, so that a secret that contains another is
    replaced whole.
    """
    for value in sorted(secrets, key=len, reverse=True):
        if value:
            text = text.replace(value, REDACTED)
    return text


def secret_forms(secret: str) -> set[str]:
    """Return ``secret`` raw and as repr() and JSON write it in a string.

    A handler's error text may contain a secret escaped, such as the
    repr() that str(KeyError(secret)) returns, where the raw value no
    longer matches.
    """
    return {
        secret,
        repr(secret)[1:-1],
        # Inside single quotes, as repr() writes a str with both quotes.
        repr(secret + "'\"")[1:-4],
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
    }


def _shown(value: object, redact: Redactor | None = None) -> str:
    """Describe a value from a plugin for a message, shortened.

    Secrets are replaced before repr() escapes the value and before the
    cut, because either change could leave a secret that no longer
    matches its value, or its first characters, in the message.
    """
    if redact is not None and isinstance(value, str):
        value = redact(value)
    text = repr(value)
    if len(text) > _MAX_SHOWN_CHARS:
        return text[: _MAX_SHOWN_CHARS - 3] + "..."
    return text


@dataclass(frozen=True)
class _Capability:
    handler: CapabilityHandler
    schema: Schema | None
    # Argument name -> audit event field for the arguments worth
    # recording. Values are recorded only once they passed the schema.
    audited: Mapping[str, str] = field(default_factory=dict)


class CapabilityBroker:
    """Decides, runs and audits the capability calls of every plugin.

    ``manifest_of`` and ``policy_of`` return a plugin's manifest and
    merged policy. ``identity_of`` returns the identity of the plugin's
    workers, which a root host takes on to open files for the plugin.
    Without it, or where it returns None, files are opened with the
    host's own identity. Calling the broker serves one request.
    """

    def __init__(
        self,
        audit: AuditLog,
        *,
        manifest_of: Callable[[str], PluginManifest],
        policy_of: Callable[[str], Policy],
        identity_of: IdentityLookup | None = None,
    ) -> None:
        self._audit = audit
        self._manifest_of = manifest_of
        self._policy_of = policy_of
        self._identity_of = identity_of
        self._capabilities: dict[str, _Capability] = {}
        # Plugin -> secret name -> value. provide_secret() may run on any
        # thread while calls read it.
        self._secrets: dict[str, dict[str, str]] = {}
        self._secrets_lock = threading.Lock()
        self._register_builtins()

    def register(
        self,
        name: str,
        handler: CapabilityHandler,
        *,
        schema: Schema | None = None,
        audited: Mapping[str, str] | None = None,
    ) -> None:
        """Serve capability ``name`` with ``handler(plugin, params)``.

        With a ``schema``, the handler runs only for arguments that match
        it. Without one, it gets the params object unchecked. ``audited``
        maps argument names to the audit event fields that record them.
        """
        if _CAPABILITY_NAME.pattern.fullmatch(name) is None:
            raise ValueError(
                f"invalid capability name {name!r}: expected "
                f"{_CAPABILITY_NAME.description}"
            )
        if schema is not None:
            _check_schema(schema)
        _check_audited(audited or {}, schema)
        self._capabilities[name] = _Capability(
            handler, schema, dict(audited or {})
        )

    def capability_names(self) -> frozenset[str]:
        """Return the names of the capabilities registered so far."""
        return frozenset(self._capabilities)

    def __call__(
        self, plugin: str, capability: str, params: dict[str, Any]
    ) -> Any:
        """Serve one request and return its result.

        Raises CapabilityDenied to reject the request. When the handler
        fails in another way, raises SandboxError with a message that
        names only the capability, and the audit event contains the
        details.
        """
        fields: dict[str, Any] = {}
        recorded_name = self._recorded_name(plugin, capability)
        try:
            entry = self._granted_capability(plugin, capability)
            if entry.schema is not None:
                redact = self._redactor(plugin)
                check_arguments(
                    capability, entry.schema, params, redact=redact
                )
                fields = self._audited_fields(plugin, entry, params)
            result = entry.handler(plugin, params)
        except CapabilityDenied as error:
            reason = self._event_text(plugin, str(error), MAX_REASON_CHARS)
            self._audit.emit(
                "capability_denied",
                plugin,
                capability=recorded_name,
                reason=reason,
                **fields,
            )
            # The plugin gets the text of the event, which a reply can
            # always carry: it has no lone surrogate left.
            raise CapabilityDenied(reason) from None
        except Exception as error:
            raise self._failure(plugin, recorded_name, error, fields) from None
        self._audit.emit(
            "capability_granted", plugin, capability=recorded_name, **fields
        )
        return result

    def _failure(
        self,
        plugin: str,
        recorded_name: str,
        error: Exception,
        fields: dict[str, Any],
    ) -> SandboxError:
        """Record a handler's failure and return the error for the plugin.

        The handler's text can contain any of the host's data, so the
        plugin gets a message that names only the capability.
        """
        text = f"{type(error).__name__}: {error}"
        reason = self._event_text(plugin, text, MAX_REASON_CHARS)
        self._audit.emit(
            "capability_failed",
            plugin,
            capability=recorded_name,
            reason=reason,
            **fields,
        )
        logger.error(
            "capability %s of plugin %s failed in the host: %s",
            recorded_name,
            plugin,
            reason,
        )
        return SandboxError(f"capability {recorded_name} failed in the host")

    def _recorded_name(self, plugin: str, capability: str) -> str:
        """Return the capability name as audit events record it.

        A plugin can send any text as the name, a secret included, so
        only a name that fits the capability name rule is recorded.
        """
        if _CAPABILITY_NAME.pattern.fullmatch(capability) is None:
            return f"<invalid name, {len(capability)} characters>"
        return self._event_text(plugin, capability, MAX_FIELD_CHARS)

    def _event_text(self, plugin: str, text: str, limit: int) -> str:
        """Prepare text with plugin values for an audit event field."""
        return printable_text(self._redact_escaped(plugin, text), limit)

    # -- secrets -------------------------------------------------------------

    def provide_secret(self, plugin: str, name: str, value: str) -> None:
        """Hold secret ``name`` for ``plugin``, replacing an earlier value.

        The plugin fetches it with get_secret() if its policy lists
        ``name`` in ``secrets``. The value never enters audit events, and
        is replaced by "[redacted]" in the worker's output and errors
        that the host shows.
        """
        _check_name(_PLUGIN_NAME.pattern.fullmatch, "plugin", plugin)
        _check_name(_SECRET_NAME.pattern.fullmatch, "secret", name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"secret {name!r} must be a non-empty str")
        if len(value) > MAX_SECRET_CHARS:
            raise ValueError(
                f"secret {name!r} is longer than {MAX_SECRET_CHARS} characters"
            )
        if not _is_utf8(value):
            # No reply could carry it to the plugin.
            raise ValueError(
                f"secret {name!r} contains a lone surrogate, which is not "
                "valid UTF-8"
            )
        with self._secrets_lock:
            self._secrets.setdefault(plugin, {})[name] = value

    def secret_values(self, plugin: str) -> tuple[str, ...]:
        """Return the values of every secret provided to ``plugin``."""
        with self._secrets_lock:
            return tuple(self._secrets.get(plugin, {}).values())

    def redact(self, plugin: str, text: str) -> str:
        """Replace each secret value provided to ``plugin`` in ``text``."""
        return redact_secrets(text, self.secret_values(plugin))

    def secret_forms_of(self, plugin: str) -> set[str]:
        """Return each secret of ``plugin`` raw, repr()- and JSON-escaped.

        An exception's text, such as str(KeyError(secret)), shows a secret
        escaped, where the raw value no longer matches.
        """
        forms: set[str] = set()
        for secret in self.secret_values(plugin):
            forms |= secret_forms(secret)
        return forms

    def _redact_escaped(self, plugin: str, text: str) -> str:
        """Replace each secret of ``plugin``, raw or escaped, in ``text``."""
        return redact_secrets(text, self.secret_forms_of(plugin))

    def _redactor(self, plugin: str) -> Redactor:
        secrets = self.secret_values(plugin)
        return lambda text: redact_secrets(text, secrets)

    def _show(self, plugin: str) -> Callable[[str], str]:
        """Return a function that shows a plugin value in a message."""
        redact = self._redactor(plugin)
        return lambda value: _shown(value, redact)

    # -- checks --------------------------------------------------------------

    def _granted_capability(self, plugin: str, capability: str) -> _Capability:
        if _CAPABILITY_NAME.pattern.fullmatch(capability) is None:
            raise CapabilityDenied(
                f"invalid capability name of {len(capability)} characters: "
                f"expected {_CAPABILITY_NAME.description}"
            )
        manifest = self._manifest_of(plugin)
        policy = self._policy_of(plugin)
        listed = capability in manifest.capabilities
        if not (listed and capability in policy.capabilities):
            if listed:
                reason = "its policy does not grant it"
            else:
                reason = "its plugin.toml does not list it in capabilities"
            raise CapabilityDenied(
                f"capability {capability!r} is not available to plugin "
                f"{plugin!r}: {reason}"
            )
        entry = self._capabilities.get(capability)
        if entry is None:
            raise CapabilityDenied(
                f"capability {capability!r} has no handler in this host; "
                "register one with PluginHost.register_capability"
            )
        return entry

    def _audited_fields(
        self, plugin: str, entry: _Capability, params: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            event_field: self._event_text(
                plugin, str(params[argument]), MAX_FIELD_CHARS
            )
            for argument, event_field in entry.audited.items()
            if argument in params
        }

    # -- built-in capabilities -----------------------------------------------

    def _register_builtins(self) -> None:
        name = {"name": Argument(str, max_length=128)}
        path = {"path": Argument(str, max_length=MAX_PATH_CHARS)}
        self.register(
            "read_env", self._read_env, schema=name, audited={"name": "name"}
        )
        self.register(
            "get_secret",
            self._get_secret,
            schema=name,
            audited={"name": "secret"},
        )
        self.register(
            "read_file", self._read_file, schema=path, audited={"path": "path"}
        )
        self.register(
            "write_file",
            self._write_file,
            schema={**path, "data": Argument(bytes)},
            audited={"path": "path"},
        )
        self.register(
            "list_files",
            self._list_files,
            schema=path,
            audited={"path": "path"},
        )

    def _read_env(self, plugin: str, params: dict[str, Any]) -> str | None:
        name = params["name"]
        if name not in self._policy_of(plugin).env:
            raise CapabilityDenied(
                f"variable {self._show(plugin)(name)} is not in the env "
                f"allowlist of plugin {plugin!r}"
            )
        # The policy's names are ASCII. os.environ would decode a value
        # that is not UTF-8 to lone surrogates, which no reply can carry.
        value = os.environb.get(name.encode("ascii"))
        if value is None:
            return None
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise CapabilityDenied(
                f"variable {name} is not valid UTF-8"
            ) from None

    def _get_secret(self, plugin: str, params: dict[str, Any]) -> str:
        name = params["name"]
        if name not in self._policy_of(plugin).secrets:
            raise CapabilityDenied(
                f"secret {self._show(plugin)(name)} is not in the secrets "
                f"list of the policy of plugin {plugin!r}"
            )
        with self._secrets_lock:
            value = self._secrets.get(plugin, {}).get(name)
        if value is None:
            raise CapabilityDenied(
                f"the host has not provided secret {name!r} to plugin "
                f"{plugin!r}; call PluginHost.provide_secret first"
            )
        return value

    def _read_file(self, plugin: str, params: dict[str, Any]) -> bytes:
        return self._plugin_files(plugin).read_file(params["path"])

    def _write_file(self, plugin: str, params: dict[str, Any]) -> int:
        files = self._plugin_files(plugin)
        return files.write_file(params["path"], params["data"])

    def _list_files(self, plugin: str, params: dict[str, Any]) -> list[str]:
        return self._plugin_files(plugin).list_files(params["path"])

    def _plugin_files(self, plugin: str) -> PluginFiles:
        """Return the file access that the policy of ``plugin`` grants."""
        policy = self._policy_of(plugin)
        identity_of = None
        if self._identity_of is not None:
            identity_of = partial(self._identity_of, plugin)
        return PluginFiles(
            policy.files,
            max_bytes=_file_limit(policy),
            show=self._show(plugin),
            identity_of=identity_of,
        )


def _check_schema(schema: Schema) -> None:
    for name, argument in schema.items():
        if not isinstance(name, str) or not isinstance(argument, Argument):
            raise TypeError(
                "a schema maps argument names to Argument objects, got "
                f"{name!r}: {argument!r}"
            )


# Fields that every capability event already has.
_EVENT_FIELDS = frozenset({"event", "plugin", "time", "capability", "reason"})


def _check_audited(audited: Mapping[str, str], schema: Schema | None) -> None:
    """Check that audited arguments are in the schema, which bounds them."""
    for argument, event_field in audited.items():
        if schema is None or argument not in schema:
            raise ValueError(
                f"audited argument {argument!r} is not in the schema"
            )
        if event_field in _EVENT_FIELDS:
            raise ValueError(
                f"audit event field {event_field!r} is reserved; choose "
                "another name"
            )


def _check_name(
    matches: Callable[[str], object], kind: str, name: object
) -> None:
    if not isinstance(name, str) or not matches(name):
        raise ValueError(f"invalid {kind} name {name!r}")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _file_limit(policy: Policy) -> int:
    return policy.max_message_bytes - MESSAGE_ENVELOPE_BYTES
