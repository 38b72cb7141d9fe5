"""Model.run against ONNX Runtime's outputs, and how input arrays are read or converted."""

import types

import numpy as np
import pytest

import fff
from conftest import ONNX, load_expected, load_inputs

TOLERANCE = 1e-4


def assert_matches_expected(outputs):
    expected = load_expected()
    assert list(outputs) == list(expected)
    for name, want in expected.items():
        got = outputs[name]
        assert got.dtype == np.float32, name
        assert got.shape == want.shape, name
        assert np.max(np.abs(got - want)) < TOLERANCE, name


def test_run_matches_onnx_runtime(model):
    assert_matches_expected(model.run(load_inputs()))


def test_a_plan_with_a_tokenizer_runs_token_ids_the_same(text_model):
    assert_matches_expected(text_model.run(load_inputs()))


def test_compile_takes_path_objects_and_quantisation(tmp_path):
    path = tmp_path / "int8.fff"
    fff.compile(ONNX, path, quantize="int8")
    out = fff.Model(path).run(load_inputs())
    expected = load_expected()
    # int8 products cost accuracy: near the float outputs, not equal to them.
    cosine = np.sum(out["pooler_output"] * expected["pooler_output"]) / (
        np.linalg.norm(out["pooler_output"]) * np.linalg.norm(expected["pooler_output"])
    )
    assert cosine > 0.99


def test_outputs_are_writable_arrays_numpy_owns(model):
    out = model.run(load_inputs())["last_hidden_state"]
    assert out.flags.c_contiguous and out.flags.writeable
    out[...] = 0  # the buffer is NumPy's to change
    # A second run gives fresh outputs.
    assert np.any(model.run(load_inputs())["last_hidden_state"] != 0)


@pytest.mark.parametrize("dtype", [np.int32, np.int16, np.uint16, np.uint32, np.uint64])
def test_integer_inputs_of_other_widths_convert(model, dtype):
    reference = model.run(load_inputs())
    inputs = {name: a.astype(dtype) for name, a in load_inputs().items()}
    out = model.run(inputs)
    for name in reference:
        np.testing.assert_array_equal(out[name], reference[name])


def test_any_mapping_of_inputs(model):
    reference = model.run(load_inputs())
    out = model.run(types.MappingProxyType(load_inputs()))
    np.testing.assert_array_equal(out["pooler_output"], reference["pooler_output"])


def test_lists_go_through_asarray(model):
    reference = model.run(load_inputs())
    out = model.run({name: a.tolist() for name, a in load_inputs().items()})
    np.testing.assert_array_equal(out["pooler_output"], reference["pooler_output"])


def test_integers_that_do_not_fit_are_refused_naming_input_and_value(model):
    inputs = load_inputs()
    inputs["input_ids"] = inputs["input_ids"].astype(np.uint64)
    inputs["input_ids"][0, 1] = 2**63
    with pytest.raises(fff.Error) as e:
        model.run(inputs)
    assert "'input_ids'" in str(e.value)
    assert str(2**63) in str(e.value)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_float_ids_are_refused_naming_input_and_dtypes(model, dtype):
    inputs = load_inputs()
    inputs["input_ids"] = inputs["input_ids"].astype(dtype)
    with pytest.raises(fff.Error) as e:
        model.run(inputs)
    message = str(e.value)
    assert "'input_ids'" in message
    assert np.dtype(dtype).name in message
    assert "int64" in message


def test_bool_ids_are_refused(model):
    inputs = load_inputs()
    inputs["attention_mask"] = inputs["attention_mask"].astype(bool)
    with pytest.raises(fff.Error, match="'attention_mask' is bool"):
        model.run(inputs)


def unaligned(inputs):
    """The arrays at an odd address: a buffer read from its second byte."""
    out = {}
    for name, a in inputs.items():
        a = np.frombuffer(b"\0" + a.tobytes(), dtype=a.dtype, offset=1).reshape(a.shape)
        assert not a.flags.aligned
        out[name] = a
    return out


def fields(inputs):
    """The arrays as fields of a structured array: strides of 12 bytes, not a multiple of 8."""
    out = {}
    for name, a in inputs.items():
        record = np.zeros(a.shape, dtype=[("value", np.int64), ("pad", np.int32)])
        record["value"] = a
        out[name] = record["value"]
    return out


def test_non_contiguous_arrays_give_the_same_result(model):
    reference = model.run(load_inputs())
    inputs = load_inputs()
    # Fortran order (a transposed view of the transpose) and a strided slice.
    transposed = {name: np.ascontiguousarray(a.T).T for name, a in inputs.items()}
    assert not transposed["input_ids"].flags.c_contiguous
    strided = {name: np.repeat(a, 2, axis=1)[:, ::2] for name, a in inputs.items()}
    assert not strided["input_ids"].flags.c_contiguous
    reversed_twice = {name: a[::-1][::-1] for name, a in inputs.items()}
    for variant in (transposed, strided, reversed_twice, unaligned(inputs), fields(inputs)):
        out = model.run(variant)
        for name in reference:
            np.testing.assert_array_equal(out[name], reference[name])


def test_big_endian_arrays_convert(model):
    reference = model.run(load_inputs())
    inputs = {name: a.astype(">i8") for name, a in load_inputs().items()}
    out = model.run(inputs)
    np.testing.assert_array_equal(out["pooler_output"], reference["pooler_output"])


def test_more_dimensions_than_rust_views_take_are_an_error(model):
    inputs = load_inputs()
    inputs["input_ids"] = np.zeros((1,) * 33, dtype=np.int64)
    with pytest.raises(fff.Error, match="input 'input_ids' has 33 dimensions"):
        model.run(inputs)


def test_inputs_are_not_changed(model):
    inputs = load_inputs()
    before = {name: a.copy() for name, a in inputs.items()}
    model.run(inputs)
    for name in inputs:
        np.testing.assert_array_equal(inputs[name], before[name])
