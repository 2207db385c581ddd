"""The BentoML service: classify images with the ONNX model the pipeline exported.

    make serve          # = bentoml serve serving.service:ImageClassifier --host 127.0.0.1 --port 3000
    curl -F image=@data/examples/cat.png http://127.0.0.1:3000/v1/classify

Two services in one server. `ImageClassifier` is the HTTP front: it checks and decodes each request's
images (so a bad image is refused with a 4xx on its own request, never failing a batch of others)
with the pipeline's own `load_rgb`/`resize_square`, then calls `OnnxModel.predict`, which is
batchable: BentoML merges concurrent requests into one ONNX Runtime call (adaptive batching).
The graph normalises its uint8 input itself, so the service needs Pillow and ONNX Runtime, not torch.

Which model is served and the limits come from params.yaml's `serving` section, each overridable by
SERVING_<KEY>; SERVING_MODEL is `models:/NAME@ALIAS`, `models:/NAME/VERSION` or an .onnx path.
Class names and input size come from the model card in the model's metadata (pipeline.model.card).
"""

import asyncio
import base64
import binascii
import contextlib
import ctypes
import io
import logging
import os
from http import HTTPStatus
from pathlib import Path

import aiohttp
import anyio
import bentoml
import numpy as np
from bentoml._internal import server as bentoml_server
from bentoml.exceptions import ServiceUnavailable
from fastapi import FastAPI, Form, HTTPException, Request, UploadFile
from fastapi.openapi.docs import get_swagger_ui_html
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.routing import Route
from starlette.staticfiles import StaticFiles

from pipeline.config import ServingConfig, load_serving_config
from pipeline.data.images import BadImage, load_rgb, resize_square
from pipeline.release import onnx_runtime
from pipeline.release.onnx_runtime import ModelLoadError

logger = logging.getLogger("bentoml.serving")


def return_freed_images_to_the_system() -> None:
    """glibc keeps a freed buffer of more than its (self-raising) mmap threshold in the freeing
    thread's arena, so decodes on a pool of threads each left their images' memory behind: the
    server's memory grew by a decoded image per thread. A fixed 1 MiB threshold maps every image
    buffer on its own and unmaps it when freed."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # -3: M_MMAP_THRESHOLD


return_freed_images_to_the_system()
# The batching decorator below is evaluated at import, so the settings are read here, once.
SETTINGS = load_serving_config()


def resolve_model(spec: str) -> tuple[Path, dict]:
    """The local .onnx file for SERVING_MODEL, and where it came from (name, version, alias)."""
    if not spec.startswith("models:/"):
        path = Path(spec)
        if not path.is_file():
            raise ModelLoadError(f"SERVING_MODEL={spec}: no such file (run `dvc repro` to export models/model.onnx)")
        return path, {"name": path.name, "version": None, "alias": None, "test_accuracy": None}

    # Only a registry model needs MLflow: a server of an .onnx file starts without importing it.
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from pipeline.tracking import store

    try:
        store.check_reachable()  # MLflow's client would retry a dead server for minutes
    except store.TrackingServerUnreachable as exc:
        raise ModelLoadError(f"SERVING_MODEL={spec}: {exc}") from None
    reference = spec.removeprefix("models:/")
    name, alias = reference.split("@", 1) if "@" in reference else (reference.rsplit("/", 1)[0], None)
    client = MlflowClient(tracking_uri=store.tracking_uri())
    try:
        if alias:
            version = client.get_model_version_by_alias(name, alias)
        else:
            version = client.get_model_version(name, reference.rsplit("/", 1)[-1])
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version.version}", tracking_uri=store.tracking_uri()
        )
    except MlflowException as exc:
        hint = " (set it with `python -m pipeline.commands.promote`)" if alias else ""
        raise ModelLoadError(f"SERVING_MODEL={spec} on {store.shown_uri()}: {exc.message}{hint}") from None
    files = sorted(Path(local).glob("*.onnx"))
    if not files:
        raise ModelLoadError(f"SERVING_MODEL={spec}: the registered model holds no .onnx file")
    accuracy = version.tags.get("test_accuracy")  # tagged by export (pipeline.tracking.registry)
    return files[0], {
        "name": name,
        "version": int(version.version),
        "alias": alias,
        "run_id": version.run_id,
        "test_accuracy": None if accuracy is None else float(accuracy),
    }


def provider_order(tensorrt: bool) -> list[str]:
    return ["TensorrtExecutionProvider", *onnx_runtime.PROVIDERS] if tensorrt else onnx_runtime.PROVIDERS


# BentoML's client to this service replaces its HTTP session every `max_requests` calls or `max_age`
# seconds and closes the old one under the calls still in flight on it (bentoml 1.4.39,
# _bentoml_impl/client/proxy2.py): with the default 100 calls, 1 request in 10 of 32 concurrent
# clients failed with a 500. So the session is never replaced; aiohttp keeps its connections fresh.
TEN_YEARS_S = 10 * 365 * 24 * 3600.0


@bentoml.service(
    workers=SETTINGS.model_workers,
    traffic={"timeout": 120},
    runner_connection={"max_requests": 2**62, "max_age": TEN_YEARS_S},
)
class OnnxModel:
    """Owns the ONNX Runtime session; `predict` takes uint8 NCHW images and returns probabilities."""

    @bentoml.on_deployment
    def check_model() -> None:
        """Runs once in `bentoml serve`'s main process: a missing, corrupt or inconsistent model stops
        the server there, instead of each worker failing and being respawned forever."""
        _, card = onnx_runtime.open_session(resolve_model(SETTINGS.model)[0], ["CPUExecutionProvider"])
        if SETTINGS.top_k > len(card.classes):
            raise ModelLoadError(f"serving.top_k {SETTINGS.top_k} is more than the model's {len(card.classes)} classes")

    def __init__(self) -> None:
        path, _ = resolve_model(SETTINGS.model)
        self.session, _ = onnx_runtime.open_session(path, provider_order(SETTINGS.tensorrt))
        logger.info("serving %s (%s) on %s", SETTINGS.model, path, ", ".join(self.session.get_providers()))

    @bentoml.api(
        batchable=SETTINGS.adaptive_batching,
        max_batch_size=SETTINGS.max_batch_size,
        max_latency_ms=SETTINGS.max_latency_ms,
    )
    def predict(self, images: np.ndarray) -> np.ndarray:
        # I/O binding: on CUDA the batch is copied to the device once and the probabilities back once.
        binding = self.session.io_binding()
        binding.bind_cpu_input(onnx_runtime.INPUT, images)
        binding.bind_output(onnx_runtime.OUTPUT)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    @bentoml.api
    def providers(self) -> list[str]:
        """The ONNX Runtime providers really active (a GPU one may have failed to load)."""
        return self.session.get_providers()


class Label(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    predictions: list[Label]  # the top_k classes, most probable first


class Base64Request(BaseModel):
    images: list[str]  # base64 (or data: URLs) of image files
    top_k: int | None = None


class RequestLimits:
    """ASGI middleware: the body limit holds on the bytes received, and slow bodies time out.

    Refused before the body is read: over `max_bytes` by Content-Length (413), chunked (411), or
    Content-Length and chunked together (400: which one frames the body is how requests are smuggled).
    While it is read: more bytes than declared or than `max_bytes` (413), or a client that sends
    nothing for `body_timeout_s` (408). The app's own answer is then dropped for that one.
    """

    def __init__(self, app, max_bytes: int, body_timeout_s: float) -> None:
        self.app, self.max_bytes, self.body_timeout_s = app, max_bytes, body_timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length, chunked = headers.get(b"content-length"), b"chunked" in headers.get(b"transfer-encoding", b"")
        refusal = None
        if length is not None and chunked:
            refusal = (HTTPStatus.BAD_REQUEST, "send Content-Length or chunked Transfer-Encoding, not both")
        elif chunked:
            refusal = (HTTPStatus.LENGTH_REQUIRED, "send a Content-Length header (chunked bodies are refused)")
        elif length is not None and length.isdigit() and int(length) > self.max_bytes:
            refusal = (
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"request body of {int(length)} bytes is over the limit of {self.max_bytes}",
            )
        if refusal:
            await JSONResponse({"detail": refusal[1]}, status_code=refusal[0])(scope, receive, send)
            return
        allowed = min(self.max_bytes, int(length)) if length is not None and length.isdigit() else self.max_bytes
        received, stopped, answered, whole = 0, None, False, False

        async def limited_receive():
            nonlocal received, stopped, whole
            if stopped is not None:
                return {"type": "http.disconnect"}
            if whole:  # after the body, receive only waits for a disconnect: no timeout there
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout_s)
            except TimeoutError:
                stopped = (HTTPStatus.REQUEST_TIMEOUT, f"no data from the client for {self.body_timeout_s:g} s")
                return {"type": "http.disconnect"}
            received += len(message.get("body", b""))
            if received > allowed:
                stopped = (
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"request body is over {allowed} bytes (its declared length or the limit)",
                )
                return {"type": "http.disconnect"}
            whole = not message.get("more_body", False)
            return message

        async def guarded_send(message) -> None:
            nonlocal answered
            if stopped is None:
                await send(message)
            elif not answered:  # the app's answer to a body it did not get whole is replaced by ours
                answered = True
                await JSONResponse({"detail": stopped[1]}, status_code=stopped[0])(scope, receive, send)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if stopped is None:
                raise
        if stopped is not None and not answered:
            await guarded_send({"type": "http.response.start"})


def refuse(status: HTTPStatus, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


# The API docs: one Swagger UI page, /v1/docs (/ and /docs lead there), that works offline. Its files are
# the copy BentoML ships (FastAPI's own page loads them from a CDN), and its schema marks uploads as files.
DOCS = "/v1/docs"
SWAGGER_UI = Path(bentoml_server.__file__).parent / "static_content"

api = FastAPI(
    title="transferlab image classifier",
    version="1",
    description="Classify images with the model the pipeline exported; `GET /v1/metadata` names it and its "
    "classes. Send images as multipart files (`POST /v1/classify`: one field `image`; `/v1/classify_batch`: "
    "repeated fields `images`) or as base64 in JSON (`/v1/classify_base64`); `top_k` sets how many classes "
    "each answer lists, most probable first.",
    docs_url=None,  # FastAPI's page loads Swagger UI from a CDN: ours, below, from SWAGGER_UI
    redoc_url=None,
)
api.mount("/swagger-ui", StaticFiles(directory=SWAGGER_UI), name="swagger-ui")


@api.get("/docs", include_in_schema=False)
async def docs(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")  # /v1, where BentoML mounts the app
    return get_swagger_ui_html(
        openapi_url=f"{root}{api.openapi_url}",
        title=f"{api.title}: API docs",
        swagger_js_url=f"{root}/swagger-ui/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/swagger-ui/swagger-ui.css",
        swagger_favicon_url=f"{root}/swagger-ui/favicon-light-32x32.png",
    )


def mark_uploads_as_files(node) -> None:
    """FastAPI describes an UploadFile by `contentMediaType` (OpenAPI 3.1), for which Swagger UI shows a
    text box; `format: binary` makes "Try it out" a file picker."""
    if isinstance(node, dict):
        if node.get("type") == "string" and "contentMediaType" in node:
            node["format"] = "binary"
        for child in node.values():
            mark_uploads_as_files(child)
    elif isinstance(node, list):
        for child in node:
            mark_uploads_as_files(child)


def openapi(generate=api.openapi) -> dict:
    if api.openapi_schema is None:  # generated once, then cached by FastAPI
        mark_uploads_as_files(generate())
    return api.openapi_schema


api.openapi = openapi


async def to_the_docs(_: Request) -> RedirectResponse:
    return RedirectResponse(DOCS)


# Mounted at the root, it answers its own paths only, ahead of BentoML's generic page at /.
docs_redirects = Starlette(routes=[Route("/", to_the_docs), Route("/docs", to_the_docs)])


@bentoml.service(workers=SETTINGS.workers, traffic={"timeout": 120}, http={"host": "127.0.0.1", "port": 3000})
@bentoml.asgi_app(api, path="/v1")
@bentoml.asgi_app(docs_redirects, path="/")
class ImageClassifier:
    """The HTTP API under /v1: classify (one image), classify_batch (multipart), classify_base64 (JSON), metadata.

    The routes are FastAPI's rather than @bentoml.api's so that every malformed request is answered
    with a 4xx of our choosing: BentoML's multipart parsing answers some (a text value in a file
    field, an unexpected binary field) with a 500, and fetches URLs given in place of files.
    """

    model = bentoml.depends(OnnxModel)

    def __init__(self) -> None:
        self.settings: ServingConfig = SETTINGS
        self.formats = tuple(SETTINGS.image_formats)
        self._decoders: anyio.CapacityLimiter | None = None
        path, self.source = resolve_model(SETTINGS.model)
        # Classes and input size from the card of the file the model service resolves too: no call to it.
        _, self.card = onnx_runtime.open_session(path, ["CPUExecutionProvider"])
        source = self.source
        served = f"{source['name']} v{source['version']}" if source["version"] else str(path)
        alias = f" @{source['alias']}" if source["alias"] else ""
        logger.info(
            "serving %s%s: %s on %s, %d classes, test accuracy %s",
            served,
            alias,
            self.card.strategy,
            self.card.data_source,
            len(self.card.classes),
            self.source["test_accuracy"],
        )

    def decoders(self) -> anyio.CapacityLimiter:
        if self._decoders is None:  # made in the event loop, on first use
            self._decoders = anyio.CapacityLimiter(os.cpu_count() or 1)
        return self._decoders

    def decode(self, blobs: list[tuple[str, bytes]], image_size: int) -> np.ndarray:
        """(name, bytes) pairs to a uint8 NCHW batch, refusing the request on the first bad image."""
        arrays = []
        for name, blob in blobs:
            if not blob:
                raise refuse(HTTPStatus.BAD_REQUEST, f"{name} is empty")
            if len(blob) > self.settings.max_image_bytes:
                raise refuse(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"{name} is {len(blob)} bytes, over the limit of {self.settings.max_image_bytes}",
                )
            try:
                image = load_rgb(io.BytesIO(blob), self.settings.max_image_pixels, self.formats)
            except BadImage as exc:
                raise refuse(HTTPStatus.BAD_REQUEST, f"{name} is not a readable image: {exc}") from None
            arrays.append(resize_square(image, image_size))
        return np.stack(arrays)

    async def classify_blobs(self, blobs: list[tuple[str, bytes]], top_k: int | None) -> list[Prediction]:
        if not blobs:
            raise refuse(HTTPStatus.BAD_REQUEST, "no images in the request")
        if len(blobs) > self.settings.max_images_per_request:
            raise refuse(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"{len(blobs)} images in one request, over the limit of {self.settings.max_images_per_request}",
            )
        classes = self.card.classes
        top_k = self.settings.top_k if top_k is None else top_k
        if not 1 <= top_k <= len(classes):
            raise refuse(
                HTTPStatus.BAD_REQUEST,
                f"top_k must be between 1 and {len(classes)} (the number of classes), got {top_k}",
            )
        # at most one decode per core at a time: each may hold an image of max_image_pixels in memory
        batch = await anyio.to_thread.run_sync(self.decode, blobs, self.card.image_size, limiter=self.decoders())
        probabilities = await self.predict(batch)
        if probabilities.shape[1] != len(classes):  # an alias moved between the two services' start-ups
            raise refuse(HTTPStatus.SERVICE_UNAVAILABLE, "the model service serves another model: restart the server")
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
        return [
            Prediction(predictions=[Label(label=classes[i], probability=float(row[i])) for i in best])
            for row, best in zip(probabilities, order, strict=True)
        ]

    async def predict(self, batch: np.ndarray) -> np.ndarray:
        try:
            try:
                return await self.model.to_async.predict(batch)
            except aiohttp.ClientConnectionError:  # the model service closed a kept-alive connection as we
                return await self.model.to_async.predict(batch)  # wrote on it; predict is idempotent: once more
        except ServiceUnavailable:  # adaptive batching shed it: the queue is longer than max_latency_ms
            raise refuse(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"the model is busy: this request would wait over serving.max_latency_ms "
                f"({self.settings.max_latency_ms} ms); retry later",
            ) from None

    async def read_uploads(self, uploads: list[UploadFile]) -> list[tuple[str, bytes]]:
        return [(f"image {i} ({upload.filename})", await upload.read()) for i, upload in enumerate(uploads)]

    @api.post("/classify")
    async def classify(self, image: UploadFile, top_k: int | None = Form(None)) -> Prediction:
        """One image as the multipart field `image`: `curl -F image=@data/examples/cat.png .../v1/classify`."""
        return (await self.classify_blobs(await self.read_uploads([image]), top_k))[0]

    @api.post("/classify_batch")
    async def classify_batch(self, images: list[UploadFile], top_k: int | None = Form(None)) -> list[Prediction]:
        """Several images as repeated multipart fields `images`; results in the same order."""
        return await self.classify_blobs(await self.read_uploads(images), top_k)

    @api.post("/classify_base64")
    async def classify_base64(self, request: Base64Request) -> list[Prediction]:
        """JSON {"images": ["<base64>", ...], "top_k": 3} for clients that cannot send multipart."""
        blobs = []
        for i, text in enumerate(request.images):
            encoded = text.split(",", 1)[1] if text.startswith("data:") else text  # data URLs too
            encoded = "".join(encoded.split())  # lines of 76, as `base64` and MIME wrap them
            if len(encoded) * 3 // 4 > self.settings.max_image_bytes:
                raise refuse(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"image {i} is over the limit of {self.settings.max_image_bytes} bytes",
                )
            try:
                blobs.append((f"image {i}", base64.b64decode(encoded, validate=True)))
            except (binascii.Error, ValueError) as exc:
                raise refuse(HTTPStatus.BAD_REQUEST, f"image {i} is not valid base64: {exc}") from None
        return await self.classify_blobs(blobs, request.top_k)

    @api.get("/metadata")
    async def metadata(self) -> dict:
        """The served model: where it came from, its model card, the active ONNX Runtime providers."""
        return {
            "model": self.source["name"] if self.source["version"] is None else self.settings.model,
            **self.source,
            **self.card.model_dump(mode="json"),
            "providers": await self.model.to_async.providers(),
            "adaptive_batching": self.settings.adaptive_batching,
            "max_batch_size": self.settings.max_batch_size if self.settings.adaptive_batching else None,
        }


ImageClassifier.add_asgi_middleware(
    RequestLimits, max_bytes=SETTINGS.max_request_bytes, body_timeout_s=SETTINGS.body_timeout_s
)
