"""The model an HTTP worker serves, kept in step with the registry: named by an alias (`models:/NAME@champion`),
it checks the alias every `serving.follow_registry_s` seconds, and when `promote` has moved it, loads the new
version beside the old one and switches between two model calls. A call in flight finishes on the session it
started with; no request fails. A version that does not load, or whose classes or input size differ from those
the HTTP front checks requests against, is not switched to: the old one keeps serving and the log says why.
"""

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import bentoml
import onnxruntime as ort

from pipeline.model.card import ModelCard
from pipeline.release import onnx_runtime
from serving.model_source import ModelSource, alias_version, resolve_model

logger = logging.getLogger("bentoml.serving")
# BentoML's /metrics counts requests by endpoint and status and times them, serving.batcher histograms the
# batches; what neither can know is which model answers them.
SERVED_MODEL = bentoml.metrics.Gauge(
    name="served_model",
    documentation="1 for the model served, 0 for one served before",
    labelnames=["model", "version"],
)


@dataclass(frozen=True)
class Served:
    session: ort.InferenceSession
    card: ModelCard
    source: ModelSource

    def mark(self, serving: bool) -> None:
        SERVED_MODEL.labels(model=self.source.name, version=str(self.source.version or "file")).set(int(serving))


def open_served(spec: str, providers: list[str]) -> Served:
    path, source = resolve_model(spec)
    session, card = onnx_runtime.open_session(path, providers, shares_cores=True)
    logger.info("serving %s (%s) on %s", source.shown(Path(path)), spec, ", ".join(session.get_providers()))
    return Served(session, card, source)


class ModelFollower:
    """`served` is what to run now: read it once per call, as a switch replaces it whole."""

    def __init__(self, spec: str, providers: list[str], every_s: float | None) -> None:
        self.spec, self.providers, self.every_s = spec, providers, every_s
        self.served = open_served(spec, providers)
        self.served.mark(serving=True)
        # the version last found unfit, and why: not loaded again until the alias moves; /v1/metadata shows it
        self.refused: dict | None = None
        if every_s is not None and alias_version(spec) is not None:
            threading.Thread(target=self._follow, name="follow-registry", daemon=True).start()

    def _follow(self) -> None:
        while True:
            time.sleep(self.every_s)
            try:
                self.check()
            except Exception as exc:  # noqa: BLE001 - a store that does not answer for a while: keep serving
                logger.warning("could not check %s: %s; still serving v%s", self.spec, exc, self.served.source.version)

    def check(self) -> None:
        """Switch to the version the alias names now, if it moved to one that fits."""
        version = alias_version(self.spec)
        if version == self.served.source.version or (self.refused and version == self.refused["version"]):
            return
        try:
            candidate = open_served(self.spec, self.providers)
        except onnx_runtime.ModelLoadError as exc:
            self.refuse(version, str(exc))
            return
        now = self.served.card
        if (candidate.card.classes, candidate.card.image_size) != (now.classes, now.image_size):
            self.refuse(version, "its classes or input size differ from the served model's: restart the server")
            return
        self.served.mark(serving=False)
        self.served = candidate
        candidate.mark(serving=True)
        logger.info("switched to %s v%s", candidate.source.name, candidate.source.version)

    def refuse(self, version: int | None, why: str) -> None:
        self.refused = {"version": version, "why": why}
        logger.error("not serving %s v%s: %s; still serving v%s", self.spec, version, why, self.served.source.version)
