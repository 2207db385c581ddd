"""Stage 4: export the trained model to ONNX, gate it on parity with PyTorch, register it.

    python -m pipeline.export

The ONNX graph takes a float NCHW batch (any batch size) preprocessed as its metadata says
(resize the short side to image_size, centre-crop, (pixel/255 - mean) / std) and returns class
probabilities. ONNX Runtime and PyTorch are run on the test images; the stage fails, leaving
no model behind, if their probabilities differ by more than export.parity_tolerance. The model
is then logged to the MLflow run and registered as a new version of mlflow.registered_model.
With export.fp16 the graph computes in float16 (half the size, faster on GPUs; inputs and outputs
stay float32) and is gated on export.fp16_parity_tolerance instead.
"""

import json
from importlib.metadata import version
from pathlib import Path

import mlflow
import numpy as np
import onnx
import onnxruntime as ort
import torch
from mlflow.models import infer_signature
from onnxruntime.transformers.onnx_model import OnnxModel
from torch import nn

from pipeline import tracking
from pipeline.artifacts import atomic_path, write_json
from pipeline.backbones import load_trained
from pipeline.config import load_params
from pipeline.data import load_split, read_manifest
from pipeline.evaluate import predict_probabilities
from pipeline.images import normalize
from pipeline.train import MODEL_FILE

ONNX_FILE = Path("models/model.onnx")
METRICS_FILE = Path("metrics/export.json")
PROVIDERS = ["CUDAExecutionProvider", "CPUExecutionProvider"]


class ParityError(RuntimeError):
    """ONNX Runtime and PyTorch disagree by more than the tolerance."""


class WithSoftmax(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image).softmax(dim=1)


def onnx_metadata(meta: dict, fp16: bool = False) -> dict[str, str]:
    return {
        "precision": "fp16" if fp16 else "fp32",
        "classes": json.dumps(meta["classes"]),
        "image_size": str(meta["image_size"]),
        "mean": json.dumps(meta["mean"]),
        "std": json.dumps(meta["std"]),
        "preprocessing": "RGB; resize short side to image_size, centre crop; (pixel / 255 - mean) / std; NCHW float32",
        "backbone": meta["backbone"],
        "strategy": meta["strategy"],
    }


def export_onnx(model: nn.Module, meta: dict, path: Path, opset: int, fp16: bool = False) -> onnx.ModelProto:
    size = meta["image_size"]
    example = torch.zeros(2, 3, size, size)
    program = torch.onnx.export(
        WithSoftmax(model).eval(),
        (example,),
        dynamo=True,
        opset_version=opset,
        input_names=["image"],
        output_names=["probabilities"],
        dynamic_shapes={"image": {0: torch.export.Dim("batch")}},
        verbose=False,
    )
    proto = program.model_proto
    if fp16:  # ONNX Runtime's own converter; the graph still takes and returns float32
        graph = OnnxModel(proto)
        graph.convert_float_to_float16(use_symbolic_shape_infer=False, keep_io_types=True)
        graph.topological_sort()  # the converter appends its input casts after the nodes that read them
        proto = graph.model
    for key, value in onnx_metadata(meta, fp16).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, path)
    return proto


def onnx_session(path: Path) -> ort.InferenceSession:
    """CUDA when it really loads, else CPU; session.get_providers() says which is active."""
    ort.set_default_logger_severity(4)  # the CUDA provider's load failure on CPU machines is expected
    return ort.InferenceSession(str(path), providers=PROVIDERS)


def onnx_probabilities(session: ort.InferenceSession, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
    return np.concatenate(
        [session.run(None, {"image": inputs[i : i + batch_size]})[0] for i in range(0, len(inputs), batch_size)]
    )


def export_checked(
    model: nn.Module, meta: dict, images: torch.Tensor, path: Path, opset: int, tolerance: float, fp16: bool = False
):
    """Export, then compare ONNX Runtime with PyTorch (float32) on `images` (uint8); the file appears
    only if they agree within `tolerance`. Returns (proto, session, onnx probabilities, max difference)."""
    torch_probabilities = predict_probabilities(model, images, meta).numpy()
    inputs = normalize(images, meta["mean"], meta["std"]).numpy()
    with atomic_path(path) as partial:
        proto = export_onnx(model, meta, partial, opset, fp16)
        session = onnx_session(partial)
        probabilities = onnx_probabilities(session, inputs)
        difference = float(np.abs(probabilities - torch_probabilities).max())
        if difference > tolerance:
            raise ParityError(
                f"ONNX Runtime differs from PyTorch by {difference:.2e} on the test images, over "
                f"export.{'fp16_' if fp16 else ''}parity_tolerance {tolerance:.2e}; no model written"
            )
    return proto, session, probabilities, difference


def main() -> None:
    params = load_params()
    model, meta = load_trained(MODEL_FILE)
    test = load_split(read_manifest(), "test", meta["image_size"], params.data.max_image_pixels)
    settings = params.export
    tolerance = settings.fp16_parity_tolerance if settings.fp16 else settings.parity_tolerance
    proto, session, probabilities, difference = export_checked(
        model, meta, test.images, ONNX_FILE, settings.opset, tolerance, settings.fp16
    )
    accuracy = float((probabilities.argmax(1) == test.labels.numpy()).mean())
    metrics = {"parity_max_abs_diff": difference, "onnx_test_accuracy": accuracy}
    example = normalize(test.images[:2], meta["mean"], meta["std"]).numpy()
    with tracking.resume_run():
        mlflow.log_metrics(metrics)
        info = mlflow.onnx.log_model(
            proto,
            name="model",
            registered_model_name=params.mlflow.registered_model,
            pip_requirements=[f"onnx=={version('onnx')}", f"onnxruntime-gpu=={version('onnxruntime-gpu')}"],
            signature=infer_signature(example, probabilities[:2]),
            metadata=onnx_metadata(meta, settings.fp16),
            onnx_execution_providers=PROVIDERS,
            save_as_external_data=False,
        )
    metrics["registered_version"] = int(info.registered_model_version)
    write_json(METRICS_FILE, metrics)
    print(
        f"exported {ONNX_FILE} ({', '.join(session.get_providers())}): parity {difference:.2e}, "
        f"test accuracy {accuracy:.4f}; registered {params.mlflow.registered_model} v{metrics['registered_version']}"
    )


if __name__ == "__main__":
    main()
