"""Side-by-side text benchmark: avala-infer's ``Engine`` against ``transformers.pipeline`` on the same model.

Two tasks, each on its shared model and data: text classification (``sentiment-minilm-sst2`` on the 872 SST-2
dev sentences, every class scored) and NER (``ner-minilm-conll03`` on CoNLL-2003 test sentences, tokens joined
with spaces, aggregation ``simple``). Both tools get the same texts, the same device and the same batch size,
in one process; on CUDA the pipeline runs in the precision ours runs in (fp16 unless the spec says fp32).
One untimed warm-up pass per side, then rounds that alternate the pipeline and ours; the median items/s over
rounds is reported for each, with the ratio. A model-only ceiling (our predictor's forward alone on
pre-collated batches, run as the engine runs them) puts our end-to-end figure in context.

    python benchmarks/bench_text.py --rounds 1 --limit 200      # smoke check
    python benchmarks/bench_text.py                             # both tasks, 3 rounds
    python benchmarks/bench_text.py --task ner --onnx           # NER on the ONNX export (ours), pipeline on torch
    python benchmarks/bench_text.py --device cuda               # on a GPU: batch 64, the texts repeated to ~10k

On a GPU both tools get through SST-2's 872 texts in well under a second, where starting and draining the
engine's threads and its batcher's window weigh as much as the work: there the texts are repeated (``--repeat``,
by default to at least ``GPU_TEXTS`` texts) so that a pass measures the rate a long job runs at.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from common import StageTimes, assets_dir, machine_info, progress, stage_report  # noqa: E402  (benchmarks/ is on sys.path)

TASKS = ("classification", "ner")


@dataclasses.dataclass
class Series:
    """The timed runs of one tool."""

    tool: str
    rates: list[float] = dataclasses.field(default_factory=list)
    items: int = 0
    outputs: int = 0  # top labels or entities found, a sanity check that both sides did the same work

    def add(self, rate: float, items: int, outputs: int) -> None:
        self.rates.append(rate)
        self.items, self.outputs = items, outputs

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    def summary(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "median": self.median, "min": min(self.rates), "max": max(self.rates)}


# --------------------------------------------------------------------------------------------- inputs


def read_sst2(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return [line.rsplit("\t", 1)[0] for line in lines if line.strip()]


def read_conll_sentences(path: Path) -> list[str]:
    sentences, words = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("-DOCSTART-"):
            if words:
                sentences.append(" ".join(words))
            words = []
        else:
            words.append(line.split()[0])
    if words:
        sentences.append(" ".join(words))
    return sentences


# --------------------------------------------------------------------------------------------- timed runs


def resolve_device(device: str) -> str:
    """``auto``: CUDA when torch sees a GPU; both tools then get the same canonical name (``cpu`` or ``cuda:N``)."""
    from avala_infer.predictors.base import resolve_device as resolve

    return resolve(device)


# texts a pass runs on a GPU at least, by default (the data sets repeated): a pass of seconds, not milliseconds
GPU_TEXTS = 10_000


def default_repeat(device: str, texts: int) -> int:
    """How many times a pass runs the data set by default: once on a CPU, to ``GPU_TEXTS`` texts on a GPU."""
    return -(-GPU_TEXTS // max(texts, 1)) if device.startswith("cuda") else 1


def default_batch(device: str) -> int:
    """8 on a CPU (the specs' default); on a GPU the engine's CUDA default, which keeps the device busy."""
    from avala_infer.engine.pipeline import CUDA_BATCH_SIZE

    return CUDA_BATCH_SIZE if device.startswith("cuda") else 8


def run_pipeline(pipe: Any, texts: list[str], batch: int, task: str) -> tuple[float, int, int]:
    """(items/s, items, outputs) for one pass of the transformers pipeline over the texts."""
    gc.collect()
    options = {"top_k": None} if task == "classification" else {"aggregation_strategy": "simple"}
    t0 = time.perf_counter()
    results = pipe(texts, batch_size=batch, **options)
    elapsed = time.perf_counter() - t0
    if task == "classification":
        outputs = sum(1 for r in results if r)
    else:
        outputs = sum(len(r) for r in results)
    return len(results) / elapsed, len(results), outputs


def run_ours(
    engine: Any, texts: list[str], task: str, stages: dict[str, float] | None = None
) -> tuple[float, int, int]:
    """(items/s, items, outputs) for one pass of ``Engine.predict_texts`` (all classes; entities unfiltered);
    ``stages``, when given, gets each stage's time summed over the texts and the wall time (ms)."""
    gc.collect()
    items = outputs = 0
    options = {"top_k": None} if task == "classification" else {"aggregation": "simple"}
    totals = StageTimes()
    for prediction in engine.predict_texts(texts, confidence_threshold=0.0, **options):
        if prediction.error:
            raise SystemExit(f"avala-infer failed on {prediction.source}: {prediction.error}")
        items += 1
        outputs += 1 if task == "classification" else len(prediction.result)
        totals.add(prediction)
    elapsed = totals.stop()
    if stages is not None:
        stages.update(totals.totals)
    return items / elapsed, items, outputs


def collate_batches(engine: Any, texts: list[str], batch: int) -> list[tuple[Any, int]]:
    """Every text prepared, grouped by ``batch_key`` and collated: (batch input, items)."""
    import torch

    predictor = engine.predictor
    groups: dict[Any, list[Any]] = {}
    for text in texts:
        prepared = predictor.prepare(text)
        groups.setdefault(predictor.batch_key(prepared), []).append(prepared)
    batches = []
    with torch.inference_mode():
        for group in groups.values():
            for start in range(0, len(group), batch):
                chunk = group[start : start + batch]
                batches.append((predictor.collate(chunk), len(chunk)))
    return batches


def run_forward(engine: Any, batches: list[tuple[Any, int]]) -> tuple[float, int, int]:
    """(items/s, items, 0) for our forward alone over pre-collated batches, with the engine's streams."""
    import torch

    from avala_infer.engine.batching import ConcurrentRunner
    from avala_infer.engine.pipeline import torch_threads

    def forward(batch: Any) -> None:
        with torch.inference_mode():
            engine.predictor.forward(batch)

    gc.collect()
    runner = ConcurrentRunner(forward, engine.streams)
    try:
        with torch_threads(engine.cpu_threads):
            t0 = time.perf_counter()
            for batch, _ in batches:
                runner.submit(batch)
            runner.drain()
            elapsed = time.perf_counter() - t0
    finally:
        runner.close()
    items = sum(n for _, n in batches)
    return items / elapsed, items, 0


# --------------------------------------------------------------------------------------------- the benchmark


def benchmark_task(task: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    from avala_infer import Engine
    from avala_infer.specs import find_spec

    hf_logging.set_verbosity_error()
    assets = assets_dir()
    if task == "classification":
        texts = read_sst2(assets / "data" / "sst2" / "test.tsv")
        spec = find_spec("sentiment-minilm-sst2")
        folder = assets / "models" / "sentiment-minilm-sst2"
        pipe_task = "text-classification"
    else:
        texts = read_conll_sentences(assets / "data" / "conll2003" / "test.txt")
        spec = find_spec("ner-minilm-conll03-onnx" if args.onnx else "ner-minilm-conll03")
        folder = assets / "models" / "ner-minilm-conll03"
        if args.onnx:
            spec = dataclasses.replace(spec, weights=str(folder / "model.onnx"))
        pipe_task = "token-classification"
    texts = texts[: args.limit] if args.limit else texts

    torch_threads = torch.get_num_threads()
    device = resolve_device(args.device)
    repeat = args.repeat or default_repeat(device, len(texts))
    texts = texts * repeat
    batch = args.batch or default_batch(device)
    if args.torch_compile:
        spec = dataclasses.replace(spec, torch_compile=args.torch_compile)
    engine = Engine(spec, device=device, batch_size=batch)
    # the same precision on both sides: ours runs fp16 on CUDA unless the spec says fp32 (an ONNX graph: its own)
    half = device.startswith("cuda") and engine.predictor.fp16
    pipe = pipeline(pipe_task, model=str(folder), device=device, dtype=torch.float16 if half else "auto")
    progress(f"{task}: {len(texts)} texts on {device}, batch {batch}; warm-up (not timed)")
    run_pipeline(pipe, texts, batch, task)
    run_ours(engine, texts, task)
    batches = collate_batches(engine, texts, batch)
    # every batch once, untimed: each new shape's first call pays its kernel choice (on an H200 a warm-up of 4
    # batches left the forward-only figure below our end-to-end one)
    run_forward(engine, batches)

    reference, ours, model = Series("transformers"), Series("avala-infer"), Series("model-only")
    for r in range(1, args.rounds + 1):
        torch.set_num_threads(torch_threads)
        reference.add(*run_pipeline(pipe, texts, batch, task))
        stages: dict[str, float] = {}
        ours.add(*run_ours(engine, texts, task, stages))
        model.add(*run_forward(engine, batches))
        progress(
            f"round {r}/{args.rounds}: pipeline {reference.rates[-1]:.1f}, ours {ours.rates[-1]:.1f}, "
            f"model-only {model.rates[-1]:.1f} items/s"
        )
    return {
        "task": task,
        "model": engine.predictor.describe(),
        "torch_compile": spec.torch_compile,
        "pipeline_model": str(folder),
        "texts": len(texts),
        "repeat": repeat,
        "device": device,
        "pipeline_precision": "fp16" if half else "fp32",
        "batch": batch,
        "pipeline_threads": torch_threads,
        "ours_streams": engine.streams,
        "ours_threads_per_stream": engine.cpu_threads,
        "loader_workers": engine.workers,
        "results": [reference.summary(), ours.summary()],
        "model_only": model.summary(),
        "ours_stages_last_round": stages,
        "ratio": ours.median / reference.median,
    }


# --------------------------------------------------------------------------------------------- report


def report(result: dict[str, Any], write: Callable[[str], None] = print) -> None:
    m = result["machine"]
    write(f"avala-infer text benchmark, {result['date']}")
    write(f"machine: {m['cpu']}, {m['cores']} cores, {m['platform']}" + (f", {m['gpu']}" if m.get("gpu") else ""))
    write(
        f"versions: python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, "
        f"tokenizers {m['tokenizers']}, onnxruntime {m['onnxruntime']}"
    )
    load = result["load_average_1min"]
    write(
        f"load average (1 min): {load['start']:.2f} before, {load['end']:.2f} after (this run adds up to "
        f"{m['cores']}; more means other work shared the CPU and skewed the figures)"
    )
    for task in result["tasks"]:
        write("")
        write(
            f"== {task['task']}: {task['texts']} texts"
            + (f" (the data set {task['repeat']} times)" if task.get("repeat", 1) > 1 else "")
            + f" on {task['device']}, batch {task['batch']}, "
            f"{result['rounds']} round(s)"
        )
        compiled = f", torch.compile {task['torch_compile']}" if task.get("torch_compile") else ""
        write(f"ours: {task['model']}{compiled}; pipeline: {task['pipeline_model']} ({task['pipeline_precision']})")
        write(
            f"torch threads: pipeline {task['pipeline_threads']}; avala-infer {task['ours_streams']} stream(s) x "
            f"{task['ours_threads_per_stream'] or 'default'} thread(s), +{task['loader_workers']} loader threads"
        )
        write(f"{'tool':<13} {'items/s':>10} {'min':>8} {'max':>8}  outputs")
        for s in task["results"]:
            write(f"{s['tool']:<13} {s['median']:>10.2f} {s['min']:>8.2f} {s['max']:>8.2f}  {s['outputs']}")
        model = task["model_only"]
        ours = task["results"][1]
        write(
            f"{'model-only':<13} {model['median']:>10.2f} {model['min']:>8.2f} {model['max']:>8.2f}  "
            f"(our forward alone on pre-collated batches; ours end-to-end = {ours['median'] / model['median']:.0%})"
        )
        ref = task["results"][0]
        if ref["outputs"] != ours["outputs"]:
            write(f"NOTE: outputs differ ({ref['outputs']} pipeline, {ours['outputs']} ours)")
        if task.get("ours_stages_last_round"):
            write(
                "ours, the last round's time per text by stage (busy share of the wall time): "
                + stage_report(task["ours_stages_last_round"], task["texts"])
            )
        write(f"ratio ours/pipeline ({task['task']}): {task['ratio']:.2f}x")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=(*TASKS, "all"), default="all")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per tool (default 3)")
    parser.add_argument("--device", default="auto", help="auto (cuda when torch sees a GPU), cpu, cuda or cuda:N")
    parser.add_argument(
        "--batch", type=int, default=None, help="batch size of both tools (default 8 on a CPU, 64 on a GPU)"
    )
    parser.add_argument("--limit", type=int, default=None, help="use only the first N texts of each data set")
    parser.add_argument(
        "--torch-compile",
        default=None,
        metavar="MODE",
        help="ours with the spec's torch_compile in this mode (reduce-overhead: CUDA graphs on a GPU); the "
        "warm-up pass compiles each length bucket's shape (not timed). For a GPU: on a CPU the rounds switch torch's "
        "thread count between the pipeline and ours, and torch.compile recompiles on every switch",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help=f"run each data set N times a pass (default: once on a CPU, to at least {GPU_TEXTS} texts on a GPU)",
    )
    parser.add_argument("--onnx", action="store_true", help="NER: ours runs the ONNX export (the pipeline, torch)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.rounds < 1 or any(value is not None and value < 1 for value in (args.batch, args.limit, args.repeat)):
        parser.error("--rounds, --batch, --limit and --repeat must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("AVALA_INFER_MODELS", str(assets_dir() / "models"))
    load_before = os.getloadavg()[0]
    tasks = TASKS if args.task == "all" else (args.task,)
    results = [benchmark_task(task, args) for task in tasks]
    result = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info("transformers", "tokenizers", "onnxruntime"),
        "load_average_1min": {"start": load_before, "end": os.getloadavg()[0]},
        "rounds": args.rounds,
        "tasks": results,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
