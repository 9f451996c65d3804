"""Ray executor benchmark: the same model over coco128 through Ray actors (1 and 2 by default) and through the
local engine, side by side (issue 14, point 5).

Each side runs the code a job runs, without the store: the local engine's ``stream`` over the items, and the
Ray executor's ``predictions`` (a Ray dataset of paths, ``map_batches`` over :class:`EngineActor`, predictions
pickled back to the driver). Reported per run: the wall time from the call to the last prediction (Ray: actors
start and load the model inside it; local: the model is loaded before, timed apart as ``load_s``), the time to
the first prediction, the **steady** throughput (items after the first block over the time after it: what a long
job sees), and the ratio of each Ray run's steady throughput to the local engine's. **Ray's overhead per item**
is 1/steady(one actor on 1 CPU) - 1/steady(local engine as that actor: one stream, one torch thread, run in a
child process with ``OMP_NUM_THREADS=1`` as Ray sets it for a 1-CPU actor), in ms: the same engine with and
without Ray, i.e. what moving rows in and pickled predictions out of an actor costs per item. The default runs: one
actor on 1 CPU, two actors on 1 CPU each, one actor on 2 CPUs (``--actors 1x1,2x1,1x2``). Nothing is asserted.

``--memory 2000,20000`` measures instead the driver's memory as a job grows: real jobs of that many short texts
(the MiniLM SST-2 classifier), each run by a job runner with the Ray executor over a real store, and the
driver's peak RSS during each job above its RSS before it (a warm-up job runs first, so imports count in none).
The driver holds a window of rows, not the job's task list (``jobs/executors/ray_feed.py``): the figures should
not grow with the job.

    python benchmarks/bench_ray.py --repeat 1                       # coco128 train2017 once (128 images)
    python benchmarks/bench_ray.py --memory 2000,20000              # the driver's RSS over 2k and 20k tasks
    python benchmarks/bench_ray.py --actors 1x1,2x1 --repeat 4 --json /tmp/ray.json
    python benchmarks/bench_ray.py --address auto --actors 8x1 --device auto --repeat 100   # 8 GPU actors

Without ``--address`` a local cluster starts in this process (``--cpus`` CPUs, 2 by default) and stops at the
end. With it the script joins that cluster (``ray start --head`` there first; the nodes need the model, the
images at the same paths, and avala-infer installed). Timings on a shared machine are noisy: read them side by
side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import assets_dir, machine_info, progress  # noqa: E402


def items_of(folder: Path, repeat: int) -> list[Any]:
    from avala_infer.engine.sources import Item

    images = sorted(folder.glob("*.jpg"))
    return [Item(n, str(path), f"{r}/{path.name}") for n, (r, path) in enumerate(
        (r, path) for r in range(repeat) for path in images)]  # fmt: skip


def timed(predictions, count: int) -> dict[str, float]:
    """Wall to the first and last prediction, and the steady rate after the first arrivals (the first block)."""
    t0 = time.perf_counter()
    first_at, first_count, seen = None, 0, 0
    for _ in predictions:
        seen += 1
        now = time.perf_counter()
        if first_at is None:
            first_at = now
        if now - first_at < 1e-3:  # predictions that came in the same block as the first
            first_count = seen
    end = time.perf_counter()
    assert seen == count, f"{seen} predictions for {count} items"
    steady = (count - first_count) / max(end - first_at, 1e-9) if count > first_count else float("nan")
    return {
        "wall_s": round(end - t0, 3),
        "first_s": round(first_at - t0, 3),
        "items_per_s": round(count / (end - t0), 2),
        "steady_items_per_s": round(steady, 2),
    }


def run_local(model: str, device: str, items: list[Any], **engine_args: Any) -> dict[str, Any]:
    from avala_infer.engine import Engine

    t0 = time.perf_counter()
    with Engine(model, device=device, **engine_args) as engine:
        load = time.perf_counter() - t0
        options = engine.predict_options(confidence_threshold=0.25)
        list(engine.stream(items[: engine.batch_size], options))  # warm-up, untimed
        return {"load_s": round(load, 3), **timed(engine.stream(items, options), len(items))}


def run_local_as_actor(args: argparse.Namespace) -> dict[str, Any]:
    """The local engine configured as a one-CPU actor runs it (one stream, two loader threads, one torch thread:
    Ray sets an actor's ``OMP_NUM_THREADS`` to its CPUs), in a child process: torch's thread count is
    process-wide and set once, so this process could not give it another."""
    command = [sys.executable, __file__, "--as-actor", "--model", args.model, "--repeat", str(args.repeat)]
    command += ["--device", args.device] + (["--images", str(args.images)] if args.images else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def run_ray(executor: Any, model: str, device: str, items: list[Any], actors: int, cpus: int) -> dict[str, Any]:
    executor.concurrency, executor.cpus_per_actor = actors, cpus
    engine = executor.load(model, device)  # the remote describe: the model's spec and labels
    options = engine.predict_options(confidence_threshold=0.25)
    timing = timed(engine.stream(items, options), len(items))
    return {"actors": actors, "cpus_per_actor": cpus, "actor_device": engine.device, **timing}


TEXT_MODEL = "sentiment-minilm-sst2"


def run_memory(sizes: list[int]) -> dict[str, Any]:
    """The driver's peak RSS above its start during real Ray jobs of ``sizes`` text tasks (one local cluster)."""
    import tempfile
    import threading

    import psutil
    import ray

    from avala_infer.jobs import JobRunner
    from avala_infer.jobs.executors.ray import RayExecutor
    from avala_infer.projects.imports import import_sources
    from avala_infer.store import Store, worker_id
    from avala_infer.types import Text

    process = psutil.Process()

    def job(size: int) -> dict[str, Any]:
        home = Path(tempfile.mkdtemp(prefix="bench-ray-memory-"))
        with Store(home) as store:
            project = store.projects.create("texts", data_type="text", models={"text_classification": TEXT_MODEL})
            texts = [Text(f"the film number {n} was {('dull', 'fine', 'superb')[n % 3]}") for n in range(size)]
            import_sources(store, project["uid"], texts)
            uid = store.jobs.create(project["uid"], model_type="text_classification", confidence_threshold=0.0)["uid"]
        before = process.memory_info().rss
        peak, done = [before], threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                peak[0] = max(peak[0], process.memory_info().rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        with Store(home) as store, JobRunner(store, worker_id(), device="cpu", executor=RayExecutor()) as runner:
            finished = runner.run(store.jobs.claim(runner.worker, runner.lease_s, only=uid))
        wall = time.perf_counter() - t0
        done.set()
        sampler.join()
        assert finished["status"] == "completed" and finished["successful_items"] == size, finished
        return {
            "tasks": size,
            "rss_before_mib": round(before / 2**20, 1),
            "peak_rss_above_mib": round((peak[0] - before) / 2**20, 1),
            "wall_s": round(wall, 1),
        }

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 * 2**20, log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    try:
        progress("warm-up job: 50 tasks")
        job(50)
        runs = []
        for size in sizes:
            progress(f"a job of {size} text tasks on 2 one-CPU actors")
            runs.append(job(size))
    finally:
        ray.shutdown()
    print(f"driver memory of Ray jobs of {TEXT_MODEL} over short texts (peak RSS above the RSS before the job)")
    for run in runs:
        print(f"{run['tasks']:>8} tasks: {run['peak_rss_above_mib']:>7} MiB above {run['rss_before_mib']} MiB, "
              f"{run['wall_s']} s")  # fmt: skip
    return {"machine": machine_info("ray"), "model": TEXT_MODEL, "memory": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="yolo11n", help="model name or spec (default: yolo11n, ultralytics)")
    parser.add_argument("--images", type=Path, default=None, help="image folder (default: coco128 train2017)")
    parser.add_argument("--repeat", type=int, default=1, help="times the folder's images are labeled")
    parser.add_argument(
        "--actors",
        default="1x1,2x1,1x2",
        help="Ray runs, comma-separated: ACTORSxCPUS (CPUs per actor); 1x1 against the local engine configured as "
        "that actor is the overhead's measure",
    )
    parser.add_argument("--address", default=None, help="a Ray cluster to join (default: a local one, here)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local cluster (without --address)")
    parser.add_argument("--device", default="cpu", help="the actors' and the local engine's device")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--memory", default=None, help="job sizes (tasks), comma-separated: the driver's RSS instead")
    parser.add_argument("--as-actor", action="store_true", help=argparse.SUPPRESS)  # run_local_as_actor's child
    args = parser.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("AVALA_INFER_MODELS", str(assets_dir() / "models"))
    if args.memory:
        report = run_memory([int(size) for size in args.memory.split(",")])
        if args.json:
            args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
        return
    folder = args.images or assets_dir() / "data" / "coco128" / "images" / "train2017"
    items = items_of(folder, args.repeat)
    if args.as_actor:
        print(json.dumps(run_local(args.model, args.device, items, streams=1, workers=2)))
        return
    import ray

    from avala_infer.jobs.executors.ray import RayExecutor

    report: dict[str, Any] = {"machine": machine_info("ray"), "model": args.model, "items": len(items), "runs": []}
    progress(f"local engine, default streams: {len(items)} items")
    report["local"] = run_local(args.model, args.device, items)
    progress(f"local engine as a one-CPU actor (one stream, one torch thread): {len(items)} items")
    report["local_as_actor"] = run_local_as_actor(args)
    if args.address:
        ray.init(address=args.address)
    else:
        ray.init(num_cpus=args.cpus, include_dashboard=False, object_store_memory=256 * 2**20, log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    executor = RayExecutor()
    try:
        for actors, cpus in (map(int, one.split("x")) for one in args.actors.split(",")):
            progress(f"ray, {actors} actor(s) x {cpus} CPU(s): {len(items)} items")
            run = run_ray(executor, args.model, args.device, items, actors, cpus)
            run["steady_ratio_to_local"] = round(run["steady_items_per_s"] / report["local"]["steady_items_per_s"], 3)
            report["runs"].append(run)
    finally:
        ray.shutdown()
    one = next((r for r in report["runs"] if (r["actors"], r["cpus_per_actor"]) == (1, 1)), None)
    if one is not None and args.device == "cpu":  # one 1-CPU actor against the same engine here
        overhead = 1 / one["steady_items_per_s"] - 1 / report["local_as_actor"]["steady_items_per_s"]
        report["ray_overhead_ms_per_item"] = round(overhead * 1e3, 2)
    print(f"{args.model} on {len(items)} coco128 images, device {args.device}")
    print(f"{'run':<26}{'load/first s':>13}{'wall s':>9}{'items/s':>9}{'steady/s':>10}{'ratio':>7}")
    for name in ("local", "local_as_actor"):
        r = report[name]
        print(
            f"{name:<26}{r['load_s']:>13}{r['wall_s']:>9}{r['items_per_s']:>9}{r['steady_items_per_s']:>10}{'1.0':>7}"
        )
    for r in report["runs"]:
        name = f"ray {r['actors']}x{r['cpus_per_actor']} CPU on {r['actor_device']}"
        print(f"{name:<26}{r['first_s']:>13}{r['wall_s']:>9}{r['items_per_s']:>9}{r['steady_items_per_s']:>10}"
              f"{r['steady_ratio_to_local']:>7}")  # fmt: skip
    if "ray_overhead_ms_per_item" in report:
        print(
            f"Ray overhead per item (one 1-CPU actor vs the same engine here): {report['ray_overhead_ms_per_item']} ms"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
