"""The ONNX text backend reads a tokenizer straight from its files (``predictors/text/tokenizer_files.py``), without
transformers and so without torch, only where that gives what ``AutoTokenizer`` gives: each verified tokenizer
family is saved by transformers and loaded both ways, and every part the text predictors use is compared; folders
transformers would change on load go to ``AutoTokenizer``; a fresh ONNX NER run imports no torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from avala_infer.predictors.text.tokenizer_files import load_tokenizer_files
from tests.conftest import ASSETS, need

TEXTS = [
    "the cat sat on the mat.",
    "Peter, the cats sat in Paris unable",
    "  spaces   and\tTabs, UNKNOWNWORD ééé  ",
    "",
]
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "##s", "un", "##able",
         "paris", "peter", ",", ".", "a", "in"]  # fmt: skip
BPE_VOCAB = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", "t", "h", "e", "Ġ", "c", "a", "s", "th", "the", "Ġthe", "at",
             "cat", "Ġc", "Ġcat", ".", ","]  # fmt: skip
BPE_MERGES = [("t", "h"), ("th", "e"), ("Ġ", "the"), ("a", "t"), ("c", "at"), ("Ġ", "c"), ("Ġc", "at")]


def _saved(kind: str, folder):
    """A tiny tokenizer of ``kind`` made and saved by transformers, as a user's model folder holds it."""
    import transformers

    if kind == "roberta":
        vocab = {token: i for i, token in enumerate(BPE_VOCAB)}
        tokenizer = transformers.RobertaTokenizer(vocab=vocab, merges=list(BPE_MERGES), model_max_length=64)
    else:
        (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
        make = {"bert": transformers.BertTokenizer, "distilbert": transformers.DistilBertTokenizer,
                "electra": transformers.ElectraTokenizer}[kind]  # fmt: skip
        tokenizer = make(vocab_file=str(folder / "vocab.txt"), model_max_length=64)
    out = folder / kind
    tokenizer.save_pretrained(out)
    return out


def _same_as_auto_tokenizer(folder) -> None:
    """Every part of the tokenizer the text predictors use equals ``AutoTokenizer``'s."""
    from transformers import AutoTokenizer

    files = load_tokenizer_files(folder)
    assert files is not None, f"{folder} should load from its files"
    auto = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    ours, theirs = files.backend_tokenizer, auto.backend_tokenizer
    for backend in (ours, theirs):
        backend.no_truncation(), backend.no_padding()  # as TextEncoder sets both
    assert json.loads(ours.to_str()) == json.loads(theirs.to_str())
    assert (files.pad_token_id, files.unk_token_id) == (auto.pad_token_id, auto.unk_token_id)
    assert files.model_max_length == auto.model_max_length
    for text in TEXTS:
        for special in (False, True):
            mine = ours.encode(text, add_special_tokens=special)
            reference = theirs.encode(text, add_special_tokens=special)
            assert (mine.ids, mine.offsets, mine.type_ids, mine.special_tokens_mask) == (
                reference.ids, reference.offsets, reference.type_ids, reference.special_tokens_mask,
            )  # fmt: skip
        tokens = theirs.encode(text, add_special_tokens=False).tokens
        assert files.convert_tokens_to_string(tokens) == auto.convert_tokens_to_string(tokens)


@pytest.mark.parametrize("kind", ["bert", "distilbert", "electra", "roberta"])
def test_each_verified_family_loads_from_its_files_as_auto_tokenizer_loads_it(kind, tmp_path):
    _same_as_auto_tokenizer(_saved(kind, tmp_path))


def test_a_transformers_4_config_with_added_token_dicts_loads_the_same(tmp_path):
    """transformers 4 saved ``*TokenizerFast`` class names and special tokens as ``AddedToken`` dicts."""
    folder = _saved("bert", tmp_path)
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "BertTokenizerFast"
    config["pad_token"] = {"__type": "AddedToken", "content": "[PAD]", "lstrip": False, "normalized": False,
                           "rstrip": False, "single_word": False}  # fmt: skip
    path.write_text(json.dumps(config))
    _same_as_auto_tokenizer(folder)


@pytest.mark.parametrize("name", ["ner-minilm-conll03", "sentiment-minilm-sst2"])
def test_the_asset_models_tokenizers_load_from_their_files(name):
    _same_as_auto_tokenizer(need(ASSETS / "models" / name))


@pytest.mark.parametrize(
    "change",
    [
        {"tokenizer_class": "LlamaTokenizer"},  # not verified against AutoTokenizer
        {"add_bos_token": True},  # transformers rewrites the post-processor
        {"split_special_tokens": True},
        {"model_max_length": None},
        {"mask_token": "[NOT-IN-THE-VOCABULARY]"},  # transformers would add it
        {"additional_special_tokens": ["<extra>"]},
    ],
)
def test_what_transformers_would_change_goes_to_auto_tokenizer(change, tmp_path):
    folder = _saved("bert", tmp_path)
    assert load_tokenizer_files(folder) is not None
    path = folder / "tokenizer_config.json"
    config = {**json.loads(path.read_text()), **change}
    path.write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    assert load_tokenizer_files(folder) is None


def test_a_folder_without_tokenizer_json_goes_to_auto_tokenizer(tmp_path):
    folder = _saved("bert", tmp_path)
    (folder / "tokenizer.json").unlink()
    assert load_tokenizer_files(folder) is None
    (folder / "tokenizer.json").write_text("{not json")
    assert load_tokenizer_files(folder) is None


def test_an_onnx_ner_run_imports_no_torch():
    """A fresh process: the ONNX export of the NER model (``ner-minilm-conll03-onnx``) tags two sentences with the
    engine and finds their people and places, with neither torch nor transformers imported (``test_ner.py`` holds
    the ONNX model's spans to the transformers pipeline's)."""
    need(ASSETS / "models" / "ner-minilm-conll03" / "model.onnx")
    texts = ["EU rejects German call to boycott British lamb .", "Peter Blackburn went to Paris ."]
    code = (
        "import json, sys\n"
        "from avala_infer import Engine\n"
        "with Engine('ner-minilm-conll03-onnx', device='auto') as engine:\n"
        "    results = [p.result for p in engine.predict_texts(" + repr(texts) + ")]\n"
        "found = [[[int(s), int(e), str(c)] for s, e, c in zip(r.start, r.end, r.class_name)] for r in results]\n"
        "print(json.dumps(found))\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found, imported = done.stdout.strip().splitlines()
    assert imported == "False False"
    spans = json.loads(found)
    assert [0, 15, "PER"] in spans[1] and [24, 29, "LOC"] in spans[1]
