"""build_image.py's checks that run before Docker: the model dir, its tar stream, image names."""

import io
import re
import tarfile
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner

from image_builder.cli import main
from image_builder.model_dir import ModelArchive, ModelDirError, ModelVersion, find_versions
from image_builder.reference import ReferenceError, check_model_name, image_reference
from tests.conftest import ENCODED_MODEL, PIXEL_MODEL


@pytest.fixture
def two_versions(tmp_path: Path) -> Path:
    """A base path with versions 1 and 2 (links to the shared models: nothing copied)."""
    base = tmp_path / "ssd"
    base.mkdir()
    (base / "1").symlink_to(ENCODED_MODEL / "1")
    (base / "2").symlink_to(PIXEL_MODEL / "1")
    return base


def test_base_path_gives_its_numeric_versions(two_versions: Path) -> None:
    versions = find_versions(two_versions)
    assert [v.number for v in versions] == [1, 2]
    assert [v.number for v in find_versions(two_versions, version=2)] == [2]


def test_bare_saved_model_becomes_version_1_or_the_one_asked() -> None:
    bare = PIXEL_MODEL / "1"
    assert find_versions(bare) == [ModelVersion(1, bare)]
    assert find_versions(bare, version=7) == [ModelVersion(7, bare)]


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({}, "found: nothing"),
        ({"notes.txt": ""}, "found: notes.txt"),
        ({"latest/saved_model.pb": ""}, "(no numeric version directory); found: latest/"),
        ({"²/saved_model.pb": ""}, "(no numeric version directory); found: ²/"),  # not ASCII
        ({"1/saved_model.pb": "", "2/variables/x": ""}, "version dir(s) 2 hold no saved_model.pb"),
    ],
)
def test_invalid_model_dir_says_what_was_found(tmp_path: Path, layout: dict, message: str) -> None:
    for name, content in layout.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    with pytest.raises(ModelDirError, match=re.escape(message)):
        find_versions(tmp_path)


def test_missing_dir_file_and_absent_version_are_refused(two_versions: Path) -> None:
    with pytest.raises(ModelDirError, match="does not exist"):
        find_versions(two_versions / "nope")
    with pytest.raises(ModelDirError, match="is a file"):
        find_versions(PIXEL_MODEL / "1" / "saved_model.pb")
    with pytest.raises(ModelDirError, match=r"has no version 3 \(versions: 1, 2\)"):
        find_versions(two_versions, version=3)


def test_archive_lays_out_versions_world_readable_and_owned_by_root(two_versions: Path) -> None:
    archive = ModelArchive(find_versions(two_versions), "/models/ssd")
    data = b"".join(archive)
    assert len(data) == archive.size

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        for version, source in ((1, ENCODED_MODEL / "1"), (2, PIXEL_MODEL / "1")):
            expected = {
                f"models/ssd/{version}/{p.relative_to(source).as_posix()}"
                for p in source.rglob("*")
            }
            got = {n for n in members if n.startswith(f"models/ssd/{version}/")}
            assert got == expected
            packed = tar.extractfile(f"models/ssd/{version}/saved_model.pb").read()
            assert packed == (source / "saved_model.pb").read_bytes()
    assert {"models", "models/ssd", "models/ssd/1", "models/ssd/2"} <= members.keys()
    for member in members.values():
        assert (member.uid, member.gid) == (0, 0)
        assert member.mode == (0o755 if member.isdir() else 0o644), member.name


def test_archive_long_names_and_streaming_memory(tmp_path: Path) -> None:
    """Long paths need extra header blocks; a 64 MB file must not be held in memory at once."""
    model = tmp_path / ("a" * 90) / ("b" * 90)
    (model / "variables").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"pb")
    big = model / "variables" / "variables.data-00000-of-00001"
    with big.open("wb") as f:
        f.truncate(64 << 20)
    archive = ModelArchive(find_versions(model), "/models/" + "m" * 120)

    tracemalloc.start()
    total = sum(len(chunk) for chunk in archive)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert total == archive.size
    assert peak < 8 << 20, f"peak {peak} bytes while streaming a 64 MB file"
    with tarfile.open(fileobj=io.BytesIO(b"".join(archive))) as tar:
        assert tar.getmember(f"models/{'m' * 120}/1/variables/{big.name}").size == 64 << 20


def test_file_changing_size_while_copied_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "saved_model.pb").write_bytes(b"x" * 1000)
    archive = ModelArchive(find_versions(tmp_path), "/models/m")
    (tmp_path / "saved_model.pb").write_bytes(b"x" * 10)
    with pytest.raises(ModelDirError, match="changed size"):
        b"".join(archive)


@pytest.mark.parametrize(
    ("registry", "image", "tag", "problem"),
    [
        (None, "Faster_RCNN", "v1", "invalid image name"),
        (None, "ssd serving", "v1", "invalid image name"),
        (None, "ssd_serving_", "v1", "invalid image name"),
        ("127.0.0.1:5000/team", "ssd", "-v1", "invalid tag"),
        ("127.0.0.1:5000/team", "ssd", "v1:2", "invalid tag"),
        ("127.0.0.1:5000/team", "ssd", "t" * 129, "invalid tag"),
        ("https://gcr.io/p", "ssd", "v1", "invalid registry"),
        ("gcr.io/Project", "ssd", "v1", "invalid registry"),
    ],
)
def test_bad_image_name_or_tag_is_refused(
    registry: str | None, image: str, tag: str, problem: str
) -> None:
    with pytest.raises(ReferenceError, match=problem):
        image_reference(registry, image, tag)


def test_good_references() -> None:
    ref = image_reference("europe-west1-docker.pkg.dev/my-proj/serving/", "ssd_serving", "v0.1.0")
    assert str(ref) == "europe-west1-docker.pkg.dev/my-proj/serving/ssd_serving:v0.1.0"
    assert ref.with_digest("sha256:" + "a" * 64).endswith("/ssd_serving@sha256:" + "a" * 64)
    assert str(image_reference(None, "team/ssd", "latest")) == "team/ssd:latest"
    assert check_model_name("faster_rcnn_resnet") == "faster_rcnn_resnet"
    with pytest.raises(ReferenceError, match="invalid model name"):
        check_model_name("../etc")


def test_cli_refuses_before_touching_docker(tmp_path: Path) -> None:
    """DOCKER_HOST points nowhere: these must fail on their own check, not on Docker."""
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock"}
    cases = [
        (["--model_dir", str(tmp_path), "--model_name", "ssd"], "neither a SavedModel"),
        (["--model_dir", str(PIXEL_MODEL), "--model_name", "a/b"], "invalid model name"),
        (["--model_dir", str(PIXEL_MODEL), "--model_name", "ssd", "--tag", "-x"], "invalid tag"),
        (["--model_dir", str(PIXEL_MODEL), "--model_name", "ssd", "--image", "A"], "image name"),
        (
            ["--model_dir", str(PIXEL_MODEL), "--model_name", "ssd", "--username", "u"],
            "--username needs a password",
        ),
    ]
    for args, message in cases:
        result = CliRunner().invoke(main, args, env=env)
        assert result.exit_code != 0, args
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output
        assert "Docker daemon" not in result.output


def test_manifest_needs_push_and_a_deployment_image(tmp_path: Path) -> None:
    """Checked before the build, so a push never ends in 'but the manifest could not be set'."""
    manifest = tmp_path / "k8s.yaml"
    manifest.write_text("kind: Service\n")
    args = ["--model_dir", str(PIXEL_MODEL), "--model_name", "ssd", "--manifest", str(manifest)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "--manifest needs --push" in result.output

    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock"}
    result = CliRunner().invoke(main, [*args, "--push"], env=env)
    assert result.exit_code == 1
    assert "has no Deployment" in result.output
    assert manifest.read_text() == "kind: Service\n"
