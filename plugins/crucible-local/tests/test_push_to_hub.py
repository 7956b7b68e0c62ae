"""``checkpoint_policy.push_to_hub``: the run's export uploaded with huggingface_hub.

Real HTTP on 127.0.0.1 and the real ``huggingface_hub`` client, pointed with
``HF_ENDPOINT`` at :class:`~.hubstub.HubStub`, a stand-in for the hub's
create-repo, preupload and commit endpoints (no network here: the public hub
itself is not reached by any test).
"""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import pytest

from crucible_core.errors import BackendError

from .hfdir import cli, write_job
from .hubstub import HubStub


def test_push_folder_commits_every_file_to_the_endpoint(tmp_path: Path) -> None:
    from crucible_core.hub import push_folder

    folder = tmp_path / "export"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.bin").write_bytes(bytes(range(256)) * 4)
    (folder / "sub" / "README.md").write_text("card")
    with HubStub() as hub, pytest.MonkeyPatch.context() as mp:
        import huggingface_hub.constants as constants

        mp.setattr(constants, "ENDPOINT", hub.url)
        mp.setenv("HF_TOKEN", "hf_stubtoken")
        pushed = push_folder(folder, "acme/tuned", message="from a test")
    assert hub.unexpected == []
    assert hub.repos == ["acme/tuned"]
    [(repo, revision, files, message)] = hub.commits
    assert (repo, revision, message) == ("acme/tuned", "main", "from a test")
    assert files == {
        "model.bin": (folder / "model.bin").read_bytes(),
        "sub/README.md": b"card",
    }
    assert pushed.repo == "acme/tuned"
    assert pushed.endpoint == hub.url
    assert pushed.url.endswith(pushed.commit)
    assert all(t == "Bearer hf_stubtoken" for t in hub.tokens)


def test_an_unreachable_hub_is_a_backend_error_naming_it(tmp_path: Path) -> None:
    from crucible_core.hub import push_folder

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "f.txt").write_text("x")
    with pytest.MonkeyPatch.context() as mp:
        import huggingface_hub.constants as constants

        mp.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
        mp.setenv("HF_TOKEN", "hf_stubtoken")
        mp.setenv("HF_HUB_ETAG_TIMEOUT", "2")
        with pytest.raises(BackendError, match=rf"'acme/x' at http://127.0.0.1:{port} failed"):
            push_folder(tmp_path, "acme/x", message="m")


def test_a_run_with_push_to_hub_uploads_its_peft_export(tmp_path: Path) -> None:
    job = write_job(
        tmp_path / "job.toml",
        'name = "tiny-llama"\nmax_seq_len = 128',
        steps=2,
        policy='push_to_hub = true\nhub_repo = "acme/tiny-tuned"',
    )
    home = tmp_path / "home"
    with HubStub() as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_stubtoken"}
        plan = cli(home, "plan", str(job), "--json", env=env)
        assert plan.returncode == 0, plan.stdout + plan.stderr
        notes = json.loads(plan.stdout)["notes"]
        assert any(f"uploaded to acme/tiny-tuned at {hub.url}" in n for n in notes), notes
        proc = cli(home, "train", str(job), "--job-id", "p", "--no-progress", env=env)
        assert proc.returncode == 0, proc.stderr
    assert hub.unexpected == []
    [(repo, _, files, _)] = hub.commits
    assert repo == "acme/tiny-tuned"
    out = home / "runs" / "p" / "exports" / "peft"
    on_disk = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert files == on_disk
    assert "adapter_model.safetensors" in files
    # The model card's metadata block went through the hub's validation.
    assert hub.cards == [files["README.md"].decode()]
    manifest = json.loads((home / "runs" / "p" / "manifest.json").read_text())
    [record] = manifest["exports"]
    assert record["format"] == "peft"
    assert record["hub"]["repo"] == "acme/tiny-tuned"
    assert record["hub"]["endpoint"] == hub.url
    digest = hashlib.sha256(files["adapter_model.safetensors"]).hexdigest()
    assert record["files"]["adapter_model.safetensors"] == digest
