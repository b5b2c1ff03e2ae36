"""Aliases (``production``, ``staging``...) with their history, and each model's A/B traffic config.

An alias points at one version of a model. Every move is recorded in ``alias_events``, so
:meth:`AliasStore.rollback` can undo the last move, and repeated rollbacks walk further
back. Registering never moves an alias. A version whose stored artifact no longer loads is
refused before an alias points at it, since a server would fail to load it.

Example (``reg`` a :class:`~dlforge.registry.store.Registry`, which holds an AliasStore):
    >>> reg.set_alias("iris", "production", 2)  # doctest: +SKIP
    1
    >>> reg.rollback("iris", "production")  # doctest: +SKIP
    1
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dlforge.errors import ConflictError, DlforgeError, NotFoundError, RegistryError
from dlforge.registry.db import Database, aliases_t, events_t, listing, models_t, now
from dlforge.registry.names import validate_name
from dlforge.registry.versions import (ModelVersion, VersionStore, check_alias, check_version, json_ready, model_row,
                                       version_numbers)


class AliasStore:
    """The aliases, their history and the traffic configs in ``db``; ``versions`` resolves versions."""

    def __init__(self, db: Database, versions: VersionStore) -> None:
        self._db = db
        self._versions = versions

    def aliases(self, name: str) -> dict[str, int]:
        """``{alias: version}`` for ``name``."""
        name = validate_name(name)
        with self._db.read() as conn:
            model = model_row(conn, name)
            return dict(conn.execute(sa.select(aliases_t.c.alias, aliases_t.c.version)
                                     .where(aliases_t.c.model_id == model.id).order_by(aliases_t.c.alias)).all())

    def set_alias(self, name: str, alias: str, version: int) -> int | None:
        """Point ``alias`` at an existing ``version``; returns the version it pointed at before (None if new)."""
        name, alias, version = validate_name(name), check_alias(alias), check_version(version)
        # outside the write lock: it loads the model
        self._refuse_unservable(self._versions.get(name, version=version), alias)

        def tx(conn: Connection) -> int | None:
            model = model_row(conn, name, lock=True)
            numbers = version_numbers(conn, model.id)
            if version not in numbers:
                raise NotFoundError(f"model {name!r} has no version {version}",
                                    hint=f"it has versions {listing(numbers)}")
            where = (aliases_t.c.model_id == model.id, aliases_t.c.alias == alias)
            before = conn.execute(sa.select(aliases_t.c.version).where(*where)).scalar()
            if before == version:
                return before  # nothing to change or to roll back later
            if before is None:
                conn.execute(sa.insert(aliases_t).values(model_id=model.id, alias=alias, version=version))
            else:
                conn.execute(sa.update(aliases_t).where(*where).values(version=version))
            conn.execute(sa.insert(events_t).values(model_id=model.id, alias=alias, from_version=before,
                                                    to_version=version, at=now(), undone=False))
            return before

        return self._db.write(tx)

    def rollback(self, name: str, alias: str) -> int:
        """Undo the last move of ``alias``: point it back at the version it had before; returns that version."""
        name, alias = validate_name(name), check_alias(alias)
        with self._db.read() as conn:
            planned = _last_move(conn, model_row(conn, name).id, alias)
        if planned is not None and planned.from_version is not None:
            with suppress(NotFoundError):  # a deleted version: the transaction below says so
                self._refuse_unservable(self._versions.get(name, version=planned.from_version), alias)

        def tx(conn: Connection) -> int:
            model = model_row(conn, name, lock=True)
            where = (aliases_t.c.model_id == model.id, aliases_t.c.alias == alias)
            current = conn.execute(sa.select(aliases_t.c.version).where(*where)).scalar()
            if current is None:
                known = list(conn.execute(sa.select(aliases_t.c.alias).where(aliases_t.c.model_id == model.id)
                                          .order_by(aliases_t.c.alias)).scalars())
                raise NotFoundError(f"model {name!r} has no alias {alias!r}",
                                    hint=f"its aliases: {listing(known)}" if known else "it has no aliases")
            last = _last_move(conn, model.id, alias)
            how = f"point it at another version with `dlforge registry alias {name} {alias} VERSION`"
            if last is None or last.from_version is None:
                raise RegistryError(f"alias {alias!r} of model {name!r} has nothing to roll back to: version "
                                    f"{current} is the first version it pointed at", hint=how)
            if last.from_version not in version_numbers(conn, model.id):
                raise RegistryError(f"alias {alias!r} of model {name!r} pointed at version {last.from_version} "
                                    "before, which has been deleted", hint=how)
            if planned is None or last.id != planned.id:  # moved by another process since the check above
                raise ConflictError(f"alias {alias!r} of model {name!r} changed during the rollback",
                                    hint="look at `dlforge registry show` and roll back again if still wanted")
            conn.execute(sa.update(aliases_t).where(*where).values(version=last.from_version))
            conn.execute(sa.update(events_t).where(events_t.c.id == last.id).values(undone=True))
            return last.from_version

        return self._db.write(tx)

    @staticmethod
    def _refuse_unservable(mv: ModelVersion, alias: str) -> None:
        """ConflictError when the stored artifact of ``mv`` does not pass ``check_artifact`` (a damaged blob)."""
        from dlforge.registry.validate import check_artifact  # torch, as in register

        try:
            check_artifact(mv.path)
        except Exception as err:  # anything that fails here would fail the server's load too
            reason = err.message if isinstance(err, DlforgeError) else f"{type(err).__name__}: {err}"
            reason = reason.replace(f"{mv.path}/", "").replace(str(mv.path), "the artifact")  # no host paths
            raise ConflictError(f"alias {alias!r} of model {mv.name!r} cannot point at version {mv.version}: its "
                                f"stored artifact does not load ({reason})",
                                hint="point it at a version that loads, or register a good artifact as a new "
                                     f"version; `dlforge registry show {mv.name}` lists the versions") from None

    def traffic(self, name: str) -> dict[str, Any] | None:
        """The stored A/B traffic config of ``name`` (see ``dlforge.serve.routing``), None if unset."""
        name = validate_name(name)
        with self._db.read() as conn:
            return model_row(conn, name).traffic

    def set_traffic(self, name: str, config: dict[str, Any] | None) -> None:
        """Store (or with None clear) the traffic config of ``name``; the server validates its shape."""
        name = validate_name(name)
        if config is not None:
            config = json_ready(config, "traffic config")
            if not isinstance(config, dict):
                raise RegistryError("traffic config must be a JSON object",
                                    hint='e.g. {"variants": [{"alias": "production", "weight": 0.9}, ...]}')

        def tx(conn: Connection) -> None:
            model = model_row(conn, name, lock=True)
            conn.execute(sa.update(models_t).where(models_t.c.id == model.id).values(traffic=config))

        self._db.write(tx)


def _last_move(conn: Connection, model_id: int, alias: str) -> sa.Row | None:
    """The newest move of ``alias`` not rolled back yet."""
    return conn.execute(sa.select(events_t).where(
        events_t.c.model_id == model_id, events_t.c.alias == alias, events_t.c.undone.is_(False))
        .order_by(events_t.c.id.desc()).limit(1)).first()
