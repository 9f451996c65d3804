"""Issue 9, item 2: the store holds agents' signing secrets, so its files are its owner's alone.

A fresh home is created 0700 and the database, its -wal and its -shm 0600, whatever the umask (the tests set a
permissive 022, under which SQLite alone makes 0644 files); a database opened up to the group and others is set
back to 0600 at the next open, with a warning; a home folder the user made keeps its mode.
"""

from __future__ import annotations

import logging
import os
import stat

import pytest

from avala_infer import Avala
from avala_infer.store import Store

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    """A umask that lets the group and others read new files (a common default), restored afterwards."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def db_files(home):
    db = home / "avala-infer.db"
    return db, home / "avala-infer.db-wal", home / "avala-infer.db-shm"


def test_a_fresh_home_is_private_to_its_owner(tmp_path, umask_022):
    home = tmp_path / "parents" / "home"
    with Avala(home=home, worker=False) as client:
        client.projects.create("p")  # a write: the -wal and -shm files exist while the client is open
        db, wal, shm = db_files(home)
        assert wal.exists() and shm.exists()
        assert {path.name: oct(mode(path)) for path in (home, db, wal, shm)} == {
            "home": "0o700",
            "avala-infer.db": "0o600",
            "avala-infer.db-wal": "0o600",
            "avala-infer.db-shm": "0o600",
        }
    assert mode(tmp_path / "parents") == 0o755  # the folders above are not the store's: mkdir's usual mode


def test_a_store_opened_up_to_others_is_made_private_again_with_a_warning(tmp_path, umask_022, caplog):
    home = tmp_path / "home"
    Store(home).close()
    db, wal, shm = db_files(home)
    keeper = Store(home)  # holds the store open so that the -wal and -shm files stay
    try:
        for path in (db, wal, shm):
            os.chmod(path, 0o644)
        with caplog.at_level(logging.WARNING, logger="avala_infer.store.db"):
            Store(home).close()
        assert [oct(mode(path)) for path in (db, wal, shm)] == ["0o600"] * 3
        warned = [r.getMessage() for r in caplog.records if r.name == "avala_infer.store.db"]
        assert len(warned) == 3 and all("(mode 644)" in w and "set to 600" in w for w in warned), warned
        assert str(db) in warned[0] and "agents' secrets" in warned[0]

        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="avala_infer.store.db"):
            Store(home).close()  # private already: nothing to say
        assert not [r for r in caplog.records if r.name == "avala_infer.store.db"]
    finally:
        keeper.close()


def test_a_home_folder_the_user_made_keeps_its_mode(tmp_path, umask_022, caplog):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    with caplog.at_level(logging.WARNING, logger="avala_infer.store.db"):
        Store(shared).close()
    assert mode(shared) == 0o755 and mode(shared / "avala-infer.db") == 0o600
    assert not [r for r in caplog.records if r.name == "avala_infer.store.db"]  # readable by others: fine

    writable = tmp_path / "team"
    writable.mkdir()
    os.chmod(writable, 0o775)
    with caplog.at_level(logging.WARNING, logger="avala_infer.store.db"):
        Store(writable).close()
    assert mode(writable) == 0o775 and mode(writable / "avala-infer.db") == 0o600  # warned, not changed
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "avala_infer.store.db"]
    assert "writable by its group or others (mode 775)" in warning and f"chmod 700 {writable}" in warning
