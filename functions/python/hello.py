"""`hello` as a `wasi:http/proxy` component written in Python (componentize-py).

Whatever the method or path, it answers 200 with `content-type: text/plain` and
the body `hello from python: <METHOD> <path-with-query>\n`. It reads no request
body and makes no outgoing requests.

Built by `scripts/build-python-component.sh` into
`functions/dist/components/hello-python.wasm`.
"""

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method,
    Method_Other,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)


def method_name(method: Method) -> str:
    """The method as it appears on the wire: `Method_Get()` is `GET`."""
    if isinstance(method, Method_Other):
        return method.value
    return type(method).__name__.removeprefix("Method_").upper()


class IncomingHandler(exports.IncomingHandler):
    """The `wasi:http/incoming-handler` export of the `wasi:http/proxy` world."""

    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        path = request.path_with_query() or "/"
        body = f"hello from python: {method_name(request.method())} {path}\n".encode()

        headers = Fields.from_list(
            [
                ("content-type", b"text/plain"),
                ("content-length", str(len(body)).encode()),
            ]
        )
        response = OutgoingResponse(headers)  # status 200 by default
        outgoing = response.body()
        ResponseOutparam.set(response_out, Ok(response))

        # blocking-write-and-flush takes at most 4096 bytes per call; the body is
        # far smaller, but write in chunks so a longer one would still work. The
        # stream is a child of the body: it must be dropped (end of `with`)
        # before the body is finished.
        with outgoing.write() as stream:
            for start in range(0, len(body), 4096):
                stream.blocking_write_and_flush(body[start : start + 4096])
        OutgoingBody.finish(outgoing, None)
