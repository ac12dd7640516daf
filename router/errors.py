"""The router's failure kinds and their one rendering: OpenAI's error body.

Each kind carries its HTTP status and OpenAI `type`, so handlers raise and the
single middleware at the edge renders and logs; nothing is formatted twice.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

NOT_JSON = (msgspec.DecodeError, RecursionError, UnicodeDecodeError)
"""What msgspec raises for a body that is not JSON: malformed, nested too deeply, or not UTF-8."""


class ErrorDetail(msgspec.Struct, omit_defaults=False):
    message: str
    type: str
    param: str | None
    code: int


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


class RouterError(Exception):
    """Base of every error a client may see; subclasses fix the status and type."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "InternalServerError"
    closes_connection: ClassVar[bool] = False
    """The connection cannot carry another request after this answer (part of the request is unread)."""

    def __init__(self, message: str, *, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}

    def body(self) -> bytes:
        return msgspec.json.encode(ErrorBody(ErrorDetail(self.message, self.type, self.param, self.status)))


class BadRequest(RouterError):
    status = 400
    type = "BadRequestError"


class InvalidAdapter(BadRequest):
    """An adapter name or source the catalog must not accept."""


class Unauthorized(RouterError):
    status = 401
    type = "AuthenticationError"


class Forbidden(RouterError):
    status = 403
    type = "PermissionDeniedError"


class ModelNotFound(RouterError):
    """Same shape as vLLM's unknown-model 404, so clients cannot tell router from worker."""

    status = 404
    type = "NotFoundError"

    def __init__(self, model: str, valid: str = "") -> None:
        tail = f" Valid aliases: {valid}." if valid else ""
        super().__init__(f"The model `{model}` does not exist.{tail}", param="model")


class NotFound(RouterError):
    status = 404
    type = "NotFoundError"


class PayloadTooLarge(RouterError):
    status = 413
    type = "BadRequestError"


class HeadersTooLarge(RouterError):
    status = 431
    type = "BadRequestError"


class ClientClosedRequest(RouterError):
    """The client went away before its request was whole: nginx's 499, so no metric or log calls it a
    server error (nobody receives the body)."""

    status = 499
    type = "ClientClosedRequest"


class ExpectationFailed(RouterError):
    """An `Expect` header other than 100-continue: HTTP/1.1 says 417."""

    status = 417
    type = "BadRequestError"


class MethodNotAllowed(RouterError):
    status = 405
    type = "BadRequestError"


class RequestTimeout(RouterError):
    """The client did not send its whole request in time."""

    status = 408
    type = "BadRequestError"
    closes_connection = True


class InternalError(RouterError):
    """A bug: an exception no handler expected. The client gets the OpenAI shape, the log the traceback."""


class NoWorkerAvailable(RouterError):
    """No healthy worker can serve the request right now; the client may retry later."""

    status = 503
    type = "ServiceUnavailableError"


class AdapterFailed(NoWorkerAvailable):
    """The adapter is marked failed in the catalog: every worker placed for it refused to load it."""


class ColdStartTimeout(NoWorkerAvailable):
    """The adapter's first load did not finish within cold_start_timeout_s."""


class UpstreamFailed(RouterError):
    """Every attempt to reach a worker failed before it sent a response."""

    status = 502
    type = "BadGatewayError"


class GatewayTimeout(RouterError):
    """The worker did not answer within timeouts.read_s; the request is not sent again anywhere."""

    status = 504
    type = "GatewayTimeoutError"


class AnswerCut(ConnectionError):
    """The worker stopped in the middle of an answer whose head the client already has: the client's
    connection is closed so the truncation shows as a failure, not as a short success."""


class HttpStatusError(RouterError):
    """An HTTP-level refusal from aiohttp itself (no route, wrong method), in OpenAI shape."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status  # type: ignore[misc]
        self.type = ("NotFoundError" if status == 404 else  # type: ignore[misc]
                     "InternalServerError" if status >= 500 else "BadRequestError")
