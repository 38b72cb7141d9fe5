"""Texts to vectors against ONNX Runtime: models/fixtures/text/ (tokenizer, texts, their ids and the
embeddings ONNX Runtime's outputs pool to, and a sentence-transformers folder)."""

import json

import numpy as np
import pytest

import fff
from conftest import FIXTURES, ONNX

TEXT = FIXTURES / "text"
TOLERANCE = 1e-4

pytestmark = pytest.mark.skipif(
    not (TEXT / "expected.json").exists(), reason="models/fixtures/text/ is not in this checkout"
)


@pytest.fixture(scope="module")
def expected():
    return json.loads((TEXT / "expected.json").read_text())


@pytest.fixture(scope="module")
def texts():
    return json.loads((TEXT / "texts.json").read_text())


@pytest.fixture(scope="module")
def fixture_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("fixture-text") / "bert-tiny-text.fff"
    fff.compile(ONNX, path, tokenizer=TEXT / "tokenizer.json")
    return fff.Model(path)


def test_tokens_match_the_fixture_batch(fixture_model, texts, expected):
    inputs = fixture_model.tokenize(texts)
    for name in ["input_ids", "attention_mask", "token_type_ids"]:
        np.testing.assert_array_equal(inputs[name], expected["batch"][name], err_msg=name)


@pytest.mark.parametrize("pooling", ["cls", "mean", "max"])
@pytest.mark.parametrize("normalize", [False, True])
def test_embeddings_match_onnx_runtime(fixture_model, texts, expected, pooling, normalize):
    key = pooling + ("_normalized" if normalize else "")
    want = np.array(expected["embeddings"][key])
    got = fixture_model.embed(texts, pooling=pooling, normalize=normalize)
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) < TOLERANCE


def test_a_sentence_transformers_folder_sets_the_defaults(tmp_path, texts, expected):
    path = tmp_path / "st.fff"
    fff.compile(ONNX, path, tokenizer=TEXT / "st-bert-tiny")
    m = fff.Model(path)
    folder = expected["st_folder"]
    assert m.text["max_length"] == folder["max_seq_length"]
    assert (m.text["pooling"], m.text["normalize"]) == ("mean", True)
    np.testing.assert_array_equal(m.tokenize(texts)["input_ids"], folder["input_ids"])
    got = m.embed(texts)
    assert np.max(np.abs(got - np.array(folder["mean_normalized_48"]))) < TOLERANCE
