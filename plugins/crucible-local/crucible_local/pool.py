"""Adapter pools: many LoRA adapters of one base model, with one copy of the base in memory.

Why: checkpoints of several runs on one base (or several LoRA adapters trained
for different tasks) are worth serving side by side, as ensemble members or
routing targets, but loading each with ``load_sampler`` builds the base model
once per adapter. A pool loads the base once and swaps adapters on it through
PEFT (``load_adapter`` / ``set_adapter`` / ``delete_adapter``).

- :class:`AdapterPool` holds the base (built on first use) and at most
  ``max_loaded`` adapters, evicting the least recently used one. An evicted
  adapter is reloaded from its directory the next time it is asked for.
- Generation holds the pool's lock from ``set_adapter`` to the last token, so
  requests to different adapters of one pool run one after another (the CPU
  is the bottleneck anyway) and never see each other's adapter.
- :func:`shared_pool` gives every caller in the process the same pool for one
  base (``model``, ``model_path``, ``model_options``), so backends built
  separately (routing or ensemble members) still share the base.
- :class:`AdapterBackend` (registered as ``local-adapter``) is one adapter of a
  shared pool as an ``InferenceBackend``; :meth:`AdapterPool.backend` makes one
  from Python. ``Capabilities.backend_id`` (and ``Completion.backend_id``) is
  ``local-adapter:<name>``, so a route or an ensemble tells members apart.

An adapter is a checkpoint a ``local`` LoRA run saved (``file://`` URI or path
of the checkpoint directory, its ``sampler/``, or any PEFT adapter directory).
A full fine-tune is refused: it has no base to share.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from crucible_core.errors import BackendError, ConfigError, CrucibleError, UnsupportedError
from crucible_core.ir.backend import Capabilities, Health
from crucible_core.ir.training import ModelSpec
from crucible_local.capabilities import static_capabilities
from crucible_local.checkpoints import find_weights_dir, path_from_uri

if TYPE_CHECKING:
    from crucible_core.ir.backend import Completion, Prompt, SamplingParams, StreamChunk
    from crucible_local.sampler import LocalSampler

__all__ = ["AdapterBackend", "AdapterPool", "shared_pool"]

_POOLS: dict[tuple[str, str | None, str], AdapterPool] = {}
_POOLS_LOCK = threading.Lock()


def adapter_dir(uri: str) -> Path:
    """The PEFT adapter directory of a checkpoint (``ConfigError`` when it is not one)."""
    directory = find_weights_dir(path_from_uri(uri, field="adapter"), prefer="sampler")
    if not (directory / "adapter_config.json").is_file():
        raise UnsupportedError(
            f"adapter {uri!r}: {directory} is not a LoRA adapter (no adapter_config.json); "
            "only LoRA checkpoints can share a base in an adapter pool",
            hint="serve a full fine-tune with the 'local' backend's checkpoint option",
        )
    return directory.resolve()


def _display_name(directory: Path) -> str:
    """``<run>/<checkpoint>`` for a run's checkpoint, else the directory's name."""
    d = directory.parent if directory.name in ("sampler", "state") else directory
    if d.parent.name == "checkpoints":
        return f"{d.parent.parent.name}/{d.name}"
    return d.name


class AdapterPool:
    """One base model and up to ``max_loaded`` of its LoRA adapters (module docstring)."""

    def __init__(
        self,
        *,
        model: str = "tiny-llama",
        model_path: str | None = None,
        model_options: Mapping[str, Any] | None = None,
        max_loaded: int = 2,
    ) -> None:
        if isinstance(max_loaded, bool) or not isinstance(max_loaded, int) or max_loaded < 1:
            raise ConfigError(
                f"backend option max_loaded: expected an integer >= 1, got {max_loaded!r}"
            )
        self.spec = ModelSpec(name=model, path=model_path, options=dict(model_options or {}))
        self.max_loaded = max_loaded
        self._lock = threading.RLock()
        self._peft: Any = None
        self._sampler: LocalSampler | None = None
        self._keys: dict[Path, str] = {}  # adapter directory -> PEFT adapter name
        self._loaded: OrderedDict[str, str] = OrderedDict()  # PEFT name -> display name, LRU first
        self.base_loads = 0
        self.adapter_loads = 0
        self.evictions = 0

    # -- adapters ---------------------------------------------------------------------

    @property
    def loaded(self) -> list[str]:
        """Names of the adapters in memory now, least recently used first."""
        with self._lock:
            return list(self._loaded.values())

    def _activate(self, name: str, directory: Path) -> LocalSampler:
        """Make the adapter at ``directory`` active (loading it, evicting the least recently
        used one); lock held. Adapters are keyed by directory; ``name`` is for display."""
        key = self._keys.get(directory)
        if key is None:  # PEFT adapter names must be valid module names
            key = self._keys[directory] = f"adapter{len(self._keys)}"
        if key in self._loaded:
            self._loaded.move_to_end(key)
        else:
            from crucible_local._hf import peft_quiet

            with peft_quiet():
                if self._peft is None:
                    from peft import PeftModel

                    from crucible_local.models import load_model
                    from crucible_local.sampler import LocalSampler

                    loaded = load_model(self.spec)
                    self.base_loads += 1
                    self._peft = PeftModel.from_pretrained(
                        loaded.model, str(directory), adapter_name=key
                    )
                    self._sampler = LocalSampler(
                        model=self._peft,
                        tokenizer=loaded.tokenizer,
                        model_name=self.spec.name,
                        context_length=loaded.context_length,
                    )
                else:
                    self._peft.load_adapter(str(directory), adapter_name=key)
            self.adapter_loads += 1
            self._loaded[key] = name
            while len(self._loaded) > self.max_loaded:
                old, _ = self._loaded.popitem(last=False)
                self._peft.delete_adapter(old)
                self.evictions += 1
        self._peft.set_adapter(key)
        for p in self._peft.parameters():  # a loaded adapter's weights must not need grads
            p.requires_grad_(False)
        self._peft.eval()
        assert self._sampler is not None
        return self._sampler

    def generate(
        self, name: str, uri: str, prompt: Prompt, params: SamplingParams
    ) -> list[Completion]:
        """``params.n`` completions of ``prompt`` from adapter ``name`` (saved at ``uri``)."""
        directory = adapter_dir(uri)
        with self._lock:
            return self._activate(name, directory).generate(prompt, params)

    def stream(
        self, name: str, uri: str, prompt: Prompt, params: SamplingParams
    ) -> list[StreamChunk]:
        """One completion's chunks. Generated whole under the lock, then handed out: a
        stream the caller abandons half-way must not keep the pool locked."""
        directory = adapter_dir(uri)
        with self._lock:
            return list(self._activate(name, directory).stream(prompt, params))

    def backend(self, adapter: str, *, name: str | None = None) -> AdapterBackend:
        """Adapter ``adapter`` (a checkpoint URI or path) of this pool as a backend."""
        return AdapterBackend(adapter=adapter, name=name, pool=self)

    def metrics(self) -> dict[str, float]:
        with self._lock:
            return {
                "pool.base_loads": float(self.base_loads),
                "pool.adapter_loads": float(self.adapter_loads),
                "pool.evictions": float(self.evictions),
                "pool.loaded": float(len(self._loaded)),
            }

    def close(self) -> None:
        with self._lock:
            if self._sampler is not None:
                self._sampler.close()
            self._sampler, self._peft = None, None
            self._loaded.clear()


def shared_pool(
    *,
    model: str = "tiny-llama",
    model_path: str | None = None,
    model_options: Mapping[str, Any] | None = None,
    max_loaded: int = 2,
) -> AdapterPool:
    """The process's pool for this base, created on first use. Its ``max_loaded`` is the
    largest any caller asked for."""
    key = (
        model,
        model_path,
        msgspec.json.encode(dict(model_options or {}), order="sorted").decode(),
    )
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = AdapterPool(
                model=model,
                model_path=model_path,
                model_options=model_options,
                max_loaded=max_loaded,
            )
        elif max_loaded > pool.max_loaded:
            pool.max_loaded = max_loaded
        return pool


class AdapterBackend:
    """One LoRA adapter of a shared :class:`AdapterPool`, as an ``InferenceBackend``.

    Options: ``adapter`` (checkpoint URI or path), ``name`` (default: the
    checkpoint directory's name), ``model``, ``model_path``, ``model_options``
    (the base: must be what the adapter was trained on) and ``max_loaded`` (the
    pool's LRU bound, 2 by default). Every backend with the same base shares
    one pool, so one base is in memory however many adapters are served.
    """

    def __init__(
        self,
        *,
        adapter: str,
        name: str | None = None,
        model: str = "tiny-llama",
        model_path: str | None = None,
        model_options: Mapping[str, Any] | None = None,
        max_loaded: int = 2,
        pool: AdapterPool | None = None,
    ) -> None:
        directory = adapter_dir(adapter)  # fail at creation on a bad path, not on first call
        self.adapter = adapter
        self.name = name = name or _display_name(directory)
        self.pool = pool or shared_pool(
            model=model, model_path=model_path, model_options=model_options, max_loaded=max_loaded
        )
        self.backend_id = f"local-adapter:{name}"
        self._closed = False

    def capabilities(self) -> Capabilities:
        caps = static_capabilities()
        return msgspec.structs.replace(caps, backend_id=self.backend_id, supports_training=False)

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError(f"{self.backend_id} is closed", hint="create the backend again")

    def complete(self, prompt: Prompt, params: SamplingParams) -> Completion:
        self._check_open()
        if params.n != 1:
            raise ConfigError(
                f"params.n = {params.n}: complete returns one completion",
                hint="set n = 1, or use sample() for several",
            )
        (out,) = self.pool.generate(self.name, self.adapter, prompt, params)
        return msgspec.structs.replace(out, backend_id=self.backend_id)

    def sample(self, prompt: Prompt, params: SamplingParams) -> Future[list[Completion]]:
        """The completions, computed on the caller's thread (the pool serialises anyway)."""
        self._check_open()
        future: Future[list[Completion]] = Future()
        outs = self.pool.generate(self.name, self.adapter, prompt, params)
        future.set_result([msgspec.structs.replace(o, backend_id=self.backend_id) for o in outs])
        return future

    def stream(self, prompt: Prompt, params: SamplingParams) -> Iterator[StreamChunk]:
        self._check_open()
        for chunk in self.pool.stream(self.name, self.adapter, prompt, params):
            yield msgspec.structs.replace(chunk, backend_id=self.backend_id)

    def health_check(self) -> Health:
        try:
            adapter_dir(self.adapter)
        except CrucibleError as exc:
            return Health(ok=False, detail=exc.message)
        return Health(ok=not self._closed, detail=f"adapter {self.name} of {self.pool.spec.name}")

    def metrics(self) -> Mapping[str, float]:
        return self.pool.metrics()

    def close(self) -> None:
        """Closes this view only: the shared pool (and its base) stays for the others."""
        self._closed = True
