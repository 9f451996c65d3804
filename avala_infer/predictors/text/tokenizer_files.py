"""A model folder's fast tokenizer read straight from its files, without transformers, where that gives the
tokenizer ``AutoTokenizer`` would.

The ONNX text backend needs torch nowhere but here: ``transformers.AutoTokenizer`` imports torch (through its
configuration code) and took 3.1 s of a 4.3 s ``avala-infer label`` run with ``ner-minilm-conll03-onnx`` on this
project's VM. What the text predictors use of a tokenizer is its Rust backend (``tokenizer.json``, loaded with
``tokenizers``, as ``AutoTokenizer`` loads it), the ids of its pad and unknown tokens, its ``model_max_length`` and
``convert_tokens_to_string`` (the backend's decoder); :class:`TokenizerFiles` gives those from
``tokenizer.json`` and ``tokenizer_config.json``.

Only where transformers would load the backend as the file has it: ``tokenizer.json`` present, a tokenizer class
verified against ``AutoTokenizer`` (:data:`VERIFIED_CLASSES`: ``tests/test_tokenizer_files.py`` saves each with
transformers and compares), a ``model_max_length`` given, and nothing transformers would change on load: special
tokens missing from the vocabulary (it adds them); ``add_bos_token``/``add_eos_token``, a ``post_processor`` or
none in the file (it rewrites the post-processor); ``split_special_tokens``. Anything else returns ``None`` and
the caller loads ``AutoTokenizer`` as before.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# tokenizer classes whose tokenizer.json AutoTokenizer loads unchanged (tests/test_tokenizer_files.py checks each
# against the installed transformers; the 4.x "...Fast" names are the same tokenizers)
VERIFIED_CLASSES = frozenset(
    {
        "BertTokenizer",
        "BertTokenizerFast",
        "DistilBertTokenizer",
        "DistilBertTokenizerFast",
        "ElectraTokenizer",
        "ElectraTokenizerFast",
        "RobertaTokenizer",
        "RobertaTokenizerFast",
    }
)
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
CHANGES_ON_LOAD = ("add_bos_token", "add_eos_token", "post_processor")


class TokenizerFiles:
    """The parts of a fast tokenizer the text predictors use, read from a model folder's files."""

    is_fast = True

    def __init__(self, backend: Any, pad_token_id: int | None, unk_token_id: int | None, model_max_length: int):
        self.backend_tokenizer = backend
        self.pad_token_id = pad_token_id
        self.unk_token_id = unk_token_id
        self.model_max_length = model_max_length

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        """Tokens joined into text by the backend's decoder (spaces between them without one), as transformers'
        fast tokenizers do."""
        decoder = self.backend_tokenizer.decoder
        return decoder.decode(list(tokens)) if decoder is not None else " ".join(tokens)


def load_tokenizer_files(folder: Path) -> TokenizerFiles | None:
    """The folder's tokenizer without transformers, or ``None`` where ``AutoTokenizer`` must load it (see the
    module's doc); a file that cannot be read is ``None`` too (``AutoTokenizer`` then says what is wrong)."""
    config_path, backend_path = folder / "tokenizer_config.json", folder / "tokenizer.json"
    if not (config_path.is_file() and backend_path.is_file()):
        return None
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or config.get("tokenizer_class") not in VERIFIED_CLASSES:
        return None
    if any(key in config for key in CHANGES_ON_LOAD) or config.get("split_special_tokens"):
        return None
    max_length = config.get("model_max_length")
    if isinstance(max_length, bool) or not isinstance(max_length, (int, float)) or max_length < 1:
        return None
    try:
        from tokenizers import Tokenizer

        backend = Tokenizer.from_file(str(backend_path))
    except Exception:  # tokenizers raises its own exception types for a bad file
        return None
    if backend.post_processor is None:  # transformers would build one from the bos and eos tokens
        return None
    named = {key: _content(config.get(key)) for key in SPECIAL_TOKEN_KEYS}
    listed = [*_listed(config.get("additional_special_tokens")), *_listed(config.get("extra_special_tokens"))]
    extra = [_content(token) for token in listed]
    if any(token is not None and backend.token_to_id(token) is None for token in (*named.values(), *extra)):
        return None  # transformers would add it to the vocabulary
    for index, token in (config.get("added_tokens_decoder") or {}).items():
        content = _content(token)
        if content is None or not str(index).isdigit() or backend.token_to_id(content) != int(index):
            return None
    pad, unk = named["pad_token"], named["unk_token"]
    return TokenizerFiles(
        backend,
        backend.token_to_id(pad) if pad is not None else None,
        backend.token_to_id(unk) if unk is not None else None,
        int(max_length),
    )


def _content(token: Any) -> str | None:
    """A special token's text: a str, or an ``AddedToken`` as saved (a dict with its ``content``)."""
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) else None


def _listed(value: Any) -> list[Any]:
    if isinstance(value, dict):  # extra_special_tokens may map names to tokens
        return list(value.values())
    return list(value) if isinstance(value, list) else []
