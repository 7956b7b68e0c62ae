"""crucible-hello: the smallest complete Crucible plugin (see docs/plugin-authoring.md)."""
