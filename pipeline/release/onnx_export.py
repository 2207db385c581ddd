"""PyTorch model to ONNX graph: softmax and the model card inside, checked against PyTorch.

The graph takes uint8 RGB images (any batch size) at the card's image size and returns class
probabilities. Used by the export stage (pipeline.stages.export, which also registers the model in MLflow),
the tests and benchmarks.inference; it imports no MLflow, so it runs where only torch and ONNX are.
"""

from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.transformers import onnx_model as ort_graph_tools
from torch import nn

from pipeline.atomic import atomic_path
from pipeline.model import model_file
from pipeline.model.card import ONNX_METADATA_KEY, ModelCard
from pipeline.release import onnx_runtime


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
        input_names=[onnx_runtime.INPUT],
        output_names=[onnx_runtime.OUTPUT],
        dynamic_shapes={"image": {0: torch.export.Dim("batch")}},
        verbose=False,
    )
    proto = program.model_proto
    if fp16:  # ONNX Runtime's own converter; the graph still takes uint8 and returns float32
        graph = ort_graph_tools.OnnxModel(proto)
        graph.convert_float_to_float16(use_symbolic_shape_infer=False, keep_io_types=True)
        graph.topological_sort()  # the converter appends its input casts after the nodes that read them
        proto = graph.model
    without_stack_traces(proto)
    for key, value in onnx_metadata(card, fp16).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, path)
    return proto


def without_stack_traces(proto: onnx.ModelProto) -> None:
    """torch's exporter tags each node with the Python stack that made it, absolute paths of this checkout
    included: the same model exported from another folder was another file (and DVC output), and it told
    whoever got the model where its maker's files lie."""
    for node in proto.graph.node:
        kept = [prop for prop in node.metadata_props if prop.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)


def export_checked(
    model: nn.Module, card: ModelCard, images: torch.Tensor, path: Path, opset: int, tolerance: float, fp16=False
):
    """Export, then compare ONNX Runtime with PyTorch (float32) on `images` (uint8); the file appears
    only if they agree within `tolerance`. Returns (proto, session, onnx probabilities, max difference)."""
    torch_probabilities = model_file.predict_probabilities(model, images).numpy()
    with atomic_path(path) as partial:
        proto = export_onnx(model, card, partial, opset, fp16)
        session, _ = onnx_runtime.open_session(partial)
        probabilities = onnx_runtime.probabilities(session, images.numpy())
        difference = float(np.abs(probabilities - torch_probabilities).max())
        if difference > tolerance:
            raise ParityError(
                f"ONNX Runtime differs from PyTorch by {difference:.2e} on the test images, over "
                f"export.{'fp16_' if fp16 else ''}parity_tolerance {tolerance:.2e}; no model written"
            )
    return proto, session, probabilities, difference
