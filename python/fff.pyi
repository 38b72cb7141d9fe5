"""Compile BERT-like ONNX models into fff plans, run them on NumPy arrays, and embed texts."""

import os
from typing import Iterable, Literal, Mapping, Optional, TypedDict, Union

import numpy as np
import numpy.typing as npt

__version__: str

_Path = Union[str, "os.PathLike[str]"]
_Pooling = Literal["cls", "mean", "max", "none"]
_Text = Union[str, bytes]

class Error(Exception):
    """Any fff failure; the message is the text `fffc` and `fffrun` print after `error: `."""

class TensorInfo(TypedDict):
    name: str
    # A NumPy dtype name ("int64", "float32", ...); None for an output whose plan does not record it.
    dtype: Optional[str]
    # Ints for fixed sizes, strs for symbolic ones ("batch", "seq"), None for sizes the compiler could
    # not tell (outputs only); the whole shape is None where the plan has none.
    shape: Optional[list[Union[int, str, None]]]

class TextRoles(TypedDict):
    ids: str
    mask: Optional[str]
    type_ids: Optional[str]
    positions: Optional[str]

class TextInfo(TypedDict):
    source: str
    max_length: int
    model_limit: Optional[int]
    pooling: Optional[_Pooling]
    normalize: bool
    roles: TextRoles

def compile(
    onnx_path: _Path,
    plan_path: _Path,
    tokenizer: Optional[_Path] = None,
    quantize: Optional[Literal["int8", "bf16", "f32"]] = None,
    *,
    pooling: Optional[_Pooling] = None,
    normalize: Optional[bool] = None,
    max_length: Optional[int] = None,
) -> None:
    """Compiles an ONNX model into a plan file (written atomically), as `fffc compile` does.

    `tokenizer` (a tokenizer.json, or a Hugging Face or sentence-transformers folder) stores a
    tokenizer in the plan for `Model.embed` and `Model.tokenize`; `pooling`, `normalize` and
    `max_length` set the plan's defaults for them. `quantize` is the precision of the projections
    and dense feedforward layers. Raises `Error`.
    """

class Model:
    """A plan loaded for running. Safe to call from many threads at once (the GIL is released)."""

    def __init__(self, path: _Path, threads: Optional[int] = None) -> None:
        """Loads (memory-maps) a plan; `threads` is the kernels' thread count, None or 0 one per core."""

    def run(self, inputs: Mapping[str, npt.ArrayLike]) -> dict[str, np.ndarray]:
        """Runs the model: `{input name: array}` to `{output name: array}`, in the plan's order.

        An array of the input's dtype that is C-contiguous is read in place (no copy). Otherwise:
        integer arrays are converted to the input's integer type (every value must fit, else `Error`
        naming the input and the value); float arrays (float64, float16) to float32; bool stays
        bool; non-contiguous arrays are copied. Floats for an integer input, or integers for a float
        input, raise `Error` naming the input, its dtype and the dtype expected. Values that are not
        arrays go through `numpy.asarray`. The outputs own the buffers the run wrote (no copy).
        """

    def embed(
        self,
        texts: Iterable[_Text],
        pooling: Optional[_Pooling] = None,
        normalize: Optional[bool] = None,
        max_length: Optional[int] = None,
    ) -> npt.NDArray[np.float32]:
        """One float32 vector per text, `[len(texts), width]`, with the plan's tokenizer.

        bytes must be UTF-8. None takes the plan's default. Raises `Error` for an empty list, a plan
        without a tokenizer, an unknown pooling, or bytes that are not UTF-8 (naming the text's index).
        """

    def tokenize(
        self, texts: Iterable[_Text], max_length: Optional[int] = None
    ) -> dict[str, np.ndarray]:
        """The model inputs `embed` makes for `texts`: padded to the longest, truncated to `max_length`."""

    @property
    def inputs(self) -> list[TensorInfo]: ...
    @property
    def outputs(self) -> list[TensorInfo]: ...
    @property
    def text(self) -> Optional[TextInfo]:
        """The plan's text section, or None when it was compiled without a tokenizer."""

    @property
    def threads(self) -> int: ...
