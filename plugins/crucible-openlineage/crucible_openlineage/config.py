"""The sink's configuration, from environment variables, and the transport it names.

Variables (``CRUCIBLE_OPENLINEAGE_`` + name), defaults in brackets:

- ``TRANSPORT``: ``file``, ``http`` or ``none`` (off) [file];
- ``FILE``: the file transport's JSON-lines file [``$CRUCIBLE_HOME/openlineage.jsonl``];
- ``URL``: the http transport's server, ``http(s)://host:port`` [required for http];
- ``ENDPOINT``: the path events are POSTed to [``api/v1/lineage``];
- ``API_KEY``: a bearer token for the server [none];
- ``TIMEOUT_S``: seconds per HTTP request [5];
- ``NAMESPACE``: the job namespace of every event [crucible];
- ``QUEUE``: events waiting to be sent before new ones are dropped [1000];
- ``FLUSH_S``: seconds the process waits at exit for queued events [5].

A bad value is a :class:`~crucible_core.errors.ConfigError` naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from crucible_core.errors import ConfigError
from crucible_core.records.sinkenv import positive_number

__all__ = ["SinkConfig", "make_transport"]

_PREFIX = "CRUCIBLE_OPENLINEAGE_"


@dataclass(frozen=True)
class SinkConfig:
    """Where and how lineage events go (see the module docstring for the variables)."""

    transport: Literal["file", "http", "none"] = "file"
    file: Path | None = None
    url: str | None = None
    endpoint: str = "api/v1/lineage"
    api_key: str | None = None
    timeout_s: float = 5.0
    namespace: str = "crucible"
    queue_size: int = 1000
    flush_s: float = 5.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SinkConfig:
        """Read the ``CRUCIBLE_OPENLINEAGE_*`` variables of ``env`` (default: os.environ)."""
        env = os.environ if env is None else env
        transport = (env.get(_PREFIX + "TRANSPORT") or "file").strip().lower()
        if transport not in ("file", "http", "none"):
            raise ConfigError(
                f"{_PREFIX}TRANSPORT={transport!r} is not a transport",
                hint=f"set {_PREFIX}TRANSPORT to file, http or none",
            )
        url = env.get(_PREFIX + "URL") or None
        if transport == "http" and not url:
            raise ConfigError(
                f"{_PREFIX}TRANSPORT=http needs {_PREFIX}URL",
                hint=f"set {_PREFIX}URL to the lineage server, e.g. http://127.0.0.1:5000",
            )
        if url and not url.startswith(("http://", "https://")):
            raise ConfigError(
                f"{_PREFIX}URL={url!r} is not an http(s) URL",
                hint=f"set {_PREFIX}URL to http://host:port of the lineage server",
            )
        file = env.get(_PREFIX + "FILE")
        return cls(
            transport=cast(Literal["file", "http", "none"], transport),
            file=Path(file) if file else None,
            url=url,
            endpoint=env.get(_PREFIX + "ENDPOINT") or "api/v1/lineage",
            api_key=env.get(_PREFIX + "API_KEY") or None,
            timeout_s=positive_number(env, _PREFIX + "TIMEOUT_S", 5.0),
            namespace=env.get(_PREFIX + "NAMESPACE") or "crucible",
            queue_size=int(positive_number(env, _PREFIX + "QUEUE", 1000, integer=True)),
            flush_s=positive_number(env, _PREFIX + "FLUSH_S", 5.0),
        )

    def file_path(self) -> Path:
        """The file transport's file (``$CRUCIBLE_HOME/openlineage.jsonl`` unless set)."""
        if self.file is not None:
            return self.file
        from crucible_core.records.paths import crucible_home

        return crucible_home() / "openlineage.jsonl"


def make_transport(config: SinkConfig) -> Callable[[Any], object] | None:
    """A callable sending one OpenLineage event (None when the transport is ``none``).

    File: openlineage's ``FileTransport`` appending one JSON event per line.
    HTTP: openlineage's ``HttpTransport`` (``timeout_s`` per request, no retries:
    the sink's queue is the buffer, and a lineage server that is down must not
    hold events for minutes).
    """
    if config.transport == "none":
        return None
    if config.transport == "file":
        from openlineage.client.transport.file import FileConfig, FileTransport

        path = config.file_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        return FileTransport(FileConfig(log_file_path=str(path), append=True)).emit
    from openlineage.client.transport.http import HttpConfig, HttpTransport

    params: dict[str, Any] = {
        "url": config.url,
        "endpoint": config.endpoint,
        "timeout": config.timeout_s,
        "retry": {"total": 0},
    }
    if config.api_key:
        params["auth"] = {"type": "api_key", "apiKey": config.api_key}
    return HttpTransport(HttpConfig.from_dict(params)).emit
