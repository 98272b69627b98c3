"""The numpy fast path (serving/fast_tensor.py) against the general JSON path (json_tensor.py).

For every body, the fast path must either build exactly the general path's tensor or decline
(None) so the general path decides; it must never accept a body the general path rejects. The
common forms (any whitespace, negative ints, floats for float inputs, any nesting) must take the
fast path.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from serving import fast_tensor, json_tensor
from serving.errors import StatusError


def general(body: bytes, inputs: dict[str, str]):
    """(format, tensors) from the general path, or the StatusError it raises."""
    try:
        doc = json_tensor.parse_json_document(body)
        json_tensor.signature_name_of(doc)
        return json_tensor.request_tensors(doc, inputs)
    except StatusError as e:
        return e


def fast(body: bytes, inputs: dict[str, str]):
    parsed = fast_tensor.parse_predict_request(body, lambda _signature: inputs)
    return None if parsed is None else parsed[1:]


def assert_same(body: bytes, dtype: str, must_be_fast: bool) -> None:
    inputs = {"x": dtype}
    expected, got = general(body, inputs), fast(body, inputs)
    if isinstance(expected, StatusError):
        assert got is None, f"fast path accepted what the general path rejects: {expected}"
        return
    if got is None:
        assert not must_be_fast, f"common form fell back to the slow path: {body[:200]!r}"
        return
    (fmt, tensors), (fast_fmt, fast_tensors) = expected, got
    assert fast_fmt == fmt
    assert fast_tensors["x"].dtype == tensors["x"].dtype
    assert fast_tensors["x"].shape == tensors["x"].shape
    np.testing.assert_array_equal(fast_tensors["x"], tensors["x"])


def spaced(text: str, rng: random.Random) -> str:
    """Insert random JSON whitespace around every structural character."""
    out = []
    for char in text:
        if char in "[],":
            out.append(rng.choice(["", " ", "\n  ", "\t", "\r\n"]))
            out.append(char)
            out.append(rng.choice(["", " ", "\n    ", "\t"]))
        else:
            out.append(char)
    return "".join(out)


def formats(array: list, rng: random.Random) -> list[str]:
    return [
        json.dumps(array),
        json.dumps(array, separators=(",", ":")),
        json.dumps(array, indent=2),
        spaced(json.dumps(array, separators=(",", ":")), rng),
    ]


def envelopes(array_text: str) -> list[str]:
    return [
        '{"instances": ' + array_text + "}",
        '{"inputs":' + array_text + "}",
        '{"signature_name": "serving_default", "instances": ' + array_text + "}",
        ' \n{ "inputs" : ' + array_text + ' , "signature_name":"serving_default" }\n',
    ]


INT_CASES = {
    "DT_UINT8": lambda rng, n: [rng.randint(0, 255) for _ in range(n)],
    "DT_INT32": lambda rng, n: [rng.randint(-(2**31), 2**31 - 1) for _ in range(n)],
    "DT_INT8": lambda rng, n: [rng.randint(-300, 300) for _ in range(n)],  # wraps, as in TF
    "DT_INT64": lambda rng, n: [rng.randint(-(2**62), 2**62) for _ in range(n)],
    "DT_UINT32": lambda rng, n: [rng.randint(0, 2**32 - 1) for _ in range(n)],
    # Past 2**24 a float rounds them (TF Serving >= 2.5 accepts them so): both paths alike.
    "DT_FLOAT": lambda rng, n: [rng.randint(-(2**40), 2**40) for _ in range(n)],
    "DT_DOUBLE": lambda rng, n: [rng.randint(-(2**53) + 1, 2**53 - 1) for _ in range(n)],
}


def nested(values: list, shape: list[int]) -> list:
    return np.array(values, dtype=object).reshape(shape).tolist()


@pytest.mark.parametrize("dtype", sorted(INT_CASES))
def test_integers_any_format_and_nesting_take_the_fast_path(dtype: str) -> None:
    rng = random.Random(dtype)
    for shape in ([5], [1, 4], [2, 3, 3], [1, 2, 2, 3], [3, 1, 1, 2]):
        values = INT_CASES[dtype](rng, int(np.prod(shape)))
        values[0] = 0  # a lone zero is a number, not a leading zero
        for text in formats(nested(values, shape), rng):
            for body in envelopes(text):
                assert_same(body.encode(), dtype, must_be_fast=True)


@pytest.mark.parametrize("dtype", ["DT_FLOAT", "DT_DOUBLE"])
def test_floats_take_the_fast_path_and_read_the_same_numbers(dtype: str) -> None:
    rng = random.Random(dtype)
    literals = ["0.5", "-0.25", "1e3", "1E-2", "-0.0", "0", "12.5e2", "3.14159265358979", "1e-05"]
    for shape in ([9], [3, 3], [1, 3, 1, 3]):
        items = [rng.choice(literals) for _ in range(int(np.prod(shape)))]
        text = json.dumps(nested(items, shape)).replace('"', "")
        for body in envelopes(text):
            assert_same(body.encode(), dtype, must_be_fast=True)
        values = [rng.uniform(-1e6, 1e6) for _ in range(int(np.prod(shape)))]
        for text in formats(nested(values, shape), rng):
            assert_same(('{"instances": ' + text + "}").encode(), dtype, must_be_fast=True)


@pytest.mark.parametrize(
    ("array", "dtype"),
    [
        ("[[1, 2], [3]]", "DT_UINT8"),  # ragged
        ("[[1, 2], 3]", "DT_UINT8"),
        ("[[1, 2], [3, [4]]]", "DT_UINT8"),
        ("[[], []]", "DT_UINT8"),  # empty
        ("[1, , 2]", "DT_UINT8"),
        ("[1, 2, ]", "DT_UINT8"),
        ("[, 1]", "DT_UINT8"),
        ("[01, 2]", "DT_UINT8"),  # leading zero
        ("[-01, 2]", "DT_INT32"),
        ("[1 2, 3]", "DT_UINT8"),  # two numbers in one slot
        ("[- 1, 2]", "DT_INT32"),
        ("[-, 2]", "DT_INT32"),
        ("[1-2, 3]", "DT_INT32"),
        ("[--1, 3]", "DT_INT32"),
        ("[+1, 2]", "DT_INT32"),
        ("[1.5, 2]", "DT_UINT8"),  # float for an int input
        ("[1e2, 2]", "DT_INT32"),
        ("[2147483648, 1]", "DT_INT32"),  # beyond int32: rapidjson's IsInt fails
        ("[-1, 2]", "DT_UINT32"),
        ("[9007199254740993, 1]", "DT_FLOAT"),  # an integer a double can't hold exactly
        ("[.5, 1]", "DT_FLOAT"),
        ("[1., 1]", "DT_FLOAT"),
        ("[1.e5, 1]", "DT_FLOAT"),
        ("[1e, 1]", "DT_FLOAT"),
        ("[1.5.5, 1]", "DT_FLOAT"),
        ("[1e5e5, 1]", "DT_FLOAT"),
        ("[-.5, 1]", "DT_FLOAT"),
        ("[NaN, 1]", "DT_FLOAT"),
        ("[1e999, 1]", "DT_FLOAT"),
        ("[[1, 2]3, [4, 5]]", "DT_UINT8"),  # a number outside the leaves
        ("[[1, ]2, [4, 5]]", "DT_UINT8"),
        ("[[1, 2], [3, 4]]]", "DT_UINT8"),
        ("[[1, 2], [3, 4]", "DT_UINT8"),
        ("[true, false]", "DT_UINT8"),
        ("[1, 2]", "DT_BOOL"),  # not a numeric input: not the fast path's business
        ("[1e+5, 1]", "DT_FLOAT"),  # valid, but "+" is left to the general path
        ("[1.-5, 1]", "DT_FLOAT"),
        ("[1,2,3-4]", "DT_INT32"),  # compact bodies are read without numpy.fromstring
        ("[[1,2],[3,04]]", "DT_UINT8"),
        ("[[1,2],[3,]4]", "DT_UINT8"),
        ("[1234567890,1]", "DT_INT32"),
    ],
)
def test_what_the_general_path_rejects_or_reads_otherwise_is_left_to_it(
    array: str, dtype: str
) -> None:
    for body in envelopes(array):
        assert_same(body.encode(), dtype, must_be_fast=False)


@pytest.mark.parametrize(
    "body",
    [
        '{"instances": [1, 2], "inputs": [1, 2]}',
        '{"instances": [1, 2], "instances": [3, 4]}',
        '{"instances": [1, 2], "other": 1}',
        '{"signature_name": 7, "instances": [1, 2]}',
        '{"outer": {"instances": [1, 2]}}',
        '{"instances": [1, 2]} trailing',
        '[{"instances": [1, 2]}]',
        '{"instances": [{"b64": "AAAA"}]}',
    ],
)
def test_only_the_plain_envelope_is_taken(body: str) -> None:
    assert_same(body.encode(), "DT_UINT8", must_be_fast=False)
    assert fast(body.encode(), {"x": "DT_UINT8"}) is None


def test_random_one_character_corruptions_never_diverge() -> None:
    """Mutate valid bodies one character at a time: the fast path never accepts a broken one."""
    rng = random.Random(7)
    alphabet = "0123456789-+.eE[], \n"
    for _ in range(400):
        dtype = rng.choice(["DT_UINT8", "DT_INT32", "DT_FLOAT"])
        shape = rng.choice([[4], [2, 3], [2, 2, 2]])
        values = [rng.randint(-20, 300) for _ in range(int(np.prod(shape)))]
        text = rng.choice(formats(nested(values, shape), rng))
        position = rng.randrange(len(text))
        corrupt = text[:position] + rng.choice(alphabet) + text[position + 1 :]
        if rng.random() < 0.3:
            corrupt = text[:position] + text[position + 1 :]
        assert_same(('{"instances": ' + corrupt + "}").encode(), dtype, must_be_fast=False)


def test_b64_decoding_accepts_and_refuses_what_binascii_strict_mode_does() -> None:
    """The server decodes {"b64"} with pybase64; it must agree with binascii's strict mode
    (TF Serving's absl::Base64Unescape: standard alphabet, padding optional)."""
    import base64
    import binascii

    def reference(text: str) -> bytes | None:
        try:
            return binascii.a2b_base64(text + "=" * (-len(text) % 4), strict_mode=True)
        except (binascii.Error, ValueError):
            return None

    def served(text: str) -> bytes | None:
        try:
            return json_tensor.decode_b64({"b64": text})
        except StatusError as e:
            assert e.message == "Unable to base64 decode"
            return None

    rng = random.Random(3)
    samples = ["", "QQ", "QR==", "QUI=", "Q===", "QQ=A", "=QQ=", "QQ==QUJD", "QU JD", "QUé="]
    for size in (1, 2, 3, 100, 70_001):
        text = base64.b64encode(rng.randbytes(size)).decode()
        samples += [text, text.rstrip("=")]
        for _ in range(20):  # one character replaced, inserted or removed anywhere
            i = rng.randrange(len(text))
            bad = rng.choice("=*-_.\n é")
            samples += [
                text[:i] + bad + text[i + 1 :],
                text[:i] + bad + text[i:],
                text[:i] + text[i + 1 :],
            ]
    for text in samples:
        assert served(text) == reference(text), repr(text[:40])


# ---- nesting, huge numbers, linear time --------------------------------------------------------


def test_nesting_deeper_than_a_tensor_is_invalid_argument_on_both_paths() -> None:
    for depth in (65, 500, 990, 5000, 200_000):
        body = b'{"instances": ' + b"[" * depth + b"1" + b"]" * depth + b"}"
        assert fast(body, {"x": "DT_UINT8"}) is None
        error = general(body, {"x": "DT_UINT8"})
        assert isinstance(error, StatusError), depth
        assert "nested deeper than 64 levels" in error.message
    sixty_four = b'{"inputs": ' + b"[" * 64 + b"1" + b"]" * 64 + b"}"
    assert general(sixty_four, {"x": "DT_UINT8"})[1]["x"].ndim == 64


def test_deep_nesting_under_an_unused_key_is_skipped_however_deep() -> None:
    deep = b"[" * 50_000 + b'{"a": [1, "]", {}]}' + b"]" * 50_000
    body = b'{"signature_name": "", "other": ' + deep + b', "instances": [[1, 2]]}'
    _, tensors = general(body, {"x": "DT_UINT8"})
    assert tensors["x"].tolist() == [[1, 2]]
    broken = body.replace(b'"a": [1', b'"a": [1,,')
    assert "JSON Parse error" in general(broken, {"x": "DT_UINT8"}).message


@pytest.mark.parametrize(
    "value",
    [
        *["1", "-0.5e3", '"s\\"]"', "[]", "{}", '[1, {"a": [true, null]}]', '{"a": {"b": []}}'],
        *["01", "[1,]", "[,1]", '{"a" 1}', '{"a": 1,}', "[1 2]", "{1: 2}", "[}", "tru", '"\\x"'],
    ],
)
def test_skipping_a_value_accepts_exactly_what_json_does(value: str) -> None:
    text = '{"other": ' + value + ' , "instances": [1]}'
    try:
        expected = json.loads(text)
    except ValueError:
        with pytest.raises(ValueError):
            json_tensor._parse_skipping_unused(text)
    else:
        del expected["other"]
        assert json_tensor._parse_skipping_unused(text) == expected


def test_a_5000_digit_integer_is_invalid_argument() -> None:
    body = b'{"instances": [' + b"7" * 5000 + b"]}"
    error = general(body, {"x": "DT_FLOAT"})
    assert error.message == "JSON Parse error: Number too big to be stored in double."


def test_utf16_bodies_are_refused() -> None:
    body = '{"instances": [1]}'.encode("utf-16")
    assert "Invalid encoding" in general(body, {"x": "DT_UINT8"}).message


def test_quoting_a_big_body_in_an_error_stops_at_the_cut() -> None:
    doc = {"instances": [[1, 2, 3]] * 1_000_000, "inputs": 1}
    quoted = json_tensor.json_value_to_string(doc)
    assert quoted.endswith("...(truncated)")
    assert len(quoted) == 1000 + len("...(truncated)")


@pytest.mark.parametrize("step", [1, 2, 7, 64])
def test_integers_read_in_small_steps_are_the_same(monkeypatch, step: int) -> None:
    """The integer reader cuts the buffer into steps: numbers across a cut read the same."""
    monkeypatch.setattr(fast_tensor, "_STEP", step)
    rng = random.Random(step)
    for dtype in ("DT_UINT8", "DT_INT32", "DT_FLOAT"):
        for shape in ([5], [2, 3, 3], [1, 4, 4, 3]):
            values = INT_CASES[dtype](rng, int(np.prod(shape)))
            body = json.dumps({"instances": nested(values, shape)}, separators=(",", ":"))
            assert_same(body.encode(), dtype, must_be_fast=True)
    for array in ("[[1,2],[3,04]]", "[[0,2],[-0,-01]]", "[10,20,300,0,01]"):  # leading zeros
        for body in envelopes(array):
            assert_same(body.encode(), "DT_INT32", must_be_fast=False)


def test_a_bytearray_body_parses_like_bytes() -> None:
    """The HTTP layer hands over the buffer it read the body into (a bytearray)."""
    bodies = [
        b'{"instances": [[1, 2], [3, 4]]}',
        b'{"instances": [[1,2],[3,4]]}',
        b'{"inputs": [1.5, -2e3]}',
        b'{"instances": [[1,22222222222,3]]}',
        b'{"instances": [1 2]}',
        b'{"instances": [{"b64": "AAAA"}]}',
    ]
    for dtype in ("DT_UINT8", "DT_FLOAT", "DT_INT64"):
        for body in bodies:
            inputs = {"x": dtype}
            expected, got = fast(body, inputs), fast(bytearray(body), inputs)
            assert (expected is None) == (got is None)
            if expected is not None:
                np.testing.assert_array_equal(got[1]["x"], expected[1]["x"])
            expected, got = general(body, inputs), general(bytearray(body), inputs)
            if isinstance(expected, StatusError):
                assert got.message == expected.message
            else:
                np.testing.assert_array_equal(got[1]["x"], expected[1]["x"])
