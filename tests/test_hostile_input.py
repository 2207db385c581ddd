"""Hostile and careless input, in process: images built to exhaust memory, models that do not fit
their card, odd file names and a broken params.yaml. (What reaches the service over HTTP is in
test_serving.py; lost tracking servers in test_tracking_server.py.) Each row of issue 13's table
that is tested here says so."""

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import onnx
import psutil
import pytest
import torch
from fastapi import HTTPException
from PIL import Image

from pipeline.config import load_params
from pipeline.data.class_folder import prepare
from pipeline.data.decode_box import (
    Decode,
    DecodeBox,
    DecodeLimits,
    DecoderRestarted,
    OverLimit,
    decode_in_child,
    decode_many_in_child,
)
from pipeline.data.images import BadImage, load_rgb, resize_square
from pipeline.model.backbones import Classifier, build
from pipeline.release import onnx_runtime
from pipeline.release.onnx_export import export_checked
from serving.request_images import decode_batch
from tests.conftest import ROOT, data_config, model_card
from tests.hostile_files import jpeg_with_repeated_scans, png_with_many_profiles, tiff_with_a_huge_tile

MiB = 2**20


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def peak_rss_of(code: str, *args: str) -> int:
    """How far `code` raises the peak resident memory (bytes) of a fresh Python process, after its imports.
    VmHWM, not ru_maxrss: the latter keeps the high-water mark of the process that forked it."""
    script = (
        "import re, sys\n"
        "from pipeline.data.images import load_rgb, resize_square\n"
        "def peak():\n"
        "    return int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) * 1024\n"
        "before = peak()\n"
        f"{code}\n"
        "print(peak() - before)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout.split()[-1])


def test_a_long_thin_image_costs_a_square_of_the_model_size(tmp_path):
    """467 bytes of PNG, 200000 x 2 pixels, under the pixel limit: resizing its short side to the model
    size used to make a 9.6-million-pixel-wide image first (3.1 GB in the service)."""
    path = tmp_path / "tall.png"
    path.write_bytes(png(np.zeros((2, 200_000, 3), dtype=np.uint8)))
    code = "resize_square(load_rgb(sys.argv[1], 40_000_000), 96)"
    assert peak_rss_of(code, str(path)) < 64 * MiB


def test_the_square_crop_is_what_resize_then_crop_gives(tmp_path):
    """Cropping in the source before resizing changes no pixel by more than rounding."""
    rng = np.random.default_rng(0)
    for height, width, size in [(28, 28, 96), (64, 48, 40), (300, 500, 96), (1000, 37, 96), (45, 45, 40)]:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        scaled = (size, int(size * height / width)) if width <= height else (int(size * width / height), size)
        left, top = round((scaled[0] - size) / 2), round((scaled[1] - size) / 2)
        whole = image.resize(scaled, Image.Resampling.BILINEAR).crop((left, top, left + size, top + size))
        reference = np.asarray(whole).transpose(2, 0, 1).astype(int)
        assert np.abs(resize_square(image, size).astype(int) - reference).max() <= 1


def test_a_16_bit_image_decodes_without_float64_copies(tmp_path):
    """6324 x 6324 16-bit PNG (78 KB): 1.08 GB through float64; as 16-bit source plus 8-bit RGB now."""
    path = tmp_path / "wide.png"
    ramp = (np.arange(6324, dtype=np.uint32) * 10).astype(np.uint16)
    Image.fromarray(np.tile(ramp, (6324, 1))).save(path)
    pixels = 6324 * 6324
    assert peak_rss_of("load_rgb(sys.argv[1], 40_000_000)", str(path)) < pixels * (2 + 1 + 3) + 64 * MiB


def test_16_bit_pixels_are_scaled_down_as_before():
    values = np.array([[0, 257, 65535, 30000]], dtype=np.uint16)
    rgb = np.asarray(load_rgb(io.BytesIO(png(values)), 100))
    assert rgb[0, :, 0].tolist() == [0, 1, 255, int(30000 * 255 / 65535)]
    small = np.array([[0, 100, 255]], dtype=np.uint16)  # a 16-bit file holding 8-bit values: kept
    assert np.asarray(load_rgb(io.BytesIO(png(small)), 100))[0, :, 0].tolist() == [0, 100, 255]


def test_only_the_formats_a_user_sends_are_decoded():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(BadImage, match="EPS is not one of the accepted formats: PNG, JPEG"):
        load_rgb(io.BytesIO(eps), 100, formats=("PNG", "JPEG"))
    assert load_rgb(io.BytesIO(png(np.zeros((4, 4, 3), dtype=np.uint8))), 100, formats=("PNG",)).size == (4, 4)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny model exported by the pipeline: 3 classes, 32 px."""
    root = tmp_path_factory.mktemp("broken-models")
    torch.manual_seed(0)
    backbone = build("resnet18", "none", 3)
    card = model_card()
    model = Classifier(backbone.model.body, backbone.model.head, card.mean, card.std).eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    export_checked(model, card, images, root / "model.onnx", opset=18, tolerance=1e-4)
    return root / "model.onnx"


def variant(source, target, edit) -> str:
    proto = onnx.load(str(source))
    edit(proto)
    onnx.save(proto, str(target))
    return target


def set_card(proto, **changes):
    for prop in proto.metadata_props:
        if prop.key == "model_card":
            prop.value = json.dumps(json.loads(prop.value) | changes)


def rename_input(proto, name):
    old = proto.graph.input[0].name
    proto.graph.input[0].name = name
    for node in proto.graph.node:
        node.input[:] = [name if value == old else value for value in node.input]


def fixed_batch(proto):
    proto.graph.input[0].type.tensor_type.shape.dim[0].ClearField("dim_param")
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1


BROKEN = {  # row 4: each variant "ready" and then 500 (or wrong labels) on every request, before
    "input not named image": (lambda p: rename_input(p, "pixels"), "input should be one uint8 tensor `image`"),
    "fixed 28 x 28 input": (lambda p: set_card(p, image_size=28), "input shape should be [batch, 3, 28, 28]"),
    "5 outputs for 10 classes": (
        lambda p: set_card(p, classes=[f"c{i}" for i in range(10)]),
        "output shape should be [batch, 10]",
    ),
    "image_size 0": (lambda p: set_card(p, image_size=0), "image_size"),
    "no classes": (lambda p: set_card(p, classes=[]), "classes"),
    "mean not numbers": (lambda p: set_card(p, mean="abc"), "mean"),
    "fixed batch of 1": (fixed_batch, "a batch of 2"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_model_that_does_not_fit_its_card_is_refused_at_load(exported, tmp_path, case):
    edit, message = BROKEN[case]
    with pytest.raises(onnx_runtime.ModelLoadError) as error:
        onnx_runtime.open_session(variant(exported, tmp_path / "broken.onnx", edit))
    assert message in str(error.value)


def test_loading_runs_a_batch_through_the_graph(exported):
    session, card = onnx_runtime.open_session(exported)
    assert onnx_runtime.probabilities(session, np.zeros((2, 3, 32, 32), dtype=np.uint8)).shape == (2, 3)


def test_undecodable_file_names_are_skipped_and_named(image_folder, tmp_path):
    odd = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not UTF-8
    (image_folder / "red" / odd).write_bytes((image_folder / "red" / "0.png").read_bytes())
    metrics = prepare(data_config(image_folder), seed=1, out_dir=tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert metrics["skipped"] == 1
    assert report["skipped"][0]["reason"] == "the file name is not valid UTF-8"
    assert "caf\\xe9.png" in report["skipped"][0]["path"]


def test_hidden_folders_inside_a_class_are_ignored(image_folder, tmp_path):
    cache = image_folder / "red" / ".cache"
    cache.mkdir()
    (cache / "thumb.png").write_bytes((image_folder / "red" / "0.png").read_bytes())
    prepare(data_config(image_folder), seed=1, out_dir=tmp_path / "out")
    assert ".cache" not in (tmp_path / "out" / "manifest.csv").read_text()


def test_decoder_fuzz_never_raises_anything_but_bad_image():
    """A few thousand seeded mutations of valid files: every one decodes or is a BadImage, none crashes."""
    rng = np.random.default_rng(13)
    seeds = []
    for image_format in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(buffer, format=image_format)
        seeds.append(buffer.getvalue())
    outcomes = {"decoded": 0, "refused": 0}
    for trial in range(3000):
        data = bytearray(seeds[trial % len(seeds)])
        for _ in range(1 + trial % 8):
            data[rng.integers(0, len(data))] = rng.integers(0, 256)
        if trial % 5 == 0:
            data = data[: rng.integers(1, len(data))]
        try:
            resize_square(load_rgb(io.BytesIO(bytes(data)), 10**6), 16)
            outcomes["decoded"] += 1
        except BadImage:
            outcomes["refused"] += 1
    assert outcomes["decoded"] > 100 and outcomes["refused"] > 100, outcomes


def run_asgi(middleware, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> list[dict]:
    """One request through an ASGI middleware around an app that reads the whole body and answers 200."""

    async def app(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"read"})

    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/classify", "headers": headers}
    asyncio.run(middleware(app)(scope, receive, send))
    return sent


def test_the_body_limit_counts_the_bytes_received_not_the_declared_length():
    from serving.limits import RequestLimits

    def limits(app):
        return RequestLimits(app, max_bytes=1000, body_timeout_s=5, body_deadline_s=30)

    over_declared = run_asgi(limits, [(b"content-length", b"100")], [b"x" * 60, b"x" * 60])
    assert over_declared[0]["status"] == 413 and b"over 100 bytes" in over_declared[1]["body"]
    over_limit = run_asgi(limits, [], [b"x" * 600, b"x" * 600])  # no length declared at all
    assert over_limit[0]["status"] == 413 and b"over 1000 bytes" in over_limit[1]["body"]
    within = run_asgi(limits, [(b"content-length", b"120")], [b"x" * 60, b"x" * 60])
    assert within[0]["status"] == 200 and within[1]["body"] == b"read"


def closes(response_start: dict) -> bool:
    return (b"connection", b"close") in response_start["headers"]


def test_every_refusal_before_the_body_is_whole_closes_the_connection():
    """Issue 28 row 6: the unread rest of a body would otherwise be read as the next request."""
    from serving.limits import RequestLimits

    def limits(app):
        return RequestLimits(app, max_bytes=1000, body_timeout_s=5, body_deadline_s=30)

    framed_two_ways = run_asgi(limits, [(b"content-length", b"10"), (b"transfer-encoding", b"chunked")], [b""])
    chunked = run_asgi(limits, [(b"transfer-encoding", b"chunked")], [b""])
    declared_too_long = run_asgi(limits, [(b"content-length", b"5000")], [b""])
    longer_than_declared = run_asgi(limits, [(b"content-length", b"100")], [b"x" * 60, b"x" * 60])
    statuses = [r[0]["status"] for r in (framed_two_ways, chunked, declared_too_long, longer_than_declared)]
    assert statuses == [400, 411, 413, 413]
    assert all(closes(r[0]) for r in (framed_two_ways, chunked, declared_too_long, longer_than_declared))
    read_whole = run_asgi(limits, [(b"content-length", b"120")], [b"x" * 60, b"x" * 60])
    assert read_whole[0]["status"] == 200 and not closes(read_whole[0])


def test_an_answer_the_app_sends_before_reading_the_body_closes_the_connection():
    from serving.limits import RequestLimits

    async def app_that_reads_nothing(scope, receive, send):
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"no such route"})

    def run(headers):
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        middleware = RequestLimits(app_that_reads_nothing, max_bytes=1000, body_timeout_s=5, body_deadline_s=30)
        asyncio.run(middleware({"type": "http", "headers": headers}, receive, send))
        return sent[0]

    assert closes(run([(b"content-length", b"50")]))
    assert not closes(run([])) and not closes(run([(b"content-length", b"0")]))  # no body: kept alive


def test_a_body_that_trickles_in_faster_than_the_gap_timeout_still_meets_a_deadline():
    """Issue 28 row 8: the gap between bytes was the only bound; a byte every 20 s held a request for ever."""
    from serving.limits import RequestLimits

    async def app(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"read"})

    async def trickle():
        await asyncio.sleep(0.05)  # each byte well inside the 1 s gap timeout
        return {"type": "http.request", "body": b"x", "more_body": True}

    sent = []

    async def send(message):
        sent.append(message)

    middleware = RequestLimits(app, max_bytes=1000, body_timeout_s=1, body_deadline_s=0.5)
    started = time.monotonic()
    asyncio.run(middleware({"type": "http", "headers": [(b"content-length", b"900")]}, trickle, send))
    assert 0.4 < time.monotonic() - started < 1
    assert sent[0]["status"] == 408 and b"did not arrive whole within 0.5 s" in sent[1]["body"] and closes(sent[0])


@pytest.mark.parametrize(
    ("text", "status", "message"),
    [
        ("data:image/png;base64iVBORw0KGgo", 400, "data: URL without a comma"),  # row 7: was a 500
        ("data:image/png,%89PNG", 400, "data: URL that is not base64"),
        ("data:,abc", 400, "not base64"),
        ("QUJD%%", 400, "not valid base64: only A-Z"),
        ("QUJDé", 400, "not valid base64"),
        ("QUJDR", 400, "not valid base64"),
        ("AB " * 400, 413, "over the limit of 100 bytes"),
        ("data:image/png;base64," + "A" * 200, 413, "over the limit of 100 bytes"),
    ],
)
def test_base64_images_are_refused_with_a_4xx_that_says_why(text, status, message):
    from fastapi import HTTPException

    from serving.request_images import from_base64

    with pytest.raises(HTTPException) as refused:
        from_base64(["QUJD", text], max_image_bytes=100)
    assert refused.value.status_code == status and refused.value.detail.startswith("image 1 ")
    assert message in refused.value.detail


def test_base64_decodes_wrapped_lines_and_data_urls_up_to_the_limit():
    import base64

    from serving.request_images import from_base64

    blob = os.urandom(3000)
    wrapped_crlf = base64.encodebytes(blob).decode().replace("\n", "\r\n")
    pem_lines = "\n".join(base64.b64encode(blob).decode()[i : i + 64] for i in range(0, 4000, 64))
    texts = [wrapped_crlf, pem_lines, "data:image/png;base64," + base64.b64encode(blob).decode()]
    assert [b for _, b in from_base64(texts, max_image_bytes=3000)] == [blob] * 3


def test_base64_over_the_limit_is_refused_without_copying_the_text():
    """Issue 28 row 4: 96 MB of "AB " cost 2.4 GB and seconds, split into words before the size check."""
    code = (
        "from fastapi import HTTPException\n"
        "from serving.request_images import from_base64\n"
        "text = 'AB ' * 32_000_000\n"
        "before = peak()\n"
        "try:\n"
        "    from_base64([text], 10_000_000)\n"
        "except HTTPException as refused:\n"
        "    assert refused.status_code == 413, refused\n"
    )
    assert peak_rss_of(code) < 20 * MiB


# Issue 28, rows 1, 2 and 5: files that pass the declared-size and format checks and still cost a decoder
# far more than their size; the box (pipeline.data.decode_box) bounds each decode, here at 128 MB and 1 s.
HOSTILE = {
    "huge_tile.tif": (lambda: tiff_with_a_huge_tile(16384), "needs more than 128 MB to decode: data.decode_memory_mb"),
    "repeated_scans.jpg": (lambda: jpeg_with_repeated_scans(2048, 2000), "needs more than 1 s to decode"),
    "many_profiles.png": (lambda: png_with_many_profiles(4000), "needs more than 1 s to decode"),
}


@pytest.mark.slow
def test_prepare_skips_files_that_exceed_the_decode_box_naming_the_limit(image_folder, tmp_path):
    """Before: each was accepted, the TIFF for +256 MB of memory, the others after 2 to 5 s of CPU each."""
    for name, (make, _) in HOSTILE.items():
        (image_folder / "red" / name).write_bytes(make())
    code = (
        "import json, sys, time\n"
        "from pipeline.data.class_folder import prepare\n"
        "from tests.conftest import data_config\n"
        "data = data_config(sys.argv[1], decode_memory_mb=128, decode_seconds=1)\n"
        "start = time.monotonic()\n"
        "from pathlib import Path\n"
        "prepare(data, seed=1, out_dir=Path(sys.argv[2]))\n"
        "print(f'{time.monotonic() - start:.1f}', file=sys.stderr)\n"
    )
    assert peak_rss_of(code, str(image_folder), str(tmp_path / "out")) < 64 * MiB  # the prepare process's own
    skipped = json.loads((tmp_path / "out" / "report.json").read_text())["skipped"]
    reasons = {item["path"].rsplit("/", 1)[-1]: item["reason"] for item in skipped}
    for name, (_, message) in HOSTILE.items():
        assert message in reasons[name], reasons
    assert "huge_tile.tif" not in (tmp_path / "out" / "manifest.csv").read_text()


def test_a_decoder_over_its_limit_is_replaced_and_the_next_file_decodes():
    good = png(np.full((30, 40, 3), 200, dtype=np.uint8))
    with DecodeBox(DecodeLimits(memory_mb=128, seconds=1), workers=1) as box:
        before = box.result(box.submit(good, 10**6, None, 16))
        children = {p.pid for p in psutil.Process().children(recursive=True)}
        with pytest.raises(OverLimit, match="128 MB"):
            box.result(box.submit(tiff_with_a_huge_tile(16384), 10**6, None, 16))
        after = box.result(box.submit(good, 10**6, None, 16))
        assert {p.pid for p in psutil.Process().children(recursive=True)} != children
    assert before.shape == (3, 16, 16) and np.array_equal(before, after)


def test_a_cancelled_decode_kills_its_decoder_at_once():
    with DecodeBox(DecodeLimits(memory_mb=128, seconds=30), workers=1) as box:
        box.result(box.submit(png(np.zeros((4, 4, 3), dtype=np.uint8)), 10**6, None, 16))  # the child is up
        future = box.submit(jpeg_with_repeated_scans(2048, 2000), 10**6, None, 16)
        time.sleep(0.3)
        start = time.monotonic()
        future.cancel()
        again = box.result(box.submit(png(np.zeros((4, 4, 3), dtype=np.uint8)), 10**6, None, 16))
        assert again.shape == (3, 16, 16) and time.monotonic() - start < 2  # not the 5 s the file costs


def decoder_children(box: DecodeBox) -> list[psutil.Process]:
    """The pool's decoder processes: the forkserver's children."""
    forkservers = [p for p in psutil.Process().children() if "forkserver" in " ".join(p.cmdline())]
    return [child for server in forkservers for child in server.children()]


def test_a_pool_pebble_broke_is_replaced_and_a_decode_caught_in_it_runs_again():
    """pebble breaks its pool for good when a decoder dies with no task on it (the hostile soak's 91,943 5xx)."""
    good = png(np.full((30, 40, 3), 200, dtype=np.uint8))
    with DecodeBox(DecodeLimits(memory_mb=128, seconds=5), workers=1) as box:
        expected = box.result(box.submit(good, 10**6, None, 16))
        stranded = Future()  # a task pebble had queued, not yet given to a child
        decode = Decode(decode_in_child, (good, 10**6, None, 16), 1)
        stranded.add_done_callback(lambda _: box.settle(decode, stranded, 0))
        box.lanes[0].waiting.add(stranded)
        for child in decoder_children(box):  # idle: no task is running on it
            child.kill()
        deadline = time.monotonic() + 10
        while box.lanes[0].pool.active:
            assert time.monotonic() < deadline, "pebble kept its pool after its idle decoder died"
            time.sleep(0.05)
        caught = Decode(decode_in_child, (good, 10**6, None, 16), 1)  # what a decode in flight got when the pool broke
        caught.set_exception(BrokenProcessPool("All workers expired"))
        with pytest.raises(DecoderRestarted, match="send it again"):
            box.result(caught)
        assert np.array_equal(box.result(caught, again_if_broken=True), expected)  # in a new pool
        assert np.array_equal(box.result(box.submit(good, 10**6, None, 16)), expected)
        assert isinstance(stranded.exception(timeout=1), BrokenProcessPool)  # not left to wait forever
        assert np.array_equal(box.result(decode), expected)  # decoded again, in the new pool


class BrokenBox(DecodeBox):
    """A box whose pool breaks under every task, after the box's own restarts of it (RESTARTS_PER_DECODE)."""

    submitted = 0

    def submit_many(self, blobs: list[bytes], *how) -> Decode:
        self.submitted += 1
        decode = Decode(decode_many_in_child, (blobs, *how), len(blobs))
        decode.set_exception(BrokenProcessPool("All workers expired"))
        return decode


async def a_client_that_stays() -> dict:
    await asyncio.Event().wait()


def test_a_request_caught_in_a_broken_pool_gets_one_503_and_no_second_round_of_decodes():
    """The box has restarted the decodes already: before, each chunk was sent again file by file, to break again."""
    files = [(f"image {i} (x.png)", png(np.full((30, 40, 3), 50 * i, dtype=np.uint8))) for i in range(4)]
    with BrokenBox(DecodeLimits(memory_mb=128, seconds=5), workers=2) as box:
        decoding = decode_batch(files, 16, load_params(ROOT / "params.yaml").serving, box, a_client_that_stays)
        with pytest.raises(HTTPException) as refused:
            asyncio.run(decoding)
    assert refused.value.status_code == 503 and refused.value.detail.startswith("image 0 (x.png): the decoders")
    assert box.submitted == 2  # one chunk per decoder, none again


def test_the_box_gives_the_pixels_of_an_in_process_decode(image_folder):
    with DecodeBox(DecodeLimits(memory_mb=512, seconds=10), workers=2) as box:
        for path in sorted((image_folder / "red").iterdir()):
            try:
                expected = resize_square(load_rgb(path, 10**6), 24)
            except BadImage as exc:
                with pytest.raises(BadImage, match=re.escape(str(exc))):
                    box.result(box.submit(path.read_bytes(), 10**6, None, 24))
                continue
            assert np.array_equal(box.result(box.submit(path.read_bytes(), 10**6, None, 24)), expected)


def test_several_files_in_one_task_are_each_decoded_up_to_the_first_bad_one(image_folder):
    files = [path.read_bytes() for path in sorted((image_folder / "red").iterdir())[:3]]
    expected = [resize_square(load_rgb(io.BytesIO(blob), 10**6), 24) for blob in files]
    broken = files[0][:40]
    with DecodeBox(DecodeLimits(memory_mb=512, seconds=10), workers=1) as box:
        decoded = box.result(box.submit_many(files, 10**6, None, 24))
        assert all(np.array_equal(got, want) for got, want in zip(decoded, expected, strict=True))
        *good, bad = box.result(box.submit_many([files[0], broken, files[1]], 10**6, None, 24))
    assert np.array_equal(good[0], expected[0]) and len(good) == 1 and isinstance(bad, BadImage)


@pytest.mark.parametrize(
    ("work", "ends"),
    [
        ("bytearray(256 * 2**20)", "MemoryError"),  # the 128 MB above the child's size
        ("while True: pass", f"signal {signal.SIGXCPU}"),  # the operating system's backstop to the deadline
    ],
)
def test_the_limits_of_a_decode_are_the_operating_systems(work, ends):
    """The box's limits hold without the pool: RLIMIT_AS refuses the allocation, RLIMIT_CPU kills the loop."""
    code = f"from pipeline.data.decode_box import bound_this_decode\nbound_this_decode(128, 1)\n{work}\n"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
    outcome = f"signal {-result.returncode}" if result.returncode < 0 else result.stderr.strip().splitlines()[-1]
    assert outcome.startswith(ends) and time.monotonic() - started < 10


@pytest.mark.slow
def test_the_costliest_good_file_at_the_pixel_limit_decodes_within_the_default_box():
    """An RGBA PNG at the default pixel limit becomes RGB through a few image-sized copies: the most memory
    a good file needs, which params.yaml's decode_memory_mb must hold, in decode_seconds."""
    data = load_params(ROOT / "params.yaml").data
    side = int(data.max_image_pixels**0.5)
    pixels = np.zeros((side, side, 4), dtype=np.uint8)
    pixels[::7, ::5] = (200, 100, 50, 128)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    with DecodeBox(DecodeLimits(data.decode_memory_mb, data.decode_seconds), workers=1) as box:
        square = box.result(box.submit(buffer.getvalue(), data.max_image_pixels, None, 96))
    assert square.shape == (3, 96, 96)
