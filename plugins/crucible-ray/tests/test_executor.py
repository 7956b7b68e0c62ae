"""The ray executor as an Executor: the conformance kit, resources, cancel, registration.

All on the session's real local Ray instance (ray.init(num_cpus=2)).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from crucible_ray import RayExecutor, ray_options
from crucible_ray.resources import LABEL_AMOUNT

from crucible_core.errors import ConfigError
from crucible_core.ir.common import ResourceSpec
from crucible_core.testing.executors import check_executor


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def _read_pid(path: Path, within: float = 30.0) -> int:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text().split()[-1])
        time.sleep(0.02)
    raise AssertionError(f"{path} was never written: the task did not start")


def test_ray_executor_passes_the_executor_kit(ray_session: Any) -> None:
    check_executor(RayExecutor(), timeout=60)


def test_registered_as_ray_through_the_hook(ray_session: Any) -> None:
    import crucible_core

    executor = crucible_core.get_executor("ray")
    try:
        assert isinstance(executor, RayExecutor)
        assert executor.submit(pow, 2, 10).result(timeout=30) == 1024
    finally:
        executor.shutdown()
    assert ray_session.is_initialized(), "an executor that joined a running Ray must not stop it"


def test_resource_spec_maps_to_ray_options() -> None:
    assert ray_options(None) == {"num_cpus": 1}
    assert ray_options(ResourceSpec()) == {"num_cpus": 1}
    spec = ResourceSpec(
        cpus=2, gpus=1, gpu_type="A100", memory_gb=1.5, labels={"zone": "eu", "disk": "ssd"}
    )
    assert ray_options(spec) == {
        "num_cpus": 2,
        "num_gpus": 1,
        "accelerator_type": "A100",
        "memory": int(1.5 * 1024**3),
        "resources": {"disk=ssd": LABEL_AMOUNT, "zone=eu": LABEL_AMOUNT},
    }


def test_cancelling_a_future_kills_its_ray_task(ray_session: Any, tmp_path: Path) -> None:
    import _ray_jobs

    executor = RayExecutor()
    try:
        future = executor.submit(_ray_jobs.sleep_pid, str(tmp_path / "pid"))
        pid = _read_pid(tmp_path / "pid")
        started = time.monotonic()
        assert future.cancel()
        assert future.cancelled()
        assert _gone(pid, 15.0), "ray.cancel(force=True) must end the task's process"
        assert time.monotonic() - started < 15.0
    finally:
        executor.shutdown(wait=False)


@pytest.mark.parametrize(
    ("options", "field"), [({"address": ""}, "address"), ({"num_cpus": 0}, "num_cpus")]
)
def test_bad_options_are_config_errors(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        RayExecutor(**options)
    assert info.value.details["option"] == field


def test_loading_the_plugin_does_not_import_ray() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from crucible_core.plugins import get_host\n"
        "assert 'ray' in get_host().registrations('executor')\n"
        "print('ray' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False", "ray must be imported only when an executor is built"
