"""OpenAI's error shape: every refusal is `{"error": {"message", "type", "param", "code"}}` with a 4xx/5xx status.

The server raises `ApiError` (or a subclass) anywhere below the HTTP layer; the app turns it into the JSON reply,
and into an `error` event when a stream has already started.
"""

from __future__ import annotations

from typing import Any

# status -> OpenAI's error type
ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
               422: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 503: "server_error",
               504: "timeout_error"}


class ApiError(Exception):
    """A refusal with its HTTP status; `param` names the request field at fault, `code` is machine-readable."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": ERROR_TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


def bad_request(message: str, code: str = "invalid_request", param: str | None = None) -> ApiError:
    return ApiError(400, message, code, param)


class QueueFull(ApiError):
    def __init__(self, retry_after_s: int, depth: int):
        super().__init__(429, f"the server is busy: {depth} requests are already waiting; retry in about "
                              f"{retry_after_s} s", "queue_full", headers={"Retry-After": str(retry_after_s)})


class Timeout(ApiError):
    def __init__(self, seconds: float):
        super().__init__(504, f"the request did not finish within the server's {seconds:g} s deadline "
                              "(--request-timeout); ask for fewer tokens or retry later", "timeout")


class EngineStopped(ApiError):
    def __init__(self, reason: str = "the server is shutting down"):
        super().__init__(503, reason, "unavailable")
