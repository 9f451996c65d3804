"""Zero-shot classification (issue 15, item 3): CLIP-family image classifiers and NLI text classifiers.

No pretrained weights of these families are here, so each test model is a tiny random one built from its
architecture's config and saved as a model folder; scores are checked against the transformers pipelines
(``zero-shot-image-classification``, ``zero-shot-classification``) on the same folder, within 1e-4, and the
whole path runs: Engine with a run's vocabulary, ``avala-infer label`` on images and on a text file, a
Label Studio export, a dry run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from avala_infer import ConfigError, Engine, ModelLoadError, ModelSpecError, Text, label
from avala_infer.specs import ModelSpec
from avala_infer.types import ModelType
from tests.conftest import ASSETS, VAL_IMAGES, need
from tests.coverage_classification import build_tiny_vit

TOL = 1e-4  # the parity bound
PNGS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png")  # decoded alike by PIL and cv2
IMAGE_LABELS = ["cat", "bus", "person", "rocket"]
NLI_CLASSES = ["contradiction", "neutral", "entailment"]
TEXTS = [
    "The central bank raised interest rates again and the stock market fell sharply.",
    "I loved this film: the actors were wonderful and the music moved me to tears.",
    "Goal!",
    # over the tiny tokenizer's 64 tokens: the text is cut, the hypothesis never (truncation only_first)
    ("The match went to extra time after a late equaliser, " * 8).strip(),
    "Prices at the pump rose for the third week running.",
]
TEXT_LABELS = ["economy", "movies", "sports"]


def _label_cli(*args) -> None:
    """``avala-infer label`` in this process (click's runner): the command's own parsing and exit code, without
    a second interpreter importing torch and transformers again."""
    from click.testing import CliRunner

    from avala_infer.cli import cli

    result = CliRunner().invoke(cli, ["label", *map(str, args), "--device", "cpu"])
    assert result.exit_code == 0, result.output


def _assert_close(ours, expected, what: str) -> None:
    """Every score within TOL of the reference's; the largest difference is printed (the measured figure)."""
    ours, expected = np.asarray(ours, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert ours.shape == expected.shape
    worst = float(np.abs(ours - expected).max())
    print(f"{what}: scores within {worst:.2e}")
    assert worst <= TOL, f"{what}: scores differ by {worst:.2e} > {TOL}"


def _by_label(result, labels) -> list[float]:
    scores = dict(zip(result.class_name, result.confidence))
    return [float(scores[name]) for name in labels]


def _pipeline_scores(answer, labels) -> list[float]:
    """A pipeline's answer (a list of {label, score}, or {labels, scores}) as scores in ``labels`` order."""
    if isinstance(answer, dict):
        scores = dict(zip(answer["labels"], answer["scores"]))
    else:
        scores = {entry["label"]: entry["score"] for entry in answer}
    return [scores[name] for name in labels]


def _best_prompt_then_softmax(prompt_probabilities: np.ndarray, groups: list[list[int]]) -> np.ndarray:
    """The documented rule for a label with several prompts, from a pipeline's softmax over all prompts: its
    log-probabilities are the logits less one constant per item, so the best prompt's is the best logit."""
    best = np.stack([np.log(prompt_probabilities[:, cols]).max(1) for cols in groups], axis=1)
    shifted = np.exp(best - best.max(1, keepdims=True))
    return shifted / shifted.sum(1, keepdims=True)


# --- tiny models ----------------------------------------------------------------------------------------------


def _clip_tokenizer():
    """A CLIP BPE tokenizer built offline: every byte as a symbol (alone and word-final) and a few merges."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {symbol: i for i, symbol in enumerate(symbols + [s + "</w>" for s in symbols])}
    merges = [("c", "a"), ("ca", "t</w>"), ("b", "u"), ("bu", "s</w>"), ("p", "h"), ("o", "f</w>"), ("i", "s</w>")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges)


def _towers(tokenizer, positions: int) -> tuple[dict, dict]:
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": positions,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    return text, vision


@pytest.fixture(scope="session")
def zero_shot_models(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("zero-shot-models")


@pytest.fixture(scope="session")
def clip_folder(zero_shot_models) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    tokenizer = _clip_tokenizer()
    text, vision = _towers(tokenizer, positions=32)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    path = zero_shot_models / "tiny-clip"
    model.save_pretrained(path)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def siglip_folder(zero_shot_models) -> Path:
    """A tiny SigLIP; its tokenizer is the CLIP one (a real SigLIP's is SentencePiece): the pipeline and the
    predictor both tokenize with whatever the folder holds, padded to 64 tokens as SigLIP needs."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    torch.manual_seed(1)
    tokenizer = _clip_tokenizer()
    text, vision = _towers(tokenizer, positions=64)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()
    with torch.no_grad():
        model.logit_bias.fill_(-1.5)  # initialised to 0: a bias the scores must include
    path = zero_shot_models / "tiny-siglip"
    model.save_pretrained(path)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _build_nli(folder: Path, classes: list[str]) -> Path:
    """A tiny random BERT NLI model with the uncased BERT tokenizer, at most 64 tokens per row."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(need(ASSETS / "models" / "sentiment-minilm-sst2")))
    tokenizer.model_max_length = 64
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        initializer_range=0.5,  # scores far from uniform
        num_labels=len(classes),
        id2label=dict(enumerate(classes)),
        label2id={name: i for i, name in enumerate(classes)},
    )
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def nli_folder(zero_shot_models) -> Path:
    return _build_nli(zero_shot_models / "tiny-nli", NLI_CLASSES)


@pytest.fixture(scope="session")
def nli_entailment_first(zero_shot_models) -> Path:
    """Entailment as class 0: the pipeline then takes the last class as contradiction."""
    return _build_nli(zero_shot_models / "tiny-nli-entailment-first", ["ENTAILMENT", "neutral", "contradiction"])


@pytest.fixture(scope="session")
def pngs() -> list[Path]:
    return [need(ASSETS / "images" / "skimage" / name) for name in PNGS]


def _image_spec(folder: Path, labels=None, **params) -> ModelSpec:
    return ModelSpec(
        name=folder.name,
        model_type=ModelType.IMAGE_CLASSIFICATION,
        backend="transformers",
        weights=str(folder),
        labels=tuple(labels) if labels else "from_weights",
        params=params,
    )


def _text_spec(folder: Path, labels=None, **params) -> ModelSpec:
    return ModelSpec(
        name=folder.name,
        model_type=ModelType.TEXT_CLASSIFICATION,
        backend="transformers",
        weights=str(folder),
        labels=tuple(labels) if labels else "from_weights",
        params=params,
    )


# --- images ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_clip_family_scores_equal_the_pipeline(family, request, pngs):
    from transformers import pipeline

    folder = request.getfixturevalue(f"{family}_folder")
    reference = pipeline("zero-shot-image-classification", model=str(folder), device="cpu")
    expected = [_pipeline_scores(reference(str(path), candidate_labels=IMAGE_LABELS), IMAGE_LABELS) for path in pngs]
    engine = Engine(_image_spec(folder, IMAGE_LABELS), device="cpu", batch_size=3)  # batches of 3 and 1
    assert engine.labels == tuple(IMAGE_LABELS)
    predictions = list(engine.predict(pngs, top_k=None, confidence_threshold=0))
    _assert_close([_by_label(p.result, IMAGE_LABELS) for p in predictions], expected, f"{family} vs pipeline")
    sigmoid = family == "siglip"  # as the pipeline scores each family
    assert all(p.result.multi_label is sigmoid for p in predictions)
    sums = np.array([p.result.confidence.sum() for p in predictions])
    assert np.allclose(sums, 1, atol=1e-5) != sigmoid


def test_a_runs_vocabulary_and_several_prompts_for_a_label(clip_folder, pngs):
    """The spec lists no labels: the run's vocabulary names them, and "vehicle" is three prompts, scoring as its
    best one (checked against the pipeline's scores of every prompt)."""
    from transformers import pipeline

    template = "a photo of a {}."
    spec = _image_spec(clip_folder, template=template, prompts={"vehicle": ["bus", "car", "truck"]})
    with pytest.raises(ModelSpecError, match="is prompted: give its vocabulary"):
        Engine(spec, device="cpu")
    engine = Engine(spec, device="cpu", vocabulary=["cat", "vehicle"])
    assert engine.labels == ("cat", "vehicle")
    predictions = list(engine.predict(pngs, top_k=None, confidence_threshold=0))

    reference = pipeline("zero-shot-image-classification", model=str(clip_folder), device="cpu")
    prompts = ["cat", "bus", "car", "truck"]
    per_prompt = np.array(
        [
            _pipeline_scores(reference(str(p), candidate_labels=prompts, hypothesis_template=template), prompts)
            for p in pngs
        ]
    )
    expected = _best_prompt_then_softmax(per_prompt, [[0], [1, 2, 3]])
    _assert_close([_by_label(p.result, ["cat", "vehicle"]) for p in predictions], expected, "clip, best prompt")


def test_only_zero_shot_folders_take_a_vocabulary(clip_folder, tmp_path):
    """The transformers image classification backend picks the class from config.json: a ViT folder keeps its
    fixed classes; a zero-shot family not tested here is refused by name before anything loads."""
    vit = build_tiny_vit(tmp_path)
    with pytest.raises(ConfigError, match="fixed vocabulary"):
        Engine(_image_spec(vit), device="cpu", vocabulary=["cat"])
    align = tmp_path / "align"
    align.mkdir()
    (align / "config.json").write_text(json.dumps({"model_type": "align"}))
    with pytest.raises(ModelLoadError, match=r"is a align model; .* runs clip, siglip"):
        Engine(_image_spec(align), device="cpu", vocabulary=["cat"])
    with pytest.raises(ModelSpecError, match="unknown params"):
        Engine(_image_spec(clip_folder, IMAGE_LABELS, hypothesis_template="{}"), device="cpu")


def test_label_cli_on_images_writes_jsonl_and_labelstudio(clip_folder, pngs, tmp_path):
    """--labels is the vocabulary of a prompted model; PNGs score as the pipeline scores them, and COCO JPEGs
    run in the same batches."""
    from transformers import pipeline

    spec = tmp_path / "tiny-clip.yaml"
    spec.write_text(
        f"name: tiny-clip\nmodel_type: image_classification\nbackend: transformers\nweights: {clip_folder}\n"
        "labels: [dog]\n"
    )
    jpegs = sorted(need(VAL_IMAGES).glob("*.jpg"))[:3]
    vocabulary = ["cat", "bus", "person"]
    out = tmp_path / "out"
    _label_cli(
        *pngs, *jpegs, "-m", spec, "--labels", ",".join(vocabulary), "--confidence", "0.05",
        "--top-k", "3", "-f", "jsonl", "-f", "labelstudio", "-o", out, "-b", "4",
    )  # fmt: skip
    records = {Path(r["key"]).name: r for r in map(json.loads, (out / "annotations.jsonl").read_text().splitlines())}
    assert len(records) == len(pngs) + len(jpegs)
    # a softmax over 3 labels puts one at 1/3 or more: no item is empty at 0.05
    assert all(r["annotations"] and {a["label"] for a in r["annotations"]} <= set(vocabulary) for r in records.values())
    reference = pipeline("zero-shot-image-classification", model=str(clip_folder), device="cpu")
    for path in pngs:
        expected = _pipeline_scores(reference(str(path), candidate_labels=vocabulary), vocabulary)
        written = {a["label"]: a["score"] for a in records[path.name]["annotations"]}
        _assert_close([written[n] for n in written], [expected[vocabulary.index(n)] for n in written], path.name)
    tasks = json.loads((out / "labelstudio.json").read_text())
    assert len(tasks) == len(records)
    config = (out / "labelstudio.config.xml").read_text()
    assert all(f'<Choice value="{name}"/>' in config for name in vocabulary) and "dog" not in config


def test_a_dry_run_counts_the_runs_vocabulary(clip_folder, pngs, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for path in pngs:
        shutil.copy(path, folder / path.name)
    spec = tmp_path / "tiny-clip.yaml"
    spec.write_text(
        f"name: tiny-clip\nmodel_type: image_classification\nbackend: transformers\nweights: {clip_folder}\n"
    )
    report = label(
        [folder], spec, labels=["cat", "person"], out=tmp_path / "dry", dry_run=True, device="cpu",
        confidence_threshold=0.05, top_k=1,
    )  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "dry").iterdir()) == ["preview", "summary.json"]
    per_label = report.summary["per_label"]
    assert set(per_label) <= {"cat", "person"} and sum(per_label.values()) == len(pngs)


# --- texts ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("folder", "multi_label", "template"),
    [
        ("nli_folder", False, None),
        ("nli_folder", True, "This text is about {}."),
        ("nli_entailment_first", True, None),
        ("nli_entailment_first", False, None),
    ],
)
def test_nli_scores_equal_the_pipeline(folder, multi_label, template, request):
    from transformers import pipeline

    folder = request.getfixturevalue(folder)
    options = {"multi_label": multi_label, **({"hypothesis_template": template} if template else {})}
    reference = pipeline("zero-shot-classification", model=str(folder), device="cpu")
    expected = [_pipeline_scores(reference(t, candidate_labels=TEXT_LABELS, **options), TEXT_LABELS) for t in TEXTS]
    engine = Engine(_text_spec(folder, TEXT_LABELS, zero_shot=True, **options), device="cpu", batch_size=3)
    assert engine.labels == tuple(TEXT_LABELS)
    predictions = list(engine.predict([Text(t) for t in TEXTS], top_k=None, confidence_threshold=0))
    _assert_close([_by_label(p.result, TEXT_LABELS) for p in predictions], expected, f"nli {options} vs pipeline")
    assert all(p.result.multi_label is multi_label for p in predictions)


def test_one_label_scores_on_its_own_and_several_hypotheses_score_their_best(nli_folder):
    """One label: entailment vs contradiction, as the pipeline does (a softmax across one label is always 1).
    Several hypotheses for a label: its best entailment logit, then the softmax across labels."""
    from transformers import pipeline

    reference = pipeline("zero-shot-classification", model=str(nli_folder), device="cpu")
    texts = [Text(t) for t in TEXTS]
    alone = Engine(_text_spec(nli_folder, ["sports"], zero_shot=True), device="cpu")
    predictions = list(alone.predict(texts, top_k=None, confidence_threshold=0))
    expected = [_pipeline_scores(reference(t, candidate_labels=["sports"]), ["sports"]) for t in TEXTS]
    _assert_close([_by_label(p.result, ["sports"]) for p in predictions], expected, "nli, one label")
    assert all(p.result.multi_label for p in predictions)

    prompts = {"money": ["economy", "finance", "prices"]}
    engine = Engine(
        _text_spec(nli_folder, zero_shot=True, prompts=prompts), device="cpu", vocabulary=["money", "sports"]
    )
    predictions = list(engine.predict(texts, top_k=None, confidence_threshold=0))
    hypotheses = ["economy", "finance", "prices", "sports"]
    per_hypothesis = np.array([_pipeline_scores(reference(t, candidate_labels=hypotheses), hypotheses) for t in TEXTS])
    expected = _best_prompt_then_softmax(per_hypothesis, [[0, 1, 2], [3]])
    _assert_close([_by_label(p.result, ["money", "sports"]) for p in predictions], expected, "nli, best hypothesis")


def test_an_nli_model_is_zero_shot_only_when_the_spec_says_so(nli_folder):
    plain = Engine(_text_spec(nli_folder), device="cpu")  # its own 3 classes, as its config names them
    assert plain.labels == tuple(NLI_CLASSES)
    with pytest.raises(ConfigError, match="fixed vocabulary"):
        Engine(_text_spec(nli_folder), device="cpu", vocabulary=["sports"])
    with pytest.raises(ModelSpecError, match="params.zero_shot .* must be true or false"):
        Engine(_text_spec(nli_folder, TEXT_LABELS, zero_shot="yes"), device="cpu")
    sentiment = need(ASSETS / "models" / "sentiment-minilm-sst2")
    with pytest.raises(ModelLoadError, match="not an NLI model"):
        Engine(_text_spec(sentiment, TEXT_LABELS, zero_shot=True), device="cpu")
    long_template = "This text, " + "which is long, " * 20 + "is about {}."
    with pytest.raises(ModelSpecError, match="leaves no room for the text"):
        Engine(_text_spec(nli_folder, TEXT_LABELS, zero_shot=True, hypothesis_template=long_template), device="cpu")


def test_label_cli_on_a_text_file(nli_folder, tmp_path):
    from transformers import pipeline

    spec = tmp_path / "tiny-nli.yaml"
    spec.write_text(
        f"name: tiny-nli\nmodel_type: text_classification\nbackend: transformers\nweights: {nli_folder}\n"
        "labels: [economy, movies, sports]\nparams: {zero_shot: true, multi_label: true}\n"
    )
    lines = tmp_path / "news.txt"
    lines.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    _label_cli(
        lines, "--per-line", "-m", spec, "--labels", "economy,sports", "--confidence", "0",
        "-f", "jsonl", "-f", "labelstudio", "-o", out,
    )  # fmt: skip
    records = [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]
    assert [r["text"] for r in records] == [t.strip() for t in TEXTS]
    reference = pipeline("zero-shot-classification", model=str(nli_folder), device="cpu")
    for record in records:
        assert record["multi_label"] is True
        written = {a["label"]: a["score"] for a in record["annotations"]}
        assert set(written) == {"economy", "sports"}  # --labels is the vocabulary: movies is not scored
        answer = reference(record["text"], candidate_labels=["economy", "sports"], multi_label=True)
        _assert_close([written["economy"], written["sports"]], _pipeline_scores(answer, ["economy", "sports"]), "cli")
    tasks = json.loads((out / "labelstudio.json").read_text())
    assert [t["data"]["text"] for t in tasks] == [r["text"] for r in records]
