from collections.abc import Mapping
from typing import Any

from crucible_core.contracts import StageContext
from crucible_core.errors import Cancelled, ConfigError


class DedupeStage:
    """Keep the first row of each ``key`` value from the rows an earlier stage produced.

    Options: ``input`` (the stage whose ``rows`` to read, default ``load``) and
    ``key`` (the field to compare, default ``text``).
    """

    def __init__(self, **options: Any) -> None:
        self.defaults = options

    def run(self, ctx: StageContext) -> Mapping[str, Any]:
        options = {**self.defaults, **ctx.options}
        source, key = options.get("input", "load"), options.get("key", "text")
        if source not in ctx.inputs:
            raise ConfigError(
                f"acme.dedupe: no output of stage {source!r} to read",
                hint="list it in depends_on, or set options.input",
            )
        seen: set[Any] = set()
        rows: list[Mapping[str, Any]] = []
        for i, row in enumerate(ctx.inputs[source]["rows"]):
            if i % 1000 == 0 and ctx.cancel.is_set():
                raise Cancelled("acme.dedupe: cancelled")
            if row.get(key) not in seen:
                seen.add(row.get(key))
                rows.append(row)
        dropped = len(ctx.inputs[source]["rows"]) - len(rows)
        ctx.emit("acme.deduped", kept=len(rows), dropped=dropped)
        return {"rows": rows, "dropped": dropped}
