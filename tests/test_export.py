import numpy as np
import onnx
import pytest
import torch

from pipeline.model.backbones import build
from pipeline.release import onnx_runtime
from pipeline.release.onnx_export import ParityError, export_checked
from tests.conftest import ROOT, model_card

CARD = model_card()


@pytest.fixture(scope="module")
def model_and_images():
    torch.manual_seed(0)
    backbone = build("resnet18", "none", 3)
    model = type(backbone.model)(backbone.model.body, backbone.model.head, CARD.mean, CARD.std).eval()
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    return model, images


def test_export_takes_uint8_normalises_inside_and_carries_the_card(model_and_images, tmp_path):
    model, images = model_and_images
    path = tmp_path / "model.onnx"
    _, session, probabilities, difference = export_checked(model, CARD, images, path, opset=18, tolerance=1e-4)
    assert difference < 1e-4
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)
    saved = onnx.load(str(path))
    onnx.checker.check_model(saved)
    assert str(ROOT).encode() not in path.read_bytes()  # no stack traces: the file is the same from any checkout
    assert session.get_inputs()[0].type == "tensor(uint8)"
    _, card = onnx_runtime.open_session(path)
    assert card == CARD
    # the graph's own normalisation is the card's: the same network fed pre-normalised floats agrees
    mean, std = torch.tensor(CARD.mean).view(1, 3, 1, 1), torch.tensor(CARD.std).view(1, 3, 1, 1)
    with torch.no_grad():
        by_hand = model.head(model.body((images.float() / 255 - mean) / std)).softmax(1).numpy()
    np.testing.assert_allclose(probabilities, by_hand, atol=1e-5)
    assert session.get_providers()[-1] == "CPUExecutionProvider"


def test_batch_axis_is_dynamic(model_and_images, tmp_path):
    model, images = model_and_images
    export_checked(model, CARD, images, tmp_path / "model.onnx", opset=18, tolerance=1e-4)
    session, _ = onnx_runtime.open_session(tmp_path / "model.onnx")
    for batch in (1, 4):
        assert onnx_runtime.probabilities(session, images[:batch].numpy()).shape == (batch, 3)


def test_only_a_session_that_shares_its_cores_stops_its_threads_spinning_between_calls(model_and_images, tmp_path):
    model, images = model_and_images
    export_checked(model, CARD, images, tmp_path / "model.onnx", opset=18, tolerance=1e-4)
    spinning = "session.intra_op.allow_spinning"
    alone, _ = onnx_runtime.open_session(tmp_path / "model.onnx")
    served, _ = onnx_runtime.open_session(tmp_path / "model.onnx", shares_cores=True)
    with pytest.raises(RuntimeError, match="does not have configuration"):  # ORT's default: its threads spin
        alone.get_session_options().get_session_config_entry(spinning)
    assert served.get_session_options().get_session_config_entry(spinning) == "0"
    np.testing.assert_array_equal(
        onnx_runtime.probabilities(alone, images.numpy()), onnx_runtime.probabilities(served, images.numpy())
    )


def test_parity_gate_fails_and_leaves_no_file(model_and_images, tmp_path):
    model, images = model_and_images
    path = tmp_path / "model.onnx"
    with pytest.raises(ParityError, match="over export.parity_tolerance"):
        export_checked(model, CARD, images, path, opset=18, tolerance=1e-12)
    assert list(tmp_path.iterdir()) == []


def test_fp16_export_keeps_its_io_types_and_agrees_within_its_tolerance(model_and_images, tmp_path):
    model, images = model_and_images
    path = tmp_path / "model.onnx"
    _, _, fp32_probabilities, _ = export_checked(model, CARD, images, tmp_path / "fp32.onnx", 18, 1e-4)
    _, session, probabilities, difference = export_checked(model, CARD, images, path, 18, 1e-2, fp16=True)
    saved = onnx.load(str(path))
    weights = [t for t in saved.graph.initializer if len(t.dims) == 4]  # the convolution kernels
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert {p.key: p.value for p in saved.metadata_props}["precision"] == "fp16"
    assert (session.get_inputs()[0].type, session.get_outputs()[0].type) == ("tensor(uint8)", "tensor(float)")
    assert probabilities.dtype == np.float32
    assert 0 < difference < 1e-2  # really float16 arithmetic, and still within its own tolerance
    assert path.stat().st_size < 0.6 * (tmp_path / "fp32.onnx").stat().st_size
    np.testing.assert_array_equal(probabilities.argmax(1), fp32_probabilities.argmax(1))


def test_fp16_parity_gate_names_its_own_tolerance(model_and_images, tmp_path):
    model, images = model_and_images
    with pytest.raises(ParityError, match="over export.fp16_parity_tolerance"):
        export_checked(model, CARD, images, tmp_path / "model.onnx", 18, 1e-7, fp16=True)
    assert not (tmp_path / "model.onnx").exists()


def test_a_model_that_does_not_fit_its_card_is_refused(model_and_images, tmp_path):
    model, images = model_and_images
    export_checked(model, CARD, images, tmp_path / "model.onnx", opset=18, tolerance=1e-4)
    proto = onnx.load(str(tmp_path / "model.onnx"))
    wrong = CARD.model_copy(update={"classes": ["cat", "dog", "owl", "yak"], "image_size": 28})
    for prop in proto.metadata_props:
        if prop.key == "model_card":
            prop.value = wrong.to_json()
    onnx.save(proto, str(tmp_path / "wrong.onnx"))
    with pytest.raises(onnx_runtime.ModelLoadError, match=r"\[batch, 3, 28, 28\].*\[batch, 4\]"):
        onnx_runtime.open_session(tmp_path / "wrong.onnx")
