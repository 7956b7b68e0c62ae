"""``save_weights_external`` + ``RestClient.get_external_weights_urls``: a checkpoint's files
downloaded from serve-tinker by the unmodified tinker SDK, over real HTTP on 127.0.0.1.

The SDK 0.38 way to get weights out of Tinker (what ``tinker checkpoint download``
does): save them as an external-weights checkpoint, ask for signed URLs, fetch
each file without the API key. The files are crucible-local's checkpoint
directory, which crucible-local exports like any run's checkpoint.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import tinker
from crucible_tinker.server import TinkerServer
from tinker import types

from crucible_core.ir.backend import CheckpointRef
from crucible_core.ir.training import ModelSpec
from crucible_core.records.artifacts import uri_path

from .conftest import BASE_MODEL, WAIT, ServiceFactory, byte_datums

pytestmark = pytest.mark.timeout(240)


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def test_external_weights_download_through_the_sdk_and_export(
    server: TinkerServer, service_factory: ServiceFactory, tokenizer: Any, tmp_path: Path
) -> None:
    service = service_factory(server)
    training = service.create_lora_training_client(
        base_model=BASE_MODEL, rank=4, seed=0, train_unembed=False
    ).result(timeout=WAIT)
    data = byte_datums(tokenizer)
    training.forward_backward(data, "cross_entropy").result(timeout=WAIT)
    training.optim_step(types.AdamParams(learning_rate=1e-2)).result(timeout=WAIT)
    saved = training.save_weights_external("for-export").result(timeout=WAIT)
    assert saved.path == f"tinker://{training.model_id}/external_weights/for-export"
    response = (
        tinker.RestClient(base_url=server.url, api_key=server.api_key)
        .get_external_weights_urls(saved.path)
        .result(timeout=WAIT)
    )
    assert "adapter_config.json" in response.urls
    assert "adapter_model.safetensors" in response.urls
    # The files are the backend's checkpoint directory, byte for byte.
    source = uri_path(server.engine.checkpoints.get(saved.path).ref.uri)
    assert source is not None
    got = tmp_path / "downloaded"
    for name, url in response.urls.items():
        assert url.startswith(server.url)
        dest = got / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(_fetch(url))  # no API key: the URL is the credential
        assert dest.read_bytes() == (source / name).read_bytes()
    assert json.loads((got / "adapter_config.json").read_text())["r"] == 4
    # Exported the same way as a crucible-local run's checkpoint, and it loads stock.
    from crucible_local.export import export

    out = tmp_path / "merged"
    export(ModelSpec(name=BASE_MODEL), CheckpointRef(uri=got.as_uri()), "merged", out)
    assert (out / "model.safetensors.index.json").is_file()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True)
    assert model.config.model_type == "llama"


def test_download_urls_refuse_unknown_tokens_and_escapes(
    server: TinkerServer, service_factory: ServiceFactory
) -> None:
    service = service_factory(server)
    training = service.create_lora_training_client(base_model=BASE_MODEL, rank=4).result(
        timeout=WAIT
    )
    saved = training.save_weights_external("escape").result(timeout=WAIT)
    urls = (
        tinker.RestClient(base_url=server.url, api_key=server.api_key)
        .get_external_weights_urls(saved.path)
        .result(timeout=WAIT)
    )
    some = next(iter(urls.urls.values()))
    token_base = some.rsplit("/", 1)[0]
    for bad in (f"{token_base}/..%2F..%2Fcheckpoints.json", server.url + "/crucible/v1/files/x/y"):
        with pytest.raises(urllib.error.HTTPError) as err:
            _fetch(bad)
        assert err.value.code == 404
        err.value.close()
    with pytest.raises(ValueError, match="only accepts external weights"):
        tinker.RestClient(base_url=server.url, api_key=server.api_key).get_external_weights_urls(
            f"tinker://{training.model_id}/sampler_weights/x"
        )


def test_crucible_export_of_a_tinker_run_downloads_and_verifies(
    server: TinkerServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``crucible train --backend tinker`` against serve-tinker, then ``crucible export``:
    the final weights come back through save_weights_external + the signed URLs."""
    from crucible_core.cli.main import main

    repo = Path(__file__).resolve().parents[3]
    home = tmp_path / "home"
    monkeypatch.chdir(repo)
    monkeypatch.setenv("CRUCIBLE_HOME", str(home))
    monkeypatch.setenv("CRUCIBLE_CALL_DEADLINE_S", "90")
    monkeypatch.setenv("TINKER_BASE_URL", server.url)
    monkeypatch.setenv("TINKER_API_KEY", server.api_key)
    example = repo / "examples" / "sft-local.toml"
    args = ["train", str(example), "--backend", "tinker", "--job-id", "t", "--no-progress"]
    assert main(args) == 0
    manifest = json.loads((home / "runs" / "t" / "manifest.json").read_text())
    sampler = manifest["sampler_checkpoint"]
    assert sampler["uri"].startswith("tinker://")
    assert "/external_weights/" in sampler["metadata"]["external_weights"]
    capsys.readouterr()
    out = tmp_path / "merged"
    assert main(["export", "t", "--format", "merged", "--out", str(out), "--verify", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["verification"]["ok"] is True
    assert record["checkpoint"] == sampler["uri"]
    assert (out / "model.safetensors.index.json").is_file()
    # Nothing downloaded is left beside the export.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
