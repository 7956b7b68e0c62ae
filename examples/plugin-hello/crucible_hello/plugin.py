from crucible_core import RegisterBackend, hookimpl
from crucible_core.ir import Capabilities

CAPS = Capabilities(backend_id="hello", provider="example", supports_streaming=True)


@hookimpl
def register_backends(register: RegisterBackend) -> None:
    register("hello", "crucible_hello.backend:HelloBackend", summary="Greets", capabilities=CAPS)
