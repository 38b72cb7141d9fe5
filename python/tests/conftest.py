"""Shared fixtures: bert-tiny compiled once per session, with and without a tokenizer."""

import json
from pathlib import Path

import numpy as np
import pytest

import fff

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "models" / "fixtures"
ONNX = FIXTURES / "bert-tiny.onnx"
FIXTURE_TOKENIZER = FIXTURES / "text" / "tokenizer.json"

# bert-tiny: 512 rows of word embeddings, 64 positions.
VOCAB_ROWS = 512


def load_inputs():
    """bert-tiny's bundled input: {name: nested list of ints} as int64 arrays."""
    raw = json.loads((FIXTURES / "bert-tiny.input.json").read_text())
    return {name: np.array(values, dtype=np.int64) for name, values in raw.items()}


def load_expected():
    """The outputs ONNX Runtime gave for that input: {name: nested list of floats}."""
    raw = json.loads((FIXTURES / "bert-tiny.expected.json").read_text())
    return {name: np.array(values, dtype=np.float64) for name, values in raw.items()}


def tiny_wordpiece(path):
    """A BERT-style WordPiece tokenizer.json small enough for bert-tiny's 512-row table."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789") + list(".,!?'\"-:;()")
    words = (
        "the a an of to and in is it that for on with as was be by this are at from or "
        "have not but what all were when we there can your which their said if do will each "
        "about how up out them then she many some so these would other into has more her two "
        "like him see time could no make than first been its who now people my made over did "
        "down only way find use may water long little very after words called just where most "
        "know get through back much go good new write our me man too any day same right look "
        "think also around another came come work three word must because does part even place "
        "well such here take why things help put years different away again off went old number "
        "fast feed forward layer model tree leaf text vector embed token sentence cat dog sat mat"
    ).split()
    pieces = ["##ing", "##ed", "##s", "##er", "##ly", "##est"]
    vocab = {}
    for token in specials + chars + ["##" + c for c in chars] + words + pieces:
        vocab.setdefault(token, len(vocab))
    assert len(vocab) < VOCAB_ROWS
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece()
    tok.save(str(path))
    return path


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory):
    """The fixture tokenizer when it exists, else one built here (skips without `tokenizers`)."""
    if FIXTURE_TOKENIZER.exists():
        return FIXTURE_TOKENIZER
    pytest.importorskip("tokenizers")
    return tiny_wordpiece(tmp_path_factory.mktemp("tokenizer") / "tokenizer.json")


@pytest.fixture(scope="session")
def plan(tmp_path_factory):
    """bert-tiny compiled without a tokenizer."""
    path = tmp_path_factory.mktemp("plans") / "bert-tiny.fff"
    fff.compile(str(ONNX), str(path))
    return path


@pytest.fixture(scope="session")
def text_plan(tmp_path_factory, tokenizer_path):
    """bert-tiny compiled with a tokenizer and no pooling default."""
    path = tmp_path_factory.mktemp("plans") / "bert-tiny-text.fff"
    fff.compile(ONNX, path, tokenizer=tokenizer_path)
    return path


@pytest.fixture(scope="session")
def model(plan):
    return fff.Model(plan)


@pytest.fixture(scope="session")
def text_model(text_plan):
    return fff.Model(text_plan)


TEXTS = [
    "The cat sat on the mat.",
    "Fast feedforward layers walk one path of a tree.",
    "Café naïve résumé",
    "unknownish wordsmithing",
    "a",
]

LONG_TEXT = " ".join(["the model made a vector of each sentence"] * 12)
