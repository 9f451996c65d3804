"""The JPEG marker-segment walk (engine/image_header.py) that the image size, decode.is_plain_jpeg and
decode.exif_orientation all read: it agrees with cv2 on real files, and truncated or garbage segment streams end
the walk (no exception, no endless loop, no size read out of a cut-short frame header)."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from avala_infer.engine.decode import exif_orientation, is_plain_jpeg
from avala_infer.engine.image_header import image_size, jpeg_segments
from tests.conftest import ASSETS, VAL_IMAGES, need


def segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def frame(height: int, width: int, components: int = 3, marker: int = 0xC0) -> bytes:
    return segment(marker, struct.pack(">BHHB", 8, height, width, components) + b"\x11\x00\x00" * components)


APP0 = segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
SOI, EOI = b"\xff\xd8", b"\xff\xd9"
SOS = segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")


@pytest.mark.assets
def test_sizes_and_frames_agree_with_cv2_on_every_val_image():
    for path in sorted(need(VAL_IMAGES).glob("*.jpg")):
        data = np.fromfile(path, np.uint8)
        stored = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        assert image_size(data) == (stored.shape[1], stored.shape[0]), path
        markers = [marker for marker, _ in jpeg_segments(data)]
        assert markers[-1] == 0xDA and any(m in (0xC0, 0xC2) for m in markers), path  # ends at the first scan
        assert is_plain_jpeg(data), path


@pytest.mark.assets
def test_every_cut_of_a_real_header_ends_the_walk_without_a_size_read_from_missing_bytes():
    data = need(ASSETS / "images" / "ultralytics" / "bus.jpg").read_bytes()
    walk = list(jpeg_segments(data))
    sof = next(i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xC0)
    sos = next(i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xDA)
    size = image_size(data)
    assert size == (810, 1080) and walk[-1][0] == 0xDA
    for cut in range(sos + 12):  # every prefix of the header, one byte at a time
        prefix = data[:cut]
        whole_frame = cut >= sof + 9  # marker, length, precision, height, width read in full
        assert image_size(prefix) == (size if whole_frame else None), cut
        assert is_plain_jpeg(prefix) == (cut >= sof + 10), cut  # the component count too
        assert exif_orientation(prefix) == 1
        seen = list(jpeg_segments(prefix))
        assert [m for m, _ in seen] == [m for m, _ in walk[: len(seen)]], cut  # a prefix of the whole walk


def test_garbage_where_a_marker_should_be_ends_the_walk():
    body = APP0 + frame(480, 640)
    assert image_size(SOI + body + SOS) == (640, 480)
    assert image_size(SOI + APP0 + b"\x00" + frame(480, 640)) is None  # a stray byte before the frame
    assert image_size(SOI + b"garbage!" * 8) is None
    assert image_size(b"\xff\xd9" + body) is None  # no SOI: not a JPEG
    assert not is_plain_jpeg(SOI + APP0 + b"\x00" + frame(480, 640))
    rng = np.random.default_rng(0)
    for _ in range(200):  # random bytes after SOI: the walk stops, whatever they say
        noise = rng.integers(0, 256, int(rng.integers(0, 400)), dtype=np.uint8).tobytes()
        data = SOI + noise
        assert len(list(jpeg_segments(data))) <= len(noise) // 2 + 1
        size = image_size(data)
        assert size is None or (isinstance(size, tuple) and len(size) == 2)
        assert 1 <= exif_orientation(data) <= 8


def test_lengths_under_two_end_the_walk_and_fill_bytes_and_restart_markers_are_stepped_over():
    for bad_length in (b"\x00\x00", b"\x00\x01"):
        assert image_size(SOI + b"\xff\xe0" + bad_length + frame(480, 640)) is None
    assert image_size(SOI + b"\xff\xff\xff" + frame(480, 640)) == (640, 480)  # fill bytes before a marker
    assert image_size(SOI + b"\xff\xd0\xff\x01" + APP0 + frame(7, 5)) == (5, 7)  # RST0 and TEM have no length
    walk = list(jpeg_segments(SOI + APP0 + EOI + frame(7, 5)))
    assert [(m, bytes(p)) for m, p in walk] == [(0xE0, APP0[4:]), (0xD9, b"")]  # EOI ends it, empty payload
    assert image_size(SOI + APP0 + SOS + frame(7, 5)) is None  # the scan starts before any frame header


def test_frames_and_exif_are_read_from_the_walk():
    assert is_plain_jpeg(SOI + APP0 + frame(8, 8, components=1))
    assert is_plain_jpeg(SOI + frame(8, 8, marker=0xC2))  # progressive
    assert not is_plain_jpeg(SOI + frame(8, 8, components=4))  # CMYK
    assert not is_plain_jpeg(SOI + frame(8, 8, marker=0xC3))  # lossless
    adobe_rgb = segment(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x00")  # transform flag 0: stored as RGB
    assert not is_plain_jpeg(SOI + adobe_rgb + frame(8, 8))
    assert is_plain_jpeg(SOI + segment(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x01") + frame(8, 8))
    tiff = b"MM\x00\x2a\x00\x00\x00\x08" + b"\x00\x01" + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0)
    exif = segment(0xE1, b"Exif\x00\x00" + tiff)
    assert exif_orientation(SOI + APP0 + exif + frame(8, 8)) == 6
    assert exif_orientation(SOI + APP0 + SOS + exif) == 1  # after the scan starts: not read
    assert exif_orientation(SOI + APP0 + exif[:-4]) in range(1, 9)  # cut inside the TIFF entry: no exception
