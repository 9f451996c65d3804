"""Text predictors' ``prepare_many``: one ``encode_batch`` call per chunk gives what ``prepare`` gives per text.

The engine's loader threads call ``prepare_many`` on chunks of consecutive texts (the fast tokenizer's
``encode_batch`` releases the GIL; ``encode`` holds it). Every field of every prepared item must equal
``prepare``'s (ids, type ids, offsets, special-token marks, windows, row length, and NER's pre-entities), on
CoNLL-2003 and SST-2 sentences, texts long enough for several windows, unicode and near-empty texts; a chunk
with one bad text raises (the engine then prepares it item by item), it never returns a partial list.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from avala_infer import Engine
from avala_infer.errors import UnsupportedInputError
from avala_infer.predictors.text.batching import TokenizedText
from avala_infer.predictors.text.ner_aggregation import PreEntities
from avala_infer.specs import find_spec
from tests.conftest import ASSETS, need
from tests.coverage_text import NER, SENTIMENT
from tests.test_ner import read_conll

CONLL_TEST = ASSETS / "data" / "conll2003" / "test.txt"
SST2 = ASSETS / "data" / "sst2" / "test.tsv"
ODD_TEXTS = [
    "Zürich – 東京 🙂 naïve café",
    "e\u0301te\u0301 with combining accents, and ﬁ ligatures",
    "مرحبا بالعالم from Cairo",
    "zero\u200bwidth\u200bjoins and a non\u00a0breaking space",
    "  leading and trailing spaces  ",
    "tab\tand\nnewline\r\nbreaks",
    "a literal [SEP] and [CLS] inside the text [UNK] [PAD]",
    "x",
    ".",
    "   ",
    "",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 outside the basic plane 🇩🇪🇫🇷 👩‍👩‍👧",
]


def conll_sentences() -> list[str]:
    return [sentence.text for sentence in read_conll(CONLL_TEST)]


def sst2_sentences() -> list[str]:
    lines = need(SST2).read_text(encoding="utf-8").splitlines()[1:]
    return [line.rsplit("\t", 1)[0] for line in lines if line.strip()]


def texts_for_test() -> list[str]:
    conll, sst2 = conll_sentences(), sst2_sentences()
    long_texts = [" ".join(conll[:80]), " ".join(sst2[:40]), " ".join(conll[200:203])]
    return conll[::10] + sst2[::4] + long_texts + ODD_TEXTS


def assert_same(ours: TokenizedText, reference: TokenizedText) -> None:
    assert type(ours) is type(reference)
    for field in dataclasses.fields(TokenizedText):
        a, b = getattr(ours, field.name), getattr(reference, field.name)
        if isinstance(b, PreEntities):
            assert isinstance(a, PreEntities)
            for pre_field in dataclasses.fields(PreEntities):
                _assert_equal(getattr(a, pre_field.name), getattr(b, pre_field.name), f"extra.{pre_field.name}")
        else:
            _assert_equal(a, b, field.name)


def _assert_equal(a, b, what: str) -> None:
    if isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, what
        assert np.array_equal(a, b), what
    else:
        assert a == b, what


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return texts_for_test()


def _engines():
    ner = find_spec("ner-minilm-conll03")
    sentiment = find_spec("sentiment-minilm-sst2")
    return {
        "ner": lambda: Engine(ner, device="cpu"),
        "ner-small-windows": lambda: Engine(
            dataclasses.replace(ner, params={"max_length": 32, "stride": 8, "long_text": "windows"}), device="cpu"
        ),
        "sentiment": lambda: Engine(sentiment, device="cpu"),
        "sentiment-windows": lambda: Engine(
            dataclasses.replace(sentiment, params={"max_length": 24, "stride": 6, "long_text": "windows"}),
            device="cpu",
        ),
    }


@pytest.mark.parametrize("name", list(_engines()))
def test_prepare_many_equals_prepare_per_text(name, texts):
    need(NER if name.startswith("ner") else SENTIMENT)
    predictor = _engines()[name]().predictor
    reference = [predictor.prepare(text) for text in texts]
    assert any(len(item.windows) > 1 for item in reference) or name == "sentiment"  # long texts really split
    assert any(len(item) == 0 for item in reference)  # the blank texts have no tokens at all
    for chunk in (1, 7, 64, len(texts)):
        ours = [
            p for start in range(0, len(texts), chunk) for p in predictor.prepare_many(texts[start : start + chunk])
        ]
        assert len(ours) == len(reference)
        for text, a, b in zip(texts, ours, reference):
            assert a.text is text
            assert_same(a, b)
    assert predictor.prepare_many([]) == []


def test_a_bad_text_fails_the_chunk_and_only_itself_alone():
    need(NER)
    predictor = _engines()["ner"]().predictor
    good = ["Angela Merkel met Emmanuel Macron in Paris .", "Manchester United beat Real Madrid ."]
    lone_surrogate = "broken \ud800 text"  # not encodable: the tokenizer refuses it
    with pytest.raises(TypeError):
        predictor.prepare(lone_surrogate)
    with pytest.raises(TypeError):
        predictor.prepare_many([good[0], lone_surrogate, good[1]])
    with pytest.raises(UnsupportedInputError, match="text model"):
        predictor.prepare_many([good[0], np.zeros((4, 4, 3), np.uint8)])
    # a pair of strings would be a question and its context to encode_batch: here it is refused as not a text
    with pytest.raises(UnsupportedInputError):
        predictor.prepare_many([good[0], (good[0], good[1])])
    # item by item, as the engine retries a failed chunk, the good texts still prepare
    for text, item in zip(good, [predictor.prepare(t) for t in good]):
        assert_same(predictor.prepare_many([text])[0], item)
