"""Request bodies → Python values: multipart uploads, ``.npy`` arrays, feature and tensor JSON.

Everything here works on bytes already in memory (the body-size limit is enforced while they stream
in, before this module sees them), creates no files and raises only :class:`~app.core.errors.ServiceError`
subclasses, so a malformed body is always a clear 4xx. Shape, dtype and finiteness of feature arrays
are checked by :meth:`app.core.predictor.Predictor.validate`, which knows the model's width; this module
checks structure. No web framework is imported.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.core.errors import InvalidFeaturesError, InvalidRequestError, UnsupportedMediaTypeError

__all__ = [
    "NPY_MEDIA_TYPE",
    "FeaturesPayload",
    "TensorPayload",
    "audio_from_body",
    "features_from_body",
    "media_type",
    "parse_npy",
    "tensor_from_json",
]

#: Media type of a NumPy ``.npy`` body.
NPY_MEDIA_TYPE = "application/x-npy"
#: Largest ``.npy`` header accepted (NumPy's own default limit for untrusted files).
_NPY_MAX_HEADER = 10_000
#: Media types taken as the raw audio file itself (besides ``audio/*``).
_RAW_AUDIO_TYPES = ("application/octet-stream",)


def media_type(content_type: str | None) -> str:
    """The lower-case media type of a Content-Type header, without parameters (``""`` if absent)."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def _is_json(media: str) -> bool:
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


# --- audio uploads --------------------------------------------------------------------------------------


def audio_from_body(body: bytes, content_type: str | None, field: str = "file") -> bytes:
    """The audio file in a request body: one multipart field, or the whole body.

    Args:
        body: The complete request body.
        content_type: Its Content-Type header: ``multipart/form-data`` (the file is the part named
            ``field``), ``audio/*`` or ``application/octet-stream`` (the body is the file).
        field: Name of the multipart field holding the file.

    Returns:
        The file's bytes.

    Raises:
        UnsupportedMediaTypeError: For any other Content-Type.
        InvalidRequestError: For a malformed multipart body or one without the field.

    Example:
        >>> audio_from_body(body, "multipart/form-data; boundary=xyz")[:4]
        b'RIFF'
    """
    media = media_type(content_type)
    if media.startswith("audio/") or media in _RAW_AUDIO_TYPES:
        return body
    if media != "multipart/form-data":
        raise UnsupportedMediaTypeError(
            f"send the audio as multipart/form-data with a field {field!r} (or as the body with an "
            f"audio/* or application/octet-stream Content-Type), not {media or 'no Content-Type'}"
        )
    return _multipart_field(body, content_type or "", field)


def _multipart_field(body: bytes, content_type: str, field: str) -> bytes:
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidRequestError("multipart/form-data Content-Type without a boundary")
    # Each part named `field` is a list of views of the body; other parts are only named.
    parts: dict[str, list[list[memoryview]]] = {}
    names: list[str] = []
    current: dict[str, Any] = {"headers": {}, "name": None, "field": b"", "value": b""}
    ended = False

    def on_part_begin() -> None:
        current.update(headers={}, name=None, field=b"", value=b"")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        current["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        current["value"] += data[start:end]

    def on_header_end() -> None:
        current["headers"][current["field"].lower()] = current["value"]
        current["field"], current["value"] = b"", b""

    def on_headers_finished() -> None:
        _, options = parse_options_header(current["headers"].get(b"content-disposition", b""))
        name = options.get(b"name")
        current["name"] = name.decode("utf-8", "replace") if name is not None else None
        if current["name"] is not None:
            names.append(current["name"])
        if current["name"] == field:
            parts.setdefault(field, []).append([])

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if current["name"] == field:  # other fields are ignored, not kept
            # A view, not a copy: the part is copied once, when its pieces are joined.
            parts[field][-1].append(memoryview(data)[start:end])

    def on_end() -> None:
        nonlocal ended
        ended = True

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_end": on_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise InvalidRequestError(f"malformed multipart body: {exc}") from exc
    if not ended:
        raise InvalidRequestError("malformed multipart body: it ends before its closing boundary")
    if field not in parts:
        found = ", ".join(repr(name) for name in names) or "none"
        raise InvalidRequestError(f"multipart body has no field {field!r} (fields: {found})")
    if len(parts[field]) > 1:
        raise InvalidRequestError(
            f"multipart body has {len(parts[field])} {field!r} parts; send exactly one audio file per request"
        )
    return b"".join(parts[field][0])


# --- precomputed features -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeaturesPayload:
    """Feature arrays from a request body, not yet checked against the model's width.

    Attributes:
        clips: One array-like per clip (nested lists from JSON, a float32 array from ``.npy``).
        ids: The client's id per clip for the batch form; ``None`` for a single clip.
    """

    clips: list[Any]
    ids: list[str | int] | None


def features_from_body(body: bytes, content_type: str | None) -> FeaturesPayload:
    """Parse ``POST /v1/predict/features`` bodies.

    Accepted forms: JSON ``{"features": [[...F...], ...]}`` (one clip), JSON
    ``{"items": [{"id": ..., "features": [[...]]}, ...]}`` (a batch), or a ``.npy`` file of one
    float32 ``(T, F)`` array with Content-Type ``application/x-npy``.

    Raises:
        UnsupportedMediaTypeError: For another Content-Type.
        InvalidFeaturesError: For bodies that are not one of these forms.
    """
    media = media_type(content_type)
    if media == NPY_MEDIA_TYPE:
        return FeaturesPayload(clips=[parse_npy(body)], ids=None)
    if not _is_json(media):
        raise UnsupportedMediaTypeError(
            f"send features as application/json or {NPY_MEDIA_TYPE}, not {media or 'no Content-Type'}"
        )
    doc = _load_json(body, InvalidFeaturesError)
    if not isinstance(doc, dict) or len(doc.keys() & {"features", "items"}) != 1:
        raise InvalidFeaturesError(
            'expected a JSON object with either "features": [[...], ...] (one clip) or '
            '"items": [{"id": ..., "features": [[...], ...]}, ...] (a batch)'
        )
    if "features" in doc:
        _refuse_booleans(doc["features"], '"features"', InvalidFeaturesError)
        return FeaturesPayload(clips=[doc["features"]], ids=None)
    items = doc["items"]
    if not isinstance(items, list) or not items:
        raise InvalidFeaturesError('"items" must be a non-empty list of {"id": ..., "features": [[...]]}')
    clips, ids = [], []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "features" not in item or "id" not in item:
            raise InvalidFeaturesError(f'items[{i}] must be an object with "id" and "features"')
        ident = item["id"]
        if isinstance(ident, bool) or not isinstance(ident, str | int):
            raise InvalidFeaturesError(f"items[{i}].id must be a string or an integer, got {ident!r}")
        _refuse_booleans(item["features"], f"items[{i}].features", InvalidFeaturesError)
        ids.append(ident)
        clips.append(item["features"])
    return FeaturesPayload(clips=clips, ids=ids)


def parse_npy(body: bytes) -> npt.NDArray[np.float32]:
    """Read one float32 ``(T, F)`` array from ``.npy`` bytes, without pickles or copies of the data.

    Only the header is parsed as Python literals (by NumPy, with its size limit); object dtypes are
    refused before any data is looked at, and the data must be exactly ``T * F * 4`` bytes.

    Raises:
        InvalidFeaturesError: If the bytes are not such a file.
    """
    fp = io.BytesIO(body)
    try:
        major, _ = np.lib.format.read_magic(fp)
        if major == 1:
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp, max_header_size=_NPY_MAX_HEADER)
        elif major in (2, 3):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp, max_header_size=_NPY_MAX_HEADER)
        else:
            raise ValueError(f"unsupported .npy format version {major}")
    except (ValueError, SyntaxError, TypeError, EOFError) as exc:
        raise InvalidFeaturesError(f"not a valid .npy file: {exc}") from exc
    if dtype.hasobject or dtype.kind != "f" or dtype.itemsize != 4:
        raise InvalidFeaturesError(f".npy array must be float32, got dtype {dtype}")
    if len(shape) != 2:
        raise InvalidFeaturesError(f".npy array must be 2-D (T, F), got shape {shape}")
    offset = fp.tell()
    expected = math.prod(shape) * dtype.itemsize
    if len(body) - offset != expected:
        raise InvalidFeaturesError(
            f".npy header declares shape {shape} ({expected} bytes of data), the body holds "
            f"{len(body) - offset}"
        )
    data = np.frombuffer(body, dtype=dtype, count=math.prod(shape), offset=offset)
    array = data.reshape(shape, order="F" if fortran else "C")
    return np.asarray(array, dtype=np.float32)  # converts big-endian float32; a no-op otherwise


# --- Open Inference Protocol tensors --------------------------------------------------------------------


@dataclass(frozen=True)
class TensorPayload:
    """An Open Inference Protocol v2 inference request, parsed.

    Attributes:
        id: The request id to echo (``None`` if absent).
        name: The input tensor's name.
        shape: Its declared shape.
        data: Its values, flattened in row-major order (not yet checked for finiteness).
        outputs: The requested output names (``None``: all).
    """

    id: str | None
    name: str
    shape: tuple[int, ...]
    data: npt.NDArray[Any]
    outputs: list[str] | None


def tensor_from_json(body: bytes) -> TensorPayload:
    """Parse an Open Inference Protocol v2 JSON inference request with exactly one input tensor.

    Raises:
        InvalidRequestError: If the body is not such a request, or ``data`` does not hold
            ``prod(shape)`` real numbers.
    """
    doc = _load_json(body, InvalidRequestError)
    if not isinstance(doc, dict):
        raise InvalidRequestError("expected a JSON object with an 'inputs' list")
    ident = doc.get("id")
    if ident is not None and not isinstance(ident, str):
        raise InvalidRequestError(f"'id' must be a string, got {ident!r}")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidRequestError("'inputs' must be a list of exactly one tensor object")
    tensor = inputs[0]
    name, shape, datatype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
    if not isinstance(name, str):
        raise InvalidRequestError("inputs[0].name must be a string")
    if datatype != "FP32":
        raise InvalidRequestError(f"inputs[0].datatype must be 'FP32', got {datatype!r}")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise InvalidRequestError(f"inputs[0].shape must be a list of non-negative integers, got {shape!r}")
    _refuse_booleans(tensor.get("data"), "inputs[0].data", InvalidRequestError)
    try:
        # Nested lists are allowed by the protocol too; flattening them keeps row-major order.
        data = np.asarray(tensor.get("data"))
    except (ValueError, TypeError) as exc:
        raise InvalidRequestError(f"inputs[0].data is not a (flattened) array of numbers: {exc}") from exc
    if data.dtype.kind not in "iuf":
        raise InvalidRequestError(f"inputs[0].data must hold numbers, got {data.dtype} values")
    data = data.reshape(-1)
    if data.size != math.prod(shape):
        raise InvalidRequestError(
            f"inputs[0].data holds {data.size} values, shape {shape} needs {math.prod(shape)}"
        )
    outputs = doc.get("outputs")
    names: list[str] | None = None
    if outputs is not None:
        if not isinstance(outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
        ):
            raise InvalidRequestError("'outputs' must be a list of objects with a 'name'")
        names = [o["name"] for o in outputs]
    return TensorPayload(id=ident, name=name, shape=tuple(shape), data=data, outputs=names)


def _refuse_booleans(value: Any, where: str, error: type[InvalidFeaturesError | InvalidRequestError]) -> None:
    """Refuse JSON ``true``/``false`` among numbers: NumPy would silently read them as 1.0 and 0.0."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            if any(v is True or v is False for v in item):
                raise error(f"{where} holds true/false; numbers are expected")
            stack.extend(v for v in item if isinstance(v, list))
        elif item is True or item is False:
            raise error(f"{where} holds true/false; numbers are expected")


def _load_json(body: bytes, error: type[InvalidFeaturesError | InvalidRequestError]) -> Any:
    if not body:
        raise error("the request body is empty; a JSON object is expected")
    try:
        # Python's parser accepts NaN/Infinity, so non-finite values reach the finiteness check
        # (with its "expected shape" message) instead of failing as a syntax error.
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError, UnicodeDecodeError and Python's limit on the digits of an
        # integer (4300), which json raises for a 5000-digit number.
        raise error(f"the body is not valid JSON: {exc}") from exc
