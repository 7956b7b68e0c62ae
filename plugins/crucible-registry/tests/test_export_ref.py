"""``crucible export models:/NAME/N`` exports the checkpoint the version registered, not the
run's final weights (core's export resolves the reference through this plugin)."""

from __future__ import annotations

from pathlib import Path

from crucible_registry import Registry

from crucible_core.cli.export_cmd import checkpoint_named, resolve_checkpoint
from crucible_core.cli.runref import find_run


def test_a_registry_reference_selects_the_registered_checkpoint(
    three: Registry, home: Path
) -> None:
    run_dir, manifest = find_run("run-a")
    v1, v2 = three.version("bigram", 1), three.version("bigram", 2)
    assert (v1.step, v2.step) == (8, 12)
    first = checkpoint_named("models:/bigram/1", run_dir, manifest)
    assert first is not None
    assert first != checkpoint_named("models:/bigram/2", run_dir, manifest)
    ref = resolve_checkpoint(run_dir, manifest, first)
    chosen = run_dir / "checkpoints" / first
    assert ref.uri == chosen.resolve().as_uri()
    assert Path(v1.artifacts[0].run_path).is_relative_to(chosen)  # the registered one
    three.set_alias("bigram", "production", 1)
    assert checkpoint_named("models:/bigram@production", run_dir, manifest) == first
    # A run id or the run directory: the run's final weights, as before.
    assert checkpoint_named("run-a", run_dir, manifest) is None
    assert checkpoint_named(str(run_dir), run_dir, manifest) is None
