"""Issue 13, item 5: every image decodes with cv2 on the loader threads, side by side, to exactly cv2's picture;
a decode during which a codec line was printed, or that gave no picture, is done again alone, so a damaged file
fails (or warns) with its own reason. The device path's JPEGs (torchvision's decode off a GPU) equal cv2's too.
Real asset JPEGs, and files made here: EXIF orientations, grayscale, CMYK, PNG, truncated, damaged and stray-byte
JPEGs."""

from __future__ import annotations

import io
import logging
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from avala_infer.engine import decode as decoding
from avala_infer.engine.decode import (
    decode_jpegs_on,
    decode_quietly,
    decode_with_cv2,
    exif_orientation,
    goes_to_the_device,
    is_plain_jpeg,
    oriented,
)
from avala_infer.engine.loaders import read_image
from avala_infer.engine.sources import Item
from avala_infer.errors import ItemError
from tests.conftest import ASSETS, need

pytestmark = [pytest.mark.assets]

STRAY = re.compile(r"Corrupt JPEG data: \d+ extraneous bytes before marker 0xd9")
CUT_SHORT = "Corrupt JPEG data: premature end of data segment"


def asset_jpegs() -> list[Path]:
    """Every JPEG in the assets: coco128 (train and val) and images/."""
    files = [p for folder in ("data/coco128/images", "images") for p in need(ASSETS / folder).rglob("*.jp*g")]
    assert len(files) >= 250
    return sorted(files)


def raw(path: Path) -> np.ndarray:
    return np.fromfile(path, dtype=np.uint8)


@pytest.fixture(scope="module")
def bus() -> bytes:
    return need(ASSETS / "images" / "ultralytics" / "bus.jpg").read_bytes()


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, bus) -> dict[str, Path]:
    """stray.jpg (8 bytes before the end marker: decodes whole, libjpeg warns), cut.jpg (half the data, then an
    end marker: the bottom is missing), half.jpg (half the file, no end marker)."""
    folder = tmp_path_factory.mktemp("damaged")
    files = {
        "stray": bus[:-2] + b"JUNKJUNK" + bus[-2:],
        "cut": bus[: len(bus) // 2] + b"\xff\xd9",
        "half": bus[: len(bus) // 2],
    }
    for name, data in files.items():
        (folder / f"{name}.jpg").write_bytes(data)
    return {name: folder / f"{name}.jpg" for name in files}


def pil_jpeg(image: np.ndarray, mode: str, **save) -> np.ndarray:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)).convert(mode).save(buffer, "JPEG", **save)
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8).copy()


def bgr_of(chw: torch.Tensor) -> np.ndarray:
    """A device-path picture (RGB CHW tensor) as cv2's BGR HxWx3 array."""
    return cv2.cvtColor(np.ascontiguousarray(chw.permute(1, 2, 0).numpy()), cv2.COLOR_RGB2BGR)


def test_every_asset_jpeg_decodes_to_cv2s_exact_picture_on_both_paths():
    paths = asset_jpegs()
    datas = [raw(path) for path in paths]
    on_device = decode_jpegs_on("cpu", datas)  # the device path's decode, run off a GPU: torchvision's
    for path, data, chw in zip(paths, datas, on_device):
        truth = cv2.imdecode(data, cv2.IMREAD_COLOR)
        ours, messages = decode_quietly(data)
        assert messages == [] and ours.dtype == np.uint8 and ours.flags.c_contiguous, path
        assert ours.shape == truth.shape and np.array_equal(ours, truth), path
        assert is_plain_jpeg(data) and isinstance(chw, torch.Tensor), path
        assert np.array_equal(bgr_of(chw), truth), path


def test_decodes_of_every_format_run_side_by_side(bus, monkeypatch):
    """Two threads are inside cv2.imdecode at once, for JPEGs and PNGs alike: a decode that ran alone (as PNGs
    did before) would leave the other thread waiting at the barrier until it broke."""
    picture = cv2.imdecode(np.frombuffer(bus, np.uint8), cv2.IMREAD_COLOR)
    real = cv2.imdecode
    both_inside = threading.Barrier(2, timeout=20)

    def imdecode_when_both_are_in(data, flags):
        both_inside.wait()
        return real(data, flags)

    for encoded in (np.frombuffer(bus, np.uint8).copy(), cv2.imencode(".png", picture)[1]):
        monkeypatch.setattr(decoding.cv2, "imdecode", imdecode_when_both_are_in)
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(decode_quietly, [encoded, encoded.copy()]))
        monkeypatch.setattr(decoding.cv2, "imdecode", real)
        for image, messages in results:
            assert messages == [] and np.array_equal(image, picture)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_cv2_imread_does(tmp_path, bus, orientation):
    from PIL import Image

    picture = cv2.imdecode(np.frombuffer(bus, np.uint8), cv2.IMREAD_COLOR)[:240, :160]  # not square: turns show
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"turned_{orientation}.jpg"
    pil_jpeg(picture, "RGB", exif=exif.tobytes()).tofile(path)
    data = raw(path)
    truth = cv2.imread(str(path))
    assert truth.shape[:2] == ((160, 240) if orientation >= 5 else (240, 160))
    ours, messages = decode_quietly(data)
    assert messages == [] and np.array_equal(ours, truth)
    [chw] = decode_jpegs_on("cpu", [data])  # torchvision applies the orientation off a GPU
    assert np.array_equal(bgr_of(chw), truth)
    assert np.array_equal(read_image(Item(0, str(path), path.name), {}), truth)
    # the GPU path decodes without orientation (nvJPEG has none) and turns the picture itself
    assert exif_orientation(data) == orientation
    stored = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    upright = oriented(torch.from_numpy(cv2.cvtColor(stored, cv2.COLOR_BGR2RGB)).permute(2, 0, 1), orientation)
    assert np.array_equal(cv2.cvtColor(upright.permute(1, 2, 0).numpy(), cv2.COLOR_RGB2BGR), truth)


def test_a_truncated_jpeg_fails_its_item_naming_the_file(damaged, capfd):
    with pytest.raises(ItemError) as half:
        read_image(Item(0, str(damaged["half"]), "half.jpg"), {})
    assert f"cannot decode {damaged['half']}" in str(half.value) and "corrupt or truncated" in str(half.value)
    # cut.jpg decodes to a picture with a grey bottom half; the warning libjpeg prints is what fails the item
    assert decode_with_cv2(raw(damaged["cut"]))[0] is not None  # cv2 gives a picture too, and a warning
    with pytest.raises(ItemError) as cut:
        read_image(Item(1, str(damaged["cut"]), "cut.jpg"), {})
    assert str(damaged["cut"]) in str(cut.value) and CUT_SHORT in str(cut.value) and "damaged" in str(cut.value)
    assert capfd.readouterr().err == ""


def test_stray_bytes_decode_whole_and_warn_naming_the_file(damaged, capfd, caplog):
    caplog.set_level(logging.WARNING, "avala_infer")
    data = raw(damaged["stray"])
    image = read_image(Item(0, str(damaged["stray"]), "stray.jpg"), {})
    truth, said = decode_with_cv2(data)
    assert np.array_equal(image, truth)
    assert len(said) == 1 and STRAY.fullmatch(said[0]) and decode_quietly(data)[1] == said
    assert capfd.readouterr().err == ""
    [record] = [r for r in caplog.records if "stray.jpg" in r.getMessage()]
    assert record.getMessage() == f"{damaged['stray']}: {said[0]} (decoded anyway; check the file)"


def test_grayscale_and_cmyk_jpegs_give_cv2s_arrays(bus):
    picture = cv2.imdecode(np.frombuffer(bus, np.uint8), cv2.IMREAD_COLOR)
    gray = cv2.imencode(".jpg", cv2.cvtColor(picture, cv2.COLOR_BGR2GRAY))[1]
    cmyk = pil_jpeg(picture, "CMYK")
    assert is_plain_jpeg(gray) and isinstance(decode_jpegs_on("cpu", [gray])[0], torch.Tensor)  # as cv2's
    assert not is_plain_jpeg(cmyk)  # CMYK: torchvision's conversion is off by one level here and there: CPU path
    for data in (gray, pil_jpeg(picture, "L"), cmyk):
        image, messages = decode_quietly(data)
        truth = cv2.imdecode(data, cv2.IMREAD_COLOR)
        assert messages == [] and image.shape == truth.shape == picture.shape and np.array_equal(image, truth)


def test_other_formats_and_codings_give_cv2s_answer(bus, tmp_path):
    picture = cv2.imdecode(np.frombuffer(bus, np.uint8), cv2.IMREAD_COLOR)
    png = cv2.imencode(".png", picture)[1]
    assert not is_plain_jpeg(png)
    image, messages = decode_quietly(png)
    assert messages == [] and np.array_equal(image, picture)
    progressive = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1]
    assert is_plain_jpeg(progressive)
    ours, messages = decode_quietly(progressive)
    assert messages == [] and np.array_equal(ours, cv2.imdecode(progressive, cv2.IMREAD_COLOR))
    assert np.array_equal(bgr_of(decode_jpegs_on("cpu", [progressive])[0]), ours)
    # the frame header of bus.jpg, rewritten: 12-bit samples, lossless (C3) and arithmetic (C9) coding
    data = np.frombuffer(bus, np.uint8).copy()
    at = next(i for i in range(2, len(bus) - 1) if bus[i] == 0xFF and bus[i + 1] in (0xC0, 0xC1, 0xC2))
    assert is_plain_jpeg(data)
    for offset, value in ((4, 12), (1, 0xC3), (1, 0xC9)):
        changed = data.copy()
        changed[at + offset] = value
        assert not is_plain_jpeg(changed), (offset, value)
        ours, truth = decode_quietly(changed), decode_with_cv2(changed)
        assert type(ours[0]) is type(truth[0]) and ours[1] == truth[1]


def test_parallel_decodes_match_and_warnings_stay_with_their_file(damaged, capfd):
    """Many threads at once, good files mixed with damaged ones: every picture equals cv2's, and every codec
    message belongs to the file that caused it (a warning printed during one thread's decode must not land on
    another's item)."""
    files = asset_jpegs()[:48] + [damaged["stray"], damaged["cut"], damaged["half"]] * 4
    truth = {path: decode_with_cv2(raw(path)) for path in set(files)}
    png = need(ASSETS / "images" / "skimage" / "astronaut.png")
    files += [png] * 4
    truth[png] = decode_with_cv2(raw(png))
    order = [files[i] for i in np.random.default_rng(0).permutation(len(files))] * 2
    start = threading.Barrier(8)

    def decode(path: Path) -> tuple[np.ndarray | None, list[str]]:
        if threading.current_thread().name not in started:
            started.add(threading.current_thread().name)
            start.wait(timeout=60)
        return decode_quietly(raw(path))

    started: set[str] = set()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(decode, order))
    for path, (image, messages) in zip(order, results):
        expected, said = truth[path]
        assert messages == said, path
        assert (image is None and expected is None) or np.array_equal(image, expected), path
    assert capfd.readouterr().err == ""


def test_other_output_on_stderr_during_decodes_is_passed_on(capfd):
    files = asset_jpegs()[:24]
    with ThreadPoolExecutor(4) as pool:
        running = pool.map(lambda path: decode_quietly(raw(path)), files * 2)
        for i in range(20):
            os.write(2, f"line {i} from elsewhere\n".encode())
        assert all(image is not None for image, _ in running)
    passed_on = capfd.readouterr().err.splitlines()
    assert sorted(passed_on) == sorted(f"line {i} from elsewhere" for i in range(20))  # each once, none held back


def test_decoding_on_a_device_gives_chw_rgb_or_the_failure(damaged, tmp_path):
    """The GPU building block, run on the CPU here: one call for a list; each item a (3, H, W) RGB uint8 tensor
    equal to cv2's picture, or the exception that sends it to the CPU path."""
    good = asset_jpegs()[:6]
    png = need(ASSETS / "images" / "skimage" / "astronaut.png")
    inputs = [raw(p) for p in good] + [raw(png), raw(damaged["cut"]), raw(damaged["half"])]
    results = decode_jpegs_on("cpu", inputs)
    assert len(results) == len(inputs)
    for data, result in zip(inputs[:6], results[:6]):
        assert isinstance(result, torch.Tensor) and result.dtype == torch.uint8 and result.shape[0] == 3
        assert np.array_equal(bgr_of(result), cv2.imdecode(data, cv2.IMREAD_COLOR))
    assert all(isinstance(result, Exception) for result in results[6:])


def test_a_jpeg_that_does_not_end_with_its_end_marker_is_left_to_cv2(damaged, bus):
    """nvJPEG was seen filling in a file cut short, so only JPEGs that end with their end marker go to the device;
    cv2 names one without it as truncated (and reads one with data after the marker, as before)."""
    assert goes_to_the_device(bus) and goes_to_the_device(raw(damaged["cut"]))
    assert is_plain_jpeg(raw(damaged["half"])) and not goes_to_the_device(raw(damaged["half"]))
    assert not goes_to_the_device(bus + b"trailing bytes a camera appended")
    with pytest.raises(ItemError, match="corrupt or truncated"):
        read_image(Item(0, str(damaged["half"]), "half.jpg"), {}, keep_jpeg=True)


def test_files_are_read_whole_into_writeable_arrays(tmp_path):
    from avala_infer.engine.loaders import read_file

    for path in asset_jpegs()[:8]:
        data = read_file(str(path))
        assert data.dtype == np.uint8 and data.flags.writeable and data.tobytes() == path.read_bytes()
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert read_file(str(tmp_path / "empty.jpg")).size == 0
    proc = Path("/proc/self/mounts")  # a size of 0 on disk, text when read: read to the end
    if proc.exists():
        assert os.stat(proc).st_size == 0 and read_file(str(proc)).size > 0
    with pytest.raises(IsADirectoryError):
        read_file(str(tmp_path))
