"""The error every tfdnc serving client raises."""

from __future__ import annotations

# gRPC status codes a TF Serving answer can carry, and their REST statuses.
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "NOT_FOUND": 404,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNKNOWN": 500,
}
_CODE_FOR_HTTP = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    429: "RESOURCE_EXHAUSTED",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def code_for_http_status(status: int) -> str:
    return _CODE_FOR_HTTP.get(int(status), "INTERNAL" if status >= 500 else "UNKNOWN")


class ServingError(RuntimeError):
    """A failed request, naming the model, version and signature it was for.

    Attributes:
        code: the gRPC status name ("INVALID_ARGUMENT", "NOT_FOUND",
            "UNAVAILABLE", "DEADLINE_EXCEEDED", ...).
        model, version, signature: what the request asked for (version None:
            the latest the server has).
        details: the server's own message.

    Examples:
        >>> from tfdnc.serving import ExportedModel
        >>> client = ExportedModel("exports/dnc")   # or RestClient, GrpcClient
        >>> try:
        ...     client.embed([b"not an image"])
        ... except ServingError as err:
        ...     print(err.code, err.details)
        INVALID_ARGUMENT ...is not a JPEG/PNG/GIF/BMP/WebP image...
    """

    def __init__(
        self,
        details: str,
        *,
        model: str,
        version: int | str | None = None,
        signature: str | None = None,
        code: str = "UNKNOWN",
    ):
        self.details = str(details)
        self.model = model
        self.version = version
        self.signature = signature
        self.code = code
        where = f"model {model!r}"
        where += f", version {version}" if version is not None else ", latest version"
        if signature is not None:
            where += f", signature {signature!r}"
        super().__init__(f"{where}: {code}: {self.details}")
