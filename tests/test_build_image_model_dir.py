"""build_image.py's checks that run before Docker: the model dir, its tar stream, image names."""

import io
import os
import re
import tarfile
import tracemalloc
from pathlib import Path, PurePosixPath

import pytest
from click.testing import CliRunner

from image_builder.cli import main
from image_builder.errors import BuildError
from image_builder.model_dir import (
    ModelArchive,
    ModelDirError,
    ModelTree,
    ModelTreeError,
    ModelVersion,
    OutsideLinkError,
    find_versions,
    scan_model,
)
from image_builder.reference import (
    ImageReferenceError,
    check_base_image,
    check_model_name,
    image_reference,
)
from sidecar_testing.data import ENCODED_MODEL, PIXEL_MODEL


@pytest.fixture
def two_versions(tmp_path: Path) -> Path:
    """A base path with versions 1 and 2 (links to the shared models: nothing copied), so
    packing it needs follow_symlinks."""
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
    archive = ModelArchive(scan_model(two_versions, follow_symlinks=True), "/models/ssd")
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
    archive = ModelArchive(scan_model(model), "/models/" + "m" * 120)

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
    archive = ModelArchive(scan_model(tmp_path), "/models/m")
    (tmp_path / "saved_model.pb").write_bytes(b"x" * 10)
    with pytest.raises(ModelTreeError, match="changed size"):
        b"".join(archive)


def test_file_replaced_after_the_scan_is_not_copied(tmp_path: Path) -> None:
    """A file swapped for a link to elsewhere once checked: the archive notices the new inode."""
    (tmp_path / "saved_model.pb").write_bytes(b"pb")
    archive = ModelArchive(scan_model(tmp_path), "/models/m")
    secret = tmp_path.parent / f"{tmp_path.name}-secret"
    secret.write_bytes(b"xy")
    (tmp_path / "saved_model.pb").unlink()
    (tmp_path / "saved_model.pb").symlink_to(secret)
    with pytest.raises(ModelTreeError, match="was replaced after the model was checked"):
        b"".join(archive)


def fake_model(base: Path, *versions: str) -> Path:
    """A base path with version dirs holding a tiny (fake) SavedModel: files of our own."""
    for version in versions:
        (base / version / "variables").mkdir(parents=True)
        (base / version / "saved_model.pb").write_bytes(b"pb " + version.encode())
        (base / version / "variables" / "variables.index").write_bytes(b"index")
    return base


def packed(tree: ModelTree) -> dict[str, tarfile.TarInfo | bytes]:
    """The archive of `tree` under /models/m: a directory's TarInfo, a file's content."""
    with tarfile.open(fileobj=io.BytesIO(b"".join(ModelArchive(tree, "/models/m")))) as tar:
        return {
            m.name.removeprefix("models/m/"): tar.extractfile(m).read() if m.isfile() else m
            for m in tar.getmembers()
        }


def test_link_out_of_the_model_dir_is_refused_and_named(tmp_path: Path) -> None:
    base = fake_model(tmp_path / "m", "1")
    outside = tmp_path / "notes.txt"
    outside.write_text("not the model's")
    (base / "1" / "variables" / "notes").symlink_to(outside)
    with pytest.raises(OutsideLinkError) as refused:
        scan_model(base)
    assert refused.value.link == PurePosixPath("1/variables/notes")
    assert refused.value.target == outside
    assert str(refused.value).startswith(f"1/variables/notes is a symlink to {outside}, outside")
    assert "--" not in str(refused.value)  # flags are the CLI's business
    assert isinstance(refused.value, BuildError)

    files = packed(scan_model(base, follow_symlinks=True))
    assert files["1/variables/notes"] == b"not the model's"  # content, not a link


def test_link_chain_is_judged_by_where_it_ends(tmp_path: Path) -> None:
    base = fake_model(tmp_path / "m", "1")
    (base / "1" / "hop").symlink_to("../../elsewhere")
    (tmp_path / "elsewhere").symlink_to(base / "1" / "saved_model.pb")  # back inside: fine
    assert packed(scan_model(base))["1/hop"] == b"pb 1"
    (tmp_path / "elsewhere").unlink()
    (tmp_path / "elsewhere").write_text("outside")
    with pytest.raises(OutsideLinkError, match=r"^1/hop is a symlink to"):
        scan_model(base)


def test_links_inside_are_copied_as_content(tmp_path: Path) -> None:
    base = fake_model(tmp_path / "m", "1")
    (base / "2").symlink_to("1")  # a version dir linked to another
    (base / "1" / "alias.pb").symlink_to("saved_model.pb")
    tree = scan_model(base)
    assert [v.number for v in tree.versions] == [1, 2]
    files = packed(tree)
    assert files["2/saved_model.pb"] == files["1/alias.pb"] == files["2/alias.pb"] == b"pb 1"
    assert isinstance(files["2"], tarfile.TarInfo) and files["2"].isdir()


def test_model_dir_given_as_a_link_is_resolved(tmp_path: Path) -> None:
    """Links inside are measured against the real dir, so one by its real path is inside."""
    base = fake_model(tmp_path / "real", "1")
    (base / "1" / "alias.pb").symlink_to(base / "1" / "saved_model.pb")
    (tmp_path / "current").symlink_to(base)
    tree = scan_model(tmp_path / "current")
    assert tree.root == base
    assert packed(tree)["1/alias.pb"] == b"pb 1"


@pytest.mark.parametrize(
    ("links", "message"),
    [
        ({"1/a": "b", "1/b": "a"}, "1/a is a symlink loop: following its links never ends"),
        ({"1/variables/up": ".."}, "1/variables/up is a symlink loop: it leads back to"),
        ({"1/variables/base": "../.."}, "1/variables/base is a symlink loop: it leads back to"),
        ({"1/gone": "nowhere"}, "1/gone is a dangling symlink: its target nowhere does not exist"),
    ],
)
def test_loops_and_dangling_links_are_refused(
    tmp_path: Path, links: dict[str, str], message: str
) -> None:
    base = fake_model(tmp_path / "m", "1")
    for link, target in links.items():
        (base / link).symlink_to(target)
    for follow_symlinks in (False, True):
        with pytest.raises(ModelTreeError, match=re.escape(message)):
            scan_model(base, follow_symlinks=follow_symlinks)


def test_private_files_are_refused_not_made_world_readable(tmp_path: Path) -> None:
    base = fake_model(tmp_path / "m", "1")
    key = base / "1" / "variables" / "key.pem"
    key.write_text("secret")
    key.chmod(0o600)
    with pytest.raises(ModelTreeError, match=r"^1 file\(s\) of the model dir are not readable "):
        scan_model(base)
    key.chmod(0o644)
    assert packed(scan_model(base))["1/variables/key.pem"] == b"secret"

    # a link followed on purpose to a private file is no way round it
    outside = tmp_path / "token"
    outside.write_text("secret")
    outside.chmod(0o640)
    (base / "1" / "token").symlink_to(outside)
    with pytest.raises(ModelTreeError, match=r"not readable by other users \(1/token\)"):
        scan_model(base, follow_symlinks=True)


def test_directory_modes_are_not_carried_over(tmp_path: Path) -> None:
    base = fake_model(tmp_path / "m", "1")
    (base / "1" / "variables").chmod(0o700)  # e.g. an export written into tempfile.mkdtemp()
    assert packed(scan_model(base))["1/variables"].mode == 0o755


def test_special_files_are_refused(tmp_path: Path) -> None:
    base = fake_model(tmp_path / "m", "1")
    os.mkfifo(base / "1" / "pipe")
    with pytest.raises(ModelTreeError, match="1/pipe is not a regular file"):
        scan_model(base)


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
        (None, "ssd", "vü", "invalid tag"),  # Python's word class matches ü; Docker does not
        (None, "ssd", "v٣", "invalid tag"),  # an Arabic-Indic digit
        (None, "ssdü", "v1", "invalid image name"),
        ("registrü.example.com", "ssd", "v1", "invalid registry"),
    ],
)
def test_bad_image_name_or_tag_is_refused(
    registry: str | None, image: str, tag: str, problem: str
) -> None:
    with pytest.raises(ImageReferenceError, match=problem):
        image_reference(registry, image, tag)
    assert issubclass(ImageReferenceError, BuildError)


def test_good_references() -> None:
    ref = image_reference("europe-west1-docker.pkg.dev/my-proj/serving/", "ssd_serving", "v0.1.0")
    assert str(ref) == "europe-west1-docker.pkg.dev/my-proj/serving/ssd_serving:v0.1.0"
    assert ref.with_digest("sha256:" + "a" * 64).endswith("/ssd_serving@sha256:" + "a" * 64)
    assert str(image_reference(None, "team/ssd", "latest")) == "team/ssd:latest"
    assert check_model_name("faster_rcnn_resnet") == "faster_rcnn_resnet"
    for bad in ("../etc", "ssdü"):
        with pytest.raises(ImageReferenceError, match="invalid model name"):
            check_model_name(bad)


@pytest.mark.parametrize(
    "reference",
    [
        "tensorflow/serving:2.18.0",
        "127.0.0.1:5000/bases/tiny@sha256:" + "a" * 64,
        "europe-west1-docker.pkg.dev/p/r/serving:2.18.0-gpu",
        "localhost/base",
    ],
)
def test_good_base_images(reference: str) -> None:
    assert check_base_image(reference) == reference


@pytest.mark.parametrize(
    "reference", ["tensorflow/serving:2.18ü", "tensorflow/Serving", "serving:", "a@sha256:12"]
)
def test_bad_base_images(reference: str) -> None:
    with pytest.raises(ImageReferenceError, match="invalid base image"):
        check_base_image(reference)


def test_cli_refuses_before_touching_docker(tmp_path: Path) -> None:
    """DOCKER_HOST points nowhere: these must fail on their own check, not on Docker."""
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock"}
    cases = [
        (["--model_dir", str(tmp_path), "--model_name", "ssd"], "neither a SavedModel"),
        (["--model_dir", str(PIXEL_MODEL), "--model_name", "a/b"], "invalid model name"),
        (["--model_dir", str(PIXEL_MODEL), "--model_name", "ssd", "--tag", "-x"], "invalid tag"),
        (["--model_dir", str(PIXEL_MODEL), "--model_name", "ssd", "--tag", "vü"], "invalid tag"),
        (
            ["--model_dir", str(PIXEL_MODEL), "--model_name", "ssd", "--base_image", "tfü:1"],
            "invalid base image",
        ),
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


TREE_PROBLEMS = {
    # name: (what is done to version 1 of a fake model, the start of the error)
    "outside": (lambda v, outside: (v / "x").symlink_to(outside), "1/x is a symlink to"),
    "loop": (lambda v, outside: (v / "x").symlink_to("x"), "1/x is a symlink loop"),
    "dangling": (lambda v, outside: (v / "x").symlink_to("gone"), "1/x is a dangling symlink"),
    "private": (
        lambda v, outside: (v / "saved_model.pb").chmod(0o600),
        "1 file(s) of the model dir are not readable by other users",
    ),
}


@pytest.mark.parametrize("case", TREE_PROBLEMS)
def test_cli_refuses_the_model_tree_in_one_line(tmp_path: Path, case: str) -> None:
    """Before Docker (DOCKER_HOST points nowhere); only a link out gets the option's name."""
    spoil, message = TREE_PROBLEMS[case]
    base = fake_model(tmp_path / "m", "1")
    (tmp_path / "outside").write_text("x")
    spoil(base / "1", tmp_path / "outside")
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock"}
    result = CliRunner().invoke(main, ["--model_dir", str(base), "--model_name", "m"], env=env)
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"Error: {message}"), result.output
    assert result.output.count("\n") == 1, result.output
    hint = "; pass --follow_symlinks to copy it"
    assert result.output.rstrip().endswith(hint) == (case == "outside"), result.output


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
