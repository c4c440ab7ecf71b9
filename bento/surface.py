"""The churn service's front door: what it accepts, how it refuses, and what it documents.

``Guard`` wraps the whole ASGI app BentoML builds, outside its own middleware, so a request it
refuses costs nothing further: no body is parsed, no traceback is logged, and no metrics label is
made for a path the service does not have (BentoML labels its request metrics with the raw path,
so every distinct unknown path used to become a new series in ``/metrics``). Everything that is
refused gets the one error body the OpenAPI document describes, ``ErrorBody``.

It also serves the two pages BentoML's own would get wrong for this service: the Swagger page,
without the third-party tag manager BentoML's loads, and ``/docs.json``, corrected to say what the
service really accepts and answers (docs/serving.md).
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import bentoml
import msgspec
import pydantic
from bentoml import get_current_service
from pydantic import BaseModel, Field
from starlette.responses import Response
from starlette.routing import Mount, Route

MAX_BODY_BYTES = 2 * 1024 * 1024
"""A /predict_batch of MAX_BATCH_RECORDS records, even pretty-printed, is about half of this."""
MAX_HEADER_BYTES = 16 * 1024
"""All request headers together, names and values."""
JSON = "application/json"
REJECTIONS_LOGGED_PER_MINUTE = 10
LOGGED_REASON_CHARS = 500
"""A body with thousands of unknown keys still logs one short line."""

SWAGGER_PAGE = Path(__file__).with_name("swagger.html")
SAME_ORIGIN_ONLY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'"
)
"""The Swagger page's Content-Security-Policy: a browser fetches nothing from another host."""

logger = logging.getLogger("bentoml.churn_service")

refused = bentoml.metrics.Counter(
    name="churn_requests_refused",
    documentation="Requests refused before any prediction, by reason.",
    labelnames=["reason"],
)


class FieldError(BaseModel):
    loc: list[str | int] = Field(
        description="The field's path in the request body; 'body', 'header', 'path' or 'method' for a fault of the request as a whole."
    )
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every refused request's answer: what went wrong, and which fields."""

    error: str
    detail: list[FieldError] = Field(default_factory=list)


def error_response(
    status: int, error: str, *, loc: tuple = (), type: str = "", headers: dict | None = None
) -> Response:
    detail = [{"loc": list(loc), "msg": error, "type": type}] if loc else []
    return Response(json.dumps({"error": error, "detail": detail}).encode(), status, headers, JSON)


def printable(text: str) -> str:
    """Client text as one log line: a newline in it must not forge a second line."""
    return text.encode("unicode_escape").decode("ascii")


class RejectionLog:
    """Lets a few rejected requests a minute into the log; the rest are only counted.

    A client that sends bad requests in a loop must not be able to fill the disk one line each:
    past the limit the log says so once, and when the minute is over says how many it left out.
    """

    def __init__(self, per_minute: int = REJECTIONS_LOGGED_PER_MINUTE, clock=time.monotonic) -> None:
        self.per_minute, self.clock = per_minute, clock
        self.window_started, self.logged, self.left_out = clock(), 0, 0
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            now = self.clock()
            if now - self.window_started >= 60:
                if self.left_out:
                    logger.warning("%d more rejected requests in the last minute were not logged", self.left_out)
                self.window_started, self.logged, self.left_out = now, 0, 0
            if self.logged < self.per_minute:
                self.logged += 1
                if self.logged == self.per_minute:
                    logger.warning(
                        "%d requests rejected this minute; further ones are counted in "
                        "churn_requests_refused_total and summarised, not logged one by one",
                        self.per_minute,
                    )
                return True
            self.left_out += 1
            return False


REJECTIONS = RejectionLog()


@dataclass(frozen=True)
class Refusal:
    reason: str
    """The ``churn_requests_refused_total`` label: one of a few fixed words."""
    status: int
    error: str
    loc: tuple = ()
    type: str = ""
    headers: dict | None = None

    async def __call__(self, path: str, scope, receive, send) -> None:
        refused.labels(reason=self.reason).inc()
        if REJECTIONS.allow():
            logger.warning("Rejected request on %s: %s", printable(path), printable(self.error))
        await error_response(self.status, self.error, loc=self.loc, type=self.type, headers=self.headers)(
            scope, receive, send
        )


TOO_LARGE = Refusal("body_too_large", 413, f"the request body is over {MAX_BODY_BYTES} bytes", ("body",), "too_large")


class DirectApis:
    """Answers the service's APIs without BentoML's generic dispatch, which costs three times a prediction.

    A BentoML ASGI middleware (``add_asgi_middleware``), so requests still pass BentoML's request
    metrics, timeout, concurrency limit and tracing. What it skips is the dispatch every API
    shares: routing, the request context, signature binding and serializer lookup, worth about
    0.3 ms on a /predict that takes 0.1 ms to score (benchmarks/README.md). Each API's declared
    ``input_spec`` validates its body and its own method answers, so the OpenAPI document still
    describes exactly what runs. The Guard in front has already refused anything but a JSON POST
    within the size limits.

    ``fast`` maps an API's name to a msgspec type that accepts what its ``input_spec`` accepts
    (tests/service/test_fast_validation.py), and the API takes that type's fields. A body it
    decodes skips pydantic, five times slower on a full batch. A body it refuses goes to pydantic,
    so every 400 is the documented one, and what pydantic accepts after all (a key given twice,
    whose first value was invalid) is converted to the fast type.
    """

    def __init__(self, app, service: bentoml.Service, fast: dict[str, type] | None = None) -> None:
        self.app = app
        self.apis = {api.route: api for api in service.apis.values()}
        for api in self.apis.values():
            if not inspect.iscoroutinefunction(api.func) or api.batchable or api.ctx_param:
                raise TypeError(f"{api.name}: DirectApis answers plain async APIs only")
        self.fast = {name: msgspec.json.Decoder(spec) for name, spec in (fast or {}).items()}

    async def __call__(self, scope, receive, send) -> None:
        api = self.apis.get(scope["path"]) if scope["type"] == "http" else None
        if api is None:
            await self.app(scope, receive, send)
            return
        body, _ = await _read_body(receive)
        try:
            response = await api.func(get_current_service(), **self._arguments(api, body))
        except pydantic.ValidationError as error:
            response = _invalid(scope["path"], error)
        except Exception:
            logger.exception("%s failed", api.name)
            response = error_response(500, "The service failed; its log says why.")
        await response(scope, receive, send)

    def _arguments(self, api, body: bytes) -> dict:
        fast = self.fast.get(api.name)
        if fast is None:
            request = api.input_spec.model_validate_json(body)
            return {name: getattr(request, name) for name in type(request).model_fields}
        try:
            decoded = fast.decode(body)
        except ValueError:  # msgspec's errors, and a UnicodeDecodeError for bytes that are not UTF-8
            decoded = msgspec.convert(api.input_spec.model_validate_json(body).model_dump(), fast.type)
        return {name: getattr(decoded, name) for name in decoded.__struct_fields__}


def _invalid(path: str, error: pydantic.ValidationError) -> Response:
    """A 400 naming every field at fault; logged like any refusal, within the log's rate limit."""
    detail = error.errors(include_url=False, include_context=False, include_input=False)
    for field in detail:
        field["loc"] = list(field["loc"]) or ["body"]
    refused.labels(reason="invalid_body").inc()
    if REJECTIONS.allow():
        reason = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in detail)
        if len(reason) > LOGGED_REASON_CHARS:
            reason = reason[:LOGGED_REASON_CHARS] + f" ... ({len(detail)} errors)"
        logger.warning("Rejected request on %s: %s", printable(path), printable(reason))
    count = len(detail)
    body = {"error": f"{count} invalid field{'s' if count != 1 else ''} in the request body", "detail": detail}
    return Response(json.dumps(body).encode(), 400, media_type=JSON)


class Guard:
    """The outermost ASGI app: refuses what BentoML should never see, replays the body it read."""

    def __init__(self, app, service: bentoml.Service) -> None:
        self.app, self.service = app, service
        self.api_paths = {api.route for api in service.apis.values()}
        self.known_paths = _fixed_paths(app)
        self._docs: tuple[dict, bytes] | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        refusal = None
        if sum(len(name) + len(value) for name, value in scope["headers"]) > MAX_HEADER_BYTES:
            refusal = Refusal(
                "headers_too_large", 431, f"request headers are over {MAX_HEADER_BYTES} bytes", ("header",), "too_large"
            )
        elif path in self.api_paths:
            refusal = self._refusal_for_api_call(scope, method)
            if refusal is None:
                body, refusal = await _read_body(receive)
                if refusal is None:
                    receive = _replay(body, receive)
        elif path not in self.known_paths:
            refusal = Refusal("unknown_path", 404, f"no such path: {path}", ("path",), "not_found")
        elif method in ("GET", "HEAD") and path == "/":
            await self._page(
                send,
                SWAGGER_PAGE.read_bytes(),
                "text/html; charset=utf-8",
                {"content-security-policy": SAME_ORIGIN_ONLY},
            )
            return
        elif method in ("GET", "HEAD") and path == "/docs.json":
            await self._page(send, self.docs(), JSON, {})
            return
        if refusal is not None:
            await refusal(path, scope, receive, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _refusal_for_api_call(scope, method: str) -> Refusal | None:
        if method != "POST":
            return Refusal(
                "method_not_allowed",
                405,
                f"{method} is not allowed here; send a POST",
                ("method",),
                "method_not_allowed",
                {"allow": "POST"},
            )
        headers = dict(scope["headers"])
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        if content_type.split(";")[0].strip().lower() != JSON:
            return Refusal(
                "unsupported_media_type",
                415,
                f"Content-Type must be {JSON}, not {content_type or 'missing'}",
                ("header", "content-type"),
                "unsupported_media_type",
            )
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return TOO_LARGE
        return None

    @staticmethod
    async def _page(send, body: bytes, media_type: str, headers: dict) -> None:
        raw = [(b"content-type", media_type.encode()), (b"content-length", str(len(body)).encode())]
        raw += [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    def docs(self) -> bytes:
        """The corrected document, rebuilt when the service's examples change (a new feature snapshot)."""
        examples = getattr(get_current_service(), "openapi_examples", dict)()
        if self._docs is None or self._docs[0] != examples:
            spec = openapi(self.service.openapi_spec.asdict(), self.api_paths, self.service.description or "", examples)
            self._docs = examples, json.dumps(spec).encode()
        return self._docs[1]


async def _read_body(receive) -> tuple[bytes, Refusal | None]:
    """The whole body, or a 413 as soon as it grows past the limit (a chunked body has no length to check first)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"", Refusal(
                "client_disconnected",
                400,
                "the client disconnected before sending the whole body",
                ("body",),
                "disconnected",
            )
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return b"", TOO_LARGE
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), None


def _replay(body: bytes, receive):
    sent = False

    async def replayed():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


def _fixed_paths(app) -> frozenset[str]:
    """Every path the app answers: its routes, its mounted apps' routes and its static files."""
    paths = set()
    for route in app.routes:
        if isinstance(route, Route):
            paths.add(route.path)
        elif isinstance(route, Mount) and hasattr(route.app, "routes"):
            prefix = route.path.rstrip("/")
            paths.update(prefix + sub.path for sub in route.app.routes if isinstance(sub, Route))
        elif isinstance(route, Mount) and getattr(route.app, "directory", None):
            directory = Path(route.app.directory)
            paths.update(
                f"{route.path}/{f.relative_to(directory).as_posix()}" for f in directory.rglob("*") if f.is_file()
            )
    return frozenset(paths)


def openapi(spec: dict, api_paths: set[str], description: str, examples: dict[str, dict] | None = None) -> dict:
    """BentoML's OpenAPI document, made to match this service.

    Request bodies are required, and every refusal is an ``ErrorBody`` (BentoML documents a
    string ``detail`` and answers a 404 with an array). The service's own description replaces
    BentoML's default, whose badges the Swagger page would fetch from other hosts, and a service
    served from source says so instead of version "None". ``examples`` are request bodies that
    answer 200 today, which a schema's static example cannot promise for a user id.
    """
    spec["info"]["description"] = description
    spec["info"].pop("contact", None)
    if spec["info"].get("version") in (None, "None"):
        spec["info"]["version"] = "source (not a built Bento)"
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for name in ("InvalidArgument", "NotFound", "InternalServerError"):
        schemas.pop(name, None)
    error_schema = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(error_schema.pop("$defs", {}))
    schemas["ErrorBody"] = error_schema
    answers = {
        400: "The body is not valid JSON or breaks the schema; `detail` names each field.",
        405: "Only POST is allowed.",
        413: f"The body is over {MAX_BODY_BYTES} bytes.",
        415: f"The Content-Type is not {JSON}.",
        431: f"The headers are over {MAX_HEADER_BYTES} bytes.",
        500: "The service failed; its log says why.",
    }
    for path in api_paths:
        operation = spec["paths"][path]["post"]
        operation["requestBody"]["required"] = True
        if path in (examples or {}):
            operation["requestBody"]["content"][JSON]["example"] = examples[path]
        responses = {"200": operation["responses"].get("200") or operation["responses"][200]}
        for status, meaning in {**answers, **_extra_answers(path)}.items():
            responses[str(status)] = {
                "description": meaning,
                "content": {JSON: {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
            }
        operation["responses"] = responses
    return spec


def _extra_answers(path: str) -> dict[int, str]:
    if path == "/predict_user":
        return {404: "The user is not in the newest feature snapshot.", 503: "No feature snapshot is published yet."}
    return {}


class GuardedService(bentoml.Service):
    """A BentoML service whose ASGI app is wrapped in ``Guard`` (``@bentoml.service(service_class=...)``)."""

    def to_asgi(self, is_main: bool = True):
        return Guard(super().to_asgi(is_main), self)
