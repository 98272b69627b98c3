"""A fast, exact parse of the common big predict body: one dense numeric array for one input.

A 1352x900 photo sent as uint8 pixels is 3.6 million JSON integers (~20 MB). json.loads plus
np.array on it costs about 40 model calls; this module turns the same bytes into the same tensor
with a few whole-buffer passes (bytes.translate, numpy), about 8x faster (~100 ms of CPU).

It is a pure optimisation of serving/json_tensor.py: it either returns exactly the tensor the
general path would build, or None, and then the general path runs (and words any error as TF
Serving does). It accepts only bodies shaped like

    {"instances": [[...numbers...]]}      or      {"signature_name": "s", "inputs": [...]}

where the array holds plain JSON numbers, nested densely (every list at a level has the same
length, no empty list). How it proves that without a JSON parser:

1. The array is the span from the first "[" to the last "]" of the body; the rest, with the
   array replaced by null, is parsed with json and must put the array at "instances"/"inputs".
2. With numbers and whitespace deleted, the array must be exactly the bracket-and-comma skeleton
   of a dense array of the shape read off its first elements (one bytes comparison).
3. Every pair of adjacent characters (whitespace removed) must be one JSON allows inside a
   numeric array: no "[,", ",]", ",,", "]5", "5[", "1-", "-.", ".e"... and no leading zeros.
   With 2., this puts exactly one number between two separators at the leaf level.
   (Characters are mapped to classes, pairs of classes to flags, each with one bytes.translate.)
4. numpy.fromstring reads the numbers between the commas (brackets blanked); it fails on anything
   between two commas that isn't "whitespace, number, whitespace", so reading exactly prod(shape)
   numbers proves no number was split by whitespace.
5. Values the general path would reject or might read differently (out of range for the dtype,
   floats for an integer input, integers a double can't hold exactly, inf) fall back.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from serving.errors import StatusError
from serving.json_tensor import MAX_TENSOR_RANK, NUMPY_DTYPES, RequestFormat

_WHITESPACE = b" \t\n\r"

# Character classes, one byte each so that a pair fits in a byte (first << 4 | second). Digits
# keep their value, so numbers can be read from the classes too.
_OPEN, _CLOSE, _COMMA, _MINUS, _POINT, _OTHER = range(10, 16)  # _POINT: "." or an exponent mark
_CLASSES = bytearray([_OTHER] * 256)  # "+" too: "1e+5" is rare enough to leave to json
_CLASSES[ord("0") : ord("9") + 1] = range(10)
for _char, _class in {"[": _OPEN, "]": _CLOSE, ",": _COMMA, "-": _MINUS}.items():
    _CLASSES[ord(_char)] = _class
_CLASSES[ord(".")] = _CLASSES[ord("e")] = _CLASSES[ord("E")] = _POINT
_CLASSES = bytes(_CLASSES)
_DIGITS = tuple(range(10))
_NUMBER_CLASSES = bytes([*_DIGITS, _MINUS, _POINT])

# What may follow each class inside a dense numeric JSON array (whitespace removed). "1.-5" gets
# through here ("." and "e" share a class) but not through numpy.fromstring.
_FOLLOWERS = {
    _OPEN: (_OPEN, *_DIGITS, _MINUS),
    _CLOSE: (_CLOSE, _COMMA),
    _COMMA: (_OPEN, *_DIGITS, _MINUS),
    **{digit: (*_DIGITS, _COMMA, _CLOSE, _POINT) for digit in _DIGITS},
    _MINUS: _DIGITS,
    _POINT: (*_DIGITS, _MINUS),
}
# Each pair of classes maps to a flag byte, so one bytes.translate flags all pairs, a byte search
# finds a bad one, and numpy finds the numbers' ends and the patterns spanning two pairs.
_OK, _BAD, _SEP_ZERO, _SEP_MINUS, _MINUS_ZERO, _DIGIT_PAIR, _END = range(7)
_PAIR_FLAGS = bytearray([_BAD] * 256)
for _first, _seconds in _FOLLOWERS.items():
    for _second in _seconds:
        _PAIR_FLAGS[_first << 4 | _second] = _OK
for _sep in (_OPEN, _COMMA):
    _PAIR_FLAGS[_sep << 4 | 0] = _SEP_ZERO
    _PAIR_FLAGS[_sep << 4 | _MINUS] = _SEP_MINUS
_PAIR_FLAGS[_MINUS << 4 | 0] = _MINUS_ZERO
for _first in _DIGITS:
    for _second in _DIGITS:
        _PAIR_FLAGS[_first << 4 | _second] = _DIGIT_PAIR
    _PAIR_FLAGS[_first << 4 | _COMMA] = _PAIR_FLAGS[_first << 4 | _CLOSE] = _END
_PAIR_FLAGS = bytes(_PAIR_FLAGS)
# Ten digits in a row: a number that may not fit int32 (9 digits always do).
_TEN_DIGITS = bytes([_DIGIT_PAIR] * 9)

_BLANK_BRACKETS = bytes.maketrans(b"[]", b"  ")
# Longest number _read_integers reads (int32 holds every 9-digit number), and the characters
# it reads in one step (its temporaries are ~6x that, per core).
_MAX_DIGITS = 9
_STEP = 1 << 18
_READERS = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="read-numbers")
_HEAD = re.compile(rb'"(instances|inputs)"\s*:\s*\Z')
_KNOWN_KEYS = {"signature_name", "instances", "inputs"}
_INT_DTYPES = {"DT_INT8", "DT_INT16", "DT_INT32", "DT_UINT8", "DT_INT64", "DT_UINT32", "DT_UINT64"}
# Integer range each dtype accepts from JSON (rapidjson's IsInt / IsInt64 / IsUint).
_INT_RANGES = {
    "DT_INT64": (-(2**63) + 1, 2**63 - 2),  # the extremes may be strtoll's clamped overflow
    "DT_UINT32": (0, 2**32 - 1),
    "DT_UINT64": (0, 2**63 - 2),  # larger ones don't fit int64 parsing: general path
}
_INT32_RANGE = (-(2**31), 2**31 - 1)
# Largest magnitude a float dtype is sure to take from any JSON number exactly like the general
# path: integers up to it are exact as doubles, so converting them straight to the dtype rounds
# once, as the general path's double -> float does. Larger ones are left to the general path.
_FLOAT_MAX_EXACT = {"DT_FLOAT": 2**53 - 1, "DT_DOUBLE": 2**53 - 1}

ParsedRequest = tuple[str, RequestFormat, dict[str, np.ndarray]]


def parse_predict_request(
    body: bytes | bytearray, lookup_inputs: Callable[[str], Mapping[str, str]]
) -> ParsedRequest | None:
    """(signature name, format, {input: tensor}) for a body this module handles, else None."""
    start, end = body.find(b"["), body.rfind(b"]") + 1
    if start < 0 or end <= start or body.find(b'"', start, end) >= 0:
        return None  # no array, or one with strings ({"b64": ...}): not a numeric array
    # bytes whatever the body is (the HTTP layer hands over its read buffer, a bytearray):
    # numpy.fromstring takes only bytes.
    head, array, tail = body[:start], bytes(memoryview(body)[start:end]), body[end:]
    envelope = _envelope(head, tail)
    if envelope is None:
        return None
    signature_name, key = envelope
    try:
        inputs = lookup_inputs(signature_name)
    except StatusError:
        return None  # the general path raises it, after checking the body as TF Serving does
    if len(inputs) != 1:
        return None
    ((name, dtype),) = inputs.items()
    if dtype not in _INT_DTYPES and dtype not in _FLOAT_MAX_EXACT:
        return None
    tensor = parse_numeric_array(array, dtype)
    if tensor is None:
        return None
    return signature_name, RequestFormat(key), {name: tensor}


def _envelope(head: bytes, tail: bytes) -> tuple[str, str] | None:
    """(signature_name, "instances"|"inputs") when the body around the array is the plain form."""
    match = _HEAD.search(head)
    if not match:
        return None
    keys: list[str] = []

    def collect(pairs: list) -> dict:
        keys.extend(k for k, _ in pairs)
        return dict(pairs)

    try:
        doc = json.loads(head + b"null" + tail, object_pairs_hook=collect)
    except (ValueError, RecursionError):
        return None
    key = match.group(1).decode()
    if (
        not isinstance(doc, dict)
        or len(keys) != len(set(keys))  # duplicate keys: json and rapidjson keep different ones
        or not set(doc) <= _KNOWN_KEYS
        or ("instances" in doc) + ("inputs" in doc) != 1
        or doc.get(key, "") is not None
        or not isinstance(doc.get("signature_name", ""), str)
    ):
        return None
    return doc.get("signature_name", ""), key


def parse_numeric_array(array: bytes, dtype: str) -> np.ndarray | None:
    """The tensor of `dtype` a JSON array text denotes, or None when the general path must decide.

    `array` starts with "[" and ends with "]".
    """
    classes = array.translate(_CLASSES, _WHITESPACE)
    shape = _dense_shape(classes.translate(None, _NUMBER_CLASSES))
    if shape is None:
        return None
    negatives = b"-" in array
    flags = _pair_flags(classes)
    if _BAD in flags or _leading_zero(flags, negatives):
        return None
    if negatives and not _minus_signs_ok(array):
        return None
    floats = b"." in array or b"e" in array or b"E" in array
    if floats and dtype in _INT_DTYPES:
        return None  # a type error: the general path says so
    values = None
    if not floats and dtype not in _INT_RANGES and not any(ws in array for ws in _WHITESPACE):
        values = _read_integers(classes, flags, negatives)
    if values is None:
        parse_as = _parse_dtype(dtype, floats, long_numbers=_TEN_DIGITS in flags)
        values = _read_numbers(array.translate(_BLANK_BRACKETS), parse_as)
    if values is None or values.size != math.prod(shape):
        return None
    if values.size and not _in_range(values, dtype):
        return None
    return values.reshape(shape).astype(NUMPY_DTYPES[dtype], copy=False)


def _read_numbers(text: bytes, dtype: type) -> np.ndarray | None:
    """The comma-separated numbers of `text`; None if a field isn't exactly one number."""
    try:
        return np.fromstring(text, dtype=dtype, sep=",")
    except ValueError:
        return None


def _read_integers(classes: bytes, flags: bytearray, negatives: bool) -> np.ndarray | None:
    """The integers of a checked array that had no whitespace, as int32, from its classes.

    Each number ends at a (digit, separator) pair; its value is summed digit by digit leftwards
    while the characters are digits. Faster than numpy.fromstring, but only without whitespace:
    "[1 2]" would read as 12. None for a number of 10 digits or more.

    Numbers are independent of each other, so the buffer is read in steps of _STEP characters,
    spread over the cores (numpy releases the GIL), each writing its numbers into the result:
    the temporaries of a step (indices, partial sums) stay a few MB whatever the body's size.
    """
    digits = np.frombuffer(classes, dtype=np.uint8)
    pairs = np.frombuffer(flags, dtype=np.uint8)
    steps = [(low, min(low + _STEP, pairs.size)) for low in range(0, pairs.size, _STEP)]
    counts = [int(np.count_nonzero(pairs[low:high] == _END)) for low, high in steps]
    offsets = np.cumsum([0, *counts]).tolist()
    values = np.empty(offsets[-1], dtype=np.int32)
    read = _READERS.map(
        lambda step, offset: _read_step(digits, pairs, *step, values[offset:], negatives),
        steps,
        offsets[:-1],
    )
    return values if all(list(read)) else None


def _read_step(
    digits: np.ndarray, pairs: np.ndarray, low: int, high: int, out: np.ndarray, negatives: bool
) -> bool:
    """Write the numbers whose last digit lies in pairs[low:high] to the start of `out` (see
    _read_integers); False for a number of 10 digits or more."""
    # The characters of the step with _MAX_DIGITS in front (non-digits before the buffer), so
    # that reading `place` characters left of any end stays inside.
    window = np.full(_MAX_DIGITS + high - low, _OTHER, dtype=np.uint8)
    start = max(0, low - _MAX_DIGITS)
    window[start - low + _MAX_DIGITS :] = digits[start:high]
    ends = np.flatnonzero(pairs[low:high] == _END)  # last digits, from low
    values = out[: ends.size]
    values[:] = window[_MAX_DIGITS:][ends]
    lengths = np.ones(ends.size, dtype=np.int32)
    more = np.ones(ends.size, dtype=bool)
    for place in range(1, _MAX_DIGITS + 1):
        # The view shifted by `place` puts the digit `place` left of each end at the end's index.
        digit = window[_MAX_DIGITS - place :][ends]
        more &= digit < 10  # the character right of it is a digit while `more` holds
        if not more.any():
            break
        digit *= more
        values += digit * np.int32(10**place)
        lengths += more
    else:
        return False
    if negatives:
        signs = window[ends + _MAX_DIGITS - lengths] == _MINUS
        np.negative(values, out=values, where=signs)
    return True


def _parse_dtype(dtype: str, floats: bool, long_numbers: bool) -> type:
    """What numpy reads the numbers as so that the result equals the general path's.

    Integers of at most 9 digits fit int32, the range TF Serving takes for its int32, int16, int8
    and uint8 inputs; it then truncates to the narrow type as a C cast does, which is what
    numpy.fromstring does when reading straight into that type (and the fastest way to read).
    """
    if floats:
        return np.float64
    if dtype in _INT_RANGES or long_numbers:
        return np.int64  # exact to 18 digits; overflow clamps to the extremes, which fall back
    if dtype in _FLOAT_MAX_EXACT:
        return np.int32
    return NUMPY_DTYPES[dtype]


def _pair_flags(classes: bytes) -> bytearray:
    """The flag of every pair of adjacent classes (see _PAIR_FLAGS), computed in steps so that
    only the flags take the body's size."""
    codes = np.frombuffer(classes, dtype=np.uint8)
    size = len(codes) - 1
    flags = bytearray(size)
    pair_codes = np.empty(min(size, _STEP), dtype=np.uint8)
    for low in range(0, size, _STEP):
        high = min(size, low + _STEP)
        step = pair_codes[: high - low]
        np.left_shift(codes[low:high], 4, out=step)
        np.bitwise_or(step, codes[low + 1 : high + 1], out=step)
        flags[low:high] = step.tobytes().translate(_PAIR_FLAGS)
    return flags


def _leading_zero(flags: bytearray, negatives: bool) -> bool:
    """Does a number start with "0" or "-0" followed by a digit ("01", "-007")? JSON forbids it.

    Pairs overlap (pair i is characters i and i+1), so "[01" is the flags (separator, "0"),
    (digit, digit) in a row; looked for in steps, so the temporaries stay small. (After an
    exponent mark, "1e-05", it is fine: that "-" follows "e", not a separator.)
    """
    codes = np.frombuffer(flags, dtype=np.uint8)
    for low in range(0, codes.size, _STEP):
        # A pair (separator, "0") is never last (the array ends with "]"), so the pair after
        # each is inside `step`, which reaches one pair past the step.
        step = codes[low : low + _STEP + 1]
        zeros = np.flatnonzero(step[:_STEP] == _SEP_ZERO)
        if (step[zeros + 1] == _DIGIT_PAIR).any():
            return True
    return negatives and bytes([_SEP_MINUS, _MINUS_ZERO, _DIGIT_PAIR]) in flags


def _dense_shape(skeleton: bytes) -> list[int] | None:
    """The shape whose dense-array skeleton ("[[,],[,]]" in class bytes) this is, or None."""
    rank = len(skeleton) - len(skeleton.lstrip(bytes([_OPEN])))
    if rank == 0 or rank > MAX_TENSOR_RANK:
        return None  # deeper than a tensor (the general path says so); checking it is quadratic
    close = skeleton.find(bytes([_CLOSE]), rank)
    if close < 0:
        return None
    shape = [close - rank + 1]  # innermost: leaves are blank, so "[" + commas + "]"
    length = close - rank + 2  # of one innermost list in the skeleton
    for level in range(rank - 2, -1, -1):
        # Step over this level's first list child by child (each as long as the first).
        count, pos = 1, level + 1 + length
        while pos < len(skeleton) and skeleton[pos] == _COMMA:
            count, pos = count + 1, pos + 1 + length
        shape.insert(0, count)
        length = pos - level + 1
    if _skeleton(shape) != skeleton:
        return None
    return shape


def _skeleton(shape: list[int]) -> bytes:
    open_, close, comma = bytes([_OPEN]), bytes([_CLOSE]), bytes([_COMMA])
    text = open_ + comma * (shape[-1] - 1) + close
    for size in reversed(shape[:-1]):
        text = open_ + comma.join([text] * size) + close
    return text


def _minus_signs_ok(array: bytes) -> bool:
    """A minus sign is followed by a digit (strtol would also take "- 5")."""
    text = np.frombuffer(array, dtype=np.uint8)
    following = text[np.flatnonzero(text == ord("-")) + 1]
    return bool(((following >= ord("0")) & (following <= ord("9"))).all())


def _in_range(values: np.ndarray, dtype: str) -> bool:
    """The general path would accept every value, and read it as the same number."""
    low, high = values.min(), values.max()
    if dtype in _FLOAT_MAX_EXACT:
        limit = _FLOAT_MAX_EXACT[dtype]
        return bool(-limit <= low and high <= limit)  # False for nan too
    low_ok, high_ok = _INT_RANGES.get(dtype, _INT32_RANGE)
    return bool(low_ok <= low and high <= high_ok)
