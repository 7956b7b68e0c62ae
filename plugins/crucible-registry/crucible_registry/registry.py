"""The registry: versions of trained weights, aliases with an append-only history, tags.

:class:`Registry` is the library API; ``crucible models`` is a thin layer over
it. Every change is one SQLite transaction (:mod:`crucible_registry.db`), so
two processes see each other's changes whole or not at all.

- **Versions** count up per name. A version records the run, the checkpoint's
  artifact (sha256, size, its copy in the core artifact store), the base
  model and revision, the TrainingJob config hash, the dataset hash, the
  run's metrics and the hash of the run's manifest at registration.
  Registering the same config hash and checksums again returns the existing
  version. The artifact is pinned (:mod:`crucible_core.runtime.pins`), so
  checkpoint retention and clean-ups keep it.
- **Aliases** (any name: production, staging, champion...) point at one
  version. Every move appends an event (who, when, why, the previous holder);
  :meth:`Registry.rollback` undoes the newest move not yet undone, so
  repeated rollbacks walk back through the history. A move may say which
  version it expects the alias to hold (``expected``): if another process
  moved it first, the move is refused with ``Conflict``.
- **Archived** versions are kept (and stay pinned) but cannot take an alias.
"""

from __future__ import annotations

import difflib
import getpass
import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import msgspec

from crucible_core.errors import ConfigError, Conflict, NotFound
from crucible_core.runtime import pins
from crucible_core.runtime.artifacts import LocalArtifactStore
from crucible_registry import db
from crucible_registry.names import ModelRef, check_alias, check_name, parse_ref

__all__ = ["UNSET", "AliasEvent", "ArtifactRef", "Model", "Registry", "Version"]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: ``expected`` not given: move the alias whatever it holds.
UNSET: Final = _Unset()


class ArtifactRef(msgspec.Struct, frozen=True, kw_only=True):
    """One file or directory of a version, by content."""

    role: str
    sha256: str
    size_bytes: int
    store_uri: str
    run_path: str


class Version(msgspec.Struct, frozen=True, kw_only=True):
    """One registered version."""

    name: str
    version: int
    run_id: str
    run_dir: str
    checkpoint: str
    step: int | None
    backend: str
    base_model: str
    base_revision: str | None
    config_hash: str
    dataset_hash: str | None
    manifest_hash: str
    metrics: dict[str, float]
    created_at: str
    created_by: str
    artifacts: list[ArtifactRef]
    tags: dict[str, str]
    aliases: list[str]
    archived_at: str | None = None
    archived_by: str | None = None
    archive_reason: str | None = None
    existing: bool = False  # register() found it already registered

    @property
    def archived(self) -> bool:
        return self.archived_at is not None


class AliasEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One move of an alias (append-only)."""

    seq: int
    name: str
    alias: str
    action: str  # "set" or "rollback"
    version: int
    previous: int | None
    reverts: int | None
    actor: str
    at: str
    reason: str


class Model(msgspec.Struct, frozen=True, kw_only=True):
    """A registered name: its versions, aliases and tags."""

    name: str
    created_at: str
    versions: list[int]
    latest: int | None
    aliases: dict[str, int]
    tags: dict[str, str]


def _now() -> str:
    return datetime.now(UTC).isoformat()


def default_actor() -> str:
    """``$CRUCIBLE_USER``, else the login name."""
    env = os.environ.get("CRUCIBLE_USER", "").strip()
    if env:
        return env
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}" if hasattr(os, "getuid") else "unknown"


def _holder(name: str, identity: str) -> str:
    return f"crucible-registry:{name}:{identity[:16]}"


class Registry:
    """The model registry at ``path`` (default ``$CRUCIBLE_HOME/registry.db``).

    Artifacts go to ``store`` (default: the core artifact store of
    ``$CRUCIBLE_HOME``). Safe to use from several processes at once; one
    instance is for one thread (open one per thread).
    """

    def __init__(
        self, path: str | Path | None = None, *, store: LocalArtifactStore | None = None
    ) -> None:
        self.path = Path(path) if path is not None else db.default_path()
        self.store = store if store is not None else LocalArtifactStore()
        self._conn = db.connect(self.path)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tx(self) -> Any:
        return db.transaction(self._conn, self.path)

    # -- lookups -------------------------------------------------------------

    def _names(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT name FROM models ORDER BY name")]

    def _require_model(self, name: str) -> None:
        check_name(name)
        if self._conn.execute("SELECT 1 FROM models WHERE name = ?", (name,)).fetchone():
            return
        close = difflib.get_close_matches(name, self._names(), n=3, cutoff=0.5)
        raise NotFound(
            f"no registered model {name!r}",
            hint=(
                f"did you mean {', '.join(close)}?"
                if close
                else "`crucible models list` shows the names"
            ),
            closest=close,
        )

    def _require_version(self, name: str, version: int) -> None:
        self._require_model(name)
        if self._conn.execute(
            "SELECT 1 FROM versions WHERE name = ? AND version = ?", (name, version)
        ).fetchone():
            return
        have = [
            r[0]
            for r in self._conn.execute(
                "SELECT version FROM versions WHERE name = ? ORDER BY version", (name,)
            )
        ]
        raise NotFound(
            f"model {name!r} has no version {version}",
            hint=f"its versions: {', '.join(map(str, have)) or 'none'}",
        )

    def _alias_holder(self, name: str, alias: str) -> int | None:
        row = self._conn.execute(
            "SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)
        ).fetchone()
        return None if row is None else int(row[0])

    def resolve(self, ref: str | ModelRef) -> Version:
        """The version ``NAME/3``, ``NAME@alias``, ``NAME/latest`` (or ``NAME``) names."""
        r = parse_ref(ref) if isinstance(ref, str) else ref
        self._require_model(r.name)
        if r.alias is not None:
            held = self._alias_holder(r.name, r.alias)
            if held is None:
                have = sorted(self._aliases(r.name))
                close = difflib.get_close_matches(r.alias, have, n=3, cutoff=0.5)
                raise NotFound(
                    f"model {r.name!r} has no alias {r.alias!r}",
                    hint=(f"did you mean {', '.join(close)}? " if close else "")
                    + f"its aliases: {', '.join(have) or 'none'}",
                    closest=close,
                )
            return self.version(r.name, held)
        if r.version is not None:
            return self.version(r.name, r.version)
        row = self._conn.execute(
            "SELECT MAX(version) FROM versions WHERE name = ?", (r.name,)
        ).fetchone()
        if row is None or row[0] is None:
            raise NotFound(f"model {r.name!r} has no version yet")
        return self.version(r.name, int(row[0]))

    def _aliases(self, name: str, version: int | None = None) -> dict[str, int]:
        q = "SELECT alias, version FROM aliases WHERE name = ?"
        args: tuple[Any, ...] = (name,)
        if version is not None:
            q += " AND version = ?"
            args = (name, version)
        return {a: int(v) for a, v in self._conn.execute(q + " ORDER BY alias", args)}

    def _tags(self, name: str, version: int) -> dict[str, str]:
        return {
            k: v
            for k, v in self._conn.execute(
                "SELECT key, value FROM tags WHERE name = ? AND version = ? ORDER BY key",
                (name, version),
            )
        }

    def version(self, name: str, version: int, *, existing: bool = False) -> Version:
        """One version, with its artifacts, tags and the aliases it holds."""
        self._require_version(name, version)
        row = self._conn.execute(
            "SELECT run_id, run_dir, checkpoint, step, backend, base_model, base_revision,"
            " config_hash, dataset_hash, manifest_hash, metrics, created_at, created_by,"
            " archived_at, archived_by, archive_reason FROM versions"
            " WHERE name = ? AND version = ?",
            (name, version),
        ).fetchone()
        arts = [
            ArtifactRef(role=r[0], sha256=r[1], size_bytes=r[2], store_uri=r[3], run_path=r[4])
            for r in self._conn.execute(
                "SELECT role, sha256, size_bytes, store_uri, run_path FROM artifacts"
                " WHERE name = ? AND version = ? ORDER BY role",
                (name, version),
            )
        ]
        return Version(
            name=name,
            version=version,
            run_id=row[0],
            run_dir=row[1],
            checkpoint=row[2],
            step=row[3],
            backend=row[4],
            base_model=row[5],
            base_revision=row[6],
            config_hash=row[7],
            dataset_hash=row[8],
            manifest_hash=row[9],
            metrics=msgspec.json.decode(row[10]),
            created_at=row[11],
            created_by=row[12],
            archived_at=row[13],
            archived_by=row[14],
            archive_reason=row[15],
            artifacts=arts,
            tags=self._tags(name, version),
            aliases=sorted(self._aliases(name, version)),
            existing=existing,
        )

    def versions(self, name: str) -> list[Version]:
        """Every version of ``name``, oldest first."""
        self._require_model(name)
        return [
            self.version(name, int(r[0]))
            for r in self._conn.execute(
                "SELECT version FROM versions WHERE name = ? ORDER BY version", (name,)
            )
        ]

    def model(self, name: str) -> Model:
        """One registered name."""
        self._require_model(name)
        created = self._conn.execute(
            "SELECT created_at FROM models WHERE name = ?", (name,)
        ).fetchone()[0]
        vs = [
            int(r[0])
            for r in self._conn.execute(
                "SELECT version FROM versions WHERE name = ? ORDER BY version", (name,)
            )
        ]
        return Model(
            name=name,
            created_at=created,
            versions=vs,
            latest=vs[-1] if vs else None,
            aliases=self._aliases(name),
            tags=self._tags(name, 0),
        )

    def models(self) -> list[Model]:
        """Every registered name, sorted."""
        return [self.model(n) for n in self._names()]

    def history(self, name: str, alias: str | None = None) -> list[AliasEvent]:
        """The alias moves of ``name`` (of one alias if given), oldest first."""
        self._require_model(name)
        q = (
            "SELECT seq, name, alias, action, version, previous, reverts, actor, at, reason"
            " FROM alias_events WHERE name = ?"
        )
        args: tuple[Any, ...] = (name,)
        if alias is not None:
            q += " AND alias = ?"
            args = (name, check_alias(alias))
        return [
            AliasEvent(seq=r[0], name=r[1], alias=r[2], action=r[3], version=r[4], previous=r[5],
                       reverts=r[6], actor=r[7], at=r[8], reason=r[9])
            for r in self._conn.execute(q + " ORDER BY seq", args)
        ]  # fmt: skip

    # -- register ------------------------------------------------------------

    def register(
        self,
        run: str,
        *,
        name: str,
        checkpoint: str | None = None,
        tags: Mapping[str, str] | None = None,
        actor: str | None = None,
    ) -> Version:
        """Register ``run``'s checkpoint (default: its final weights) as a version of ``name``.

        The checkpoint is rehashed against the run's manifest and stored in the
        artifact store first; a missing file or a mismatch raises and nothing
        is recorded. The same config hash and checksums again return the
        existing version (``existing=True``), with ``tags`` set on it.
        """
        from crucible_registry.source import read_candidate, verify_and_store

        check_name(name)
        c = read_candidate(run, checkpoint)
        holder = _holder(name, c.identity)
        # Pin before verifying: retention must not delete it while it is being copied.
        pins.pin(c.sha256, holder, note=f"registering {name} from {c.run_id}/{c.checkpoint}")
        try:
            store_uri, size = verify_and_store(c, self.store)
            with self._tx():
                row = self._conn.execute(
                    "SELECT version FROM versions WHERE name = ? AND identity = ?",
                    (name, c.identity),
                ).fetchone()
                if row is not None:
                    number, existing = int(row[0]), True
                else:
                    existing = False
                    self._conn.execute(
                        "INSERT OR IGNORE INTO models (name, created_at) VALUES (?, ?)",
                        (name, _now()),
                    )
                    number = int(
                        self._conn.execute(
                            "SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE name = ?",
                            (name,),
                        ).fetchone()[0]
                    )
                    self._conn.execute(
                        "INSERT INTO versions (name, version, identity, run_id, run_dir,"
                        " checkpoint, step, backend, base_model, base_revision, config_hash,"
                        " dataset_hash, manifest_hash, metrics, created_at, created_by)"
                        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (name, number, c.identity, c.run_id, str(c.run_dir), c.checkpoint, c.step,
                         c.backend, c.base_model, c.base_revision, c.config_hash, c.dataset_hash,
                         c.manifest_hash, msgspec.json.encode(c.metrics).decode(), _now(),
                         actor or default_actor()),
                    )  # fmt: skip
                    self._conn.execute(
                        "INSERT INTO artifacts (name, version, role, sha256, size_bytes,"
                        " store_uri, run_path) VALUES (?,?,?,?,?,?,?)",
                        (name, number, "weights", c.sha256, size, store_uri, str(c.path)),
                    )
                self._set_tags(name, number, tags or {})
            pins.pin(c.sha256, holder, note=f"{name} v{number} ({c.run_id}/{c.checkpoint})")
        except BaseException:
            # Unpin unless a version holds it (an earlier or a concurrent registration).
            if not self._conn.execute(
                "SELECT 1 FROM versions WHERE name = ? AND identity = ?", (name, c.identity)
            ).fetchone():
                pins.unpin(c.sha256, holder)
            raise
        return self.version(name, number, existing=existing)

    # -- aliases -------------------------------------------------------------

    def set_alias(
        self,
        name: str,
        alias: str,
        version: int,
        *,
        reason: str = "",
        actor: str | None = None,
        expected: int | _Unset | None = UNSET,
    ) -> AliasEvent:
        """Point ``alias`` at ``version``; record the move. ``expected``: the holder the
        caller saw (None: no holder); if the alias holds something else now, Conflict."""
        check_alias(alias)
        with self._tx():
            self._require_version(name, version)
            held = self._alias_holder(name, alias)
            if not isinstance(expected, _Unset) and held != expected:
                raise Conflict(
                    f"{name}@{alias} holds {_shown(held)}, not {_shown(expected)}: "
                    "someone moved it since you looked",
                    hint=f"`crucible models show {name}` shows its history; try again",
                    current=held,
                )
            if held == version:
                raise Conflict(
                    f"{name}@{alias} already holds version {version}",
                    hint="nothing to move",
                    current=held,
                )
            return self._move(name, alias, version, held, "set", None, reason, actor)

    def _move(
        self, name: str, alias: str, version: int, held: int | None, action: str,
        reverts: int | None, reason: str, actor: str | None,
    ) -> AliasEvent:  # fmt: skip
        archived = self._conn.execute(
            "SELECT archived_at FROM versions WHERE name = ? AND version = ?", (name, version)
        ).fetchone()[0]
        if archived is not None:
            raise Conflict(
                f"{name} version {version} is archived (since {archived}) and cannot take an alias",
                hint="alias a version that is not archived",
            )
        now = _now()
        who = actor or default_actor()
        self._conn.execute(
            "INSERT INTO aliases (name, alias, version, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name, alias) DO UPDATE"
            " SET version = excluded.version, updated_at = excluded.updated_at",
            (name, alias, version, now),
        )
        cur = self._conn.execute(
            "INSERT INTO alias_events"
            " (name, alias, action, version, previous, reverts, actor, at, reason)"
            " VALUES (?,?,?,?,?,?,?,?,?)",
            (name, alias, action, version, held, reverts, who, now, reason),
        )
        return AliasEvent(seq=int(cur.lastrowid or 0), name=name, alias=alias, action=action,
                          version=version, previous=held, reverts=reverts, actor=who, at=now,
                          reason=reason)  # fmt: skip

    def _undo_stack(self, name: str, alias: str) -> list[tuple[int, int | None]]:
        """(seq, previous) of the moves not yet rolled back, oldest first."""
        stack: list[tuple[int, int | None]] = []
        for seq, action, previous in self._conn.execute(
            "SELECT seq, action, previous FROM alias_events"
            " WHERE name = ? AND alias = ? ORDER BY seq",
            (name, alias),
        ):
            if action == "rollback":
                stack.pop()
            else:
                stack.append((int(seq), previous))
        return stack

    def rollback(
        self,
        name: str,
        alias: str,
        *,
        reason: str = "",
        actor: str | None = None,
        expected: int | _Unset | None = UNSET,
    ) -> AliasEvent:
        """Give ``alias`` back to the holder before its newest move not yet rolled back."""
        check_alias(alias)
        with self._tx():
            self._require_model(name)
            held = self._alias_holder(name, alias)
            if held is None:
                raise NotFound(
                    f"model {name!r} has no alias {alias!r}", hint="nothing to roll back"
                )
            if not isinstance(expected, _Unset) and held != expected:
                raise Conflict(
                    f"{name}@{alias} holds {_shown(held)}, not {_shown(expected)}: "
                    "someone moved it since you looked",
                    hint=f"`crucible models show {name}` shows its history",
                    current=held,
                )
            stack = self._undo_stack(name, alias)
            if not stack or stack[-1][1] is None:
                raise Conflict(
                    f"{name}@{alias} has no earlier holder to roll back to",
                    hint=f"move it with `crucible models alias {name} {alias} VERSION`",
                )
            seq, previous = stack[-1]
            assert previous is not None
            return self._move(name, alias, previous, held, "rollback", seq, reason, actor)

    # -- tags, archive -------------------------------------------------------

    def _set_tags(self, name: str, version: int, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            if not key or len(key) > 128 or len(value) > 4096:
                raise ConfigError(f"tag {key[:40]!r}: key 1-128 characters, value up to 4096")
            self._conn.execute(
                "INSERT INTO tags (name, version, key, value) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (name, version, key) DO UPDATE SET value = excluded.value",
                (name, version, key, value),
            )

    def tag(
        self,
        name: str,
        tags: Mapping[str, str],
        *,
        version: int | None = None,
        remove: Iterable[str] = (),
    ) -> dict[str, str]:
        """Set (and remove) tags on ``name`` or on one of its versions; return the tags now."""
        with self._tx():
            if version is None:
                self._require_model(name)
            else:
                self._require_version(name, version)
            target = version or 0
            self._set_tags(name, target, tags)
            for key in remove:
                self._conn.execute(
                    "DELETE FROM tags WHERE name = ? AND version = ? AND key = ?",
                    (name, target, key),
                )
            return self._tags(name, target)

    def archive(
        self, name: str, version: int, *, reason: str = "", actor: str | None = None
    ) -> Version:
        """Archive: kept (and pinned), not aliasable; refused while it holds an alias."""
        with self._tx():
            self._require_version(name, version)
            held = self._aliases(name, version)
            if held:
                raise Conflict(
                    f"{name} version {version} holds {', '.join(sorted(held))}",
                    hint="move those aliases to another version first",
                )
            self._conn.execute(
                "UPDATE versions SET archived_at = ?, archived_by = ?, archive_reason = ?"
                " WHERE name = ? AND version = ? AND archived_at IS NULL",
                (_now(), actor or default_actor(), reason, name, version),
            )
        return self.version(name, version)


def _shown(version: int | _Unset | None) -> str:
    return "nothing" if version is None else f"version {version}"
