"""Label Studio's brush RLE: how a ``brushlabels`` result stores a mask.

Label Studio packs the mask as an RGBA image flattened row-major (``H * W * 4`` bytes, 255 on the mask in
every channel, 0 elsewhere) with the thi.ng ``rle-pack`` bit format: a 32-bit value count, the word size
minus one in 5 bits (8 here), four run-length field widths minus one in 4 bits each (3, 4, 8, 16), then per
run a 1 bit, a 2-bit index into the widths, the run length minus one in that width and the 8-bit value.
Bits are packed most significant first and the last byte is zero-padded. Every run of a mask is a multiple of 4
long (4 channels per pixel), so literal (non-run) groups never occur; runs longer than 65,536 are split.
"""

from __future__ import annotations

import numpy as np

_RUN_BITS = np.array([3, 4, 8, 16])


def encode(mask: np.ndarray) -> list[int]:
    """A bool ``(H, W)`` mask as Label Studio brush RLE bytes (a list of ints, as its JSON holds them)."""
    flat = np.asarray(mask, dtype=bool).reshape(-1)
    total = flat.size * 4
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], changes)) if flat.size else np.zeros(0, np.int64)
    lengths = np.diff(np.concatenate((starts, [flat.size]))) * 4
    values = np.where(flat[starts], 255, 0) if flat.size else np.zeros(0, np.int64)
    # split runs over 65,536 values into full chunks plus a remainder
    chunks = np.maximum(1, -(-lengths // 65536))
    run_values = np.repeat(values, chunks)
    run_lengths = np.full(int(chunks.sum()), 65536, dtype=np.int64)
    last = np.cumsum(chunks) - 1
    run_lengths[last] = lengths - (chunks - 1) * 65536
    size_index = np.searchsorted(2**_RUN_BITS, run_lengths)  # smallest width whose range holds length
    header_values = [total, 7, 2, 3, 7, 15]
    header_widths = [32, 5, 4, 4, 4, 4]
    n = len(run_lengths)
    field_values = np.empty(4 * n, dtype=np.int64)
    field_widths = np.empty(4 * n, dtype=np.int64)
    field_values[0::4], field_widths[0::4] = 1, 1
    field_values[1::4], field_widths[1::4] = size_index, 2
    field_values[2::4], field_widths[2::4] = run_lengths - 1, _RUN_BITS[size_index]
    field_values[3::4], field_widths[3::4] = run_values, 8
    field_values = np.concatenate((header_values, field_values))
    field_widths = np.concatenate((header_widths, field_widths))
    # expand every field to its bits, most significant first
    field_of_bit = np.repeat(np.arange(len(field_widths)), field_widths)
    ends = np.cumsum(field_widths)
    shift = ends[field_of_bit] - 1 - np.arange(int(ends[-1]))
    bits = ((field_values[field_of_bit] >> shift) & 1).astype(np.uint8)
    return np.packbits(bits).tolist()
