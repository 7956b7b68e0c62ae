from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from crucible_core.errors import ConfigError, NotFound
from crucible_core.ir import DatasetSpec


class LinesSource:
    """``lines:path/to/file.txt``: one row ``{"text": line}`` per non-empty line."""

    def __init__(self, **options: Any) -> None:
        self.encoding = options.get("encoding", "utf-8")

    def iter_rows(self, spec: DatasetSpec) -> Iterator[Mapping[str, Any]]:
        path = Path(spec.uri.removeprefix("lines:"))
        if not path.is_file():
            raise NotFound(f"{path}: no such file", hint="check dataset_spec.uri")
        try:
            with path.open(encoding=self.encoding) as fh:
                for line in fh:
                    if line.strip():
                        yield {"text": line.rstrip("\n")}
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not {self.encoding} text ({exc.reason})") from None
