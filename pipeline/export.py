"""Stage 4: export the trained model to ONNX, gate it on parity with PyTorch, register it.

    python -m pipeline.export

The graph takes uint8 RGB images (any batch size) at the model card's image size and returns class
probabilities: normalisation is inside it, and the card rides in its metadata (pipeline.card).
ONNX Runtime and PyTorch are run on the test images; the stage fails, leaving no model behind, if
their probabilities differ by more than export.parity_tolerance (export.fp16_parity_tolerance
for a float16 graph). The model is then logged to the MLflow run and registered as a new version
of the registered model (mlflow.registered_model, by default named after the data folder), tagged
with its data, test split and test accuracy (pipeline.registry); the first version becomes champion.
"""

from importlib.metadata import version as package_version
from pathlib import Path

import mlflow
import numpy as np
import onnx
import torch
from mlflow import MlflowClient
from mlflow.models import infer_signature
from onnxruntime.transformers.onnx_model import OnnxModel
from torch import nn

from pipeline import onnx_model, registry, tracking, trained
from pipeline.atomic import atomic_path, write_json
from pipeline.card import ONNX_METADATA_KEY, ModelCard
from pipeline.config import load_params
from pipeline.manifest import load_split, read_manifest, split_fingerprint
from pipeline.paths import EXPORT_METRICS, MODEL_FILE, ONNX_FILE


class ParityError(RuntimeError):
    """ONNX Runtime and PyTorch disagree by more than the tolerance."""


class WithSoftmax(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image).softmax(dim=1)


def onnx_metadata(card: ModelCard, fp16: bool = False) -> dict[str, str]:
    return {ONNX_METADATA_KEY: card.to_json(), "precision": "fp16" if fp16 else "fp32"}


def export_onnx(model: nn.Module, card: ModelCard, path: Path, opset: int, fp16: bool = False) -> onnx.ModelProto:
    size = card.image_size
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)
    program = torch.onnx.export(
        WithSoftmax(model).eval(),
        (example,),
        dynamo=True,
        opset_version=opset,
        input_names=[onnx_model.INPUT],
        output_names=[onnx_model.OUTPUT],
        dynamic_shapes={"image": {0: torch.export.Dim("batch")}},
        verbose=False,
    )
    proto = program.model_proto
    if fp16:  # ONNX Runtime's own converter; the graph still takes uint8 and returns float32
        graph = OnnxModel(proto)
        graph.convert_float_to_float16(use_symbolic_shape_infer=False, keep_io_types=True)
        graph.topological_sort()  # the converter appends its input casts after the nodes that read them
        proto = graph.model
    for key, value in onnx_metadata(card, fp16).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, path)
    return proto


def export_checked(
    model: nn.Module, card: ModelCard, images: torch.Tensor, path: Path, opset: int, tolerance: float, fp16=False
):
    """Export, then compare ONNX Runtime with PyTorch (float32) on `images` (uint8); the file appears
    only if they agree within `tolerance`. Returns (proto, session, onnx probabilities, max difference)."""
    torch_probabilities = trained.predict_probabilities(model, images).numpy()
    with atomic_path(path) as partial:
        proto = export_onnx(model, card, partial, opset, fp16)
        session, _ = onnx_model.open_session(partial)
        probabilities = onnx_model.probabilities(session, images.numpy())
        difference = float(np.abs(probabilities - torch_probabilities).max())
        if difference > tolerance:
            raise ParityError(
                f"ONNX Runtime differs from PyTorch by {difference:.2e} on the test images, over "
                f"export.{'fp16_' if fp16 else ''}parity_tolerance {tolerance:.2e}; no model written"
            )
    return proto, session, probabilities, difference


def main() -> None:
    params = load_params()
    tracking.check_reachable()  # before anything is written: a stage that cannot log leaves no outputs
    model, card = trained.load(MODEL_FILE)
    rows = read_manifest()
    test = load_split(rows, "test", card.image_size, params.data.max_image_pixels)
    settings = params.export
    tolerance = settings.fp16_parity_tolerance if settings.fp16 else settings.parity_tolerance
    with atomic_path(ONNX_FILE) as onnx_file:  # in place only once it is registered too
        proto, session, probabilities, difference = export_checked(
            model, card, test.images, onnx_file, settings.opset, tolerance, settings.fp16
        )
        correct = probabilities.argmax(1) == test.labels.numpy()
        accuracy = float(correct.mean())
        metrics = {"parity_max_abs_diff": difference, "onnx_test_accuracy": accuracy}
        name = params.registered_model()
        with tracking.resume_run():
            tracking.log_metrics({f"export/{key}": value for key, value in metrics.items()})
            info = mlflow.onnx.log_model(
                proto,
                name="model",
                registered_model_name=name,
                pip_requirements=[
                    f"onnx=={package_version('onnx')}",
                    f"onnxruntime-gpu=={package_version('onnxruntime-gpu')}",
                ],
                signature=infer_signature(test.images[:2].numpy(), probabilities[:2]),
                metadata=onnx_metadata(card, settings.fp16),
                onnx_execution_providers=onnx_model.PROVIDERS,
                save_as_external_data=False,
            )
            version = str(info.registered_model_version)
            tags = registry.version_tags(
                card,
                split_fingerprint(rows, "test"),
                len(test.labels),
                accuracy,
                tracking.git_commit(),
                tracking.dvc_experiment(),
            )
            crowned = registry.record_version(
                MlflowClient(tracking.tracking_uri()), name, version, tags | registry.correctness_tag(correct)
            )
    metrics["registered_version"] = int(version)
    write_json(EXPORT_METRICS, metrics)
    alias = (
        f", now @{registry.CHAMPION} (the model had none)" if crowned else " (`python -m pipeline.promote` to serve it)"
    )
    print(
        f"exported {ONNX_FILE} ({', '.join(session.get_providers())}): parity {difference:.2e}, "
        f"test accuracy {accuracy:.4f}; registered {name} v{version}{alias}"
    )


if __name__ == "__main__":
    main()
