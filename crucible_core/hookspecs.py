"""The plugin API: pluggy hook specifications.

Every registration hook receives one argument, ``register``, a callable::

    register(name, factory, *, summary="", capabilities=None, **metadata)

``name`` is what users type (``backend = "local"``); ``factory`` is either a
``"package.module:attr"`` string, imported only when the thing is first used,
or the object itself. Every kind is built the same way, ``factory(**options)``
(renderers also get the tokenizer; a metric factory *is* the metric
function). ``capabilities`` (backends) and ``metadata`` are static facts shown
by ``crucible plugins`` without importing the factory. The host stamps each
registration with the plugin, distribution and version that made it.

Each hook's ``register`` has its own callable Protocol (``RegisterBackend``,
``RegisterStage``, ...; exported here and from ``crucible_core``): annotate
the argument with it and an editor completes the keywords and pyright checks
the factory against the contract it must satisfy.

A plugin's registrations are all-or-nothing: if one of its hooks raises, none
of what it registered is used and the plugin is reported as ``error``. Two
plugins registering one name in one kind are both reported as ``conflict``
(each naming the other) and that name cannot be used until one is disabled;
their other registrations keep working. A function named like a hook that
matches no hook spec (``register_backend``) is reported as a warning.
``CRUCIBLE_STRICT_PLUGINS=1`` turns each of these into an error (exit 3).

Registration hooks do no I/O and import nothing heavy. No hook signature has
default values (their meaning differs between pluggy releases).

What each factory must produce is given hook by hook below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    from crucible_core.contracts import (
        ArtifactStore,
        Command,
        DatasetSource,
        Executor,
        InferenceBackend,
        Stage,
        TrainingBackend,
    )
    from crucible_core.ir.backend import Capabilities

__all__ = [
    "PROJECT_NAME",
    "HookSpecs",
    "RegisterApiRoute",
    "RegisterArtifactStore",
    "RegisterBackend",
    "RegisterCommand",
    "RegisterDataset",
    "RegisterEnsembleStrategy",
    "RegisterExecutor",
    "RegisterHedgingPolicy",
    "RegisterMetric",
    "RegisterRenderer",
    "RegisterReward",
    "RegisterRoutingPolicy",
    "RegisterStage",
    "hookimpl",
    "hookspec",
]

PROJECT_NAME = "crucible"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class RegisterBackend(Protocol):
    """``register`` of ``register_backends``: ``factory(**options)`` builds the backend."""

    def __call__(
        self,
        name: str,
        factory: str | Callable[..., InferenceBackend | TrainingBackend],
        *,
        summary: str = ...,
        capabilities: Capabilities | None = ...,
        **metadata: Any,
    ) -> None: ...


class RegisterStage(Protocol):
    """``register`` of ``register_stages``: ``factory(**options)`` builds a ``Stage``."""

    def __call__(
        self, name: str, factory: str | Callable[..., Stage], *, summary: str = ..., **metadata: Any
    ) -> None: ...


class RegisterDataset(Protocol):
    """``register`` of ``register_datasets``; ``metadata`` may carry ``schemes``, ``suffixes``."""

    def __call__(
        self,
        name: str,
        factory: str | Callable[..., DatasetSource],
        *,
        summary: str = ...,
        **metadata: Any,
    ) -> None: ...


class RegisterRenderer(Protocol):
    """``register`` of ``register_renderers``: ``factory(tokenizer, **options)``."""

    def __call__(
        self, name: str, factory: str | Callable[..., Any], *, summary: str = ..., **metadata: Any
    ) -> None: ...


class RegisterMetric(Protocol):
    """``register`` of ``register_metrics``: the factory is the metric function itself."""

    def __call__(
        self,
        name: str,
        factory: str | Callable[..., dict[str, float]],
        *,
        summary: str = ...,
        **metadata: Any,
    ) -> None: ...


class RegisterReward(Protocol):
    """``register`` of ``register_rewards``: the factory is the reward function itself."""

    def __call__(
        self,
        name: str,
        factory: str | Callable[..., float],
        *,
        summary: str = ...,
        **metadata: Any,
    ) -> None: ...


class RegisterEnsembleStrategy(Protocol):
    """``register`` of ``register_ensemble_strategies``: ``factory(**options)``."""

    def __call__(
        self, name: str, factory: str | Callable[..., Any], *, summary: str = ..., **metadata: Any
    ) -> None: ...


class RegisterHedgingPolicy(Protocol):
    """``register`` of ``register_hedging_policies``: ``factory(**options)``."""

    def __call__(
        self, name: str, factory: str | Callable[..., Any], *, summary: str = ..., **metadata: Any
    ) -> None: ...


class RegisterRoutingPolicy(Protocol):
    """``register`` of ``register_routing_policies``: ``factory(**options)``."""

    def __call__(
        self, name: str, factory: str | Callable[..., Any], *, summary: str = ..., **metadata: Any
    ) -> None: ...


class RegisterExecutor(Protocol):
    """``register`` of ``register_executors``: ``factory(**options)`` builds an ``Executor``."""

    def __call__(
        self,
        name: str,
        factory: str | Callable[..., Executor],
        *,
        summary: str = ...,
        **metadata: Any,
    ) -> None: ...


class RegisterArtifactStore(Protocol):
    """``register`` of ``register_artifact_stores``: ``factory(**options)`` builds a store."""

    def __call__(
        self,
        name: str,
        factory: str | Callable[..., ArtifactStore],
        *,
        summary: str = ...,
        **metadata: Any,
    ) -> None: ...


class RegisterCommand(Protocol):
    """``register`` of ``register_commands``: ``factory()`` builds a ``Command``."""

    def __call__(
        self,
        name: str,
        factory: str | Callable[..., Command],
        *,
        summary: str = ...,
        **metadata: Any,
    ) -> None: ...


class RegisterApiRoute(Protocol):
    """``register`` of ``register_api_routes``: ``factory(api)`` returns a router to mount."""

    def __call__(
        self,
        name: str,
        factory: str | Callable[..., Any],
        *,
        summary: str = ...,
        **metadata: Any,
    ) -> None: ...


class HookSpecs:
    """The hook specifications (a namespace class, as pluggy expects)."""

    @hookspec
    def register_backends(self, register: RegisterBackend) -> None:
        """Register inference and training backends.

        Returns nothing; call ``register`` once per backend.
        Called once per process, the first time any registration is used.
        ``register(name, factory, summary=..., capabilities=Capabilities(...))``:
        ``factory(**options)`` returns an object satisfying ``InferenceBackend``
        and/or ``TrainingBackend`` (:mod:`crucible_core.contracts`).
        Added in 0.1.
        """

    @hookspec
    def register_stages(self, register: RegisterStage) -> None:
        """Register pipeline stages that an Experiment's ``StageDef.uses`` can name.

        ``factory(**options)`` returns a ``Stage``; ``run(ctx)`` receives a
        ``StageContext``. Called once per process, with the other registration
        hooks.
        Added in 0.1.
        """

    @hookspec
    def register_datasets(self, register: RegisterDataset) -> None:
        """Register dataset sources (by URI scheme or suffix) and shipped samples.

        ``factory(**options)`` returns a ``DatasetSource``. ``metadata`` may
        carry ``schemes=[...]`` and ``suffixes=[...]`` used to resolve a
        ``DatasetSpec.uri``. Called once per process. Added in 0.1.
        """

    @hookspec
    def register_renderers(self, register: RegisterRenderer) -> None:
        """Register chat renderers (messages -> tokens + per-token loss weights).

        ``factory(tokenizer, **options)`` returns a renderer. Called once per
        process. Added in 0.1.
        """

    @hookspec
    def register_metrics(self, register: RegisterMetric) -> None:
        """Register evaluation metrics.

        ``factory`` is a function ``(predictions, references, **options) ->
        dict[str, float]``. Called once per process. Added in 0.1.
        """

    @hookspec
    def register_rewards(self, register: RegisterReward) -> None:
        """Register reward functions for ``workflow = "rl"`` (``rl.reward = "name"``).

        ``factory`` is a function ``(completion, reference) -> float``:
        ``completion`` is the sampled text, ``reference`` the dataset row's
        answer (its completion or last assistant message). A reward that
        raises or returns a non-number stops the run (after a checkpoint)
        naming the reward and the sample. Called once per process. Added in 0.1.
        """

    @hookspec
    def register_ensemble_strategies(self, register: RegisterEnsembleStrategy) -> None:
        """Register ensemble voting strategies.

        ``factory(**options)`` returns a strategy combining several backends'
        completions into one. Called once per process. Added in 0.1.
        """

    @hookspec
    def register_hedging_policies(self, register: RegisterHedgingPolicy) -> None:
        """Register request hedging policies.

        ``factory(**options)`` returns a policy deciding when to fire a backup
        request within a budget. Called once per process. Added in 0.1.
        """

    @hookspec
    def register_routing_policies(self, register: RegisterRoutingPolicy) -> None:
        """Register routing policies: which member a routed backend tries first.

        ``factory(**options)`` returns a policy with ``order(members) -> list``
        and ``observe(member, *, latency_s, failed, cost)`` (optionally
        ``feedback(member, quality)``). Called once per process. Added in 0.1.
        """

    @hookspec
    def register_executors(self, register: RegisterExecutor) -> None:
        """Register executors that run jobs and stages.

        ``factory(**options)`` returns an ``Executor``. Called once per
        process. Added in 0.1.
        """

    @hookspec
    def register_artifact_stores(self, register: RegisterArtifactStore) -> None:
        """Register artifact stores.

        ``factory(**options)`` returns an ``ArtifactStore``. Called once per
        process. Added in 0.1.
        """

    @hookspec
    def register_commands(self, register: RegisterCommand) -> None:
        """Register ``crucible`` subcommands.

        ``factory()`` returns an object with ``configure(parser)`` (an
        ``argparse.ArgumentParser``) and ``run(args) -> int | None`` (the
        ``Command`` contract): usually the command's class. It is called with
        no options (a command takes its options from the command line); an
        object that already has ``configure`` and ``run`` and is not callable
        is used as it is. ``summary`` is the one line shown in ``crucible
        --help``, which reads it from an index of installed plugins' commands
        without importing them (refreshed by any command that loads plugins).
        Called once per process, the first time registrations are used.
        Added in 0.1.
        """

    @hookspec
    def register_api_routes(self, register: RegisterApiRoute) -> None:
        """Register routes that ``crucible serve`` (crucible-server) adds to its HTTP API.

        ``factory(api)`` returns a FastAPI ``APIRouter`` (import FastAPI inside
        the factory, never at module level), mounted as it is; ``api`` is the
        server's context: ``api.require(scope)`` is a FastAPI dependency that
        authenticates the request, checks the token's ``scope`` (``jobs:read``,
        ``jobs:write``, ``artifacts:read``, ``admin``) and returns the
        principal (``tenant_id``, ``scopes``); ``api.in_thread(fn, *args)``
        runs blocking work off the event loop. A ``CrucibleError`` raised in a
        route becomes the server's problem+json response with its status.
        ``metadata`` may carry ``prefix`` (the path prefix its routes use, shown
        by ``crucible plugins``). Called once per server, when its app is built.
        Added in 0.1.
        """

    @hookspec
    def on_event(self, event: Any) -> None:
        """Observe every runtime event (``Event(kind, job_id, ts, step, epoch, data)``).

        Returns nothing. Called from the event bus's delivery thread, never
        from the producer, so a slow implementation delays other observers
        but never the training loop. Exceptions are logged and ignored.
        Added in 0.1.
        """
