"""The registry: versions of trained weights, aliases with an append-only history, tags.

:class:`Registry` is the library API; ``crucible models`` is a thin layer over
it. Every change is one SQLite transaction (:mod:`crucible_registry.db`), so
two processes see each other's changes whole or not at all.

- **Versions** count up per name. A version records the run, the checkpoint's
  artifact (sha256, size, its copy in the core artifact store), the base
  model and revision, the TrainingJob config hash, the dataset hash, the
  run's metrics and the hash of the run's manifest at registration.
  Registering the same config hash and checksums again returns the existing
  version. The artifact is pinned (:mod:`crucible_core.records.pins`), so
  checkpoint retention and clean-ups keep it.
- **Aliases** (any name: production, staging, champion...) point at one
  version. Every move appends an event (who, when, why, the previous holder);
  :meth:`Registry.rollback` undoes the newest move not yet undone, so
  repeated rollbacks walk back through the history. A move may say which
  version it expects the alias to hold (``expected``): if another process
  moved it first, the move is refused with ``Conflict``.
- **Archived** versions are kept (and stay pinned) but cannot take an alias.
  :meth:`Registry.gc` forgets archived versions (and releases their pins).
- **Gates** (:mod:`crucible_registry.gates`): rules per name and alias that a
  version must pass (its metrics and recorded evaluations against the
  current holder's) before the alias moves to it; ``force`` with a reason
  overrides. The verdicts are stored with the move as its evidence.
- **Lineage** (:mod:`crucible_registry.lineage`): every version is a node of
  the core lineage graph, linked to its base model, run, artifact and
  dataset, and to other versions it was made from.
"""

from __future__ import annotations

import difflib
import getpass
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec

from crucible_core.errors import ConfigError, Conflict, NotFound
from crucible_core.records import paths, pins
from crucible_core.records.artifacts import LocalArtifactStore
from crucible_registry import db
from crucible_registry.gates import MetricView, RuleResult, evaluate, parse_rule, require_stats
from crucible_registry.names import ModelRef, check_alias, check_name, parse_ref

if TYPE_CHECKING:
    from crucible_core.records.lineage import LineageRecorder

__all__ = [
    "UNSET",
    "AliasEvent",
    "ArtifactRef",
    "EvalRecord",
    "Gate",
    "GateFailed",
    "Model",
    "Registry",
    "Version",
]


class GateFailed(Conflict):
    """A promotion gate refused an alias move; ``results`` holds every rule's verdict."""

    def __init__(self, message: str, *, results: list[RuleResult], hint: str) -> None:
        super().__init__(message, hint=hint, gates=[msgspec.to_builtins(r) for r in results])
        self.results = results


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
    dataset_uri: str | None = None
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
    action: str  # "set", "rollback" or "remove"
    version: int | None  # None: the alias was removed
    previous: int | None
    reverts: int | None
    actor: str
    at: str
    reason: str
    forced: bool = False  # moved despite failing gates
    evidence: list[RuleResult] = []  # the gates' verdicts, with the values they saw


class Gate(msgspec.Struct, frozen=True, kw_only=True):
    """One promotion rule of ``name@alias``."""

    name: str
    alias: str
    rule: str
    added_at: str
    added_by: str


class EvalRecord(msgspec.Struct, frozen=True, kw_only=True):
    """An evaluation of a version: metrics ``eval.SUITE.METRIC`` and optional per-sample scores."""

    seq: int
    name: str
    version: int
    eval_id: str
    suite: str
    metrics: dict[str, float]
    samples: dict[str, list[float]]
    recorded_at: str
    recorded_by: str


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
        self,
        path: str | Path | None = None,
        *,
        store: LocalArtifactStore | None = None,
        lineage_db: str | Path | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else db.default_path()
        self.store = store if store is not None else LocalArtifactStore()
        self.lineage_db = Path(lineage_db) if lineage_db is not None else paths.db_path()
        self._conn = db.connect(self.path)
        self._lineage: LineageRecorder | None = None

    @property
    def lineage(self) -> LineageRecorder:
        """The core lineage recorder (``$CRUCIBLE_HOME/crucible.db``), opened on first use."""
        if self._lineage is None:
            from crucible_core.records.lineage import LineageRecorder

            self._lineage = LineageRecorder(self.lineage_db)
        return self._lineage

    def close(self) -> None:
        self._conn.close()
        if self._lineage is not None:
            self._lineage.close()

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
            " archived_at, archived_by, archive_reason, dataset_uri FROM versions"
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
            dataset_uri=row[16],
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
        q = f"SELECT {_EVENT_COLUMNS} FROM alias_events WHERE name = ?"
        args: tuple[Any, ...] = (name,)
        if alias is not None:
            q += " AND alias = ?"
            args = (name, check_alias(alias))
        return [_event(r) for r in self._conn.execute(q + " ORDER BY seq", args)]

    # -- register ------------------------------------------------------------

    def register(
        self,
        run: str,
        *,
        name: str,
        checkpoint: str | None = None,
        tags: Mapping[str, str] | None = None,
        actor: str | None = None,
        base_relation: str = "fine_tuned_from",
        links: Iterable[tuple[str, str]] = (),
        evals: Iterable[str | Path] = (),
    ) -> Version:
        """Register ``run``'s checkpoint (default: its final weights) as a version of ``name``.

        The checkpoint is rehashed against the run's manifest and stored in the
        artifact store first; a missing file or a mismatch raises and nothing
        is recorded. The same config hash and checksums again return the
        existing version (``existing=True``), with ``tags`` set on it.

        Lineage: the version is linked to its base model by ``base_relation``
        (``fine_tuned_from`` by default), to its run, artifact and dataset,
        and by each ``(relation, reference)`` of ``links`` (``("dpo_from",
        "dates/2")``) to another version, model, dataset or run.

        ``evals``: ``crucible eval`` results (paths or eval ids) of this
        checkpoint, imported as by :meth:`import_eval` once the version
        exists; each is read and checked to be of ``run`` first, so an
        unreadable or foreign one refuses the registration before anything
        is written.
        """
        from crucible_registry import lineage
        from crucible_registry.evalfile import find_eval, read_eval_file
        from crucible_registry.source import read_candidate, verify_and_store

        check_name(name)
        lineage.check_relation(base_relation)
        targets = [(lineage.check_relation(k), lineage.target_id(self, t)) for k, t in links]
        c = read_candidate(run, checkpoint)
        eval_files = [find_eval(e, c.run_dir) for e in evals]
        for path in eval_files:
            found = read_eval_file(path).run_id
            if found != c.run_id:
                raise ConfigError(
                    f"{path}: the evaluation is of {found or 'base weights'}, not run {c.run_id}",
                    hint=f"evaluate the run first: crucible eval {c.run_id} ...",
                )
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
                    # Numbers are never reused, even after gc forgot the newest version.
                    number = int(
                        self._conn.execute(
                            "UPDATE models SET last_version = last_version + 1 WHERE name = ?"
                            " RETURNING last_version",
                            (name,),
                        ).fetchone()[0]
                    )
                    self._conn.execute(
                        "INSERT INTO versions (name, version, identity, run_id, run_dir,"
                        " checkpoint, step, backend, base_model, base_revision, config_hash,"
                        " dataset_hash, manifest_hash, metrics, created_at, created_by,"
                        " dataset_uri) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (name, number, c.identity, c.run_id, str(c.run_dir), c.checkpoint, c.step,
                         c.backend, c.base_model, c.base_revision, c.config_hash, c.dataset_hash,
                         c.manifest_hash, msgspec.json.encode(c.metrics).decode(), _now(),
                         actor or default_actor(), c.dataset_uri),
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
        v = self.version(name, number, existing=existing)
        lineage.record_version(self, v, base_relation=base_relation, links=targets)
        for path in eval_files:
            self.import_eval(name, number, path, actor=actor)
        return v

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
        force: bool = False,
    ) -> AliasEvent:
        """Point ``alias`` at ``version``; record the move. ``expected``: the holder the
        caller saw (None: no holder); if the alias holds something else now, Conflict.

        The gates of ``name@alias`` are checked first (against the holder now):
        a failing rule raises :class:`GateFailed` listing each rule with the
        values it saw, and nothing is recorded, unless ``force`` (which needs
        a ``reason``): then the move is recorded as forced. The verdicts are
        stored with the move (``AliasEvent.evidence``).
        """
        check_alias(alias)
        if force and not reason.strip():
            raise ConfigError(
                "--force needs --reason", hint='say why the gates are overridden: --reason "..."'
            )
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
            self._require_unarchived(name, version)
            results = self._gate_results(name, alias, version, held)
            failed = [r for r in results if not r.passed]
            if failed and not force:
                raise GateFailed(
                    f"{name}@{alias}: version {version} fails {len(failed)} of "
                    f"{len(results)} gate(s): " + "; ".join(r.line() for r in results),
                    results=results,
                    hint='fix the version, or override: --force --reason "..."',
                )
            return self._move(name, alias, version, held, "set", None, reason, actor,
                              forced=bool(failed), evidence=results)  # fmt: skip

    def remove_alias(
        self,
        name: str,
        alias: str,
        *,
        reason: str = "",
        actor: str | None = None,
        expected: int | _Unset | None = UNSET,
    ) -> AliasEvent:
        """Remove ``alias`` (recorded; a rollback gives it back to the version it held)."""
        check_alias(alias)
        with self._tx():
            self._require_model(name)
            held = self._alias_holder(name, alias)
            if held is None:
                raise NotFound(f"model {name!r} has no alias {alias!r}", hint="nothing to remove")
            if not isinstance(expected, _Unset) and held != expected:
                raise Conflict(
                    f"{name}@{alias} holds {_shown(held)}, not {_shown(expected)}: "
                    "someone moved it since you looked",
                    hint=f"`crucible models show {name}` shows its history",
                    current=held,
                )
            return self._move(name, alias, None, held, "remove", None, reason, actor)

    def _require_unarchived(self, name: str, version: int) -> None:
        archived = self._conn.execute(
            "SELECT archived_at FROM versions WHERE name = ? AND version = ?", (name, version)
        ).fetchone()[0]
        if archived is not None:
            raise Conflict(
                f"{name} version {version} is archived (since {archived}) and cannot take an alias",
                hint="alias a version that is not archived",
            )

    def _move(
        self, name: str, alias: str, version: int | None, held: int | None, action: str,
        reverts: int | None, reason: str, actor: str | None, *, forced: bool = False,
        evidence: Sequence[RuleResult] = (),
    ) -> AliasEvent:  # fmt: skip
        now = _now()
        who = actor or default_actor()
        if version is None:
            self._conn.execute("DELETE FROM aliases WHERE name = ? AND alias = ?", (name, alias))
        else:
            self._require_unarchived(name, version)
            self._conn.execute(
                "INSERT INTO aliases (name, alias, version, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (name, alias) DO UPDATE"
                " SET version = excluded.version, updated_at = excluded.updated_at",
                (name, alias, version, now),
            )
        cur = self._conn.execute(
            "INSERT INTO alias_events (name, alias, action, version, previous, reverts, actor,"
            " at, reason, forced, evidence) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (name, alias, action, version, held, reverts, who, now, reason, int(forced),
             msgspec.json.encode(list(evidence)).decode() if evidence else None),
        )  # fmt: skip
        return AliasEvent(seq=int(cur.lastrowid or 0), name=name, alias=alias, action=action,
                          version=version, previous=held, reverts=reverts, actor=who, at=now,
                          reason=reason, forced=forced, evidence=list(evidence))  # fmt: skip

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
        """Give ``alias`` back to the holder before its newest move not yet rolled back.

        Not gated: it restores a holder the alias had (the way back must always
        work in one command); the move is recorded like any other.
        """
        check_alias(alias)
        with self._tx():
            self._require_model(name)
            held = self._alias_holder(name, alias)
            stack = self._undo_stack(name, alias)
            if held is None and not stack:
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

    # -- evaluations and gates -----------------------------------------------

    def record_eval(
        self,
        name: str,
        version: int,
        metrics: Mapping[str, float],
        *,
        suite: str,
        eval_id: str | None = None,
        samples: Mapping[str, Sequence[float]] | None = None,
        actor: str | None = None,
    ) -> EvalRecord:
        """Record an evaluation of a version: its metrics become ``eval.SUITE.METRIC``.

        ``samples`` (per metric, the per-example scores, in a fixed example
        order) feed the ``not worse than holder`` gate. ``eval_id`` names the
        evaluation (default: a new one); the newest record of a metric wins.
        """
        check_name(suite)
        if not metrics:
            raise ConfigError("an evaluation needs at least one metric", hint="give METRIC=VALUE")
        extra = sorted(set(samples or {}) - set(metrics))
        if extra:
            raise ConfigError(
                f"samples for {', '.join(extra)} but no such metric",
                hint="give each metric with samples a value too",
            )
        full = {f"eval.{suite}.{k}": float(v) for k, v in metrics.items()}
        per = {f"eval.{suite}.{k}": [float(x) for x in v] for k, v in (samples or {}).items()}
        for key, value in [*full.items(), *((k, x) for k, v in per.items() for x in v)]:
            if value != value or value in (float("inf"), float("-inf")):
                raise ConfigError(f"{key}: {value} is not a finite number")
        who, now = actor or default_actor(), _now()
        with self._tx():
            self._require_version(name, version)
            eid = eval_id or f"eval-{name}-{version}-{datetime.now(UTC):%Y%m%dT%H%M%S%f}"
            cur = self._conn.execute(
                "INSERT INTO evals (name, version, eval_id, suite, metrics, samples,"
                " recorded_at, recorded_by) VALUES (?,?,?,?,?,?,?,?)",
                (name, version, eid, suite, msgspec.json.encode(full).decode(),
                 msgspec.json.encode(per).decode(), now, who),
            )  # fmt: skip
        return EvalRecord(seq=int(cur.lastrowid or 0), name=name, version=version, eval_id=eid,
                          suite=suite, metrics=full, samples=per, recorded_at=now,
                          recorded_by=who)  # fmt: skip

    def import_eval(
        self,
        name: str,
        version: int,
        ref: str | Path,
        *,
        suite: str | None = None,
        actor: str | None = None,
    ) -> EvalRecord:
        """Record a ``crucible eval`` result (an ``eval-<id>.json`` path or eval id) for a version.

        The evaluation must be of this version's weights: its run is the
        version's run and, when it names a local checkpoint, that is the
        version's checkpoint (else ConfigError, nothing recorded). Its metrics'
        corpus scores become ``eval.SUITE.METRIC`` (``suite`` defaults to the
        dataset's name: :func:`crucible_registry.evalfile.suite_of`), its
        per-example scores the samples the "not worse than holder" gate pairs,
        and its eval id is kept as the evidence's source. Importing the same
        eval id into the same version again returns the record made the first time.
        """
        from crucible_core.records.artifacts import uri_path
        from crucible_registry.evalfile import find_eval, read_eval_file, suite_of

        v = self.version(name, version)
        path = find_eval(ref, Path(v.run_dir))
        result = read_eval_file(path)
        fix = f"evaluate the version itself: crucible eval models:/{name}/{version} ..."
        if result.run_id != v.run_id:
            what = "base weights" if result.run_id is None else f"run {result.run_id}"
            raise ConfigError(
                f"{path}: evaluation {result.eval_id} is of {what}, "
                f"{name}/{version} is from run {v.run_id}",
                hint=fix,
            )
        evaluated = uri_path(result.checkpoint) if result.checkpoint else None
        if evaluated is not None:
            held = {p.resolve() for a in v.artifacts if (p := uri_path(a.run_path)) is not None}
            if evaluated.resolve() not in held:
                raise ConfigError(
                    f"{path}: evaluation {result.eval_id} is of checkpoint {evaluated}, "
                    f"not the one {name}/{version} registered",
                    hint=fix,
                )
        for rec in self.evals(name, version):
            if rec.eval_id == result.eval_id:
                return rec
        return self.record_eval(
            name,
            version,
            result.scores(),
            suite=suite or suite_of(result.dataset),
            eval_id=result.eval_id,
            samples=result.per_example(),
            actor=actor,
        )

    def evals(self, name: str, version: int) -> list[EvalRecord]:
        """The evaluations recorded for a version, oldest first."""
        self._require_version(name, version)
        return [
            EvalRecord(seq=r[0], name=name, version=version, eval_id=r[1], suite=r[2],
                       metrics=msgspec.json.decode(r[3]), samples=msgspec.json.decode(r[4]),
                       recorded_at=r[5], recorded_by=r[6])
            for r in self._conn.execute(
                "SELECT seq, eval_id, suite, metrics, samples, recorded_at, recorded_by"
                " FROM evals WHERE name = ? AND version = ? ORDER BY seq", (name, version))
        ]  # fmt: skip

    def metric_view(self, name: str, version: int) -> MetricView:
        """What gates see of a version: its registered metrics (``loss`` is the final or
        checkpoint loss), then its evaluations' metrics, newest record winning."""
        v = self.version(name, version)
        metrics = dict(v.metrics)
        loss = metrics.get("final_loss", metrics.get("checkpoint_metric"))
        if loss is not None and "loss" not in metrics:
            metrics["loss"] = loss
        samples: dict[str, list[float]] = {}
        eval_ids: dict[str, str] = {}
        for rec in self.evals(name, version):
            for key, value in rec.metrics.items():
                metrics[key] = value
                eval_ids[key] = rec.eval_id
                samples.pop(key, None)
            samples.update(rec.samples)
        return MetricView(version=version, metrics=metrics, samples=samples, eval_ids=eval_ids)

    def add_gate(self, name: str, alias: str, rule: str, *, actor: str | None = None) -> Gate:
        """Add a promotion rule to ``name@alias`` (stored in its canonical text)."""
        check_alias(alias)
        parsed = parse_rule(rule)
        if parsed.op == "not_worse":
            require_stats()  # say now, not at the first move, that it cannot be checked
        text, who, now = str(parsed), actor or default_actor(), _now()
        with self._tx():
            self._require_model(name)
            self._conn.execute(
                "INSERT OR IGNORE INTO gates (name, alias, rule, added_at, added_by)"
                " VALUES (?,?,?,?,?)",
                (name, alias, text, now, who),
            )
        return next(g for g in self.gates(name, alias) if g.rule == text)

    def gates(self, name: str, alias: str | None = None) -> list[Gate]:
        """The rules of ``name`` (of one alias if given), in the order they were added."""
        self._require_model(name)
        q = "SELECT name, alias, rule, added_at, added_by FROM gates WHERE name = ?"
        args: tuple[Any, ...] = (name,)
        if alias is not None:
            q += " AND alias = ?"
            args = (name, check_alias(alias))
        return [
            Gate(name=r[0], alias=r[1], rule=r[2], added_at=r[3], added_by=r[4])
            for r in self._conn.execute(q + " ORDER BY alias, rowid", args)
        ]

    def remove_gate(self, name: str, alias: str, rule: str | None = None) -> int:
        """Remove one rule of ``name@alias`` (every rule if None); return how many went."""
        check_alias(alias)
        with self._tx():
            self._require_model(name)
            if rule is None:
                cur = self._conn.execute(
                    "DELETE FROM gates WHERE name = ? AND alias = ?", (name, alias)
                )
            else:
                text = str(parse_rule(rule))
                cur = self._conn.execute(
                    "DELETE FROM gates WHERE name = ? AND alias = ? AND rule = ?",
                    (name, alias, text),
                )
                if cur.rowcount == 0:
                    raise NotFound(
                        f"{name}@{alias} has no gate {text!r}",
                        hint=f"`crucible models gate list {name}` shows them",
                    )
            return int(cur.rowcount)

    def check_gates(self, name: str, alias: str, version: int) -> list[RuleResult]:
        """The gates' verdicts on moving ``name@alias`` to ``version`` now (nothing recorded)."""
        check_alias(alias)
        self._require_version(name, version)
        return self._gate_results(name, alias, version, self._alias_holder(name, alias))

    def _gate_results(
        self, name: str, alias: str, version: int, held: int | None
    ) -> list[RuleResult]:
        rules = [parse_rule(g.rule) for g in self.gates(name, alias)]
        if not rules:
            return []
        cand = self.metric_view(name, version)
        holder = None if held is None else self.metric_view(name, held)
        return evaluate(rules, cand, holder)

    # -- lineage (crucible_registry.lineage) ---------------------------------

    def has_model(self, name: str) -> bool:
        """Whether ``name`` is registered (no NotFound, no suggestions)."""
        return bool(self._conn.execute("SELECT 1 FROM models WHERE name = ?", (name,)).fetchone())

    def has_version(self, name: str, version: int) -> bool:
        """Whether ``name`` has ``version`` (gc'd versions do not)."""
        return bool(
            self._conn.execute(
                "SELECT 1 FROM versions WHERE name = ? AND version = ?", (name, version)
            ).fetchone()
        )

    def dataset_uris(self, dataset: str | None) -> list[str]:
        """``dataset:URI`` ids of the datasets versions were trained on whose URI or content
        hash is ``dataset`` (every one if None)."""
        q = "SELECT DISTINCT dataset_uri FROM versions WHERE dataset_uri IS NOT NULL"
        args: tuple[Any, ...] = ()
        if dataset is not None:
            q += " AND (dataset_uri = ? OR dataset_hash = ? OR 'dataset:' || dataset_uri = ?)"
            args = (dataset, dataset, dataset)
        return [f"dataset:{r[0]}" for r in self._conn.execute(q + " ORDER BY 1", args)]

    def versions_trained_on(self, uris: Sequence[str], dataset_hash: str) -> list[Version]:
        """Versions whose run's dataset is one of ``uris`` or has content hash ``dataset_hash``."""
        marks = ",".join("?" * len(uris)) or "NULL"
        rows = self._conn.execute(
            f"SELECT name, version FROM versions WHERE dataset_uri IN ({marks})"
            " OR dataset_hash = ? ORDER BY name, version",
            (*uris, dataset_hash),
        ).fetchall()
        return [self.version(n, int(v)) for n, v in rows]

    def link(self, ref: str, relation: str, target: str) -> Any:
        """Record that version ``ref`` was made from ``target`` (a version, ``model:``,
        ``dataset:``, a run) by ``relation`` (``dpo_from``...); returns the lineage Edge."""
        from crucible_registry import lineage

        return lineage.link(self, ref, relation, target)

    def ancestors(self, ref: str, *, depth: int | None = None) -> Any:
        """The tree (core ``LineageNode``) of what version ``ref`` came from."""
        from crucible_registry import lineage

        return self.lineage.ancestors(lineage.target_id(self, ref), depth=depth)

    def descendants(self, ref: str, *, depth: int | None = None) -> Any:
        """The tree (core ``LineageNode``) of what came from ``ref``."""
        from crucible_registry import lineage

        return self.lineage.descendants(lineage.target_id(self, ref), depth=depth)

    def trained_on(self, dataset: str) -> list[Version]:
        """Versions trained on ``dataset`` (``dataset:URI``, a URI or its content hash)."""
        from crucible_registry import lineage

        return lineage.trained_on(self, dataset)

    def affected_by(self, dataset: str) -> list[Version]:
        """Every version downstream of ``dataset``, transitively (what withdrawing it touches)."""
        from crucible_registry import lineage

        return lineage.affected_by(self, dataset)

    # -- garbage collection --------------------------------------------------

    def gc(self, *, dry_run: bool = True) -> list[Version]:
        """Forget archived versions that hold no alias and release their pins.

        Their alias history stays (append-only) and their numbers are never
        reused; their weights stay in the artifact store (the store's own
        clean-up decides, now that nothing pins them). ``dry_run`` (the
        default) only lists them.
        """
        doomed: list[Version] = []
        release: list[tuple[str, str]] = []
        with self._tx():
            rows = self._conn.execute(
                "SELECT v.name, v.version, v.identity FROM versions v"
                " WHERE v.archived_at IS NOT NULL AND NOT EXISTS"
                " (SELECT 1 FROM aliases a WHERE a.name = v.name AND a.version = v.version)"
                " ORDER BY v.name, v.version"
            ).fetchall()
            for name, number, identity in rows:
                v = self.version(name, int(number))
                doomed.append(v)
                if dry_run:
                    continue
                for table in ("tags", "evals", "artifacts", "versions"):
                    self._conn.execute(
                        f"DELETE FROM {table} WHERE name = ? AND version = ?", (name, number)
                    )
                release += [(a.sha256, _holder(name, str(identity))) for a in v.artifacts]
        for sha256, holder in release:  # after the commit: a pin outlives its version, never less
            pins.unpin(sha256, holder)
        return doomed


_EVENT_COLUMNS: Final = (
    "seq, name, alias, action, version, previous, reverts, actor, at, reason, forced, evidence"
)
_evidence = msgspec.json.Decoder(list[RuleResult])


def _event(r: Sequence[Any]) -> AliasEvent:
    return AliasEvent(seq=r[0], name=r[1], alias=r[2], action=r[3], version=r[4], previous=r[5],
                      reverts=r[6], actor=r[7], at=r[8], reason=r[9], forced=bool(r[10]),
                      evidence=_evidence.decode(r[11]) if r[11] else [])  # fmt: skip


def _shown(version: int | _Unset | None) -> str:
    return "nothing" if version is None else f"version {version}"
