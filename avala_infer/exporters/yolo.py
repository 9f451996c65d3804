"""YOLO txt: an ultralytics-readable dataset folder.

``yolo/labels/<key>.txt`` (``class cx cy w h`` normalised, one line per box; ``+ score`` with
``save_conf``), ``yolo/images/<key>`` symlinks to the sources (ultralytics finds labels by swapping
``images`` for ``labels`` in an image path), ``classes.txt`` and a ``data.yaml`` naming them, so
``YOLO(...).val(data="yolo/data.yaml")`` and training read it as it is. Instance masks are written as
YOLO-seg lines instead (``class x1 y1 x2 y2 ...``, normalised), one polygon per instance: the mask's largest
outline, as ultralytics keeps one segment per box.

Paths come from item keys through ``base.PathAllocator``: they stay inside ``yolo/`` whatever the key
(``../x.jpg`` -> ``x.jpg``), nested keys keep their sub-folders, and two keys that would share a label file
(``a.jpg`` and ``a.png``) get ``a.txt`` and ``a_1.txt``, their image links ``a.jpg`` and ``a_1.png``.

Each label file is whole or absent (``base.write_text_atomic``: a temporary file and a rename). The writer runs
once per item, so it touches the file system only for what the format needs (the label file, its rename, the
link): folders are made once (``base.Folders``), a source folder's real path is looked up once (a source that is
itself a link costs one ``readlink``), and an item's lines are formatted in one pass from numpy arrays (outlines
through ``codecs.number_text``; an item's masks are traced on ``codecs.mask_pool``'s threads).

On a disk the file system's share dominates: creating the label file, renaming it into place and making the link
took ~0.3-0.5 ms each on ext4 on the shared build VM (tens of µs on tmpfs), where the writer's own work is
~0.1 ms an item. The temporary file and rename stay: they are what keeps a label file whole or absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import yaml

from avala_infer.annotations import Prediction
from avala_infer.exporters.base import Folders, PathAllocator, suffix_of, with_suffix, write_text_atomic
from avala_infer.exporters.codecs import instance_masks
from avala_infer.exporters.codecs.number_text import fixed_texts
from avala_infer.exporters.codecs.polygons import largest

_MAX_LINKS = 40  # links followed from one source before realpath decides (Linux's own limit)


class YoloWriter:
    def __init__(self, out_dir: Path, labels: tuple[str, ...], save_conf: bool = False) -> None:
        self.root = out_dir / "yolo"
        self.labels = labels
        self.save_conf = save_conf
        (self.root / "labels").mkdir(parents=True, exist_ok=True)
        (self.root / "images").mkdir(parents=True, exist_ok=True)
        self._paths = PathAllocator(self.root / "labels")
        self._labels = os.fspath(self.root / "labels")
        self._images = os.fspath(self.root / "images")
        self._folders = Folders()
        self._real_folders: dict[tuple[str, str], str] = {}

    def write(self, prediction: Prediction) -> None:
        if not prediction.ok:
            return
        source = prediction.source
        linked = not source.startswith("<")  # in-memory arrays have no file to link
        image_suffix = (suffix_of(source) or ".jpg") if linked else None
        relative = self._paths.allocate_relative(prediction.key, ".txt", companion=image_suffix)
        folder, _, name = relative.rpartition("/")
        label_path = f"{self._labels}/{relative}"
        if folder:
            self._folders.make(f"{self._labels}/{folder}")
        text = self._lines(prediction) if len(prediction.detections) else ""
        write_text_atomic(label_path, text)  # whole or not at all
        if image_suffix is not None:
            if folder:
                self._folders.make(f"{self._images}/{folder}")
            image_path = f"{self._images}/{folder}/{name}" if folder else f"{self._images}/{name}"
            image_path = with_suffix(image_path, image_suffix)
            target = self._link_target(source)
            try:
                os.symlink(target, image_path)
            except FileExistsError:  # an earlier run's link (or file) by that name: replaced
                os.unlink(image_path)
                os.symlink(target, image_path)

    def _lines(self, prediction: Prediction) -> str:
        """The label file's text: one ``class values...`` line per box (or instance outline), ``\\n``-ended.

        Values are computed in the detections' float32, as the per-box arithmetic was, and printed from the
        same numbers (``%.6f`` of a float32 widened to a double is what ``format(np.float32, ".6f")`` prints)."""
        d, w, h = prediction.detections, prediction.width, prediction.height
        conf = " %.5f" if self.save_conf else ""
        if d.mask is not None:
            scale = np.array([w, h], np.float32)
            kept = []  # (class id, score, normalised float32 outline) per instance with an outline
            polygons = [largest(outer) for outer, _ in instance_masks.outlines(d)]
            for polygon, cid, score in zip(polygons, d.class_id.tolist(), d.confidence.tolist()):
                if polygon is not None:
                    kept.append((cid, score, polygon / scale))
            # "%.6f" of each value, hundreds a line: the item's outlines printed by numpy at once
            texts = fixed_texts([outline for _, _, outline in kept], 6, (" ", " "))
            return "".join(
                f"{cid} {text}" + (conf % score if conf else "") + "\n" for (cid, score, _), text in zip(kept, texts)
            )
        x1, y1, x2, y2 = d.xyxy.T
        table = [d.class_id.astype(np.float64), (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]
        if self.save_conf:
            table.append(d.confidence)
        values = np.column_stack(table).astype(np.float64).ravel().tolist()  # float32 -> double: exact
        return (("%d %.6f %.6f %.6f %.6f" + conf + "\n") * len(d)) % tuple(values)

    def _link_target(self, source: str) -> str:
        """``Path(source).resolve()``: the source's folder resolved once per folder, then its name; a name that is
        a link is followed the same way, its target's folder resolved once per folder too (sources that are links
        into one folder cost one ``readlink`` each, not a walk of every part of the path)."""
        path = source
        for _ in range(_MAX_LINKS):
            folder, _, name = path.rpartition("/")
            key = (os.getcwd() if not path.startswith("/") else "", folder)
            real = self._real_folders.get(key)
            if real is None:
                real = self._real_folders[key] = os.path.realpath(folder or ("/" if path.startswith("/") else "."))
            if name in ("", ".", ".."):
                break
            target = os.path.join(real, name)
            try:
                link = os.readlink(target)
            except OSError:  # not a link, or nothing there: the path as it stands, as realpath leaves it
                return target
            path = os.path.join(real, link)  # where the link points, from its folder (an absolute one replaces it)
        return os.path.realpath(source)  # '.', '..', or links on links past the limit (a loop): realpath decides

    def abort(self) -> None:
        """Nothing is open: the label files written so far stay, ``classes.txt`` and ``data.yaml`` are not
        written."""

    def close(self) -> list[Path]:
        classes = self.root / "classes.txt"
        write_text_atomic(classes, "".join(name + "\n" for name in self.labels))
        data = self.root / "data.yaml"
        names = dict(enumerate(self.labels))
        write_text_atomic(
            data,
            yaml.safe_dump(
                {"path": str(self.root.resolve()), "train": "images", "val": "images", "names": names}, sort_keys=False
            ),
        )
        return [self.root / "labels", classes, data]
