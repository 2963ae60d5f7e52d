"""Attacks on the path of the uid registry by a user other than root.

Only root may be able to replace the registry, because the uid that it
records for a plugin owns the plugin's files. Each test names the
protection it expects.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.uids import DEFAULT_PLUGIN_UIDS, register_plugin_uids

NOBODY = 65534
REGISTRY_NAME = "plugin-uids.json"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="giving files to another user needs root"
)


@pytest.fixture
def top() -> Iterator[Path]:
    """Return a folder of root, mode 755, that contains the test's folders."""
    folder = Path(tempfile.mkdtemp(prefix="sandbox-redteam2-registry-"))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _folder_of_nobody(top: Path) -> Path:
    """Return a folder of user nobody (65534), as if that user made it."""
    folder = top / "user"
    folder.mkdir(mode=0o755)
    os.chown(folder, NOBODY, NOBODY)
    return folder


def _point_link(link: Path, target: Path) -> None:
    """Make ``link`` a symlink of user nobody that leads to ``target``."""
    if link.is_symlink():
        link.unlink()
    link.symlink_to(target)
    os.lchown(link, NOBODY, NOBODY)


def _root_folder(top: Path, name: str) -> Path:
    folder = top / name
    folder.mkdir(mode=0o755)
    return folder


def _hash_start(name: str, size: int) -> int:
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % size


def test_registry_path_through_user_symlink(top: Path) -> None:
    link = _folder_of_nobody(top) / "registry"
    _point_link(link, _root_folder(top, "trusted"))
    with pytest.raises(PermissionError):
        register_plugin_uids(
            ["billing"], DEFAULT_PLUGIN_UIDS, link / REGISTRY_NAME
        )


def test_registry_path_through_root_symlink(top: Path) -> None:
    """A link is rejected even where only root could re-point it, because
    the folders it leads to are never checked."""
    link = _root_folder(top, "links") / "registry"
    link.symlink_to(_root_folder(top, "trusted"))
    with pytest.raises(PermissionError, match=f"{link} is a symbolic link"):
        register_plugin_uids(
            ["billing"], DEFAULT_PLUGIN_UIDS, link / REGISTRY_NAME
        )
    assert not (top / "trusted" / REGISTRY_NAME).exists()


def test_repointed_registry_keeps_reserved_uid(top: Path) -> None:
    uids = DEFAULT_PLUGIN_UIDS
    link = _folder_of_nobody(top) / "registry"
    _point_link(link, _root_folder(top, "first"))
    registry = link / REGISTRY_NAME
    try:
        installed, _ = register_plugin_uids(["billing"], uids, registry)
    except PermissionError:
        return  # Rejecting the path also closes the hole.
    target = uids.index(installed["billing"])
    intruder = next(
        name
        for name in (f"aa{i}" for i in itertools.count())
        if _hash_start(name, len(uids)) == target
    )
    _point_link(link, _root_folder(top, "second"))
    assigned, _ = register_plugin_uids([intruder], uids, registry)
    assert assigned[intruder] != installed["billing"]


def test_rejected_registry_creates_nothing(top: Path) -> None:
    user_folder = _folder_of_nobody(top)
    planned = user_folder / "new"
    with pytest.raises(PermissionError):
        register_plugin_uids(
            ["billing"], DEFAULT_PLUGIN_UIDS, planned / REGISTRY_NAME
        )
    assert not planned.exists()
