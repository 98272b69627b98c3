"""Validate Kubernetes manifests before `kubectl apply`: schemas of several Kubernetes versions
(strict) plus the checks that need more than one object or know how TF Serving behaves.

    python -m deploy.validate                      # the shipped faster_rcnn_resnet_k8s.yaml
    python -m deploy.validate my.yaml other.yaml   # files applied together
    make validate                                  # what CI runs

Every problem is printed as `ERROR FILE:LINE KIND/NAME: FIELD: what is wrong`; the exit status
is 1 when there is any.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import click
import yaml

from deploy.checks import Document, Problem, check_documents
from deploy.schema import KUBERNETES_VERSIONS, schema_problems, supported_versions

# The shipped manifest, as package data (deploy/faster_rcnn_resnet_k8s.yaml is the top-level
# file's link in a checkout, and a copy of it in a wheel).
DEFAULT_MANIFEST = "faster_rcnn_resnet_k8s.yaml"


def load_documents(path: Path) -> list[Document]:
    """The objects in a (multi-document) YAML file, each labelled with the line it starts on.

    Raises yaml.YAMLError when the file is not YAML.
    """
    loader = yaml.SafeLoader(path.read_text(encoding="utf-8"))
    documents = []
    try:
        while loader.check_node():
            node = loader.get_node()
            data = loader.construct_document(node)
            if data is None:  # an empty document, e.g. after a trailing ---
                continue
            source = f"{path.name}:{node.start_mark.line + 1}"
            if not isinstance(data, dict):
                data = {"(not a mapping)": data}
            documents.append(Document(source, data))
    finally:
        loader.dispose()
    return documents


def validate_documents(
    documents: list[Document],
    versions: Sequence[str] = KUBERNETES_VERSIONS,
    allow_placeholder: bool = True,
) -> list[Problem]:
    """Schema problems of each object, then the problems between and within them."""
    problems = [p for doc in documents for p in schema_problems(doc, versions)]
    return problems + check_documents(documents, allow_placeholder)


@click.command()
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--kubernetes_version",
    "-k",
    "versions",
    multiple=True,
    type=click.Choice(supported_versions()),
    default=KUBERNETES_VERSIONS,
    show_default=True,
    help="Validate against this Kubernetes version's schemas (repeat for several).",
)
@click.option(
    "--forbid_placeholder",
    is_flag=True,
    help="Fail on the shipped placeholder image: use before deploying, after build_image.py "
    "--manifest wrote the real digest.",
)
def main(files: tuple[Path, ...], versions: tuple[str, ...], forbid_placeholder: bool) -> None:
    """Check Kubernetes manifests (default: faster_rcnn_resnet_k8s.yaml) against the schemas
    of several Kubernetes versions, in strict mode, and against this project's rules: selectors
    that match the pods, ports and probes that exist, the model name in the probe paths, an
    image pinned by digest, requests and limits, a rollout that never lowers capacity.

    FILES are checked together, as one `kubectl apply -f FILE -f FILE` would apply them.

    \b
    Examples:
      python -m deploy.validate
      python -m deploy.validate faster_rcnn_resnet_k8s.yaml -k 1.33 -k 1.37
      python -m deploy.validate --forbid_placeholder faster_rcnn_resnet_k8s.yaml
    """
    if not files:
        with resources.as_file(resources.files("deploy").joinpath(DEFAULT_MANIFEST)) as shipped:
            check_files((shipped,), versions, forbid_placeholder)
    else:
        check_files(files, versions, forbid_placeholder)


def check_files(files: Sequence[Path], versions: Sequence[str], forbid_placeholder: bool) -> None:
    """Print each problem of `files`, checked together; ClickException when there are any."""
    documents: list[Document] = []
    errors = 0
    for path in files:
        try:
            documents += load_documents(path)
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            click.echo(f"ERROR {path.name}: not valid YAML: {exc}")
            errors += 1

    for problem in validate_documents(documents, versions, not forbid_placeholder):
        click.echo(str(problem))
        errors += not problem.note

    names = ", ".join(p.name for p in files)
    if errors:
        raise click.ClickException(f"{errors} problem{'s' * (errors > 1)} in {names}")
    click.echo(
        f"OK {names}: {len(documents)} objects valid for Kubernetes {', '.join(versions)} "
        "and consistent"
    )


if __name__ == "__main__":
    main()
