"""Decoding uploads on the GPU (nvImageCodec) against the service's CPU path, side by side in one run.

    python -m benchmarks.gpu_decode --out decode.json      # on a GPU machine with nvidia-nvimgcodec-cu13

The CPU path is the service front's: `load_rgb` + `resize_square` (Pillow) on a pool of one thread a
core. The GPU path decodes the whole batch with nvImageCodec's batched decoder (nvJPEG) and takes
the same centre square with torch's antialiased bilinear resize on the device. Images/s is the batch
over the median of --repeats runs after a warm-up; the pixels of the two paths are compared too.
"""

import argparse
import io
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from nvidia import nvimgcodec

from benchmarks.common import write_photo_folder
from benchmarks.figures import DecodeResult, DecodeRow
from benchmarks.report import capture
from pipeline.data.images import load_rgb, resize_square


def on_cpu(blobs: list[bytes], size: int, pool: ThreadPoolExecutor) -> np.ndarray:
    return np.stack(list(pool.map(lambda blob: resize_square(load_rgb(io.BytesIO(blob), 10**9), size), blobs)))


def on_gpu(blobs: list[bytes], size: int, decoder: nvimgcodec.Decoder) -> torch.Tensor:
    squares = []
    for decoded in decoder.decode(blobs):
        image = torch.as_tensor(decoded, device="cuda").permute(2, 0, 1)  # HWC uint8 on the device
        height, width = image.shape[1:]
        short = min(height, width)
        top, left = (height - short) // 2, (width - short) // 2
        square = image[None, :, top : top + short, left : left + short].float()
        squares.append(F.interpolate(square, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    batch = torch.cat(squares).round().clamp(0, 255).to(torch.uint8)
    torch.cuda.synchronize()
    return batch


def images_per_s(call, count: int, repeats: int) -> float:
    call()  # warm-up: codec start-up, kernels, allocator
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return count / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photo-sizes", default="640,1024")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=96, help="the model's input size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    decoder = nvimgcodec.Decoder()
    rows = []
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        for photo_size in [int(s) for s in args.photo_sizes.split(",")]:
            with tempfile.TemporaryDirectory() as folder:
                write_photo_folder(Path(folder), args.images, 1, photo_size)
                blobs = [path.read_bytes() for path in sorted(Path(folder).glob("*/*.jpg"))]
            cpu = on_cpu(blobs, args.image_size, pool)
            gpu = on_gpu(blobs, args.image_size, decoder).cpu().numpy()
            difference = np.abs(cpu.astype(np.int16) - gpu.astype(np.int16))
            row = DecodeRow(
                photo_px=photo_size,
                images=len(blobs),
                cpu_threads=os.cpu_count(),
                cpu_images_per_s=images_per_s(
                    lambda blobs=blobs: on_cpu(blobs, args.image_size, pool), len(blobs), args.repeats
                ),
                gpu_nvimgcodec_images_per_s=images_per_s(
                    lambda blobs=blobs: on_gpu(blobs, args.image_size, decoder), len(blobs), args.repeats
                ),
                pixel_mean_abs_difference=float(difference.mean()),
                pixel_max_abs_difference=int(difference.max()),
            )
            rows.append(row)
            print(row.model_dump_json(), flush=True)
    if args.out:
        DecodeResult(environment=capture(), rows=rows).write(args.out)


if __name__ == "__main__":
    main()
