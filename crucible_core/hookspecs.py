"""The plugin API: pluggy hook specifications.

Every registration hook receives one argument, ``register``, a callable::

    register(name, factory, *, summary="", capabilities=None, **metadata)

``name`` is what users type (``backend = "local"``); ``factory`` is either a
``"package.module:attr"`` string, imported only when the thing is first used,
or the object itself; ``capabilities`` (backends) and ``metadata`` are static
facts shown by ``crucible plugins`` without importing the factory. The host
stamps each registration with the plugin, distribution and version that made
it; two registrations of one name in one kind are an error naming both.

Registration hooks do no I/O and import nothing heavy. No hook signature has
default values (their meaning differs between pluggy releases).

What each factory must produce is given hook by hook below.
"""

from __future__ import annotations

from typing import Any

import pluggy

__all__ = ["PROJECT_NAME", "HookSpecs", "hookimpl", "hookspec"]

PROJECT_NAME = "crucible"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class HookSpecs:
    """The hook specifications (a namespace class, as pluggy expects)."""

    @hookspec
    def register_backends(self, register: Any) -> None:
        """Register inference and training backends.

        Returns nothing; call ``register`` once per backend.
        Called once per process, the first time backends are listed or resolved.
        ``register(name, factory, summary=..., capabilities=Capabilities(...))``:
        ``factory(**options)`` returns an object satisfying ``InferenceBackend``
        and/or ``TrainingBackend`` (:mod:`crucible_core.contracts`).
        Added in 0.1.
        """

    @hookspec
    def register_stages(self, register: Any) -> None:
        """Register pipeline stages that an Experiment's ``StageDef.uses`` can name.

        ``factory(**options)`` returns a ``Stage``; ``run(ctx)`` receives a
        ``StageContext``. Called once per process when a pipeline is built.
        Added in 0.1.
        """

    @hookspec
    def register_datasets(self, register: Any) -> None:
        """Register dataset sources (by URI scheme or suffix) and shipped samples.

        ``factory(**options)`` returns a ``DatasetSource``. ``metadata`` may
        carry ``schemes=[...]`` and ``suffixes=[...]`` used to resolve a
        ``DatasetSpec.uri``. Called once per process. Added in 0.1.
        """

    @hookspec
    def register_renderers(self, register: Any) -> None:
        """Register chat renderers (messages -> tokens + per-token loss weights).

        ``factory(tokenizer, **options)`` returns a renderer. Called once per
        process. Added in 0.1.
        """

    @hookspec
    def register_metrics(self, register: Any) -> None:
        """Register evaluation metrics.

        ``factory`` is a function ``(predictions, references, **options) ->
        dict[str, float]``. Called once per process. Added in 0.1.
        """

    @hookspec
    def register_ensemble_strategies(self, register: Any) -> None:
        """Register ensemble voting strategies.

        ``factory(**options)`` returns a strategy combining several backends'
        completions into one. Called once per process. Added in 0.1.
        """

    @hookspec
    def register_hedging_policies(self, register: Any) -> None:
        """Register request hedging policies.

        ``factory(**options)`` returns a policy deciding when to fire a backup
        request within a budget. Called once per process. Added in 0.1.
        """

    @hookspec
    def register_executors(self, register: Any) -> None:
        """Register executors that run jobs and stages.

        ``factory(**options)`` returns an ``Executor``. Called once per
        process. Added in 0.1.
        """

    @hookspec
    def register_artifact_stores(self, register: Any) -> None:
        """Register artifact stores.

        ``factory(**options)`` returns an ``ArtifactStore``. Called once per
        process. Added in 0.1.
        """

    @hookspec
    def register_commands(self, register: Any) -> None:
        """Register ``crucible`` subcommands.

        ``factory`` resolves to an object with ``configure(parser)`` (an
        ``argparse.ArgumentParser``) and ``run(args) -> int | None`` (the
        ``Command`` contract); ``summary`` is the one line shown in
        ``crucible --help``. Called once per process when the CLI meets a
        command it does not know. Added in 0.1.
        """

    @hookspec
    def on_event(self, event: Any) -> None:
        """Observe every runtime event (``Event(kind, job_id, ts, step, epoch, data)``).

        Returns nothing. Called from the event bus's delivery thread, never
        from the producer, so a slow implementation delays other observers
        but never the training loop. Exceptions are logged and ignored.
        Added in 0.1.
        """
