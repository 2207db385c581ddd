"""The exported model at run time: an ONNX Runtime session checked against its model card.

Needs ONNX Runtime, Pillow and numpy only (no torch): the service, the export's parity gate, the load
test and the tests all run the model through here. The graph takes uint8 RGB images, N x 3 x size x
size (`pipeline.data.images.resize_square`), and returns class probabilities, N x classes.
"""

import io
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pipeline.data.images import load_rgb, resize_square
from pipeline.model.card import ModelCard, ModelCardError, from_onnx_metadata

PROVIDERS = ["CUDAExecutionProvider", "CPUExecutionProvider"]
INPUT, OUTPUT = "image", "probabilities"


class ModelLoadError(RuntimeError):
    """The file is not a model this project can serve; the message says why."""


def check_fits(session: ort.InferenceSession, card: ModelCard, origin: str) -> None:
    """The graph's input and output are what its card promises."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    size = card.image_size
    problems = []
    if [i.name for i in inputs] != [INPUT] or inputs[0].type != "tensor(uint8)":
        problems.append(f"input should be one uint8 tensor `{INPUT}`, is {[(i.name, i.type) for i in inputs]}")
    elif inputs[0].shape[1:] != [3, size, size]:
        problems.append(
            f"input shape should be [batch, 3, {size}, {size}] (the card's image_size), is {inputs[0].shape}"
        )
    if [o.name for o in outputs] != [OUTPUT]:
        problems.append(f"output should be `{OUTPUT}`, is {[o.name for o in outputs]}")
    elif outputs[0].shape[1:] != [len(card.classes)]:
        problems.append(
            f"output shape should be [batch, {len(card.classes)}] (the card's classes), is {outputs[0].shape}"
        )
    if not problems:  # the declared shapes fit: run the graph on a batch of 2 as a request would
        try:
            answer = session.run([OUTPUT], {INPUT: np.zeros((2, 3, size, size), dtype=np.uint8)})[0]
        except Exception as exc:  # noqa: BLE001  (ORT's own pybind errors)
            problems.append(f"it fails on a batch of 2 images: {exc}")
        else:
            if answer.shape != (2, len(card.classes)) or not np.allclose(answer.sum(axis=1), 1, atol=1e-3):
                problems.append(f"on a batch of 2 it answers {answer.shape}, not 2 rows of probabilities")
    if problems:
        raise ModelLoadError(f"{origin} does not fit its model card: " + "; ".join(problems))


def open_session(
    path: Path, providers: list[str] = PROVIDERS, shares_cores: bool = False
) -> tuple[ort.InferenceSession, ModelCard]:
    """The first of `providers` that really loads (session.get_providers() says which), and the card.
    `shares_cores`: other busy processes need the CPU between calls (the service's HTTP workers and decoders)."""
    ort.set_default_logger_severity(4)  # a GPU provider failing to load on a CPU machine is expected
    options = ort.SessionOptions()
    if shares_cores:
        # ONNX Runtime's intra-op threads spin between calls, waiting for the next: alone it is its fastest, in
        # the service they took the cycles of the HTTP workers and decoders on the same cores (single-image
        # requests served faster without, measured side by side: BENCHMARKS.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # ONNX Runtime's memory patterns are planned, and kept, per input shape: every batch size the
    # service's adaptive batching formed added memory (+93 MiB over sizes 1 to 64 for the default model,
    # against +14 without them, and no measurable difference in speed).
    options.enable_mem_pattern = False
    # cuDNN's exhaustive search benchmarks every convolution again for each new input shape: with
    # adaptive batching forming batches of 1 to 64 images, a served GPU spent seconds on each new size.
    with_options = [
        (p, {"cudnn_conv_algo_search": "HEURISTIC"}) if p == "CUDAExecutionProvider" else p for p in providers
    ]
    try:
        session = ort.InferenceSession(str(path), options, providers=with_options)
    except Exception as exc:  # noqa: BLE001  (ORT raises its own pybind classes: InvalidProtobuf, Fail, ...)
        raise ModelLoadError(f"{path} is not a loadable ONNX model: {exc}") from None
    try:
        card = from_onnx_metadata(session.get_modelmeta().custom_metadata_map, str(path))
    except ModelCardError as exc:
        raise ModelLoadError(str(exc)) from None
    check_fits(session, card, str(path))
    return session, card


def probabilities(session: ort.InferenceSession, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Class probabilities for a uint8 N x 3 x size x size batch."""
    return np.concatenate(
        [session.run([OUTPUT], {INPUT: images[i : i + batch_size]})[0] for i in range(0, len(images), batch_size)]
    )


def classify_files(path: Path, blobs: list[bytes], providers: list[str] = PROVIDERS) -> tuple[np.ndarray, ModelCard]:
    """ONNX Runtime's probabilities for image files, decoded as everywhere else: what the service must answer."""
    session, card = open_session(path, providers)
    return probabilities(session, decode_files(blobs, card.image_size)), card


def decode_files(blobs: list[bytes], image_size: int) -> np.ndarray:
    """Image files to the uint8 N x 3 x size x size batch the graph takes, decoded as the service does."""
    return np.stack([resize_square(load_rgb(io.BytesIO(blob), 10**9), image_size) for blob in blobs])
