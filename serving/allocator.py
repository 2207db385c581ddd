"""glibc allocator tuning for the server's image decodes."""

import contextlib
import ctypes

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def return_freed_images_to_the_system() -> None:
    """glibc keeps a freed buffer of more than its (self-raising) mmap threshold in the freeing
    thread's arena, so decodes on a pool of threads each left their images' memory behind: the
    server's memory grew by a decoded image per thread. A fixed 1 MiB threshold maps every image
    buffer on its own and unmaps it when freed."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 1 << 20)
