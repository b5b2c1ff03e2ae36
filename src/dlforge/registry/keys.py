"""API keys for the model server, stored as hashes in the registry database.

A key is ``"dlf_"`` + 32 urlsafe characters (192 random bits), shown once when made; the
database keeps its sha256, a label, whether it may administer, and whether it was revoked.

Example:
    >>> keys = KeyStore(Database("sqlite://"))
    >>> key = keys.create(label="ci")
    >>> keys.check(key), keys.check("dlf_unknown")
    ('predict', None)
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dlforge.errors import NotFoundError, RegistryError
from dlforge.registry.db import Database, keys_t, listing, now

KEY_PREFIX = "dlf_"
KEY_BYTES = 24  # 192 random bits, 32 urlsafe characters after the prefix


class KeyStore:
    """Create, check, list and revoke the API keys in ``db``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def create(self, *, admin: bool = False, label: str = "") -> str:
        """A new API key, ``"dlf_"`` + 32 urlsafe characters; only its hash is stored, so show it now.

        Example:
            >>> key = KeyStore(Database("sqlite://")).create(label="ci")
            >>> key.startswith("dlf_"), len(key)
            (True, 36)
        """
        if not isinstance(label, str) or len(label) > 200:
            raise RegistryError("key label must be a string of at most 200 characters")
        key = KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)
        self._db.write(lambda conn: conn.execute(sa.insert(keys_t).values(
            label=label, key_hash=hash_key(key), admin=bool(admin), created=now(), revoked=False)))
        return key

    def provision(self, key: str, *, admin: bool = False, label: str = "provisioned") -> bool:
        """Make a key chosen elsewhere (a Kubernetes Secret, a vault) valid; True when it was new.

        Idempotent, so every replica may provision the same key at start-up; a revoked key
        stays revoked. A key must be at least as strong as the ones :meth:`create` makes.

        Example:
            >>> keys = KeyStore(Database("sqlite://"))
            >>> key = "dlf_" + "x" * 32
            >>> keys.provision(key, admin=True), keys.provision(key, admin=True), keys.check(key)
            (True, False, 'admin')
        """
        if not isinstance(key, str) or len(key) < len(KEY_PREFIX) + 32 or not key.isascii() or any(c.isspace() for c in key):
            raise RegistryError("a provisioned API key must be at least 36 printable characters with no spaces",
                                hint="make one with: python -c \"import secrets; print('dlf_' + secrets.token_urlsafe(24))\"")

        def tx(conn: Connection) -> bool:
            row = conn.execute(sa.select(keys_t.c.admin).where(keys_t.c.key_hash == hash_key(key))).first()
            if row is not None:
                if bool(row.admin) != bool(admin):
                    raise RegistryError("this provisioned key is already registered with another role",
                                        hint="use different keys for admin and predict")
                return False
            conn.execute(sa.insert(keys_t).values(label=label, key_hash=hash_key(key), admin=bool(admin),
                                                  created=now(), revoked=False))
            return True

        try:
            return self._db.write(tx)
        except sa.exc.IntegrityError:  # another replica provisioned it at the same moment
            return False

    def check(self, key: str) -> str | None:
        """``"admin"``, ``"predict"`` or None for an unknown or revoked key."""
        if not isinstance(key, str) or not key:
            return None
        with self._db.read() as conn:
            row = conn.execute(sa.select(keys_t.c.admin, keys_t.c.revoked)
                               .where(keys_t.c.key_hash == hash_key(key))).first()
        if row is None or row.revoked:
            return None
        return "admin" if row.admin else "predict"

    def list(self) -> list[dict[str, Any]]:
        """Every key's ``{"id", "label", "admin", "created", "revoked"}`` (never the hash)."""
        with self._db.read() as conn:
            rows = conn.execute(sa.select(keys_t.c.id, keys_t.c.label, keys_t.c.admin, keys_t.c.created,
                                          keys_t.c.revoked).order_by(keys_t.c.id)).all()
        return [dict(row._mapping) for row in rows]

    def revoke(self, key_id: int) -> None:
        """Revoke key ``key_id`` (revoking twice is harmless); NotFoundError for an unknown id."""

        def tx(conn: Connection) -> None:
            if conn.execute(sa.update(keys_t).where(keys_t.c.id == key_id).values(revoked=True)).rowcount == 0:
                ids = list(conn.execute(sa.select(keys_t.c.id).order_by(keys_t.c.id)).scalars())
                raise NotFoundError(f"no API key with id {key_id}",
                                    hint=f"key ids: {listing(ids)}" if ids else "there are no keys; create one "
                                                                                "with `dlforge keys create`")

        self._db.write(tx)


def hash_key(key: str) -> str:
    """The stored form of ``key``: its sha256 in hex.

    A plain sha256 is the right tool here (as for GitHub tokens): keys are 192 random bits,
    not passwords, so there is nothing for a slow salted hash to protect against, and a
    deterministic hash lets the unique index find the key in one lookup.
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()
