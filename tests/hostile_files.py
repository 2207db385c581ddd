"""Image files that pass every per-format check (declared size, format) and still cost a decoder far more
than their size says: issue 28's rows 1, 2 and 5, built at a size a test chooses.

    python -m tests.hostile_files /tmp/hostile   # the three at about the issue's sizes (its JPEG: 1,000 scans
                                                 # of a costlier scan than the issue's 10,000)
"""

import io
import struct
import sys
import zlib
from pathlib import Path

from PIL import Image

MiB = 2**20


def zeros_deflated(size: int) -> bytes:
    """`size` zero bytes as one zlib stream, compressed a MiB at a time so that nothing of `size` is held."""
    packer, block = zlib.compressobj(9), bytes(MiB)
    parts = [packer.compress(block[: min(MiB, size - start)]) for start in range(0, size, MiB)]
    return b"".join(parts) + packer.flush()


def tiff_with_a_huge_tile(tile_side: int) -> bytes:
    """A greyscale TIFF declared 16x16 whose one deflate tile is tile_side² pixels: libtiff allocates the
    whole tile (tile_side² bytes) to decode 256 pixels."""
    data = zeros_deflated(tile_side * tile_side)
    tags = [  # (tag, type: 3 SHORT / 4 LONG, value), in tag order
        (256, 4, 16),  # ImageWidth
        (257, 4, 16),  # ImageLength
        (258, 3, 8),  # BitsPerSample
        (259, 3, 8),  # Compression: deflate
        (262, 3, 1),  # PhotometricInterpretation: black is zero
        (277, 3, 1),  # SamplesPerPixel
        (284, 3, 1),  # PlanarConfiguration: contiguous
        (322, 4, tile_side),  # TileWidth
        (323, 4, tile_side),  # TileLength
        (324, 4, 0),  # TileOffsets: filled in below
        (325, 4, len(data)),  # TileByteCounts
    ]
    directory_size = 2 + 12 * len(tags) + 4
    data_offset = 8 + directory_size
    entries = b"".join(
        struct.pack("<HHI", tag, kind, 1)
        + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", data_offset if tag == 324 else value))
        for tag, kind, value in tags
    )
    return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(tags)) + entries + b"\x00" * 4 + data


def jpeg_markers(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each segment of a JPEG from SOI to EOI, a scan's entropy-coded data included in its SOS."""
    segments, at = [(0, 2)], 2
    while at < len(data):
        marker = data[at + 1]
        if marker == 0xD9:  # EOI
            segments.append((at, at + 2))
            break
        end = at + 2 + struct.unpack(">H", data[at + 2 : at + 4])[0]
        if marker == 0xDA:  # SOS: the entropy-coded data runs to the next marker that is not a stuffed 0xFF00
            while not (data[end] == 0xFF and data[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
        segments.append((at, end))
        at = end
    return segments


def jpeg_with_repeated_scans(side: int, repeats: int) -> bytes:
    """A side² greyscale progressive JPEG whose last AC scan is repeated `repeats` times: each repeat
    costs a pass over every block of the image, for a few bytes of file."""
    buffer = io.BytesIO()  # flat grey: every AC scan is a few bytes of end-of-band runs
    Image.new("L", (side, side), 128).save(buffer, format="JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    segments = jpeg_markers(data)
    scans = [(start, end) for start, end in segments if data[start + 1] == 0xDA]
    last_start, last_end = scans[-1]
    eoi = segments[-1][0]
    return data[:last_end] + data[last_start:last_end] * repeats + data[eoi:]


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_with_many_profiles(count: int) -> bytes:
    """An 8x8 PNG carrying `count` iCCP chunks, each inflating to 1 MB: Pillow inflates every one."""
    pixels = zlib.compress(b"".join(b"\x00" + bytes(8) for _ in range(8)))
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0))
    profile = png_chunk(b"iCCP", b"icc\x00\x00" + zeros_deflated(MiB - 1))
    return b"\x89PNG\r\n\x1a\n" + header + profile * count + png_chunk(b"IDAT", pixels) + png_chunk(b"IEND", b"")


def main() -> None:
    folder = Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "huge_tile.tif").write_bytes(tiff_with_a_huge_tile(32768))
    (folder / "repeated_scans.jpg").write_bytes(jpeg_with_repeated_scans(6320, 1_000))
    (folder / "many_profiles.png").write_bytes(png_with_many_profiles(9013))


if __name__ == "__main__":
    main()
