import json

import numpy as np
import onnx
import pytest
import torch

from pipeline.backbones import build
from pipeline.export import ParityError, export_checked, onnx_session
from pipeline.images import normalize


@pytest.fixture(scope="module")
def model_and_meta():
    torch.manual_seed(0)
    model = build("resnet18", "none", 3).model.eval()
    meta = {
        "backbone": "resnet18",
        "classes": ["cat", "dog", "owl"],
        "image_size": 32,
        "mean": [0.4, 0.5, 0.6],
        "std": [0.2, 0.25, 0.3],
        "strategy": "full",
    }
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    return model, meta, images


def test_export_matches_pytorch_and_carries_its_preprocessing(model_and_meta, tmp_path):
    model, meta, images = model_and_meta
    path = tmp_path / "model.onnx"
    _, session, probabilities, difference = export_checked(model, meta, images, path, opset=18, tolerance=1e-4)
    assert difference < 1e-4
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)
    saved = onnx.load(str(path))
    onnx.checker.check_model(saved)
    props = {p.key: p.value for p in saved.metadata_props}
    assert json.loads(props["classes"]) == ["cat", "dog", "owl"]
    assert (props["image_size"], json.loads(props["mean"]), json.loads(props["std"])) == (
        "32",
        meta["mean"],
        meta["std"],
    )
    assert session.get_providers()[-1] == "CPUExecutionProvider"


def test_batch_axis_is_dynamic(model_and_meta, tmp_path):
    model, meta, images = model_and_meta
    export_checked(model, meta, images, tmp_path / "model.onnx", opset=18, tolerance=1e-4)
    session = onnx_session(tmp_path / "model.onnx")
    inputs = normalize(images, meta["mean"], meta["std"]).numpy()
    for batch in (1, 4):
        assert session.run(None, {"image": inputs[:batch]})[0].shape == (batch, 3)


def test_parity_gate_fails_and_leaves_no_file(model_and_meta, tmp_path):
    model, meta, images = model_and_meta
    path = tmp_path / "model.onnx"
    with pytest.raises(ParityError, match="over export.parity_tolerance"):
        export_checked(model, meta, images, path, opset=18, tolerance=1e-12)
    assert list(tmp_path.iterdir()) == []


def test_fp16_export_keeps_float32_io_and_agrees_within_its_tolerance(model_and_meta, tmp_path):
    model, meta, images = model_and_meta
    path = tmp_path / "model.onnx"
    _, _, fp32_probabilities, _ = export_checked(model, meta, images, tmp_path / "fp32.onnx", 18, 1e-4)
    _, session, probabilities, difference = export_checked(model, meta, images, path, 18, 1e-2, fp16=True)
    saved = onnx.load(str(path))
    weights = [t for t in saved.graph.initializer if len(t.dims) == 4]  # the convolution kernels
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert {p.key: p.value for p in saved.metadata_props}["precision"] == "fp16"
    assert (session.get_inputs()[0].type, session.get_outputs()[0].type) == ("tensor(float)", "tensor(float)")
    assert probabilities.dtype == np.float32
    assert 0 < difference < 1e-2  # really float16 arithmetic, and still within its own tolerance
    assert path.stat().st_size < 0.6 * (tmp_path / "fp32.onnx").stat().st_size
    np.testing.assert_array_equal(probabilities.argmax(1), fp32_probabilities.argmax(1))


def test_fp16_parity_gate_names_its_own_tolerance(model_and_meta, tmp_path):
    model, meta, images = model_and_meta
    with pytest.raises(ParityError, match="over export.fp16_parity_tolerance"):
        export_checked(model, meta, images, tmp_path / "model.onnx", 18, 1e-7, fp16=True)
    assert not (tmp_path / "model.onnx").exists()
