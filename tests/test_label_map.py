"""The label map parser on the shapes of .pbtxt files found in the wild, and on broken ones."""

import pytest

from object_detection.label_map import LabelMapError, load_label_map, parse_label_map
from sidecar_testing.data import COCO_DOG, COCO_KITE, COCO_PERSON, ROOT, SHARED_LABELS


def test_our_coco_map_matches_the_tf_od_api_one():
    ours = load_label_map(ROOT / "data" / "labels.pbtxt")
    theirs = load_label_map(SHARED_LABELS)
    assert len(ours) == 80
    assert dict(ours) == dict(theirs)
    assert (ours[COCO_PERSON], ours[COCO_DOG], ours[COCO_KITE]) == ("person", "dog", "kite")
    assert min(ours) == 1 and max(ours) == 90


def test_comments_field_order_quotes_and_separators():
    text = """
    # a comment line
    item {  # trailing comment
      display_name: 'traffic light'   id: 10
      name: "/m/015qff"
    }
    item < id: 3, name: "car"; >
    item: { name: 'it\\'s "quoted"' id: 7 keypoints { id: 0 label: "nose" } frequency: FREQUENT }
    """
    labels = parse_label_map(text)
    assert dict(labels) == {10: "traffic light", 3: "car", 7: 'it\'s "quoted"'}


def test_missing_id_gets_a_placeholder_label():
    labels = parse_label_map('item { id: 1 name: "person" }')
    assert labels.label(1) == "person"
    assert labels.label(99) == "id 99"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('item { id: 1 name: "a"', "not closed"),
        ('item { name: "a" }', "no id"),
        ('item { id: x name: "a" }', "not an integer"),
        ('item { id: 1 name: "a" }\nitem { id: 1 name: "b" }', "appears twice"),
        ('item { id: 1 name: "a }', "unexpected character"),
        ("item { id: : }", "expected a value"),
        ("item { id: 1 : }", "expected a field name"),
        ("", "no `item"),
        ('item { id: 1 name: "a" } item', "file ends"),
    ],
)
def test_malformed_maps_name_the_problem_and_line(text, message):
    with pytest.raises(LabelMapError, match=message) as error:
        parse_label_map(text, source="bad.pbtxt")
    assert str(error.value).startswith("bad.pbtxt")


def test_unreadable_file(tmp_path):
    with pytest.raises(LabelMapError, match="cannot read label map"):
        load_label_map(tmp_path / "missing.pbtxt")
    (tmp_path / "binary.pbtxt").write_bytes(b"\xff\xfe\x00item")
    with pytest.raises(LabelMapError, match="cannot read label map"):
        load_label_map(tmp_path / "binary.pbtxt")
