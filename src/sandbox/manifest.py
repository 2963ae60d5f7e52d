"""Plugin manifests: the plugin.toml file in each plugin folder.

A plugin is a folder holding its code and a plugin.toml such as::

    name = "notification"
    version = "1.0.0"
    entry = "notification"
    methods = ["send_alert"]
    capabilities = ["notify"]
    python_path = ["vendor"]
    description = "Sends alerts to the desktop."

``entry`` is a module in the folder, ``methods`` the functions of that
module the host may call and ``python_path`` folders inside the plugin
folder that hold bundled dependencies. Every invalid value raises
PolicyError with the manifest file, the plugin and the key.
"""

from __future__ import annotations

import keyword
import logging
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .errors import PolicyError
from .policy import (
    _CAPABILITY_NAME,
    _PLUGIN_NAME,
    _check_table,
    _check_unique_list,
    _NameRule,
    _read_toml,
    _show,
    _Where,
)

__all__ = [
    "PluginManifest",
    "discover_plugins",
    "folder_list",
    "load_manifest",
    "plugin_folders_in",
]

logger = logging.getLogger("sandbox.manifest")

_MANIFEST_NAME = "plugin.toml"

_REQUIRED_KEYS = ("name", "version", "entry", "methods")
_OPTIONAL_KEYS = ("capabilities", "python_path", "description")
_MAX_VERSION_LENGTH = 64
_MODULE_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# A leading underscore is rejected so that no caller can reach private
# or special names such as __init__ or __class__ through a method call.
_METHOD_NAME = _NameRule(
    "method",
    re.compile(r"[A-Za-z][A-Za-z0-9_]{0,127}"),
    "a Python identifier of 1 to 128 ASCII characters that does not "
    "start with _ (private and special names cannot be called)",
)

# A plugin module named like a standard library module, or like this
# package, would be shadowed by the module that the worker has already
# imported.
_RESERVED_MODULES = frozenset(sys.stdlib_module_names) | {"sandbox"}


@dataclass(frozen=True)
class PluginManifest:
    """A validated plugin.toml, whose paths are absolute real paths."""

    name: str
    version: str
    entry: str
    methods: tuple[str, ...]
    capabilities: frozenset[str]
    python_path: tuple[str, ...]
    description: str
    folder: str

    def to_dict(self) -> dict[str, Any]:
        """Return the manifest as JSON-compatible types."""
        return {
            "name": self.name,
            "version": self.version,
            "entry": self.entry,
            "methods": list(self.methods),
            "capabilities": sorted(self.capabilities),
            "python_path": list(self.python_path),
            "description": self.description,
            "folder": self.folder,
        }


def load_manifest(folder: str | os.PathLike[str]) -> PluginManifest:
    """Read and validate the plugin.toml of one plugin folder."""
    real_folder = os.path.realpath(os.fspath(folder))
    source = os.path.join(real_folder, _MANIFEST_NAME)
    if not os.path.isdir(real_folder):
        raise PolicyError(
            "the plugin folder does not exist or is not a folder",
            source=real_folder,
        )
    return _parse_manifest(_read_toml(source), real_folder, _Where(source))


def discover_plugins(
    plugin_dirs: Iterable[str | os.PathLike[str]],
    *,
    errors: dict[str, PolicyError] | None = None,
) -> dict[str, PluginManifest]:
    """Load every immediate subfolder of ``plugin_dirs`` with a plugin.toml.

    Returns the manifests by plugin name, in the order of ``plugin_dirs``
    and then of subfolder names. Two folders with the same plugin name
    raise PolicyError, as does a plugin dir that is missing. With an
    ``errors`` dict, a folder whose manifest is invalid is left out and its
    error stored under the folder's name instead of raised, so that one
    broken plugin does not stop the others. Of two folders with the same
    plugin name, the one found first is then loaded and the other left
    out. Each folder left out gets one warning on the
    ``sandbox.manifest`` logger.
    """
    found: dict[str, PluginManifest] = {}
    for plugin_dir in folder_list(plugin_dirs):
        for folder in _plugin_folders(plugin_dir):
            try:
                _add_unique(found, load_manifest(folder))
            except PolicyError as error:
                if errors is None:
                    raise
                logger.warning("skipped plugin folder %s: %s", folder, error)
                errors[os.path.basename(folder)] = error
    return found


def folder_list(
    plugin_dirs: Iterable[str | os.PathLike[str]],
) -> list[str]:
    """Return ``plugin_dirs`` as a list of str paths.

    Raises TypeError for a single path, whose characters would otherwise
    be taken for folders.
    """
    if isinstance(plugin_dirs, (str, bytes, os.PathLike)):
        raise TypeError("plugin_dirs must be a list of folders, not one path")
    return [os.fspath(plugin_dir) for plugin_dir in plugin_dirs]


def plugin_folders_in(plugin_dirs: Iterable[str]) -> list[str]:
    """Return the entries of ``plugin_dirs`` that are plugin folders.

    Such an entry contains a plugin.toml itself, and its plugin is not
    found, because only the subfolders of a plugin dir are searched.
    """
    return [
        plugin_dir
        for plugin_dir in plugin_dirs
        if os.path.isfile(os.path.join(plugin_dir, _MANIFEST_NAME))
    ]


def _plugin_folders(plugin_dir: str) -> list[str]:
    if not os.path.isdir(plugin_dir):
        raise PolicyError(
            "the plugin folder does not exist or is not a folder; create "
            "it or remove it from the plugin folders",
            source=plugin_dir,
        )
    try:
        with os.scandir(plugin_dir) as entries:
            folders = sorted(entry.path for entry in entries if entry.is_dir())
    except OSError as err:
        raise PolicyError(
            f"failed to list the plugin folder: {err.strerror}",
            source=plugin_dir,
        ) from err
    return [
        folder
        for folder in folders
        if os.path.lexists(os.path.join(folder, _MANIFEST_NAME))
    ]


def _add_unique(
    found: dict[str, PluginManifest], manifest: PluginManifest
) -> None:
    earlier = found.get(manifest.name)
    if earlier is None:
        found[manifest.name] = manifest
        return
    # The same folder reached twice (a plugin dir listed twice, or a
    # symlink to a plugin folder) is one plugin, not a conflict.
    if earlier.folder == manifest.folder:
        return
    raise PolicyError(
        f"two plugin folders use the name {manifest.name!r}: "
        f"{earlier.folder}, found first, and {manifest.folder}; rename "
        "one of them",
        source=os.path.join(manifest.folder, _MANIFEST_NAME),
        plugin=manifest.name,
        key="name",
    )


def _parse_manifest(
    data: object, folder: str, where: _Where
) -> PluginManifest:
    table = _check_table(data, where, None)
    # The name comes first so that every later error can name the plugin.
    if "name" in table:
        name = _PLUGIN_NAME.check(table["name"], where.at("name"))
        where = _Where(where.source, plugin=name)
    _check_table(table, where, _REQUIRED_KEYS + _OPTIONAL_KEYS)
    for key in _REQUIRED_KEYS:
        if key not in table:
            raise where.at(key).error(
                f"missing required key {key!r}; add it to the manifest"
            )
    return PluginManifest(
        name=table["name"],
        version=_check_version(table["version"], where.at("version")),
        entry=_check_entry(table["entry"], where.at("entry"), folder),
        methods=_check_methods(table["methods"], where.at("methods")),
        capabilities=frozenset(
            _check_unique_list(
                table.get("capabilities", []),
                where.at("capabilities"),
                _CAPABILITY_NAME.check,
            )
        ),
        python_path=_check_python_path(
            table.get("python_path", []), where.at("python_path"), folder
        ),
        description=_check_description(
            table.get("description", ""), where.at("description")
        ),
        folder=folder,
    )


def _check_version(value: object, where: _Where) -> str:
    if (
        isinstance(value, str)
        and 0 < len(value) <= _MAX_VERSION_LENGTH
        and value.isprintable()
    ):
        return value
    raise where.error(
        f"expected a version string of 1 to {_MAX_VERSION_LENGTH} "
        f"printable characters, got {_show(value)}"
    )


def _check_description(value: object, where: _Where) -> str:
    if not isinstance(value, str):
        raise where.error(f"expected a string, got {_show(value)}")
    return value


def _check_entry(value: object, where: _Where, folder: str) -> str:
    """Check the entry module name and that its file is in the folder."""
    parts = value.split(".") if isinstance(value, str) else []
    if not parts or not all(_is_module_part(part) for part in parts):
        raise where.error(
            "expected a module name such as 'notification' or "
            f"'package.module', got {_show(value)}"
        )
    if parts[0] in _RESERVED_MODULES:
        raise where.error(
            f"module name {parts[0]!r} is also the name of a standard "
            "library module or of this package, so the import would "
            "return that module; rename the plugin module"
        )
    _check_inside(_module_file(parts, folder, where), folder, where)
    return ".".join(parts)


def _is_module_part(part: str) -> bool:
    return bool(_MODULE_PART.fullmatch(part)) and not keyword.iskeyword(part)


def _module_file(parts: list[str], folder: str, where: _Where) -> str:
    """Return the file that importing the module would run.

    A package wins over a module of the same name, as in the import
    system's path finder.
    """
    base = os.path.join(folder, *parts)
    for candidate in (os.path.join(base, "__init__.py"), base + ".py"):
        if os.path.isfile(candidate):
            return candidate
    relative = os.path.join(*parts)
    raise where.error(
        f"module {'.'.join(parts)!r} not found: expected {relative}.py or "
        f"{relative}/__init__.py in {folder}"
    )


def _check_methods(value: object, where: _Where) -> tuple[str, ...]:
    methods = _check_unique_list(value, where, _check_method)
    if not methods:
        raise where.error(
            "the list is empty; list the functions the host may call"
        )
    return methods


def _check_method(value: object, where: _Where) -> str:
    name = _METHOD_NAME.check(value, where)
    if keyword.iskeyword(name):
        raise where.error(f"method name {name!r} is a Python keyword")
    return name


def _check_python_path(
    value: object, where: _Where, folder: str
) -> tuple[str, ...]:
    def check_entry(entry: object, entry_where: _Where) -> str:
        return _resolve_python_path(entry, entry_where, folder)

    return _check_unique_list(value, where, check_entry)


def _resolve_python_path(value: object, where: _Where, folder: str) -> str:
    """Resolve one python_path entry to a real folder inside ``folder``."""
    if not isinstance(value, str) or not value or "\0" in value:
        raise where.error(
            f"expected a folder path relative to the plugin folder, "
            f"got {_show(value)}"
        )
    if os.path.isabs(value):
        raise where.error(
            f"path {value!r} is absolute; write it relative to the plugin "
            "folder and bundle the dependency there"
        )
    if ".." in value.split("/"):
        raise where.error(
            f"path {value!r} contains a '..' component; "
            "python_path may only name folders inside the plugin folder"
        )
    resolved = os.path.realpath(os.path.join(folder, value))
    _check_inside(resolved, folder, where)
    if not os.path.isdir(resolved):
        raise where.error(
            f"path {value!r} does not exist or is not a folder "
            f"(resolved to {resolved})"
        )
    return resolved


def _check_inside(path: str, folder: str, where: _Where) -> None:
    """Reject a path that resolves outside ``folder``, through a symlink."""
    real = os.path.realpath(path)
    if os.path.commonpath([real, folder]) != folder:
        raise where.error(
            f"{path} resolves to {real}, outside the plugin folder "
            f"{folder}; copy the files into the plugin folder instead"
        )
