"""A registry written before the Registry split opens and works with the code of today.

``fixtures/registry_v1.sql`` is a SQLite dump of a registry.db made by the pre-split
``registry/store.py`` (see its header); ``fixtures/registry_v1_postgresql.sql`` is that
code's PostgreSQL DDL. The schema must stay the same table for table and column for column:
servers and CLIs of both ages share one production database during a rolling upgrade.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from dlforge.errors import RegistryError
from dlforge.registry import Registry
from dlforge.registry.db import Database, metadata
from tests.serve.conftest import save_tiny_classifier

FIXTURES = Path(__file__).parent / "fixtures"
DUMP, PG_DDL = FIXTURES / "registry_v1.sql", FIXTURES / "registry_v1_postgresql.sql"
# the plaintext of the fixture's keys (only their sha256 is in the dump)
ADMIN_KEY, FRONTEND_KEY, REVOKED_KEY = ("dlf_tm_RQL3df8s8ofKhKCYEBrRkZMdIa53K", "dlf_tXSOXIi80hB9b2v8wODwO-l5D-frq5Ln",
                                        "dlf_7o34hhRlVgktvM4QlYfZt31AIlN3Aw9j")
REVISION = 19  # meta.revision in the dump
SERIAL_TABLES = ("alias_events", "api_keys", "meta", "models", "versions")


def _sqlite_from_dump(path: Path) -> Path:
    with sqlite3.connect(path) as conn:
        conn.executescript(DUMP.read_text())
    return path


def _statements(sql: str) -> list[str]:
    """The statements of ``sql`` with comments dropped and whitespace runs made one space."""
    text = "\n".join(line for line in sql.splitlines() if not line.startswith("--"))
    return [" ".join(part.split()) for part in text.split(";") if part.strip()]


def _postgres_from_dump(url: str, tmp_path: Path) -> None:
    """The old DDL, then the dump's rows copied over (typed, through the tables) and the id sequences moved on."""
    source = sa.create_engine(f"sqlite:///{_sqlite_from_dump(tmp_path / 'source.db')}")
    target = sa.create_engine(url)
    with source.connect() as src, target.begin() as dst:
        for statement in _statements(PG_DDL.read_text()):
            dst.exec_driver_sql(statement)
        for table in metadata.sorted_tables:
            rows = [{c.key: row._mapping[c] for c in table.c} for row in src.execute(sa.select(table))]
            if rows:
                dst.execute(sa.insert(table), rows)
        for name in SERIAL_TABLES:
            dst.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), (SELECT max(id) FROM {name}))")
    source.dispose()
    target.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def old(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Registry]:
    """The fixture registry opened by today's code, each stored version's blob a loadable artifact."""
    if request.param == "sqlite":
        url = str(_sqlite_from_dump(tmp_path / "registry.db"))
    else:
        url = request.getfixturevalue("pg_registry_url")
        _postgres_from_dump(url, tmp_path)
    artifact = save_tiny_classifier(tmp_path / "model", seed=0)
    with sqlite3.connect(":memory:") as conn:
        conn.executescript(DUMP.read_text())
        shas = [sha for (sha,) in conn.execute("SELECT sha256 FROM versions")]
    for sha in shas:
        shutil.copytree(artifact, tmp_path / "artifacts" / sha[:2] / sha)
    with Registry(url, artifacts=tmp_path / "artifacts") as reg:
        yield reg


def test_an_old_registry_reads_as_it_was_written(old: Registry) -> None:
    assert old.revision() == REVISION
    assert [(m["name"], m["latest_version"], m["versions"], m["aliases"]) for m in old.models()] == [
        ("digits", 1, 1, {}), ("iris", 3, 2, {"production": 2, "staging": 3})]
    versions = old.versions("iris")
    assert [(v.version, v.metrics, v.metadata["owner"], v.metadata["arch"]) for v in versions] == [
        (2, {"accuracy": 0.6}, "team1", "mlp"), (3, {"accuracy": 0.7}, "team2", "mlp")]
    assert versions[0].path == old.artifacts / versions[0].sha256[:2] / versions[0].sha256
    assert old.get("iris").version == 2 and old.get("iris", alias="staging").version == 3
    assert old.traffic("iris") == {"variants": [{"alias": "production", "weight": 0.9},
                                                {"alias": "staging", "weight": 0.1}]}
    assert old.traffic("digits") is None
    assert (old.check_key(ADMIN_KEY), old.check_key(FRONTEND_KEY), old.check_key(REVOKED_KEY)) == (
        "admin", "predict", None)
    assert [(k["id"], k["label"], k["admin"], k["revoked"]) for k in old.keys()] == [
        (1, "ops", True, False), (2, "frontend", False, False), (3, "gone", False, True)]
    assert old.revision() == REVISION, "reading changed nothing"


def test_an_old_registry_takes_changes_where_it_left_off(old: Registry, tmp_path: Path) -> None:
    # production's history: 1 -> 2 -> 3, rolled back to 2; the move before that came from version 1, deleted since
    with pytest.raises(RegistryError, match="pointed at version 1 before, which has been deleted"):
        old.rollback("iris", "production")
    assert old.set_alias("iris", "production", 3) == 2 and old.rollback("iris", "production") == 2
    new = save_tiny_classifier(tmp_path / "new", seed=7)
    assert old.register(new, "iris").version == 4
    assert old.register(new, "old").version == 3, "a retired model continues its count"
    digits = old.get("digits")
    old.delete("digits", 1)
    assert not digits.path.exists() and [m["name"] for m in old.models()] == ["iris", "old"]
    key = old.create_key(label="after")
    assert old.check_key(key) == "predict" and [k["id"] for k in old.keys()] == [1, 2, 3, 4]
    assert old.revision() == REVISION + 6, "six changes; the refused rollback bumped nothing"


def test_the_schema_is_the_one_old_registries_have(tmp_path: Path) -> None:
    def schema(file: Path) -> list[tuple[str, str, str]]:
        with sqlite3.connect(file) as conn:
            rows = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
        return [(kind, name, " ".join((sql or "").split())) for kind, name, sql in rows]

    fresh = Database(f"sqlite:///{tmp_path / 'fresh.db'}")
    fresh.revision()  # creates the tables
    fresh.close()
    assert schema(tmp_path / "fresh.db") == schema(_sqlite_from_dump(tmp_path / "old.db"))
    dialect = postgresql.dialect()
    today = [str(sa.schema.CreateTable(t).compile(dialect=dialect)) for t in metadata.sorted_tables]
    today += [str(sa.schema.CreateIndex(i).compile(dialect=dialect))
              for t in metadata.sorted_tables for i in sorted(t.indexes, key=lambda i: i.name)]
    assert sorted(" ".join(s.split()) for s in today) == sorted(_statements(PG_DDL.read_text()))
