"""Policy files: loading, merging over defaults, resources and validation."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox.errors import PolicyError
from sandbox.policy import (
    DEFAULT_RESOURCES,
    FilesystemPolicy,
    Policy,
    PolicySet,
    Resources,
)

EXAMPLE = """\
[defaults]
resources = { memory_mb = 128, cpu_seconds = 10, file_descriptors = 50 }

[plugins.notification]
capabilities = ["notify"]
network = false
filesystem = { write = ["@NOTIFICATIONS@"] }
resources = { memory_mb = 64, cpu_seconds = 5 }

[plugins.env-protection]
capabilities = ["read_env"]
filesystem = { readonly = true }
env = ["HOME", "LANG"]
resources = { memory_mb = 32, cpu_seconds = 2 }
"""

# The bounds the file format promises, per resource field.
INT_BOUNDS = {
    "memory_mb": (16, 1048576),
    "cpu_seconds": (1, 604800),
    "file_descriptors": (8, 65536),
    "processes": (1, 4096),
    "file_size_mb": (0, 1048576),
}


@pytest.fixture
def notifications(tmp_path: Path) -> Path:
    folder = tmp_path / "notifications"
    folder.mkdir()
    return folder


@pytest.fixture
def example_file(tmp_path: Path, notifications: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(EXAMPLE.replace("@NOTIFICATIONS@", str(notifications)))
    return path


def rejected(data: Any) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        Policy.from_dict(data)
    return info.value


def plugin(table: Any, name: str = "x") -> dict[str, Any]:
    return {"plugins": {name: table}}


def resources(**values: Any) -> dict[str, Any]:
    return plugin({"resources": values})


# The example file


def test_example_notification(example_file: Path, notifications: Path) -> None:
    policy = Policy.load(example_file).for_plugin("notification")
    assert policy.name == "notification"
    assert policy.capabilities == frozenset({"notify"})
    assert policy.network is False
    assert policy.filesystem.write == (str(notifications),)
    assert policy.filesystem.read == ()
    assert policy.filesystem.readonly is False
    assert policy.resources == Resources(
        memory_mb=64, cpu_seconds=5, file_descriptors=50
    )
    assert policy.env == ()
    assert policy.user is None
    assert policy.source == str(example_file)


def test_example_env_protection(example_file: Path) -> None:
    policy = Policy.load(example_file).for_plugin("env-protection")
    assert policy.capabilities == frozenset({"read_env"})
    assert policy.filesystem.readonly is True
    assert policy.filesystem.write == ()
    assert policy.env == ("HOME", "LANG")
    assert policy.resources == Resources(
        memory_mb=32, cpu_seconds=2, file_descriptors=50
    )


def test_example_unlisted_plugin_gets_defaults(example_file: Path) -> None:
    policies = Policy.load(example_file)
    policy = policies.for_plugin("other")
    assert policy.name == "other"
    assert policy.capabilities == frozenset()
    assert policy.network is False
    assert policy.filesystem == FilesystemPolicy()
    assert policy.env == ()
    assert policy.user is None
    assert policy.resources == Resources(
        memory_mb=128, cpu_seconds=10, file_descriptors=50
    )
    assert policies.defaults.name == "*"
    assert policies.defaults.resources == policy.resources


def test_example_names_and_membership(example_file: Path) -> None:
    policies = Policy.load(example_file)
    assert policies.names() == ["notification", "env-protection"]
    assert list(policies) == policies.names()
    assert "notification" in policies
    assert "other" not in policies
    assert policies.source == str(example_file)


def test_example_effective_resources(example_file: Path) -> None:
    limits = Policy.load(example_file).effective_resources("notification")
    assert limits.memory_mb == 64
    assert limits.cpu_seconds == 5
    assert limits.file_descriptors == 50
    assert limits.processes == DEFAULT_RESOURCES.processes
    assert limits.file_size_mb == DEFAULT_RESOURCES.file_size_mb
    assert limits.timeout == DEFAULT_RESOURCES.timeout


# Merging a plugin table over [defaults]


@pytest.mark.parametrize(
    ("key", "default", "override"),
    [
        ("capabilities", ["notify", "read_env"], ["clock"]),
        ("env", ["HOME", "LANG"], ["TZ"]),
    ],
)
def test_plugin_list_replaces_default_list(
    key: str, default: list[str], override: list[str]
) -> None:
    policies = Policy.from_dict(
        {"defaults": {key: default}, "plugins": {"x": {key: override}}}
    )
    value = getattr(policies.for_plugin("x"), key)
    assert sorted(value) == sorted(override)
    assert sorted(getattr(policies.for_plugin("y"), key)) == sorted(default)


@pytest.mark.parametrize("key", ["read", "write"])
def test_plugin_path_list_replaces_default(tmp_path: Path, key: str) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    policies = Policy.from_dict(
        {
            "defaults": {"filesystem": {key: [str(first)]}},
            "plugins": {"x": {"filesystem": {key: [str(second)]}}},
        }
    )
    assert getattr(policies.for_plugin("x").filesystem, key) == (str(second),)
    assert getattr(policies.for_plugin("y").filesystem, key) == (str(first),)


def test_plugin_empty_list_clears_default() -> None:
    policies = Policy.from_dict(
        {
            "defaults": {"capabilities": ["notify"]},
            "plugins": {"x": {"capabilities": []}},
        }
    )
    assert policies.for_plugin("x").capabilities == frozenset()


def test_plugin_inherits_unset_fields(tmp_path: Path) -> None:
    defaults = {
        "capabilities": ["notify"],
        "network": True,
        "filesystem": {"read": [str(tmp_path)]},
        "resources": {"memory_mb": 100},
        "user": "nobody",
        "env": ["LANG"],
        "max_message_bytes": 4096,
    }
    policies = Policy.from_dict({"defaults": defaults, "plugins": {"x": {}}})
    policy = policies.for_plugin("x")
    assert policy.capabilities == frozenset({"notify"})
    assert policy.network is True
    assert policy.filesystem.read == (str(tmp_path),)
    assert policy.resources == Resources(memory_mb=100)
    assert policy.user == "nobody"
    assert policy.env == ("LANG",)
    assert policy.max_message_bytes == 4096


def test_plugin_scalars_override_defaults() -> None:
    policies = Policy.from_dict(
        {
            "defaults": {
                "network": True,
                "user": "nobody",
                "max_message_bytes": 4096,
            },
            "plugins": {
                "x": {
                    "network": False,
                    "user": 1000,
                    "max_message_bytes": 2048,
                }
            },
        }
    )
    policy = policies.for_plugin("x")
    assert policy.network is False
    assert policy.user == 1000
    assert policy.max_message_bytes == 2048


def test_resources_merge_field_by_field() -> None:
    policies = Policy.from_dict(
        {
            "defaults": {"resources": {"memory_mb": 100, "cpu_seconds": 7}},
            "plugins": {"x": {"resources": {"cpu_seconds": 3, "timeout": 2}}},
        }
    )
    assert policies.for_plugin("x").resources == Resources(
        memory_mb=100, cpu_seconds=3, timeout=2.0
    )


def test_filesystem_merges_field_by_field(tmp_path: Path) -> None:
    shared, own = tmp_path / "shared", tmp_path / "own"
    shared.mkdir()
    own.mkdir()
    policies = Policy.from_dict(
        {
            "defaults": {"filesystem": {"read": [str(shared)]}},
            "plugins": {
                "writer": {"filesystem": {"write": [str(own)]}},
                "reader": {"filesystem": {"readonly": True}},
            },
        }
    )
    writer = policies.for_plugin("writer").filesystem
    assert writer.read == (str(shared),)
    assert writer.write == (str(own),)
    reader = policies.for_plugin("reader").filesystem
    assert reader.read == (str(shared),)
    assert reader.readonly is True


def test_readonly_plugin_can_clear_inherited_write(tmp_path: Path) -> None:
    policies = Policy.from_dict(
        {
            "defaults": {"filesystem": {"write": [str(tmp_path)]}},
            "plugins": {"x": {"filesystem": {"readonly": True, "write": []}}},
        }
    )
    assert policies.for_plugin("x").filesystem == FilesystemPolicy(
        readonly=True
    )


@pytest.mark.parametrize(
    ("defaults", "own"),
    [
        ({"write": ["@"]}, {"readonly": True}),
        ({"readonly": True}, {"write": ["@"]}),
        ({}, {"readonly": True, "write": ["@"]}),
    ],
    ids=["readonly-over-write", "write-over-readonly", "same-table"],
)
def test_readonly_with_write_rejected(
    tmp_path: Path, defaults: dict[str, Any], own: dict[str, Any]
) -> None:
    def fill(table: dict[str, Any]) -> dict[str, Any]:
        return {
            key: [str(tmp_path)] if value == ["@"] else value
            for key, value in table.items()
        }

    error = rejected(
        {
            "defaults": {"filesystem": fill(defaults)},
            "plugins": {"x": {"filesystem": fill(own)}},
        }
    )
    assert error.key == "plugins.x.filesystem"
    assert error.plugin == "x"
    assert "readonly = true" in error.reason
    assert str(tmp_path) in error.reason


def test_readonly_with_write_in_defaults_rejected(tmp_path: Path) -> None:
    error = rejected(
        {
            "defaults": {
                "filesystem": {"readonly": True, "write": [str(tmp_path)]}
            }
        }
    )
    assert error.key == "defaults.filesystem"
    assert error.plugin is None


# Resources and their order of precedence


def test_merged_over_prefers_set_fields() -> None:
    base = Resources(memory_mb=100, cpu_seconds=7, timeout=1.5)
    merged = Resources(cpu_seconds=3, processes=2).merged_over(base)
    assert merged == Resources(
        memory_mb=100, cpu_seconds=3, processes=2, timeout=1.5
    )


def test_effective_resources_order() -> None:
    host = Resources(
        memory_mb=200, cpu_seconds=20, file_descriptors=200, file_size_mb=2
    )
    policies = Policy.from_dict(
        {
            "defaults": {
                "resources": {
                    "memory_mb": 300,
                    "cpu_seconds": 30,
                    "processes": 3,
                }
            },
            "plugins": {"x": {"resources": {"cpu_seconds": 40}}},
        }
    )
    limits = policies.effective_resources("x", host)
    assert limits.cpu_seconds == 40  # plugin table over all others
    assert limits.memory_mb == 300  # file defaults over the host
    assert limits.processes == 3  # file defaults over DEFAULT_RESOURCES
    assert limits.file_descriptors == 200  # host over DEFAULT_RESOURCES
    assert limits.file_size_mb == 2
    assert limits.timeout == DEFAULT_RESOURCES.timeout


def test_effective_resources_without_host_defaults() -> None:
    policies = Policy.from_dict(plugin({"resources": {"memory_mb": 40}}))
    limits = policies.effective_resources("x")
    assert limits == dataclasses.replace(DEFAULT_RESOURCES, memory_mb=40)


@pytest.mark.parametrize("name", ["x", "unlisted"])
def test_effective_resources_sets_every_field(name: str) -> None:
    policies = Policy.from_dict(plugin({"resources": {"memory_mb": 40}}))
    limits = policies.effective_resources(name, Resources(processes=5))
    unset = [key for key, value in limits.__dict__.items() if value is None]
    assert unset == []


def test_empty_set_is_default_deny() -> None:
    policies = PolicySet.empty()
    policy = policies.for_plugin("anything")
    assert policies.names() == []
    assert "anything" not in policies
    assert policy.name == "anything"
    assert policy.capabilities == frozenset()
    assert policy.network is False
    assert policy.filesystem == FilesystemPolicy()
    assert policy.env == ()
    assert policy.user is None
    assert policies.effective_resources("anything") == DEFAULT_RESOURCES


def test_empty_dict_is_default_deny() -> None:
    policy = Policy.from_dict({}).for_plugin("x")
    assert policy == Policy(name="x")


def test_for_plugin_rejects_invalid_name() -> None:
    with pytest.raises(PolicyError, match="invalid plugin name"):
        PolicySet.empty().for_plugin("../x")


# Validation: every class of bad input


@pytest.mark.parametrize(
    ("data", "key", "suggestion"),
    [
        ({"default": {}}, "default", "defaults"),
        ({"plugin": {}}, "plugin", "plugins"),
        (plugin({"capabilites": []}), "plugins.x.capabilites", "capabilities"),
        (plugin({"netwrok": False}), "plugins.x.netwrok", "network"),
        (resources(memory=64), "plugins.x.resources.memory", "memory_mb"),
        (resources(cpu_second=1), "plugins.x.resources.cpu_second", None),
        (
            {"defaults": {"filesystem": {"writes": []}}},
            "defaults.filesystem.writes",
            "write",
        ),
    ],
)
def test_unknown_key_rejected(
    data: dict[str, Any], key: str, suggestion: str | None
) -> None:
    error = rejected(data)
    assert error.key == key
    assert "unknown key" in error.reason
    if suggestion is not None:
        assert f"did you mean {suggestion!r}?" in error.reason


def test_unknown_key_without_close_match_lists_keys() -> None:
    error = rejected(plugin({"zzz": 1}))
    assert "did you mean" not in error.reason
    assert "capabilities" in error.reason
    assert "max_message_bytes" in error.reason


@pytest.mark.parametrize(
    ("data", "key", "shown"),
    [
        ([], None, "[] (list)"),
        ({1: {}}, None, "1 (int)"),
        ({"defaults": None}, "defaults", "None (NoneType)"),
        ({"plugins": []}, "plugins", "[] (list)"),
        (plugin("table"), "plugins.x", "'table' (str)"),
        (plugin({"network": "yes"}), "plugins.x.network", "'yes' (str)"),
        (plugin({"network": 0}), "plugins.x.network", "0 (int)"),
        (
            plugin({"capabilities": "notify"}),
            "plugins.x.capabilities",
            "'notify' (str)",
        ),
        (
            plugin({"capabilities": [1]}),
            "plugins.x.capabilities[0]",
            "1 (int)",
        ),
        (plugin({"env": "HOME"}), "plugins.x.env", "'HOME' (str)"),
        (plugin({"env": [None]}), "plugins.x.env[0]", "None (NoneType)"),
        (plugin({"filesystem": []}), "plugins.x.filesystem", "[] (list)"),
        (
            plugin({"filesystem": {"read": "/tmp"}}),
            "plugins.x.filesystem.read",
            "'/tmp' (str)",
        ),
        (
            plugin({"filesystem": {"write": [5]}}),
            "plugins.x.filesystem.write[0]",
            "5 (int)",
        ),
        (
            plugin({"filesystem": {"readonly": "true"}}),
            "plugins.x.filesystem.readonly",
            "'true' (str)",
        ),
        (plugin({"resources": 64}), "plugins.x.resources", "64 (int)"),
        (resources(memory_mb="64"), "plugins.x.resources.memory_mb", "'64'"),
        (resources(memory_mb=64.0), "plugins.x.resources.memory_mb", "float"),
        (resources(memory_mb=True), "plugins.x.resources.memory_mb", "bool"),
        (
            resources(cpu_seconds=True),
            "plugins.x.resources.cpu_seconds",
            "bool",
        ),
        (resources(processes=False), "plugins.x.resources.processes", "bool"),
        (resources(timeout=True), "plugins.x.resources.timeout", "bool"),
        (resources(timeout="1"), "plugins.x.resources.timeout", "'1' (str)"),
        (
            plugin({"max_message_bytes": True}),
            "plugins.x.max_message_bytes",
            "bool",
        ),
        (plugin({"user": True}), "plugins.x.user", "True (bool)"),
        (plugin({"user": 1.5}), "plugins.x.user", "1.5 (float)"),
        (plugin({"user": []}), "plugins.x.user", "[] (list)"),
    ],
)
def test_wrong_type_rejected(data: Any, key: str | None, shown: str) -> None:
    error = rejected(data)
    assert error.key == key
    assert shown in error.reason
    assert "expected" in error.reason


def bound_cases() -> list[tuple[str, Any]]:
    cases: list[tuple[str, Any]] = []
    for name, (low, high) in INT_BOUNDS.items():
        cases += [(name, low - 1), (name, high + 1), (name, -(2**70))]
    cases += [("memory_mb", 0), ("cpu_seconds", 0), ("processes", -1)]
    for bad_timeout in (0, -1, 0.0, math.nan, math.inf, -math.inf, 604800.5):
        cases.append(("timeout", bad_timeout))
    cases.append(("timeout", 10**400))
    return cases


@pytest.mark.parametrize(("field", "value"), bound_cases())
def test_resource_out_of_bounds_rejected(field: str, value: Any) -> None:
    error = rejected(resources(**{field: value}))
    assert error.key == f"plugins.x.resources.{field}"
    assert error.plugin == "x"
    assert "expected" in error.reason


def accepted_bound_cases() -> list[tuple[str, Any]]:
    cases: list[tuple[str, Any]] = []
    for name, (low, high) in INT_BOUNDS.items():
        cases += [(name, low), (name, high)]
    cases += [("timeout", 0.001), ("timeout", 604800), ("timeout", 1)]
    return cases


@pytest.mark.parametrize(("field", "value"), accepted_bound_cases())
def test_resource_at_bound_accepted(field: str, value: Any) -> None:
    policies = Policy.from_dict(resources(**{field: value}))
    assert getattr(policies.for_plugin("x").resources, field) == value


def test_integer_too_long_to_print_rejected() -> None:
    error = rejected(resources(memory_mb=10**5000))
    assert error.key == "plugins.x.resources.memory_mb"
    assert "too large to show" in error.reason


def test_timeout_stored_as_float() -> None:
    policies = Policy.from_dict(resources(timeout=3))
    assert isinstance(policies.for_plugin("x").resources.timeout, float)


@pytest.mark.parametrize("value", [1023, (256 << 20) + 1, 0, -1])
def test_max_message_bytes_out_of_bounds_rejected(value: int) -> None:
    error = rejected(plugin({"max_message_bytes": value}))
    assert error.key == "plugins.x.max_message_bytes"


@pytest.mark.parametrize("value", [1024, 256 << 20])
def test_max_message_bytes_at_bound_accepted(value: int) -> None:
    policy = Policy.from_dict(plugin({"max_message_bytes": value}))
    assert policy.for_plugin("x").max_message_bytes == value


@pytest.mark.parametrize(
    "name",
    ["", "Notify", "1notify", "no-tify", "a" * 65, "notify\n", "nötify", " a"],
)
def test_bad_capability_rejected(name: str) -> None:
    error = rejected(plugin({"capabilities": ["ok", name]}))
    assert error.key == "plugins.x.capabilities[1]"
    assert "invalid capability name" in error.reason


@pytest.mark.parametrize("name", ["a", "a" * 64, "read_env2"])
def test_good_capability_accepted(name: str) -> None:
    policies = Policy.from_dict(plugin({"capabilities": [name]}))
    assert policies.for_plugin("x").capabilities == frozenset({name})


@pytest.mark.parametrize(
    "name", ["", "-x", ".x", "a b", "a" * 65, "x\n", "x/y", "é", "*"]
)
def test_bad_plugin_name_rejected(name: str) -> None:
    error = rejected({"plugins": {name: {}}})
    assert error.key == "plugins"
    assert error.plugin is None
    assert "invalid plugin name" in error.reason


@pytest.mark.parametrize("name", ["x", "A.b-c_d", "9" * 64])
def test_good_plugin_name_accepted(name: str) -> None:
    assert Policy.from_dict({"plugins": {name: {}}}).names() == [name]


@pytest.mark.parametrize(
    "name", ["", "1X", "A-B", "A B", "A" * 129, "HOME\n", "=", "PÄTH"]
)
def test_bad_env_name_rejected(name: str) -> None:
    error = rejected(plugin({"env": [name]}))
    assert error.key == "plugins.x.env[0]"
    assert "invalid environment variable name" in error.reason


@pytest.mark.parametrize("name", ["_", "A" * 128, "lang_2"])
def test_good_env_name_accepted(name: str) -> None:
    assert Policy.from_dict(plugin({"env": [name]})).for_plugin("x").env == (
        name,
    )


@pytest.mark.parametrize(
    ("key", "values"),
    [
        ("env", ["HOME", "LANG", "HOME"]),
        ("capabilities", ["notify", "clock", "notify"]),
    ],
)
def test_duplicate_name_rejected(key: str, values: list[str]) -> None:
    error = rejected(plugin({key: values}))
    assert error.key == f"plugins.x.{key}[2]"
    assert "duplicate entry" in error.reason


def test_duplicate_path_after_normalising_rejected(tmp_path: Path) -> None:
    paths = [str(tmp_path), f"{tmp_path}/"]
    error = rejected(plugin({"filesystem": {"read": paths}}))
    assert error.key == "plugins.x.filesystem.read[1]"
    assert "duplicate entry" in error.reason


@pytest.mark.parametrize(
    "user", ["", "Root", "1user", "a" * 33, "user\n", "a b", -1, 2**31 - 1]
)
def test_bad_user_rejected(user: Any) -> None:
    error = rejected(plugin({"user": user}))
    assert error.key == "plugins.x.user"
    assert "user name" in error.reason


@pytest.mark.parametrize("user", ["nobody", 1, 65534, 2**31 - 2])
def test_good_user_accepted(user: str | int) -> None:
    assert Policy.from_dict(plugin({"user": user})).for_plugin("x").user == (
        user
    )


@pytest.mark.parametrize("user", ["root", 0])
def test_root_user_rejected(user: str | int) -> None:
    error = rejected(plugin({"user": user}))
    assert error.key == "plugins.x.user"
    assert "never run as root" in error.reason


@pytest.mark.parametrize("user", ["_svc", "a-b_c", "a" * 32])
def test_unknown_user_rejected(user: str) -> None:
    error = rejected(plugin({"user": user}))
    assert error.key == "plugins.x.user"
    assert "does not exist" in error.reason


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("relative/path", "is not absolute"),
        ("", "is not absolute"),
        ("/tmp\0/x", "NUL character"),
        ("/tmp/../etc", "'..' component"),
        ("/tmp/..", "'..' component"),
        ("/../tmp", "'..' component"),
    ],
)
@pytest.mark.parametrize("key", ["read", "write"])
def test_bad_path_rejected(key: str, path: str, expected: str) -> None:
    error = rejected(plugin({"filesystem": {key: [path]}}))
    assert error.key == f"plugins.x.filesystem.{key}[0]"
    assert expected in error.reason


@pytest.mark.parametrize("key", ["read", "write"])
def test_missing_path_rejected(tmp_path: Path, key: str) -> None:
    missing = tmp_path / "missing"
    error = rejected(plugin({"filesystem": {key: [str(missing)]}}))
    assert error.key == f"plugins.x.filesystem.{key}[0]"
    assert str(missing) in error.reason
    assert (
        "does not exist; create it first or remove it from the list"
        in error.reason
    )


def test_dangling_symlink_path_rejected(tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    error = rejected(plugin({"filesystem": {"read": [str(link)]}}))
    assert "does not exist" in error.reason


def test_path_is_normalised(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    written = f"{tmp_path}//sub/./"
    policies = Policy.from_dict(plugin({"filesystem": {"read": [written]}}))
    assert policies.for_plugin("x").filesystem.read == (str(tmp_path / "sub"),)


def test_tuples_accepted_as_lists(tmp_path: Path) -> None:
    policies = Policy.from_dict(
        plugin(
            {
                "capabilities": ("notify",),
                "filesystem": {"read": (str(tmp_path),)},
            }
        )
    )
    policy = policies.for_plugin("x")
    assert policy.capabilities == frozenset({"notify"})
    assert policy.filesystem.read == (str(tmp_path),)


# Errors of the file itself


def test_toml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("[defaults]\nnetwork = false\n[plugins.x\n")
    with pytest.raises(PolicyError) as info:
        Policy.load(path)
    assert info.value.source == str(path)
    assert "invalid TOML" in info.value.reason
    assert "line 3" in info.value.reason
    assert "column" in info.value.reason


def test_missing_file_is_policy_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(PolicyError) as info:
        Policy.load(path)
    assert info.value.source == str(path)
    assert "failed to read the file" in info.value.reason
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_folder_as_file_is_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="failed to read the file"):
        Policy.load(tmp_path)


def test_non_utf8_file_is_policy_error(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_bytes(b'[plugins.x]\nuser = "caf\xe9"\n')
    with pytest.raises(PolicyError) as info:
        Policy.load(path)
    assert info.value.source == str(path)
    assert "not valid UTF-8" in info.value.reason


def test_oversized_file_is_policy_error(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_bytes(b"# padding\n" * 200_000)
    with pytest.raises(PolicyError, match="larger than"):
        Policy.load(path)


@pytest.mark.parametrize(
    "text",
    [
        "[defaults]\nmax_message_bytes = " + "9" * 5000 + "\n",
        "a = " + "[" * 50_000,
    ],
    ids=["huge-integer", "deep-nesting"],
)
def test_hostile_toml_is_policy_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(PolicyError, match="invalid TOML"):
        Policy.load(path)


def test_error_names_file_plugin_and_key(
    tmp_path: Path, notifications: Path
) -> None:
    path = tmp_path / "policy.toml"
    text = EXAMPLE.replace("@NOTIFICATIONS@", str(notifications))
    path.write_text(text.replace("memory_mb = 64", "memory_mb = 0"))
    with pytest.raises(PolicyError) as info:
        Policy.load(path)
    error = info.value
    key = "plugins.notification.resources.memory_mb"
    assert error.source == str(path)
    assert error.plugin == "notification"
    assert error.key == key
    assert str(path) in str(error)
    assert "'notification'" in str(error)
    assert key in str(error)
    assert "got 0" in str(error)
    assert "from 16 to 1048576" in str(error)


def test_dotted_plugin_name_is_quoted_in_key() -> None:
    error = rejected({"plugins": {"my.plugin": {"network": 1}}})
    assert error.key == 'plugins."my.plugin".network'


def test_dict_source_is_named() -> None:
    with pytest.raises(PolicyError) as info:
        Policy.from_dict(plugin({"network": 1}), source="inline")
    assert info.value.source == "inline"


# Objects built in code are held to the same rules


@pytest.mark.parametrize(
    "changes",
    [
        {"memory_mb": 0},
        {"cpu_seconds": -1},
        {"memory_mb": True},
        {"file_descriptors": 7},
        {"timeout": math.nan},
        {"timeout": 0},
    ],
)
def test_resources_built_in_code_validated(changes: dict[str, Any]) -> None:
    with pytest.raises(PolicyError):
        Resources(**changes)


@pytest.mark.parametrize(
    "changes",
    [
        {"read": ("relative",)},
        {"read": ("/tmp/../etc",)},
        {"read": ("/tmp/",)},
        {"read": ["/tmp"]},
        {"write": ("/tmp\0",)},
        {"readonly": True, "write": ("/tmp",)},
        {"readonly": 1},
    ],
)
def test_filesystem_built_in_code_validated(changes: dict[str, Any]) -> None:
    with pytest.raises(PolicyError):
        FilesystemPolicy(**changes)


@pytest.mark.parametrize(
    "changes",
    [
        {"name": "bad name"},
        {"name": ""},
        {"user": -1},
        {"user": True},
        {"capabilities": {"notify"}},
        {"capabilities": frozenset({"Bad"})},
        {"env": ["HOME"]},
        {"env": ("HOME", "HOME")},
        {"network": 1},
        {"max_message_bytes": 10},
        {"resources": {"memory_mb": 64}},
        {"filesystem": {"read": ()}},
    ],
)
def test_policy_built_in_code_validated(changes: dict[str, Any]) -> None:
    with pytest.raises(PolicyError):
        Policy(**{"name": "x", **changes})


# Arbitrary input raises PolicyError and nothing else

POLICY_KEYS = [
    "capabilities",
    "network",
    "filesystem",
    "resources",
    "user",
    "env",
    "max_message_bytes",
]
RESOURCE_KEYS = [*INT_BOUNDS, "timeout"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-2, max_value=70000),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=8),
)
keys = st.one_of(st.text(max_size=10), st.integers(), st.none())
junk = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(keys, children, max_size=4),
    ),
    max_leaves=30,
)
paths = st.sampled_from(["/", "/tmp", "/tmp/", "/missing", "/a/../b", "x"])
names = st.sampled_from(["notify", "HOME", "nobody", "Bad", "", "a\n"])
resource_tables = st.dictionaries(
    st.sampled_from([*RESOURCE_KEYS, "other"]), scalars, max_size=4
)
filesystem_tables = st.dictionaries(
    st.sampled_from(["read", "write", "readonly", "other"]),
    st.one_of(st.lists(st.one_of(paths, scalars), max_size=3), scalars),
    max_size=3,
)
policy_tables = st.dictionaries(
    st.sampled_from([*POLICY_KEYS, "other"]),
    st.one_of(
        scalars,
        st.lists(st.one_of(names, scalars), max_size=3),
        resource_tables,
        filesystem_tables,
    ),
    max_size=5,
)
policy_files = st.fixed_dictionaries(
    {},
    optional={
        "defaults": policy_tables,
        "plugins": st.dictionaries(
            st.one_of(st.sampled_from(["x", "a.b"]), keys),
            policy_tables,
            max_size=3,
        ),
    },
)

nested_tables = st.builds(
    lambda limits, filesystem: plugin(
        {"resources": limits, "filesystem": filesystem}
    ),
    resource_tables,
    filesystem_tables,
)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.one_of(junk, policy_files, nested_tables))
def test_junk_raises_only_policy_error(data: Any) -> None:
    try:
        policies = Policy.from_dict(data)
    except PolicyError:
        return
    assert isinstance(policies, PolicySet)


# Secrets and host file access


def test_secrets_parsed_as_tuple() -> None:
    policy = Policy.from_dict(plugin({"secrets": ["API_TOKEN", "db.pass"]}))
    assert policy.for_plugin("x").secrets == ("API_TOKEN", "db.pass")


def test_secrets_default_to_none() -> None:
    assert Policy.from_dict({}).for_plugin("x").secrets == ()


@pytest.mark.parametrize(
    ("value", "key", "message"),
    [
        ("API_TOKEN", "plugins.x.secrets", "expected a list"),
        (["1TOKEN"], "plugins.x.secrets[0]", "invalid secret name"),
        (["A B"], "plugins.x.secrets[0]", "invalid secret name"),
        ([""], "plugins.x.secrets[0]", "invalid secret name"),
        (["A" * 129], "plugins.x.secrets[0]", "invalid secret name"),
        (["A", "A"], "plugins.x.secrets[1]", "duplicate entry"),
    ],
    ids=["not-list", "digit-first", "space", "empty", "too-long", "dup"],
)
def test_invalid_secrets_rejected(value: Any, key: str, message: str) -> None:
    error = rejected(plugin({"secrets": value}))
    assert error.key == key
    assert message in error.reason


def test_files_parsed_as_folders(tmp_path: Path) -> None:
    from sandbox.policy import FileAccessPolicy

    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    out.mkdir()
    table = {"files": {"read": [str(data)], "write": [str(out)]}}
    files = Policy.from_dict(plugin(table)).for_plugin("x").files
    assert files == FileAccessPolicy(read=(str(data),), write=(str(out),))
    assert files.readable() == (str(data), str(out))


def test_files_default_to_none() -> None:
    from sandbox.policy import FileAccessPolicy

    assert Policy.from_dict({}).for_plugin("x").files == FileAccessPolicy()


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("data", "not absolute"),
        ("/@ROOT@/data/", "not normalised"),
        ("/@ROOT@//data", "not normalised"),
        ("/@ROOT@/data/../data", "'..'"),
        ("/@ROOT@/missing", "does not exist"),
        ("/@ROOT@/data/file.txt", "is not a folder"),
        ("/@ROOT@/a\0b", "NUL"),
        (7, "expected a path string"),
    ],
    ids=[
        "relative",
        "trailing-slash",
        "double-slash",
        "dotdot",
        "missing",
        "file",
        "nul",
        "number",
    ],
)
@pytest.mark.parametrize("access", ["read", "write"])
def test_invalid_files_folder_rejected(
    tmp_path: Path, path: Any, message: str, access: str
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "file.txt").write_text("x")
    if isinstance(path, str):
        path = path.replace("/@ROOT@", str(tmp_path))
    error = rejected(plugin({"files": {access: [path]}}))
    assert error.key == f"plugins.x.files.{access}[0]"
    assert message in error.reason


def test_files_unknown_key_rejected() -> None:
    error = rejected(plugin({"files": {"writ": []}}))
    assert error.key == "plugins.x.files.writ"
    assert "did you mean 'write'?" in error.reason


def test_files_not_table_rejected() -> None:
    error = rejected(plugin({"files": ["/tmp"]}))
    assert error.key == "plugins.x.files"
    assert "expected a table" in error.reason


def test_files_duplicate_folder_rejected(tmp_path: Path) -> None:
    error = rejected(plugin({"files": {"read": [str(tmp_path)] * 2}}))
    assert error.key == "plugins.x.files.read[1]"
    assert "duplicate entry" in error.reason


def test_files_lists_replace_field_by_field(tmp_path: Path) -> None:
    from sandbox.policy import FileAccessPolicy

    folders = [tmp_path / name for name in ("a", "b", "c")]
    for folder in folders:
        folder.mkdir()
    a, b, c = (str(folder) for folder in folders)
    policies = Policy.from_dict(
        {
            "defaults": {
                "secrets": ["SHARED"],
                "files": {"read": [a], "write": [b]},
            },
            "plugins": {
                "x": {"secrets": ["OWN"], "files": {"read": [c]}},
                "y": {"secrets": []},
            },
        }
    )
    x = policies.for_plugin("x")
    assert x.secrets == ("OWN",)
    assert x.files == FileAccessPolicy(read=(c,), write=(b,))
    y = policies.for_plugin("y")
    assert y.secrets == ()
    assert y.files == FileAccessPolicy(read=(a,), write=(b,))
    assert policies.for_plugin("z").secrets == ("SHARED",)


def test_file_access_policy_checks_fields() -> None:
    from sandbox.policy import FileAccessPolicy

    with pytest.raises(PolicyError, match="expected a tuple of paths"):
        FileAccessPolicy(read=["/tmp"])  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="not normalised"):
        FileAccessPolicy(write=("/tmp/",))


def test_policy_checks_secret_fields() -> None:
    with pytest.raises(PolicyError, match="expected a tuple"):
        Policy(name="x", secrets=["A"])  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="invalid secret name"):
        Policy(name="x", secrets=("A B",))
    with pytest.raises(PolicyError, match="expected a FileAccessPolicy"):
        Policy(name="x", files={"read": ()})  # type: ignore[arg-type]


# The network setting: false, true or a list of TCP ports


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (False, False),
        (True, True),
        ([443], (443,)),
        ([8080, 443, 1, 65535], (8080, 443, 1, 65535)),
        ((443,), (443,)),
    ],
)
def test_network_forms_accepted(value: Any, expected: Any) -> None:
    policy = Policy.from_dict(plugin({"network": value})).for_plugin("x")
    assert policy.network == expected


def test_network_port_list_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("[plugins.x]\nnetwork = [443, 8080]\n")
    policy = Policy.load(path).for_plugin("x")
    assert policy.network == (443, 8080)


def test_network_port_list_replaces_default() -> None:
    data = {
        "defaults": {"network": [443]},
        "plugins": {"x": {"network": False}, "y": {"network": [80]}},
    }
    policies = Policy.from_dict(data)
    assert policies.for_plugin("x").network is False
    assert policies.for_plugin("y").network == (80,)
    assert policies.for_plugin("unlisted").network == (443,)


@pytest.mark.parametrize(
    ("value", "key", "shown"),
    [
        (["443"], "plugins.x.network[0]", "'443' (str)"),
        ([0], "plugins.x.network[0]", "0 (int)"),
        ([70000], "plugins.x.network[0]", "70000 (int)"),
        ([-1], "plugins.x.network[0]", "-1 (int)"),
        ([443, True], "plugins.x.network[1]", "True (bool)"),
        ([443.0], "plugins.x.network[0]", "443.0 (float)"),
        ([443, 8080, 443], "plugins.x.network[2]", "duplicate entry 443"),
        ([], "plugins.x.network", "empty"),
        ("443", "plugins.x.network", "'443' (str)"),
        (443, "plugins.x.network", "443 (int)"),
        ({"connect": [443]}, "plugins.x.network", "(dict)"),
    ],
)
def test_bad_network_rejected(value: Any, key: str, shown: str) -> None:
    error = rejected(plugin({"network": value}))
    assert error.key == key
    assert error.plugin == "x"
    assert shown in error.reason


def test_bad_port_error_names_file_plugin_and_key(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("[plugins.web]\nnetwork = [443, 0]\n")
    with pytest.raises(PolicyError) as info:
        Policy.load(path)
    error = info.value
    assert error.source == str(path)
    assert error.plugin == "web"
    assert error.key == "plugins.web.network[1]"
    assert "from 1 to 65535" in error.reason


@pytest.mark.parametrize(
    "network",
    [[443], (), (0,), (70000,), ("443",), (True,), (443, 443), 1, None],
)
def test_network_built_in_code_validated(network: Any) -> None:
    with pytest.raises(PolicyError) as info:
        Policy(name="x", network=network)
    assert info.value.key is not None
    assert info.value.key.startswith("network")


def test_network_tuple_built_in_code_accepted() -> None:
    policy = Policy(name="x", network=(443, 8080))
    assert policy.network == (443, 8080)
    assert hash(policy) == hash(Policy(name="x", network=(443, 8080)))


@pytest.mark.parametrize(
    "folder",
    ["/proc", "/proc/self", "/sys", "/sys/kernel", "/dev", "/dev/shm"],
)
@pytest.mark.parametrize("key", ["read", "write"])
def test_files_pseudo_filesystem_rejected(folder: str, key: str) -> None:
    if not Path(folder).is_dir():
        pytest.skip(f"{folder} is not a folder on this machine")
    with pytest.raises(PolicyError) as info:
        Policy.from_dict({"plugins": {"x": {"files": {key: [folder]}}}})
    error = info.value
    assert error.key == f"plugins.x.files.{key}[0]"
    assert "pseudo-filesystem" in error.reason
    assert folder.split("/")[1] in error.reason


def test_files_link_to_pseudo_filesystem_rejected(tmp_path: Path) -> None:
    link = tmp_path / "status"
    link.symlink_to("/proc")
    with pytest.raises(PolicyError) as info:
        Policy.from_dict({"defaults": {"files": {"read": [str(link)]}}})
    error = info.value
    assert error.key == "defaults.files.read[0]"
    assert "resolves to '/proc'" in error.reason


def test_files_folder_named_like_pseudo_accepted(tmp_path: Path) -> None:
    # Only /proc and what lies beneath it are rejected, not any folder
    # whose name is proc.
    folder = tmp_path / "proc"
    folder.mkdir()
    policies = Policy.from_dict(
        {"defaults": {"files": {"read": [str(folder)]}}}
    )
    assert policies.for_plugin("x").files.read == (str(folder),)
