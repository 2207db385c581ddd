"""The BentoML service: classify images with the ONNX model the pipeline exported.

    make serve          # = bentoml serve serving.service:ImageClassifier --host 127.0.0.1 --port 3000
    curl -F image=@data/examples/cat.png http://127.0.0.1:3000/v1/classify

Two services in one server. `ImageClassifier` is the HTTP front: it checks and decodes each request's images
(serving.request_images, in decoder processes bounded by pipeline.data.decode_box: a bad image is refused with
a 4xx on its own request, never failing a batch of others), then calls `ModelRunner.predict`, which is batchable:
BentoML merges concurrent requests into one ONNX Runtime call (adaptive batching). The graph normalises its
uint8 input itself, so the service needs no torch.

Which model is served (serving.model_source, kept in step with the registry by serving.model_follower) and the
limits (serving.limits, serving.connections) come from params.yaml's `serving` section, each overridable by
SERVING_<KEY>. Class names and input size come from the model card in the model's metadata.
"""

import logging
import os
from http import HTTPStatus

import aiohttp
import bentoml
import numpy as np
from bentoml.exceptions import ServiceUnavailable
from fastapi import Form, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError

from pipeline.config import ServingConfig, load_serving_config, served_model_origin
from pipeline.data.decode_box import DecodeBox, DecodeLimits
from pipeline.release import onnx_runtime
from pipeline.release.onnx_runtime import ModelLoadError
from serving.allocator import return_freed_images_to_the_system
from serving.api_docs import docs_redirects, offline_documented_api
from serving.api_models import Base64Request, Prediction, validation_refusal
from serving.connections import ConnectionLimits, bound_connections
from serving.limits import RequestLimits
from serving.model_follower import ModelFollower
from serving.model_source import resolve_model
from serving.request_images import Blob, decode_batch, from_base64, read_uploads, refuse

logger = logging.getLogger("bentoml.serving")

return_freed_images_to_the_system()
# The batching decorator below is evaluated at import, so the settings are read here, once.
SETTINGS = load_serving_config()
bound_connections(ConnectionLimits(SETTINGS.header_timeout_s, SETTINGS.keep_alive_s, SETTINGS.max_connections))

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
class ModelRunner:
    """Owns the ONNX Runtime session; `predict` takes uint8 NCHW images and returns probabilities."""

    @bentoml.on_deployment
    def check_model() -> None:
        """Runs once in `bentoml serve`'s main process: a missing, corrupt or inconsistent model stops
        the server there, instead of each worker failing and being respawned forever."""
        print(f"serving {SETTINGS.model}: {served_model_origin()} (SERVING_MODEL=... serves another)", flush=True)
        _, card = onnx_runtime.open_session(resolve_model(SETTINGS.model)[0], ["CPUExecutionProvider"])
        if SETTINGS.top_k > len(card.classes):
            raise ModelLoadError(f"serving.top_k {SETTINGS.top_k} is more than the model's {len(card.classes)} classes")

    def __init__(self) -> None:
        providers = (["TensorrtExecutionProvider"] if SETTINGS.tensorrt else []) + onnx_runtime.PROVIDERS
        self.follower = ModelFollower(SETTINGS.model, providers, SETTINGS.follow_registry_s)

    @bentoml.api(
        batchable=SETTINGS.adaptive_batching,
        max_batch_size=SETTINGS.max_batch_size,
        max_latency_ms=SETTINGS.max_latency_ms,
    )
    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities, and in a last column the registry version that computed each row (0: a file): a merged
        batch runs on one session, and a switch between two calls must not be misattributed."""
        served = self.follower.served  # once: a switch during this call does not change what runs it
        # I/O binding: on CUDA the batch is copied to the device once and the probabilities back once.
        binding = served.session.io_binding()
        binding.bind_cpu_input(onnx_runtime.INPUT, images)
        binding.bind_output(onnx_runtime.OUTPUT)
        served.session.run_with_iobinding(binding)
        probabilities = binding.copy_outputs_to_cpu()[0]
        version = np.full((len(probabilities), 1), served.source.version or 0, dtype=probabilities.dtype)
        return np.concatenate([probabilities, version], axis=1)

    @bentoml.api
    def served(self) -> dict:
        """What is served now: where it came from, its card, the ONNX Runtime providers really active."""
        served, refused = self.follower.served, self.follower.refused  # once each, as in predict
        fields = {"card": served.card.model_dump(mode="json"), "providers": served.session.get_providers()}
        return served.source.metadata_fields() | fields | {"not_switched_to": refused}


api = offline_documented_api(
    title="transferlab image classifier",
    version="1",
    description="Classify images with the model the pipeline exported; `GET /v1/metadata` names it and its "
    "classes. Send images as multipart files (`POST /v1/classify`: one field `image`; `/v1/classify_batch`: "
    "repeated fields `images`) or as base64 in JSON (`/v1/classify_base64`); `top_k` sets how many classes "
    "each answer lists, most probable first.",
)
api.add_exception_handler(RequestValidationError, validation_refusal)


@bentoml.service(workers=SETTINGS.workers, traffic={"timeout": 120}, http={"host": "127.0.0.1", "port": 3000})
@bentoml.asgi_app(api, path="/v1")
@bentoml.asgi_app(docs_redirects, path="/")
class ImageClassifier:
    """The HTTP API under /v1: classify (one image), classify_batch (multipart), classify_base64 (JSON), metadata.

    The routes are FastAPI's rather than @bentoml.api's so that every malformed request is answered
    with a 4xx of our choosing: BentoML's multipart parsing answers some (a text value in a file
    field, an unexpected binary field) with a 500, and fetches URLs given in place of files.
    """

    model = bentoml.depends(ModelRunner)

    def __init__(self) -> None:
        self.settings: ServingConfig = SETTINGS
        # one quick decoder process per core, as many decodes at a time as before, each bounded by the box
        limits = DecodeLimits(SETTINGS.decode_memory_mb, SETTINGS.decode_seconds, "serving")
        quick = None
        if SETTINGS.decode_quick_seconds is not None:
            quick = DecodeLimits(SETTINGS.decode_quick_memory_mb, SETTINGS.decode_quick_seconds, "serving")
        self.box = DecodeBox(limits, workers=os.cpu_count() or 1, quick=quick)
        path, self.source = resolve_model(SETTINGS.model)
        # Classes and input size from the card of the file the model service resolves too: no call to it.
        _, self.card = onnx_runtime.open_session(path, ["CPUExecutionProvider"])
        shown = f"{self.source.shown(path)}: {self.card.strategy} on {self.card.data_source}"
        logger.info(
            "serving %s, %d classes, test accuracy %s", shown, len(self.card.classes), self.source.test_accuracy
        )

    async def classify_blobs(
        self, blobs: list[Blob], top_k: int | None, request: Request, response: Response
    ) -> list[Prediction]:
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
        batch = await decode_batch(blobs, self.card.image_size, self.settings, self.box, request.receive)
        answer = await self.predict(batch)
        if answer.shape[1] != len(classes) + 1:  # an alias moved between the two services' start-ups
            raise refuse(HTTPStatus.SERVICE_UNAVAILABLE, "the model service serves another model: restart the server")
        versions = sorted({int(version) for version in answer[:, -1]})  # two, if a switch fell between its calls
        response.headers["X-Model-Version"] = ", ".join(str(v) if v else "file" for v in versions)
        return Prediction.top(answer[:, :-1], classes, top_k)

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

    @api.post("/classify")
    async def classify(
        self, image: UploadFile, request: Request, response: Response, top_k: int | None = Form(None)
    ) -> Prediction:
        """One image as the multipart field `image`: `curl -F image=@data/examples/cat.png .../v1/classify`."""
        return (await self.classify_blobs(await read_uploads([image]), top_k, request, response))[0]

    @api.post("/classify_batch")
    async def classify_batch(
        self, images: list[UploadFile], request: Request, response: Response, top_k: int | None = Form(None)
    ) -> list[Prediction]:
        """Several images as repeated multipart fields `images`; results in the same order."""
        return await self.classify_blobs(await read_uploads(images), top_k, request, response)

    @api.post("/classify_base64")
    async def classify_base64(self, body: Base64Request, request: Request, response: Response) -> list[Prediction]:
        """JSON {"images": ["<base64>", ...], "top_k": 3} for clients that cannot send multipart."""
        blobs = from_base64(body.images, self.settings.max_image_bytes)
        return await self.classify_blobs(blobs, body.top_k, request, response)

    @api.get("/metadata")
    async def metadata(self) -> dict:
        """The model served now (the model service's: it follows the registry): where it came from, its model
        card, the active ONNX Runtime providers."""
        served = await self.model.to_async.served()
        card = served.pop("card")
        return {
            "model": served["name"] if served["version"] is None else self.settings.model,
            **served,
            **card,
            "adaptive_batching": self.settings.adaptive_batching,
            "max_batch_size": self.settings.max_batch_size if self.settings.adaptive_batching else None,
        }


ImageClassifier.add_asgi_middleware(
    RequestLimits,
    max_bytes=SETTINGS.max_request_bytes,
    body_timeout_s=SETTINGS.body_timeout_s,
    body_deadline_s=SETTINGS.body_deadline_s,
)
