"""Plugin manifests: plugin.toml loading, validation and discovery."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from sandbox.errors import PolicyError
from sandbox.manifest import (
    PluginManifest,
    discover_plugins,
    folder_list,
    load_manifest,
    plugin_folders_in,
)

VALID: dict[str, Any] = {
    "name": "notification",
    "version": "1.0.0",
    "entry": "notification",
    "methods": ["send_alert"],
    "capabilities": ["notify"],
    "python_path": ["vendor"],
    "description": "Sends alerts.",
}


def write_manifest(folder: Path, table: dict[str, Any]) -> None:
    # JSON strings, arrays of strings, integers and booleans are also
    # valid TOML values, which is all these manifests use.
    lines = [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    (folder / "plugin.toml").write_text("\n".join(lines) + "\n")


def make_plugin(
    parent: Path, folder_name: str = "notification", **changes: Any
) -> Path:
    """Create a valid plugin folder, with ``changes`` applied to VALID.

    A change to None removes that key from the manifest.
    """
    folder = parent / folder_name
    folder.mkdir(parents=True)
    (folder / "notification.py").write_text("def send_alert():\n    pass\n")
    (folder / "vendor").mkdir()
    table = {**VALID, **changes}
    write_manifest(folder, {k: v for k, v in table.items() if v is not None})
    return folder


def rejected(folder: Path) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        load_manifest(folder)
    return info.value


# Valid manifests


def test_load_valid_manifest(tmp_path: Path) -> None:
    folder = make_plugin(tmp_path)
    manifest = load_manifest(folder)
    real = os.path.realpath(folder)
    assert manifest.name == "notification"
    assert manifest.version == "1.0.0"
    assert manifest.entry == "notification"
    assert manifest.methods == ("send_alert",)
    assert manifest.capabilities == frozenset({"notify"})
    assert manifest.python_path == (os.path.join(real, "vendor"),)
    assert manifest.description == "Sends alerts."
    assert manifest.folder == real


def test_optional_keys_have_empty_defaults(tmp_path: Path) -> None:
    folder = make_plugin(
        tmp_path, capabilities=None, python_path=None, description=None
    )
    manifest = load_manifest(folder)
    assert manifest.capabilities == frozenset()
    assert manifest.python_path == ()
    assert manifest.description == ""


def test_to_dict_is_json_safe(tmp_path: Path) -> None:
    folder = make_plugin(tmp_path, capabilities=["notify", "clock"])
    data = load_manifest(folder).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["capabilities"] == ["clock", "notify"]
    assert data["methods"] == ["send_alert"]
    assert data["folder"] == os.path.realpath(folder)


def test_to_dict_covers_every_field(tmp_path: Path) -> None:
    manifest = load_manifest(make_plugin(tmp_path))
    assert set(manifest.to_dict()) == set(manifest.__dataclass_fields__)


def test_folder_is_real_path(tmp_path: Path) -> None:
    folder = make_plugin(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(folder.parent)
    manifest = load_manifest(link / "notification")
    assert manifest.folder == os.path.realpath(folder)


def test_package_entry(tmp_path: Path) -> None:
    folder = make_plugin(tmp_path, entry="alerts")
    (folder / "alerts").mkdir()
    (folder / "alerts" / "__init__.py").write_text("")
    assert load_manifest(folder).entry == "alerts"


def test_dotted_entry(tmp_path: Path) -> None:
    folder = make_plugin(tmp_path, entry="pkg.alerts")
    (folder / "pkg").mkdir()
    (folder / "pkg" / "alerts.py").write_text("")
    assert load_manifest(folder).entry == "pkg.alerts"


def test_nested_python_path(tmp_path: Path) -> None:
    folder = make_plugin(tmp_path, python_path=["vendor", "lib/site"])
    (folder / "lib" / "site").mkdir(parents=True)
    real = os.path.realpath(folder)
    assert load_manifest(folder).python_path == (
        os.path.join(real, "vendor"),
        os.path.join(real, "lib", "site"),
    )


def test_symlink_inside_folder_accepted(tmp_path: Path) -> None:
    folder = make_plugin(tmp_path, python_path=["deps"])
    (folder / "deps").symlink_to(folder / "vendor")
    real = os.path.realpath(folder)
    assert load_manifest(folder).python_path == (os.path.join(real, "vendor"),)


# Validation: every class of bad input


@pytest.mark.parametrize("key", ["name", "version", "entry", "methods"])
def test_missing_required_key_rejected(tmp_path: Path, key: str) -> None:
    error = rejected(make_plugin(tmp_path, **{key: None}))
    assert error.key == key
    assert f"missing required key {key!r}" in error.reason


def test_missing_name_leaves_plugin_unset(tmp_path: Path) -> None:
    error = rejected(make_plugin(tmp_path, name=None))
    assert error.plugin is None


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("method", "methods"),
        ("capability", "capabilities"),
        ("pythonpath", "python_path"),
        ("entrypoint", "entry"),
    ],
)
def test_unknown_key_rejected(
    tmp_path: Path, key: str, suggestion: str
) -> None:
    error = rejected(make_plugin(tmp_path, **{key: "x"}))
    assert error.key == key
    assert error.plugin == "notification"
    assert f"did you mean {suggestion!r}?" in error.reason


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("name", 5),
        ("version", 1),
        ("version", ["1.0"]),
        ("entry", ["notification"]),
        ("methods", "send_alert"),
        ("capabilities", "notify"),
        ("python_path", "vendor"),
        ("description", 5),
        ("description", ["text"]),
    ],
)
def test_wrong_type_rejected(tmp_path: Path, key: str, value: Any) -> None:
    error = rejected(make_plugin(tmp_path, **{key: value}))
    assert error.key == key
    assert type(value).__name__ in error.reason


@pytest.mark.parametrize(
    "name", ["", "-x", "a b", "a" * 65, "x\n", "x/y", "é", "../x"]
)
def test_bad_name_rejected(tmp_path: Path, name: str) -> None:
    error = rejected(make_plugin(tmp_path, name=name))
    assert error.key == "name"
    assert "invalid plugin name" in error.reason


def test_name_need_not_match_folder(tmp_path: Path) -> None:
    folder = make_plugin(tmp_path, "some-folder", name="other.name")
    assert load_manifest(folder).name == "other.name"


@pytest.mark.parametrize("version", ["", "v" * 65, "1.0\n", "1.0\x00"])
def test_bad_version_rejected(tmp_path: Path, version: str) -> None:
    error = rejected(make_plugin(tmp_path, version=version))
    assert error.key == "version"
    assert "1 to 64 printable characters" in error.reason


def test_longest_version_accepted(tmp_path: Path) -> None:
    folder = make_plugin(tmp_path, version="v" * 64)
    assert load_manifest(folder).version == "v" * 64


@pytest.mark.parametrize(
    "entry",
    ["", ".x", "x.", "a..b", "1mod", "mod-x", "class", "a.def", "a/b", "é"],
)
def test_bad_entry_syntax_rejected(tmp_path: Path, entry: str) -> None:
    error = rejected(make_plugin(tmp_path, entry=entry))
    assert error.key == "entry"
    assert "expected a module name" in error.reason


def test_entry_without_module_file_rejected(tmp_path: Path) -> None:
    error = rejected(make_plugin(tmp_path, entry="absent"))
    assert error.key == "entry"
    assert "module 'absent' not found" in error.reason
    assert "absent.py" in error.reason


def test_entry_folder_without_init_rejected(tmp_path: Path) -> None:
    folder = make_plugin(tmp_path, entry="alerts")
    (folder / "alerts").mkdir()
    error = rejected(folder)
    assert "alerts/__init__.py" in error.reason


@pytest.mark.parametrize("entry", ["json", "os", "email.utils", "sandbox"])
def test_entry_shadowing_module_rejected(tmp_path: Path, entry: str) -> None:
    folder = make_plugin(tmp_path, entry=entry)
    module = folder.joinpath(*entry.split("."))
    module.parent.mkdir(parents=True, exist_ok=True)
    module.with_suffix(".py").write_text("")
    error = rejected(folder)
    assert error.key == "entry"
    assert "standard library" in error.reason


def test_entry_symlink_outside_rejected(tmp_path: Path) -> None:
    outside = tmp_path / "outside.py"
    outside.write_text("def send_alert():\n    pass\n")
    folder = make_plugin(tmp_path, entry="linked")
    (folder / "linked.py").symlink_to(outside)
    error = rejected(folder)
    assert error.key == "entry"
    assert "outside the plugin folder" in error.reason


def test_entry_package_symlink_outside_rejected(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "__init__.py").write_text("")
    folder = make_plugin(tmp_path, entry="linked")
    (folder / "linked").symlink_to(outside)
    error = rejected(folder)
    assert "outside the plugin folder" in error.reason


@pytest.mark.parametrize(
    ("methods", "index"),
    [
        (["send_alert", "_private"], 1),
        (["__init__"], 0),
        (["__class__"], 0),
        (["__getattribute__"], 0),
        (["1x"], 0),
        (["a-b"], 0),
        (["a.b"], 0),
        (["class"], 0),
        (["send alert"], 0),
        (["send_alert\n"], 0),
        (["a" * 129], 0),
        (["é"], 0),
        (["send_alert", "send_alert"], 1),
        ([5], 0),
    ],
)
def test_bad_method_rejected(
    tmp_path: Path, methods: list[Any], index: int
) -> None:
    error = rejected(make_plugin(tmp_path, methods=methods))
    assert error.key == f"methods[{index}]"
    assert error.plugin == "notification"


def test_empty_methods_rejected(tmp_path: Path) -> None:
    error = rejected(make_plugin(tmp_path, methods=[]))
    assert error.key == "methods"
    assert "empty" in error.reason


def test_private_method_message_explains(tmp_path: Path) -> None:
    error = rejected(make_plugin(tmp_path, methods=["_secret"]))
    assert "does not start with _" in error.reason


@pytest.mark.parametrize(
    "capabilities", [["Notify"], ["no-tify"], [""], ["notify", "notify"]]
)
def test_bad_capabilities_rejected(
    tmp_path: Path, capabilities: list[str]
) -> None:
    error = rejected(make_plugin(tmp_path, capabilities=capabilities))
    assert error.key is not None
    assert error.key.startswith("capabilities[")


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("/usr/lib/python3", "is absolute"),
        ("../other", "'..' component"),
        ("vendor/../vendor", "'..' component"),
        ("missing", "does not exist or is not a folder"),
        ("notification.py", "does not exist or is not a folder"),
        ("", "expected a folder path"),
        ("vendor\x00", "expected a folder path"),
    ],
)
def test_bad_python_path_rejected(
    tmp_path: Path, entry: str, expected: str
) -> None:
    error = rejected(make_plugin(tmp_path, python_path=[entry]))
    assert error.key == "python_path[0]"
    assert expected in error.reason


def test_python_path_symlink_outside_rejected(tmp_path: Path) -> None:
    outside = tmp_path / "site-packages"
    outside.mkdir()
    folder = make_plugin(tmp_path, python_path=["deps"])
    (folder / "deps").symlink_to(outside)
    error = rejected(folder)
    assert error.key == "python_path[0]"
    assert "outside the plugin folder" in error.reason
    assert str(outside) in error.reason


def test_python_path_symlink_escape_in_middle_rejected(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "elsewhere"
    (outside / "lib").mkdir(parents=True)
    folder = make_plugin(tmp_path, python_path=["up/lib"])
    (folder / "up").symlink_to(outside)
    error = rejected(folder)
    assert "outside the plugin folder" in error.reason


def test_duplicate_python_path_rejected(tmp_path: Path) -> None:
    error = rejected(make_plugin(tmp_path, python_path=["vendor", "vendor/"]))
    assert error.key == "python_path[1]"
    assert "duplicate entry" in error.reason


# Errors of the file itself


def test_error_names_file_plugin_and_key(tmp_path: Path) -> None:
    folder = make_plugin(tmp_path, methods=["_hidden"])
    error = rejected(folder)
    source = os.path.join(os.path.realpath(folder), "plugin.toml")
    assert error.source == source
    assert error.plugin == "notification"
    assert error.key == "methods[0]"
    assert source in str(error)
    assert "'notification'" in str(error)
    assert "methods[0]" in str(error)
    assert "'_hidden'" in str(error)


def test_toml_syntax_error_rejected(tmp_path: Path) -> None:
    folder = make_plugin(tmp_path)
    (folder / "plugin.toml").write_text('name = "x"\nmethods = [,]\n')
    error = rejected(folder)
    assert "invalid TOML" in error.reason
    assert "line 2" in error.reason


def test_missing_manifest_file_rejected(tmp_path: Path) -> None:
    error = rejected(tmp_path)
    assert error.source == os.path.join(tmp_path, "plugin.toml")
    assert "failed to read the file" in error.reason


def test_missing_folder_rejected(tmp_path: Path) -> None:
    error = rejected(tmp_path / "absent")
    assert error.source == str(tmp_path / "absent")
    assert "does not exist" in error.reason


def test_non_utf8_manifest_rejected(tmp_path: Path) -> None:
    folder = make_plugin(tmp_path)
    (folder / "plugin.toml").write_bytes(b'name = "caf\xe9"\n')
    assert "not valid UTF-8" in rejected(folder).reason


# Discovery


def test_discover_loads_every_plugin_folder(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    make_plugin(first, "b", name="beta")
    make_plugin(first, "a", name="alpha")
    make_plugin(second, "c", name="gamma")
    (first / "no-manifest").mkdir()
    (first / "README").write_text("not a plugin")
    found = discover_plugins([first, str(second)])
    assert list(found) == ["alpha", "beta", "gamma"]
    assert all(isinstance(m, PluginManifest) for m in found.values())
    assert found["gamma"].folder == os.path.realpath(second / "c")


def test_discover_empty_folder(tmp_path: Path) -> None:
    assert discover_plugins([tmp_path]) == {}


def test_discover_duplicate_name_rejected(tmp_path: Path) -> None:
    first = make_plugin(tmp_path / "first")
    second = make_plugin(tmp_path / "second")
    with pytest.raises(PolicyError) as info:
        discover_plugins([tmp_path / "first", tmp_path / "second"])
    error = info.value
    assert error.plugin == "notification"
    assert error.key == "name"
    assert os.path.realpath(first) in error.reason
    assert os.path.realpath(second) in error.reason


def test_discover_same_folder_twice_is_one_plugin(tmp_path: Path) -> None:
    make_plugin(tmp_path)
    found = discover_plugins([tmp_path, tmp_path])
    assert list(found) == ["notification"]


def test_discover_missing_dir_rejected(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    with pytest.raises(PolicyError) as info:
        discover_plugins([missing])
    assert info.value.source == str(missing)
    assert "does not exist" in info.value.reason


def test_discover_file_as_dir_rejected(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(PolicyError, match="not a folder"):
        discover_plugins([path])


def test_discover_invalid_manifest_rejected(tmp_path: Path) -> None:
    make_plugin(tmp_path, methods=[])
    with pytest.raises(PolicyError) as info:
        discover_plugins([tmp_path])
    assert info.value.key == "methods"


def test_discover_rejects_single_path(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        discover_plugins(str(tmp_path))


def test_discover_duplicate_name_logged_when_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = os.path.realpath(make_plugin(tmp_path / "first"))
    second = os.path.realpath(make_plugin(tmp_path / "second"))
    errors: dict[str, PolicyError] = {}
    with caplog.at_level(logging.WARNING, logger="sandbox.manifest"):
        found = discover_plugins(
            [tmp_path / "first", tmp_path / "second"], errors=errors
        )
    assert found["notification"].folder == first
    assert list(errors) == ["notification"]
    records = [r for r in caplog.records if r.name == "sandbox.manifest"]
    assert len(records) == 1
    message = records[0].getMessage()
    assert message.startswith(f"skipped plugin folder {second}: ")
    assert f"{first}, found first, and {second}" in message


def test_discover_invalid_manifest_logged_when_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_plugin(tmp_path, "good", name="good")
    broken = make_plugin(tmp_path, "broken", methods=[])
    other = make_plugin(tmp_path, "other", version="")
    errors: dict[str, PolicyError] = {}
    with caplog.at_level(logging.WARNING, logger="sandbox.manifest"):
        found = discover_plugins([tmp_path], errors=errors)
    assert list(found) == ["good"]
    assert sorted(errors) == ["broken", "other"]
    messages = [
        r.getMessage() for r in caplog.records if r.name == "sandbox.manifest"
    ]
    assert len(messages) == 2
    assert f"skipped plugin folder {os.path.realpath(broken)}" in messages[0]
    assert f"skipped plugin folder {os.path.realpath(other)}" in messages[1]


def test_plugin_folders_in_finds_plugin_folder(tmp_path: Path) -> None:
    folder = make_plugin(tmp_path)
    assert plugin_folders_in([str(folder)]) == [str(folder)]
    assert plugin_folders_in([str(tmp_path)]) == []


def test_folder_list_rejects_single_path(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        folder_list(tmp_path)
    assert folder_list([tmp_path, "x"]) == [str(tmp_path), "x"]
