"""Read the TF Object Detection API's label map (a text-format protobuf, `.pbtxt`).

The format is `item { name: "..." id: N display_name: "..." }` repeated, with `#` comments,
fields in any order, single or double quotes, optional `:` before a nested block and optional
`,`/`;` separators. Parsing it here keeps protobuf (and TensorFlow) out of the client.
Unknown fields (keypoints, frequency, ...) are read and ignored, so richer maps still load.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path

from object_detection.errors import LabelMapError

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<punct>[{}:,;<>\[\]])
  | (?P<word>[-+\w.]+)
  | (?P<other>.)  # anything else: an error (a newline is always space)
    """,
    re.VERBOSE,
)
MAX_CLASS_ID = 2**31 - 1  # ids are int32 in the label map's proto
_MAX_DEPTH = 100  # nested blocks; label maps use 2 or 3, a deeper file would exhaust the stack


@dataclass(frozen=True)
class LabelMap(Mapping[int, str]):
    """Class id -> display label. A missing id gets "id N" from `label()`, never a KeyError."""

    labels: dict[int, str]

    def __getitem__(self, class_id: int) -> str:
        return self.labels[class_id]

    def __iter__(self):
        return iter(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def label(self, class_id: int) -> str:
        return self.labels.get(class_id, f"id {class_id}")

    def id_of(self, label: str) -> int:
        """The id of a label (case-insensitive), 0 when the map has none: for models that name
        their classes themselves, so that their detections still carry the map's ids."""
        return self._ids.get(label.casefold(), 0)

    @cached_property
    def _ids(self) -> dict[str, int]:
        """Label -> id; the first id wins when two share a label."""
        return {text.casefold(): class_id for class_id, text in reversed(self.labels.items())}


def load_label_map(path: str | Path) -> LabelMap:
    """Read a label map file; raises LabelMapError (with file:line) when it is malformed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelMapError(f"cannot read label map {path}: {exc}") from exc
    return parse_label_map(text, source=str(path))


def parse_label_map(text: str, source: str = "<label map>") -> LabelMap:
    """Parse label map text. display_name wins over name; ids must be unique integers >= 0."""
    labels: dict[int, str] = {}
    for fields, line in _Parser(text, source).items():
        where = f"{source}:{line}"
        if "id" not in fields:
            raise LabelMapError(f"{where}: item has no id")
        try:
            class_id = int(fields["id"])
        except ValueError:
            raise LabelMapError(f"{where}: id {fields['id']!r} is not an integer") from None
        if not 0 <= class_id <= MAX_CLASS_ID:
            raise LabelMapError(f"{where}: id {class_id} is not between 0 and {MAX_CLASS_ID}")
        if class_id in labels:
            raise LabelMapError(f"{where}: id {class_id} appears twice")
        labels[class_id] = fields.get("display_name") or fields.get("name") or f"id {class_id}"
    if not labels:
        raise LabelMapError(f"{source}: no `item {{ ... }}` entries found")
    return LabelMap(labels)


class _Parser:
    """Just enough of the protobuf text format for label maps: fields, strings, nested blocks."""

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.tokens: list[tuple[str, str, int]] = []  # (kind, text, line)
        line = 1
        # One finditer over the text, not a match() call per token: half the time of reading the
        # COCO map, which every run of the client does. `other` (any character the others do not
        # take) keeps finditer from skipping ahead, so the scan is a match at every position.
        for match in _TOKEN.finditer(text):
            kind = match.lastgroup
            if kind == "space":  # only whitespace runs hold newlines: comments end before one
                line += match.group().count("\n")
            elif kind == "other":
                raise LabelMapError(f"{source}:{line}: unexpected character {match.group()!r}")
            else:
                self.tokens.append((kind, match.group(), line))
        self.pos = 0
        self.depth = 0  # blocks open

    def items(self) -> list[tuple[dict[str, str], int]]:
        """Top-level `item` blocks as {field: scalar text} with the line each starts on."""
        found = []
        while self.pos < len(self.tokens):
            name, line = self._field_name()
            value = self._value()
            if name == "item":
                if not isinstance(value, dict):
                    raise LabelMapError(f"{self.source}:{line}: `item` must be a {{ ... }} block")
                found.append((value, line))
        return found

    def _field_name(self) -> tuple[str, int]:
        kind, text, line = self._next("a field name")
        if kind != "word":
            raise LabelMapError(f"{self.source}:{line}: expected a field name, found {text!r}")
        return text, line

    def _value(self) -> dict[str, str] | str:
        kind, text, line = self._next("a value")
        if text == ":":
            kind, text, line = self._next("a value")
        if text in ("{", "<"):
            value = self._block("}" if text == "{" else ">", line)
        elif kind == "string":
            value = self._string(text, line)
        elif kind == "word":
            value = text
        else:
            raise LabelMapError(f"{self.source}:{line}: expected a value, found {text!r}")
        self._skip_separator()
        return value

    def _string(self, text: str, line: int) -> str:
        if "\\" not in text and "\r" not in text:  # nothing to unescape: the text in the quotes
            return text[1:-1]
        try:
            import ast  # only for strings with escapes: 5 ms of every start-up otherwise

            return ast.literal_eval(text)  # handles \" \' \\ \n escapes like protobuf does
        except (SyntaxError, ValueError):  # "\x", "\N{nonsense}", a carriage return...
            raise LabelMapError(f"{self.source}:{line}: malformed string {text[:60]}") from None

    def _block(self, closing: str, opened_on: int) -> dict[str, str]:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise LabelMapError(
                f"{self.source}:{opened_on}: blocks nested more than {_MAX_DEPTH} deep"
            )
        fields: dict[str, str] = {}
        while True:
            if self.pos >= len(self.tokens):
                raise LabelMapError(f"{self.source}:{opened_on}: block opened here is not closed")
            if self.tokens[self.pos][1] == closing:
                self.pos += 1
                self.depth -= 1
                return fields
            name, _ = self._field_name()
            value = self._value()
            if isinstance(value, str):  # nested blocks (keypoints...) are not used
                fields[name] = value

    def _skip_separator(self) -> None:
        if self.pos < len(self.tokens) and self.tokens[self.pos][1] in (",", ";"):
            self.pos += 1

    def _next(self, expected: str) -> tuple[str, str, int]:
        if self.pos >= len(self.tokens):
            last_line = self.tokens[-1][2] if self.tokens else 1
            raise LabelMapError(f"{self.source}:{last_line}: file ends where {expected} was due")
        token = self.tokens[self.pos]
        self.pos += 1
        return token


def coco_label_map() -> LabelMap:
    """The COCO label map shipped with the package (the same file as data/labels.pbtxt), read
    as package data: the same way from a checkout, a wheel or a zip."""
    resource = resources.files("object_detection").joinpath("data").joinpath("labels.pbtxt")
    return parse_label_map(resource.read_text(encoding="utf-8"), "labels.pbtxt (built in)")
