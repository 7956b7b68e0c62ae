import pytest
from crucible_hello.backend import HelloBackend

from crucible_core.errors import UnsupportedError
from crucible_core.ir import Prompt, SamplingParams
from crucible_core.testing import check_inference_backend, check_light_import


def test_conforms():
    check_inference_backend(HelloBackend())
    check_light_import("crucible_hello.plugin")


def test_refuses_what_it_cannot_honour():
    with pytest.raises(UnsupportedError, match="temperature"):
        HelloBackend().complete(Prompt(text="Ada"), SamplingParams(temperature=0.7))
    with pytest.raises(UnsupportedError, match="n = 2"):
        HelloBackend().complete(Prompt(text="Ada"), SamplingParams(temperature=0, n=2))


def test_honours_stop():
    done = HelloBackend().complete(Prompt(text="Ada"), SamplingParams(temperature=0, stop=["A"]))
    assert (done.text, done.finish_reason) == ("Hello, ", "stop")
