"""The BentoML service: classify images with the ONNX model the pipeline exported.

    make serve          # = bentoml serve serving.service:ImageClassifier --host 127.0.0.1 --port 3000
    curl -F image=@cat.png http://127.0.0.1:3000/v1/classify

Two services in one server. `ImageClassifier` is the HTTP front: it checks and decodes each request's
images (so a bad image is refused with a 4xx on its own request, never failing a batch of others)
with the pipeline's own `load_rgb`/`resize_square`, then calls `OnnxModel.predict`, which is
batchable: BentoML merges concurrent requests into one ONNX Runtime call (adaptive batching).

Which model is served and the limits come from params.yaml's `serving` section, each overridable by
SERVING_<KEY>; SERVING_MODEL is `models:/NAME@ALIAS`, `models:/NAME/VERSION` or an .onnx path.
Class names and preprocessing are read from the model's own metadata, written by pipeline.export.
"""

import base64
import binascii
import io
import json
import logging
from http import HTTPStatus
from pathlib import Path

import anyio
import bentoml
import numpy as np
import torch
from fastapi import FastAPI, Form, HTTPException, UploadFile
from pydantic import BaseModel
from starlette.responses import JSONResponse

from pipeline import tracking
from pipeline.config import ServingConfig, load_serving_config
from pipeline.images import BadImage, load_rgb, normalize, resize_square

logger = logging.getLogger("bentoml.serving")
# The batching decorator below is evaluated at import, so the settings are read here, once.
SETTINGS = load_serving_config()
REQUIRED_METADATA = ("classes", "image_size", "mean", "std")


class ModelLoadError(RuntimeError):
    """The configured model cannot be served; raised at start-up, never at a request."""


def resolve_model(spec: str) -> tuple[Path, dict]:
    """The local .onnx file for SERVING_MODEL, and where it came from (name, version, alias)."""
    if not spec.startswith("models:/"):
        path = Path(spec)
        if not path.is_file():
            raise ModelLoadError(f"SERVING_MODEL={spec}: no such file (run `dvc repro` to export models/model.onnx)")
        return path, {"name": path.name, "version": None, "alias": None}

    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        tracking.check_reachable()  # MLflow's client would retry a dead server for minutes
    except tracking.TrackingServerUnreachable as exc:
        raise ModelLoadError(f"SERVING_MODEL={spec}: {exc}") from None
    reference = spec.removeprefix("models:/")
    name, alias = reference.split("@", 1) if "@" in reference else (reference.rsplit("/", 1)[0], None)
    client = MlflowClient(tracking_uri=tracking.tracking_uri())
    try:
        if alias:
            version = client.get_model_version_by_alias(name, alias)
        else:
            version = client.get_model_version(name, reference.rsplit("/", 1)[-1])
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version.version}", tracking_uri=tracking.tracking_uri()
        )
    except MlflowException as exc:
        hint = " (set it with `python -m pipeline.promote`)" if alias else ""
        raise ModelLoadError(f"SERVING_MODEL={spec} on {tracking.tracking_uri()}: {exc.message}{hint}") from None
    files = sorted(Path(local).glob("*.onnx"))
    if not files:
        raise ModelLoadError(f"SERVING_MODEL={spec}: the registered model holds no .onnx file")
    return files[0], {"name": name, "version": int(version.version), "alias": alias, "run_id": version.run_id}


def open_session(path: Path, tensorrt: bool):
    import onnxruntime as ort

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if tensorrt:
        providers.insert(0, "TensorrtExecutionProvider")
    ort.set_default_logger_severity(4)  # a GPU provider failing to load on a CPU machine is expected
    try:
        session = ort.InferenceSession(str(path), providers=providers)
    except Exception as exc:  # noqa: BLE001  (ORT raises its own pybind classes: InvalidProtobuf, Fail, ...)
        raise ModelLoadError(f"{path} is not a loadable ONNX model: {exc}") from None
    metadata = session.get_modelmeta().custom_metadata_map
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ModelLoadError(
            f"{path} lacks the metadata {missing} that pipeline.export writes; export it with the pipeline"
        )
    return session, metadata


# BentoML's client to this service replaces its HTTP session every `max_requests` calls or `max_age`
# seconds and closes the old one under the calls still in flight on it (bentoml 1.4.39,
# _bentoml_impl/client/proxy2.py): with the default 100 calls, 1 request in 10 of 32 concurrent
# clients failed with a 500. So the session is never replaced; aiohttp keeps its connections fresh.
TEN_YEARS_S = 10 * 365 * 24 * 3600.0


@bentoml.service(
    workers=1,
    traffic={"timeout": 120},
    runner_connection={"max_requests": 2**62, "max_age": TEN_YEARS_S},
)
class OnnxModel:
    """Owns the ONNX Runtime session; `predict` takes uint8 NCHW images and returns probabilities."""

    @bentoml.on_deployment
    def check_model() -> None:
        """Runs once in `bentoml serve`'s main process: a missing or corrupt model stops the server
        there, instead of each worker failing and being respawned forever."""
        open_session(resolve_model(SETTINGS.model)[0], tensorrt=False)

    def __init__(self) -> None:
        path, self.source = resolve_model(SETTINGS.model)
        self.session, metadata = open_session(path, SETTINGS.tensorrt)
        self.mean = tuple(json.loads(metadata["mean"]))
        self.std = tuple(json.loads(metadata["std"]))
        self.info = {
            "model": SETTINGS.model,
            **self.source,
            "classes": json.loads(metadata["classes"]),
            "image_size": int(metadata["image_size"]),
            "mean": self.mean,
            "std": self.std,
            "backbone": metadata.get("backbone"),
            "strategy": metadata.get("strategy"),
            "providers": self.session.get_providers(),
            "adaptive_batching": SETTINGS.adaptive_batching,
            "max_batch_size": SETTINGS.max_batch_size if SETTINGS.adaptive_batching else None,
        }
        logger.info("serving %s (%s) on %s", SETTINGS.model, path, ", ".join(self.info["providers"]))

    @bentoml.api(
        batchable=SETTINGS.adaptive_batching,
        max_batch_size=SETTINGS.max_batch_size,
        max_latency_ms=SETTINGS.max_latency_ms,
    )
    def predict(self, images: np.ndarray) -> np.ndarray:
        inputs = normalize(torch.from_numpy(images), self.mean, self.std).numpy()
        # I/O binding: on CUDA the batch is copied to the device once and the probabilities back once.
        binding = self.session.io_binding()
        binding.bind_cpu_input("image", inputs)
        binding.bind_output("probabilities")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    @bentoml.api
    def describe(self) -> dict:
        return self.info


class Label(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    predictions: list[Label]  # the top_k classes, most probable first


class Base64Request(BaseModel):
    images: list[str]  # base64 (or data: URLs) of image files
    top_k: int | None = None


class RequestSizeLimit:
    """ASGI middleware: refuse a body over `max_bytes` (413) or of unknown length (411) before reading it."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            length = headers.get(b"content-length")
            refusal = None
            if length is None and b"chunked" in headers.get(b"transfer-encoding", b""):
                refusal = (HTTPStatus.LENGTH_REQUIRED, "send a Content-Length header (chunked bodies are refused)")
            elif length is not None and length.isdigit() and int(length) > self.max_bytes:
                refusal = (
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"request body of {int(length)} bytes is over the limit of {self.max_bytes}",
                )
            if refusal:
                await JSONResponse({"detail": refusal[1]}, status_code=refusal[0])(scope, receive, send)
                return
        await self.app(scope, receive, send)


def refuse(status: HTTPStatus, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


api = FastAPI(title="Image classifier", description="Classify images with the model the pipeline exported.")


@bentoml.service(workers=1, traffic={"timeout": 120}, http={"host": "127.0.0.1", "port": 3000})
@bentoml.asgi_app(api, path="/v1")
class ImageClassifier:
    """The HTTP API under /v1: classify (one image), classify_batch (multipart), classify_base64 (JSON), metadata.

    The routes are FastAPI's rather than @bentoml.api's so that every malformed request is answered
    with a 4xx of our choosing: BentoML's multipart parsing answers some (a text value in a file
    field, an unexpected binary field) with a 500, and fetches URLs given in place of files.
    """

    model = bentoml.depends(OnnxModel)

    def __init__(self) -> None:
        self.settings: ServingConfig = SETTINGS
        self._info: dict | None = None

    async def model_info(self) -> dict:
        # Asked of the model service once, so the two can never disagree on classes or preprocessing.
        if self._info is None:
            self._info = await self.model.to_async.describe()
        return self._info

    def decode(self, blobs: list[tuple[str, bytes]], image_size: int) -> np.ndarray:
        """(name, bytes) pairs to a uint8 NCHW batch, refusing the request on the first bad image."""
        tensors = []
        for name, blob in blobs:
            if not blob:
                raise refuse(HTTPStatus.BAD_REQUEST, f"{name} is empty")
            if len(blob) > self.settings.max_image_bytes:
                raise refuse(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"{name} is {len(blob)} bytes, over the limit of {self.settings.max_image_bytes}",
                )
            try:
                image = load_rgb(io.BytesIO(blob), self.settings.max_image_pixels)
            except BadImage as exc:
                raise refuse(HTTPStatus.BAD_REQUEST, f"{name} is not a readable image: {exc}") from None
            tensors.append(resize_square(image, image_size))
        return torch.stack(tensors).numpy()

    async def classify_blobs(self, blobs: list[tuple[str, bytes]], top_k: int | None) -> list[Prediction]:
        if not blobs:
            raise refuse(HTTPStatus.BAD_REQUEST, "no images in the request")
        if len(blobs) > self.settings.max_images_per_request:
            raise refuse(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"{len(blobs)} images in one request, over the limit of {self.settings.max_images_per_request}",
            )
        info = await self.model_info()
        classes = info["classes"]
        top_k = self.settings.top_k if top_k is None else top_k
        if not 1 <= top_k <= len(classes):
            raise refuse(
                HTTPStatus.BAD_REQUEST,
                f"top_k must be between 1 and {len(classes)} (the number of classes), got {top_k}",
            )
        batch = await anyio.to_thread.run_sync(self.decode, blobs, info["image_size"])
        probabilities = await self.model.to_async.predict(batch)
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
        return [
            Prediction(predictions=[Label(label=classes[i], probability=float(row[i])) for i in best])
            for row, best in zip(probabilities, order, strict=True)
        ]

    async def read_uploads(self, uploads: list[UploadFile]) -> list[tuple[str, bytes]]:
        return [(f"image {i} ({upload.filename})", await upload.read()) for i, upload in enumerate(uploads)]

    @api.post("/classify")
    async def classify(self, image: UploadFile, top_k: int | None = Form(None)) -> Prediction:
        """One image as the multipart field `image`: `curl -F image=@cat.png .../v1/classify`."""
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
        """The served model: name, version, alias, classes, input size, active ONNX Runtime providers."""
        return await self.model_info()


ImageClassifier.add_asgi_middleware(RequestSizeLimit, max_bytes=SETTINGS.max_request_bytes)
