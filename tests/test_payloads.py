"""Tests for app.serving.payloads: multipart, .npy, feature and OIP tensor JSON → values or clear 4xx."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest

from app.core.errors import InvalidFeaturesError, InvalidRequestError, UnsupportedMediaTypeError
from app.serving.payloads import (
    NPY_MEDIA_TYPE,
    audio_from_body,
    features_from_body,
    media_type,
    parse_npy,
    tensor_from_json,
)


def multipart(
    fields: dict[str, tuple[str, bytes, str]], data: dict[str, str] | None = None
) -> tuple[bytes, str]:
    """Encode a multipart body exactly as an HTTP client sends it."""
    request = httpx.Request("POST", "http://x/", files=fields, data=data)
    return request.read(), request.headers["content-type"]


def npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


# --- multipart / raw audio ------------------------------------------------------------------------------


def test_multipart_file_field_is_extracted_byte_for_byte() -> None:
    payload = bytes(range(256)) * 1000 + b"\r\n--not-a-boundary\r\n"
    body, ctype = multipart({"file": ("a.wav", payload, "audio/wav")}, data={"note": "ignored"})
    assert audio_from_body(body, ctype) == payload


@pytest.mark.parametrize("ctype", ["audio/wav", "audio/flac; rate=44100", "application/octet-stream"])
def test_raw_audio_bodies_are_the_file(ctype: str) -> None:
    assert audio_from_body(b"RIFF1234", ctype) == b"RIFF1234"


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/json"])
def test_other_content_types_are_415(ctype: str | None) -> None:
    with pytest.raises(UnsupportedMediaTypeError, match="multipart/form-data") as info:
        audio_from_body(b"{}", ctype)
    assert info.value.status_code == 415


def test_multipart_without_the_field_names_the_fields_found() -> None:
    body, ctype = multipart({"audio": ("a.wav", b"RIFF", "audio/wav")})
    with pytest.raises(InvalidRequestError, match=r"no field 'file' \(fields: 'audio'\)"):
        audio_from_body(body, ctype)


def test_multipart_without_boundary_or_truncated_is_422() -> None:
    body, ctype = multipart({"file": ("a.wav", b"RIFF" * 100, "audio/wav")})
    with pytest.raises(InvalidRequestError, match="boundary"):
        audio_from_body(body, "multipart/form-data")
    with pytest.raises(InvalidRequestError, match="closing boundary"):
        audio_from_body(body[: len(body) // 2], ctype)
    with pytest.raises(InvalidRequestError, match="malformed multipart"):
        audio_from_body(b"garbage without any boundary at all", ctype)


def test_media_type_strips_parameters_and_case() -> None:
    assert media_type("Application/JSON; charset=utf-8") == "application/json"
    assert media_type(None) == ""


# --- .npy -----------------------------------------------------------------------------------------------


def test_npy_round_trip_c_fortran_and_big_endian() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(parse_npy(npy(x)), x)
    np.testing.assert_array_equal(parse_npy(npy(np.asfortranarray(x))), x)
    big = parse_npy(npy(x.astype(">f4")))
    assert big.dtype == np.float32
    np.testing.assert_array_equal(big, x)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"", "not a valid .npy"),
        (b"\x93NUMPY\x01\x00garbage", "not a valid .npy"),
        (npy(np.zeros((2, 3), np.float64)), "must be float32"),
        (npy(np.zeros((2, 3), np.int32)), "must be float32"),
        (npy(np.array([[{"a": 1}]], dtype=object), allow_pickle=True), "must be float32"),
        (npy(np.zeros((2, 3, 4), np.float32)), "2-D"),
        (npy(np.zeros((2, 3), np.float32))[:-4], "body holds"),
        (npy(np.zeros((2, 3), np.float32)) + b"\0" * 4, "body holds"),
    ],
)
def test_bad_npy_is_refused_without_unpickling(body: bytes, match: str) -> None:
    with pytest.raises(InvalidFeaturesError, match=match):
        parse_npy(body)


# --- feature JSON ---------------------------------------------------------------------------------------


def test_features_single_batch_and_npy_forms() -> None:
    single = features_from_body(json.dumps({"features": [[1.0, 2.0]]}).encode(), "application/json")
    assert single.ids is None
    assert single.clips == [[[1.0, 2.0]]]
    batch = features_from_body(
        json.dumps({"items": [{"id": "a", "features": [[1.0]]}, {"id": 7, "features": [[2.0]]}]}).encode(),
        "application/json; charset=utf-8",
    )
    assert batch.ids == ["a", 7]
    assert batch.clips == [[[1.0]], [[2.0]]]
    x = np.ones((2, 3), np.float32)
    from_npy = features_from_body(npy(x), NPY_MEDIA_TYPE)
    np.testing.assert_array_equal(from_npy.clips[0], x)


def test_nan_in_json_reaches_the_finiteness_check() -> None:
    parsed = features_from_body(b'{"features": [[NaN, Infinity]]}', "application/json")
    assert np.isnan(parsed.clips[0][0][0])


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "either"),
        (b'{"features": [], "items": []}', "either"),
        (b'{"items": []}', "non-empty list"),
        (b'{"items": [{"features": [[1]]}]}', r'items\[0\] must be an object with "id"'),
        (b'{"items": [{"id": true, "features": [[1]]}]}', r"items\[0\]\.id"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_malformed_feature_json_is_422(body: bytes, match: str) -> None:
    with pytest.raises(InvalidFeaturesError, match=match) as info:
        features_from_body(body, "application/json")
    assert info.value.status_code == 422


def test_features_with_another_content_type_are_415() -> None:
    with pytest.raises(UnsupportedMediaTypeError, match="application/x-npy"):
        features_from_body(b"{}", "text/csv")


# --- Open Inference Protocol ----------------------------------------------------------------------------


def infer_body(**tensor: object) -> bytes:
    base: dict[str, object] = {"name": "features", "shape": [1, 2, 3], "datatype": "FP32", "data": [0.5] * 6}
    base.update(tensor)
    return json.dumps({"id": "r1", "inputs": [base], "outputs": [{"name": "emotion"}]}).encode()


def test_tensor_request_is_parsed_flat_or_nested() -> None:
    t = tensor_from_json(infer_body())
    assert (t.id, t.name, t.shape, t.outputs) == ("r1", "features", (1, 2, 3), ["emotion"])
    assert t.data.shape == (6,)
    nested = tensor_from_json(infer_body(data=[[[1, 2, 3], [4, 5, 6]]]))
    np.testing.assert_array_equal(nested.data, np.arange(1, 7))


@pytest.mark.parametrize(
    ("tensor", "match"),
    [
        ({"datatype": "FP64"}, "datatype must be 'FP32'"),
        ({"shape": [1, -2, 3]}, "non-negative integers"),
        ({"shape": "1,2,3"}, "non-negative integers"),
        ({"data": [0.5] * 5}, "holds 5 values, shape"),
        ({"data": ["a"] * 6}, "must hold numbers"),
        ({"data": [[1, 2], [3]]}, "not a \\(flattened\\) array"),
        ({"name": 3}, "name must be a string"),
    ],
)
def test_bad_tensors_are_422(tensor: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        tensor_from_json(infer_body(**tensor))


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"inputs": []}, "exactly one"),
        ({"id": 5, "inputs": []}, "'id' must be a string"),
        ([], "JSON object"),
    ],
)
def test_bad_inference_documents_are_422(doc: object, match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        tensor_from_json(json.dumps(doc).encode())


def test_two_file_parts_are_refused_not_concatenated() -> None:
    request = httpx.Request(
        "POST",
        "http://x/",
        files=[("file", ("a.wav", b"RIFF1", "audio/wav")), ("file", ("b.png", b"PNG", "image/png"))],
    )
    with pytest.raises(InvalidRequestError, match="2 'file' parts; send exactly one"):
        audio_from_body(request.read(), request.headers["content-type"])


def test_a_large_file_part_comes_back_whole_from_views_of_the_body() -> None:
    payload = bytes(range(256)) * 40_000  # 10 MB with every byte value, boundary-like runs included
    body, ctype = multipart({"file": ("a.bin", payload, "application/octet-stream")}, {"other": "x"})
    assert audio_from_body(body, ctype) == payload


def test_an_integer_of_thousands_of_digits_is_422_not_500() -> None:
    digits = b"1" * 5001
    with pytest.raises(InvalidFeaturesError, match=r"not valid JSON.*digits"):
        features_from_body(b'{"features": [[' + digits + b"]]}", "application/json")
    doc = b'{"inputs": [{"name": "features", "shape": [1], "datatype": "FP32", "data": [' + digits + b"]}]}"
    with pytest.raises(InvalidRequestError, match="digits"):
        tensor_from_json(doc)


@pytest.mark.parametrize(
    "doc",
    [
        {"features": [[0.5, True]]},
        {"items": [{"id": 1, "features": [[0.5, 0.1], [False, 0.2]]}]},
    ],
)
def test_json_booleans_are_not_read_as_numbers(doc: object) -> None:
    with pytest.raises(InvalidFeaturesError, match="true/false"):
        features_from_body(json.dumps(doc).encode(), "application/json")


def test_json_booleans_in_a_tensor_are_refused() -> None:
    doc = {"inputs": [{"name": "features", "shape": [2], "datatype": "FP32", "data": [1.0, True]}]}
    with pytest.raises(InvalidRequestError, match="true/false"):
        tensor_from_json(json.dumps(doc).encode())
