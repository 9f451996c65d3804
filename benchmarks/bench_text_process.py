"""Whole-process text benchmark: ``avala-infer label`` against a fresh Python process running the transformers
pipeline, as a user meets them from a shell, each tool at its own defaults.

- **ours**: ``avala-infer label TEXTS.txt --per-line --model MODEL --out TMP`` (JSONL out; the CLI's defaults:
  device, batch size, streams; NER with ``--aggregation simple`` and ``--confidence 0``, as the pipeline groups and
  keeps entities; classification at the CLI's defaults, the top classes above 0.25).
- **transformers**: ``python -c "from transformers import pipeline; ..."`` over the same lines: ``pipeline(task,
  model=FOLDER)`` at its defaults (batch 1; NER with ``aggregation_strategy="simple"``), one JSON line per text.

Three runs: the 872 SST-2 sentences of the assets (``sst2/test.tsv``, as ``bench_text.py``) with
``sentiment-minilm-sst2`` (both on torch), CoNLL-2003 test sentences with ``ner-minilm-conll03`` (both on torch),
and the same NER with ours on its ONNX export (``ner-minilm-conll03-onnx``; the pipeline on torch, as a user of
transformers runs it). Rounds alternate ours / transformers; medians are reported. The rate is texts / wall seconds
of the whole process, start-up included; start-up is the wall time of the same command on a file of one line.
``bench_text.py`` gives the in-process figures (same batch both sides).

    python benchmarks/bench_text_process.py --quick          # smoke run: 50 texts, 1 round
    python benchmarks/bench_text_process.py                  # 3 rounds: 872 SST-2, 1,000 CoNLL sentences
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench_process import avala_infer_command, wall_seconds  # noqa: E402  (benchmarks/ is on sys.path)
from bench_text import read_conll_sentences, read_sst2  # noqa: E402
from common import assets_dir, machine_info, progress  # noqa: E402

REFERENCE_SCRIPT = (
    "import json, sys; from transformers import pipeline; "
    "task, folder, texts, out = sys.argv[1:5]; "
    "options = {'aggregation_strategy': 'simple'} if task == 'ner' else {}; "
    "pipe = pipeline(task, model=folder, **options); "
    "lines = [line for line in open(texts, encoding='utf-8').read().splitlines() if line.strip()]; "
    "f = open(out, 'w', encoding='utf-8'); "
    "[f.write(json.dumps(result, default=float) + chr(10)) for result in pipe(lines)]; f.close()"
)


def ours_command(model: str, texts: Path, out: Path, task: str) -> list[str]:
    extra = ["--aggregation", "simple", "--confidence", "0"] if task == "ner" else []
    return [*avala_infer_command(), "label", str(texts), "--per-line", "--model", model, *extra, "--out", str(out)]


def reference_command(folder: Path, texts: Path, out: Path, task: str) -> list[str]:
    pipeline_task = "ner" if task == "ner" else "text-classification"
    return [sys.executable, "-c", REFERENCE_SCRIPT, pipeline_task, str(folder), str(texts), str(out)]


def lines_written(out: Path) -> int:
    """Lines of the JSONL the run wrote (ours: ``annotations.jsonl`` in its folder; the pipeline: the file)."""
    path = out / "annotations.jsonl" if out.is_dir() else out
    return sum(1 for _ in path.open(encoding="utf-8")) if path.exists() else 0


def timed(command: list[str], env: dict[str, str], scratch: Path, out: Path) -> tuple[float, int]:
    shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
    elapsed = wall_seconds(command, env, scratch)
    written = lines_written(out)
    shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
    return elapsed, written


def bench_run(name: str, task: str, ours_model: str, folder: Path, texts: list[str], rounds: int, scratch: Path):
    import os

    env = {**os.environ, "AVALA_INFER_MODELS": str(folder.parent)}
    many, one = scratch / f"{name}.txt", scratch / f"{name}-one.txt"
    many.write_text("\n".join(texts) + "\n", encoding="utf-8")
    one.write_text(texts[0] + "\n", encoding="utf-8")
    tools: dict[str, Callable[[Path, Path], list[str]]] = {
        "avala-infer": lambda src, out: ours_command(ours_model, src, out, task),
        "transformers": lambda src, out: reference_command(folder, src, out, task),
    }
    walls: dict[str, list[float]] = {tool: [] for tool in tools}
    startups: dict[str, list[float]] = {tool: [] for tool in tools}
    written: dict[str, int] = {}
    for r in range(rounds):
        for tool, command in tools.items():
            out = scratch / (f"{name}-{tool}-out" + ("" if tool == "avala-infer" else ".jsonl"))
            startups[tool].append(timed(command(one, out), env, scratch, out)[0])
            wall, written[tool] = timed(command(many, out), env, scratch, out)
            walls[tool].append(wall)
            progress(
                f"  {name} round {r + 1}/{rounds} {tool}: {len(texts) / wall:.1f} texts/s ({wall:.1f} s), "
                f"start-up {startups[tool][-1]:.1f} s"
            )
    result: dict[str, Any] = {"run": name, "task": task, "ours_model": ours_model, "reference_model": str(folder),
                              "texts": len(texts), "rounds": rounds, "tools": {}}  # fmt: skip
    for tool in tools:
        wall, startup = statistics.median(walls[tool]), statistics.median(startups[tool])
        if written[tool] != len(texts):
            raise SystemExit(f"{tool} wrote {written[tool]} lines for {len(texts)} texts in {name}")
        result["tools"][tool] = {
            "walls_s": walls[tool],
            "startups_s": startups[tool],
            "median_wall_s": wall,
            "median_startup_s": startup,
            "texts_per_s": len(texts) / wall,
            "texts_per_s_after_startup": (len(texts) - 1) / (wall - startup) if wall > startup else None,
        }
    ours, ref = result["tools"]["avala-infer"], result["tools"]["transformers"]
    result["ratio"] = ours["texts_per_s"] / ref["texts_per_s"]
    if ours["texts_per_s_after_startup"] and ref["texts_per_s_after_startup"]:
        result["ratio_after_startup"] = ours["texts_per_s_after_startup"] / ref["texts_per_s_after_startup"]
    return result


def report(result: dict[str, Any], write: Callable[[str], None] = print) -> None:
    write(f"# whole processes, {result['when']} ({result['machine']['cpu']}, {result['machine']['cores']} cores)")
    write("texts/s = texts / wall seconds of the whole process (start-up included); start-up = a run on 1 text")
    write(f"{'run':18} {'tool':13} {'texts':>5} {'texts/s':>8} {'wall s':>7} {'start s':>7} {'after start':>11}")
    for run in result["runs"]:
        for tool, figures in run["tools"].items():
            after = figures["texts_per_s_after_startup"]
            write(
                f"{run['run']:18} {tool:13} {run['texts']:5d} {figures['texts_per_s']:8.1f} "
                f"{figures['median_wall_s']:7.1f} {figures['median_startup_s']:7.1f} "
                f"{(f'{after:.1f}' if after else '-'):>11}"
            )
    for run in result["runs"]:
        extra = f" (after start-up {run['ratio_after_startup']:.2f}x)" if "ratio_after_startup" in run else ""
        write(f"ratio ours/transformers {run['run']}, whole process: {run['ratio']:.2f}x{extra}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    parser.add_argument("--limit", type=int, default=1000, help="texts per run (SST-2 dev has 872)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 50 texts, 1 round")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.limit = 1, 50
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    assets = assets_dir()
    models = assets / "models"
    sst2 = read_sst2(assets / "data" / "sst2" / "test.tsv")[: args.limit]
    conll = read_conll_sentences(assets / "data" / "conll2003" / "test.txt")[: args.limit]
    runs = [
        ("sst2-torch", "classification", "sentiment-minilm-sst2", models / "sentiment-minilm-sst2", sst2),
        ("conll-ner-torch", "ner", "ner-minilm-conll03", models / "ner-minilm-conll03", conll),
        ("conll-ner-onnx", "ner", "ner-minilm-conll03-onnx", models / "ner-minilm-conll03", conll),
    ]
    result: dict[str, Any] = {
        "when": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info("transformers", "onnxruntime"),
        "commands": {
            "ours": " ".join(ours_command("MODEL", Path("TEXTS.txt"), Path("TMP"), "ner")),
            "transformers": f"python -c {REFERENCE_SCRIPT!r} TASK FOLDER TEXTS.txt OUT.jsonl",
        },
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench_text_process_") as tmp:
        for name, task, ours_model, folder, texts in runs:
            progress(f"{name}: {len(texts)} texts, {max(1, args.rounds)} rounds")
            result["runs"].append(bench_run(name, task, ours_model, folder, texts, max(1, args.rounds), Path(tmp)))
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        progress(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
