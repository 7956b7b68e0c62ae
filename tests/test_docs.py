"""Docs that are generated or that quote code stay in step with it."""

from __future__ import annotations

from pathlib import Path

from crucible_core import _irdoc
from crucible_core._hooksdoc import render, signature
from crucible_core.hookspecs import HookSpecs

ROOT = Path(__file__).resolve().parents[1]


def test_hooks_reference_is_fresh_and_complete() -> None:
    committed = (ROOT / "docs" / "hooks.md").read_text()
    assert committed == render(), "run `python -m crucible_core._hooksdoc > docs/hooks.md`"
    for name in dir(HookSpecs):
        if not name.startswith("_"):
            assert f"## `{signature(name)}`" in committed


def test_ir_reference_is_fresh_and_covers_nested_types() -> None:
    committed = (ROOT / "docs" / "ir-reference.md").read_text()
    assert committed == _irdoc.render(), (
        "run `python -m crucible_core._irdoc > docs/ir-reference.md`"
    )
    for name in ("Prompt", "SamplingParams", "StreamChunk", "Usage", "Health", "StageDef"):
        assert f"\n### {name}\n" in committed
    for t in _irdoc.documented_types():
        assert f"\n### {t.__name__}\n" in committed


def test_plugin_authoring_guide_quotes_the_example_plugin() -> None:
    guide = (ROOT / "docs" / "plugin-authoring.md").read_text()
    plugin = (ROOT / "examples" / "plugin-hello" / "crucible_hello" / "plugin.py").read_text()
    backend = (ROOT / "examples" / "plugin-hello" / "crucible_hello" / "backend.py").read_text()
    tests = (ROOT / "examples" / "plugin-hello" / "tests" / "test_backend.py").read_text()
    assert plugin.strip() in guide
    assert backend.strip() in guide
    assert tests.strip() in guide


def test_plugin_authoring_guide_quotes_the_crucible_acme_whole() -> None:
    guide = (ROOT / "docs" / "plugin-authoring.md").read_text()
    package = ROOT / "examples" / "plugin-acme" / "crucible_acme"
    for name in ("plugin.py", "stages.py", "source.py", "executor.py", "cli.py", "sink.py"):
        assert f"```python\n{(package / name).read_text().strip()}\n```" in guide, name


def test_the_guides_toml_examples_decode() -> None:
    """Every TOML block of the plugin guide parses (an experiment stage, a pyproject)."""
    import msgspec

    guide = (ROOT / "docs" / "plugin-authoring.md").read_text()
    blocks = guide.split("```toml\n")[1:]
    assert blocks
    for block in blocks:
        msgspec.toml.decode(block.split("```")[0])


def test_readme_starts_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    head = readme[: readme.index("\n## ", readme.index("```"))]
    assert "scripts/demo.sh" in head
    assert "scripts/test.sh" in head
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci
