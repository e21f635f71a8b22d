"""``alps-client``: the common workflows from a shell (see ``alps-client --help``)."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import grpc

from alps_client.client import ARCHITECTURES, Client, TrainingFailed


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alps-client", description="Talk to an alps-server over gRPC (alps.v1).")
    parser.add_argument("--address", default="127.0.0.1:50051", help="gRPC address host:port (default %(default)s)")
    parser.add_argument("--tls-ca", help="PEM file of the CA of the server's certificate")
    parser.add_argument("--token", help="bearer token; prefer ALPS_TOKEN in the environment (not shown by ps)")
    parser.add_argument("--client-cert", help="PEM client certificate, for mutual TLS (with --client-key)")
    parser.add_argument("--client-key", help="PEM private key of --client-cert")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create-project", help="create an image classifier project")
    create.add_argument("project")
    create.add_argument("--classes", required=True, help="comma-separated class names")
    create.add_argument("--size", type=int, required=True, help="input width and height, pixels")
    create.add_argument("--channels", type=int, default=3, help="1 (grayscale) or 3 (RGB, default)")
    create.add_argument("--architecture", choices=sorted(ARCHITECTURES), default="small_cnn")
    create.add_argument("--pretrained", action="store_true", help="start from ImageNet weights (vgg16, resnet18)")
    add = commands.add_parser("add-folder", help="add FOLDER/<class>/<image> as labelled examples")
    add.add_argument("project")
    add.add_argument("folder")
    train = commands.add_parser("train", help="train and watch the job with a progress bar")
    train.add_argument("project")
    train.add_argument("--epochs", type=int, default=0, help="default: the server's (0)")
    train.add_argument("--seed", type=int)
    train.add_argument(
        "--full", action="store_true", help="fine-tune the backbone too (needed when it starts from random weights)"
    )
    rank = commands.add_parser("rank-folder", help="the most informative images of FOLDER")
    rank.add_argument("project")
    rank.add_argument("folder")
    rank.add_argument("--query-size", type=int, default=10, help="how many to return (default %(default)s)")
    rank.add_argument("--heuristic", default="", help="acquisition function, e.g. bald (default: the project's)")
    predict = commands.add_parser("predict", help="class, probability and acquisition score of each IMAGE")
    predict.add_argument("project")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--seed", type=int, help="draw the dropout masks from this seed (reproducible)")
    examples = commands.add_parser("examples", help="how many labelled examples the project holds, per class")
    examples.add_argument("project")
    examples.add_argument("--list", action="store_true", help="also each one: external id, class, sha256")
    versions = commands.add_parser("versions", help="the project's model versions, newest first (* = served)")
    versions.add_argument("project")
    activate = commands.add_parser("activate", help="serve VERSION of the project (also to roll back)")
    activate.add_argument("project")
    activate.add_argument("version", help="e.g. v2 (see `versions`)")
    return parser


def _version_line(version) -> str:
    """One line of `versions`: marker, version, parent, examples, validation accuracy, job, and
    whether it was made for an earlier spec of the project (then it cannot be activated)."""
    marker = "*" if version.active else " "
    parent = f"from {version.parent_version}" if version.parent_version else "first"
    accuracy = f"accuracy {version.metrics.accuracy:.3f}" if version.HasField("metrics") else "no validation split"
    line = f"{marker} {version.version}\t{parent}\t{version.example_count} examples\t{accuracy}\tjob {version.job_id}"
    return f"{line}\tfor an earlier spec: cannot be activated" if version.for_other_spec else line


def _predict(alps: Client, project: str, paths: list[str], seed: int | None) -> int:
    """Prints `class<TAB>probability<TAB>score<TAB>path` per image (or `error<TAB>message<TAB>
    path`); 1 if any image failed."""
    response = alps.predict(project, [Path(path).read_bytes() for path in paths], seed=seed)
    failed = 0
    for path, result in zip(paths, response.results):
        if result.HasField("prediction"):
            p = result.prediction
            print(f"{p.class_name}\t{p.probability:.4f}\t{p.score:.6f}\t{path}")
        else:
            failed += 1
            print(f"error\t{result.error.message}\t{path}")
    print(f"model version {response.model_version}, {response.heuristic.name} scores", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Warnings (e.g. unreadable pool images) as one plain line each, not Python's source echo.
    warnings.showwarning = lambda message, *_: print(f"alps-client: warning: {message}", file=sys.stderr)
    token = args.token or os.environ.get("ALPS_TOKEN")
    try:
        client = Client(
            args.address, tls_ca=args.tls_ca, token=token, client_cert=args.client_cert, client_key=args.client_key
        )
        with client as alps:
            if args.command == "create-project":
                classes = [c.strip() for c in args.classes.split(",") if c.strip()]
                project = alps.create_project(
                    args.project,
                    classes,
                    width=args.size,
                    height=args.size,
                    channels=args.channels,
                    architecture=args.architecture,
                    pretrained=args.pretrained,
                )
                print(f"project {project.id}: {len(project.classes)} classes, model {project.active_model_version}")
            elif args.command == "add-folder":
                added = alps.add_folder(args.project, args.folder)
                print(f"inserted {added.inserted}, updated {added.updated}, unchanged {added.unchanged}")
            elif args.command == "train":
                job = alps.train(args.project, epochs=args.epochs, seed=args.seed, full=args.full)
                accuracy = job.validation_accuracy if job.HasField("validation_accuracy") else None
                held_out = f", validation accuracy {accuracy:.3f}" if accuracy is not None else ""
                mode = "full fine-tuning" if args.full else "head only"
                print(f"job {job.job_id}: model version {job.model_version} ({mode}{held_out})")
            elif args.command == "rank-folder":
                for path, score in alps.rank_folder(
                    args.project, args.folder, query_size=args.query_size, heuristic=args.heuristic
                ):
                    print(f"{score:.6f}\t{path}")
            elif args.command == "predict":
                return _predict(alps, args.project, args.images, args.seed)
            elif args.command == "examples":
                if args.list:
                    for example in alps.list_examples(args.project):
                        print(f"{example.external_id}\t{example.class_name}\t{example.content_sha256}")
                counts = alps.count_examples(args.project)
                per_class = ", ".join(f"{name} {count}" for name, count in sorted(counts.per_class.items()))
                print(f"{counts.total} labelled examples ({per_class})", file=sys.stderr if args.list else sys.stdout)
            elif args.command == "versions":
                listed = alps.list_versions(args.project)
                for version in listed:
                    print(_version_line(version))
                if not listed:
                    print(f"project {args.project} has no model versions yet (train it first)", file=sys.stderr)
            elif args.command == "activate":
                version = alps.activate(args.project, args.version)
                print(f"project {args.project} serves {version.version}")
    except grpc.RpcError as error:
        print(f"alps-client: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    except (TrainingFailed, OSError, ValueError, RuntimeError) as error:
        print(f"alps-client: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
