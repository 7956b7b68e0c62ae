"""The training path: prepare data, open a session, loop, evaluate, save.

- :mod:`~crucible_core.train.sft`: the supervised recipe, top to bottom.
- :mod:`~crucible_core.train.steps`: the steps recipes and stage adapters share.
- :mod:`~crucible_core.train.prepare`: :class:`PreparedData`, read once per run.
- :mod:`~crucible_core.train.state`: the loop state on disk (resume, fallback, retirement).
- :mod:`~crucible_core.train.plan`: ``crucible plan``'s checks and estimates.
- :mod:`~crucible_core.train.sampled_eval`: held-out scores from greedy samples.
- :mod:`~crucible_core.train.stages`: the steps as stages for Experiment graphs.
- :mod:`~crucible_core.train.run`: the entry points (library call, worker handler).
"""
