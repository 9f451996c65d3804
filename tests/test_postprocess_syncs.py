"""Issue 13, item 2: YOLO postprocess reads the device a fixed number of times per batch, however many images the
batch holds: the candidates' count per image (to drive the per-image NMS), the batch's boxes, scores and classes
in one copy, and for segmentation the masks in one copy per ``MASK_COPY_BUDGET`` bytes (one for a batch of photos).

The reads are counted on the CPU, where they cost nothing, by a ``TorchFunctionMode`` that sees every tensor method
called inside ``postprocess``. On a GPU each read waits for the device and copies; a read per image (what
postprocess did before: boxes and masks image by image) stalls the GPU once per image. Counted as reads:
``.cpu()``, ``.tolist()``, ``.item()``, ``.to(<cpu>)``, ``np.asarray(tensor)``, and ``bool()`` / ``int()`` /
``float()`` / ``index()`` of a tensor (``.numpy()`` is not one: it only works on a tensor already on the host).
Also counted: ops whose output size depends on the data (``nonzero``, boolean-mask indexing), which wait for a GPU
too, and torchvision's ``nms``, one per image with candidates by design (see ``batched_nms``).
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from avala_infer.predictors.detection import yolo_seg
from avala_infer.predictors.detection.yolo import batched_nms, mask_bounds
from tests.conftest import ASSETS, need
from tests.test_batch_independence import BATCH_SET, TRAIN_IMAGES

pytestmark = [pytest.mark.slow, pytest.mark.assets]

HOST_READS = frozenset({"cpu", "tolist", "item", "__array__", "__bool__", "__int__", "__float__", "__index__"})
SIZE_FROM_DATA = frozenset({"nonzero", "argwhere", "masked_select", "unique"})
# per batch: the candidates' count per image, then the rows; a segmentation batch within budget adds its masks
READS_PER_BATCH = {"yolo11n.pt": 2, "yolo11n-seg.pt": 3, "yolo11n-seg.onnx": 3}


class DeviceReads(TorchFunctionMode):
    """Counts, by name, the host reads and size-from-data ops called while it is active (outermost calls only:
    torch runs a handler's own calls with the mode off)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: collections.Counter[str] = collections.Counter()
        self.size_from_data: collections.Counter[str] = collections.Counter()
        self.nms = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in HOST_READS or (name == "to" and _to_host(args[1:], kwargs)):
            self.reads[name] += 1
        elif name in SIZE_FROM_DATA or (name == "__getitem__" and _bool_index(args[1])):
            self.size_from_data[name] += 1
        elif name == "nms":
            self.nms += 1
        return func(*args, **kwargs)


def _to_host(args: tuple, kwargs: dict) -> bool:
    """Whether ``Tensor.to(*args, **kwargs)`` names the CPU as its device."""
    targets = [*args, kwargs.get("device")]
    return any(isinstance(t, (str, torch.device)) and torch.device(t).type == "cpu" for t in targets)


def _bool_index(index: Any) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)


def test_the_counter_sees_each_kind_of_host_read_and_nothing_else():
    t = torch.arange(6.0).view(2, 3)
    with DeviceReads() as counter:
        t.cpu(), t.tolist(), t.sum().item(), bool(t.any()), int(t[0, 1]), float(t[0, 0]), np.asarray(t)
        t.to("cpu"), t.to(torch.device("cpu")), t.to(device="cpu")
        t.to(torch.uint8), t + 1, t.split([1, 1]), t.numpy(), t[t > 2], torch.nonzero(t)
    assert counter.reads == {"cpu": 1, "tolist": 1, "item": 1, "__bool__": 1, "__int__": 1, "__float__": 1,
                             "__array__": 1, "to": 3}  # fmt: skip
    assert counter.size_from_data == {"__getitem__": 1, "nonzero": 1}


def test_copy_groups_keep_the_order_and_the_budget():
    assert yolo_seg.copy_groups([5, 5, 5, 20, 1, 0], budget=10) == [range(0, 2), range(2, 3), range(3, 4), range(4, 6)]
    # an image without detections never starts a copy of its own
    assert yolo_seg.copy_groups([0, 20, 0, 20, 0], budget=10) == [range(0, 3), range(3, 5)]
    assert yolo_seg.copy_groups([3, 3, 3], budget=100) == [range(0, 3)]
    assert yolo_seg.copy_groups([], budget=10) == []


def letterboxed_batch(predictor: Any) -> list[Any]:
    """The 8 images of one 480x640 bucket from test_batch_independence, with an empty grey picture of their size
    in the middle (no detections: its zero rows sit between other images' rows), prepared by ``predictor``."""
    from avala_infer.engine.loaders import read_image
    from avala_infer.engine.sources import iter_items

    sources: list[Any] = [str(need(TRAIN_IMAGES / name)) for name in BATCH_SET]
    sources.insert(4, np.full((480, 640, 3), 114, np.uint8))
    prepared = [predictor.prepare(read_image(item, {})) for item in iter_items(sources)]
    assert len({predictor.batch_key(p) for p in prepared}) == 1, "the batch must be one bucket"
    return prepared


@pytest.fixture(scope="module", params=sorted(READS_PER_BATCH))
def model_batch(request):
    """(weights name, predictor, ``letterboxed_batch``, raw outputs of the real model on the CPU)."""
    from avala_infer import Engine

    # at 640 (the -seg .pt was trained at 320, which it would run at by itself)
    engine = Engine(need(ASSETS / "models" / request.param), device="cpu", trust_weights=True, input_size=640)
    predictor = engine.predictor
    prepared = letterboxed_batch(predictor)
    with torch.inference_mode():
        raw = predictor.forward(predictor.collate(prepared))
    return request.param, predictor, prepared, raw


def _image(raw: Any, i: int) -> Any:
    """Image ``i``'s raw outputs alone, as a batch of one."""
    return tuple(r[i : i + 1] for r in raw) if isinstance(raw, tuple) else raw[i : i + 1]


@pytest.mark.parametrize("images", [1, 9])
def test_postprocess_reads_the_device_a_fixed_number_of_times_per_batch(model_batch, images):
    weights, predictor, prepared, raw = model_batch
    if images == 1:
        prepared, raw = prepared[:1], _image(raw, 0)
    with torch.inference_mode(), DeviceReads() as counter:
        results = predictor.postprocess(raw, prepared)
    assert len(results) == images
    pictures = [r for i, r in enumerate(results) if i != 4]  # all but the grey one
    assert all(len(r) for r in pictures), [len(r) for r in results]  # busy pictures: every one has detections
    if images == 9:
        empty = results[4]
        assert len(empty) == 0
        assert (empty.mask is None) if "seg" not in weights else (empty.mask.shape == (0, 480, 640))
    assert sum(counter.reads.values()) == READS_PER_BATCH[weights], dict(counter.reads)
    assert counter.size_from_data == {"nonzero": 1}, dict(counter.size_from_data)
    assert counter.nms == sum(len(r) > 0 for r in results)  # per image, by design; none for the empty picture


@pytest.mark.parametrize("model_batch", ["yolo11n-seg.pt"], indirect=True)
def test_masks_split_over_several_copies_are_the_same(model_batch, monkeypatch):
    """A budget below the batch's masks makes several copies (one more read each); every array is the same."""
    _, predictor, prepared, raw = model_batch
    with torch.inference_mode():
        whole = predictor.postprocess(raw, prepared)
        _, counts = batched_nms(raw[0], 0.25, 0.7, len(predictor.labels), 300)  # postprocess' defaults
        sizes = [n * (p.orig_shape[0] * p.orig_shape[1] + 1) for n, p in zip(counts, prepared)]
        monkeypatch.setattr(yolo_seg, "MASK_COPY_BUDGET", min(s for s in sizes if s))  # about an image a copy
        groups = len(yolo_seg.copy_groups(sizes, yolo_seg.MASK_COPY_BUDGET))
        assert groups >= len(prepared) // 2, sizes
        with DeviceReads() as counter:
            split = predictor.postprocess(raw, prepared)
    assert sum(counter.reads.values()) == 2 + groups, dict(counter.reads)
    for a, b in zip(whole, split, strict=True):
        for field in ("xyxy", "confidence", "class_id", "class_name", "mask"):
            assert np.array_equal(getattr(a, field), getattr(b, field)), field


class Kernels(TorchDispatchMode):
    """Counts the ATen calls that compute (views left out): on a GPU, each is a kernel launched from the thread
    that runs postprocess."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += not func.is_view
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("model_batch", ["yolo11n-seg.pt"], indirect=True)
def test_a_batch_makes_its_masks_in_far_fewer_calls_than_its_images_one_at_a_time(model_batch):
    """The batch's instances are upsampled, binarised and cut to their boxes together, and resized to their image
    size a run of same-sized images at a time: each gets its masks bit for bit as alone, in a third of the calls
    (50 against 153 for these 9 images, measured; ~20 an image before, whole batch or not)."""
    _, predictor, prepared, raw = model_batch
    in_shape, shapes = prepared[0].image.shape[:2], [p.orig_shape for p in prepared]
    with torch.inference_mode():
        rows, counts = batched_nms(raw[0], 0.25, 0.7, len(predictor.labels), 300)
        with Kernels() as batch:
            together = yolo_seg.masks_on_host(raw[1], rows, counts, in_shape, shapes)
        alone, calls, start = [], 0, 0
        for i, n in enumerate(counts):
            with Kernels() as one:
                alone += yolo_seg.masks_on_host(
                    raw[1][i : i + 1], rows[start : start + n], [n], in_shape, shapes[i : i + 1]
                )
            calls, start = calls + one.calls, start + n
    assert sum(counts) > 40 and len(set(shapes)) > 1  # a busy batch, of images of several sizes
    for (masks, flags), (masks_alone, flags_alone) in zip(together, alone, strict=True):
        assert np.array_equal(masks, masks_alone) and np.array_equal(flags, flags_alone)
    assert batch.calls * 2 <= calls, (batch.calls, calls)


def masks_both_ways(protos, rows, counts, in_shape, shapes):
    """``masks_on_host`` copying each mask whole (a CPU's way) and only its bounds' pixels (a GPU's), counting the
    second's reads."""
    bounds = mask_bounds(rows[:, :4].cpu().numpy(), in_shape, shapes, counts)
    whole = yolo_seg.masks_on_host(protos, rows, counts, in_shape, shapes, bounds, crops=False)
    with DeviceReads() as counter:
        cropped = yolo_seg.masks_on_host(protos, rows, counts, in_shape, shapes, bounds, crops=True)
    return whole, cropped, bounds, counter


def assert_same_masks(whole, cropped):
    for (masks, flags), (masks_cropped, flags_cropped) in zip(whole, cropped, strict=True):
        assert masks.shape == masks_cropped.shape and np.array_equal(masks, masks_cropped)
        assert np.array_equal(flags, flags_cropped)
        assert masks_cropped.flags.owndata  # each image's own arrays


@pytest.mark.parametrize("model_batch", ["yolo11n-seg.pt"], indirect=True)
@pytest.mark.parametrize("budget", ["whole batch", "an image a copy"])
def test_masks_copied_as_the_pixels_inside_their_bounds_are_the_whole_masks(model_batch, budget, monkeypatch):
    """A GPU copies only each mask's bounds (a fraction of its image) and puts them back into zeros: the same
    masks and flags as the whole copy, in one read per copy group, here on the CPU's tensors."""
    _, predictor, prepared, raw = model_batch
    in_shape, shapes = prepared[0].image.shape[:2], [p.orig_shape for p in prepared]
    with torch.inference_mode():
        rows, counts = batched_nms(raw[0], 0.25, 0.7, len(predictor.labels), 300)
        sizes = [n * (h * w + 1) for n, (h, w) in zip(counts, shapes)]
        if budget != "whole batch":
            monkeypatch.setattr(yolo_seg, "MASK_COPY_BUDGET", min(s for s in sizes if s))
        whole, cropped, bounds, counter = masks_both_ways(raw[1], rows, counts, in_shape, shapes)
    assert_same_masks(whole, cropped)
    groups = len(yolo_seg.copy_groups(sizes, yolo_seg.MASK_COPY_BUDGET))
    assert sum(counter.reads.values()) == groups, dict(counter.reads)
    inside = ((bounds[:, 2] - bounds[:, 0]) * (bounds[:, 3] - bounds[:, 1])).sum()
    assert inside < 0.5 * sum(n * h * w for n, (h, w) in zip(counts, shapes))  # what the copy saves, here


@pytest.mark.parametrize(
    "orig_shape, in_shape",
    [((999, 1333), (480, 640)), ((100, 37), (640, 640)), ((480, 640), (480, 640)), ((1333, 999), (640, 480))],
)
def test_cropped_copies_hold_synthetic_masks_of_any_scale_and_an_empty_one(orig_shape, in_shape):
    """Down- and upscaled images (a content pixel over many output pixels), boxes over the whole input and one
    with no width (an empty mask, its bounds a sliver), and an image without instances between two with."""
    from tests.test_mask_memory import synthetic_instances

    protos, coefficients, boxes = synthetic_instances(23, in_shape, orig_shape, seed=5)
    rows = torch.cat((boxes, torch.zeros((23, 2)), coefficients), 1)
    counts = [15, 0, 8]
    batch_protos = torch.stack((protos, protos, protos.flip(-1)))
    whole, cropped, _, _ = masks_both_ways(batch_protos, rows, counts, in_shape, [orig_shape] * 3)
    assert not whole[0][1][1] and whole[1][0].shape == (0, *orig_shape)  # row 1 has no width: flagged empty
    assert sum(masks.any((1, 2)).sum() for masks, _ in whole) >= 20
    assert_same_masks(whole, cropped)
