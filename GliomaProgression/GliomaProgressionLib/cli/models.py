"""``gliomaprog models``: list, install and verify progression model packages."""

from __future__ import annotations

import argparse
from pathlib import Path

from GliomaProgressionLib.cli.options import Parser


def add_commands(commands) -> None:
    """``models list|install|verify``."""
    models = commands.add_parser("models", help="list, install and verify progression model packages")
    actions = models.add_subparsers(dest="action", required=True, parser_class=Parser)
    listing = actions.add_parser("list", help="the progression, habitat and invasion models this installation knows")
    listing.set_defaults(handler=_run_models_list)
    install = actions.add_parser("install", help="install a model package (.zip or nnU-Net results folder)")
    install.add_argument("package", type=Path)
    install.add_argument("--sha256", help="expected checksum of the zip")
    install.add_argument("--trust", action="store_true", help="accept a package that cannot be loaded safely")
    install.set_defaults(handler=_run_models_install)
    verify = actions.add_parser("verify", help="check a model's files against its checksum")
    verify.add_argument("model", help="model id or package path")
    verify.set_defaults(handler=_run_models_verify)


def _run_models_list(args: argparse.Namespace) -> int:
    from GliomaProgressionLib.models.habitat_packages import available_habitat_models
    from GliomaProgressionLib.models.invasion_packages import available_invasion_models
    from GliomaProgressionLib.models.packages import available_models

    for entry in available_models():
        channels = ", ".join(channel["name"] for channel in entry.get("channels", []))
        print(f"{entry['id']}\t{entry.get('title', '')}\t[{channels}]")
    for entry in available_habitat_models():  # used by gliomaprog habitats / run --habitat-model
        print(f"{entry['id']}\t{entry.get('title', '')}\t[habitats: dsc, lesion]")
    for entry in available_invasion_models():  # used by gliomaprog invasion / run --invasion
        print(f"{entry['id']}\t{entry.get('title', '')}\t[invasion: {', '.join(entry.get('channels', []))}]")
    return 0


def _run_models_install(args: argparse.Namespace) -> int:
    from GliomaProgressionLib.models.packages import install_package

    model = install_package(args.package, expected_sha256=args.sha256, trust=args.trust)
    print(f"Installed model '{model.id}' in {model.folder}")
    return 0


def _run_models_verify(args: argparse.Namespace) -> int:
    import json

    from GliomaProgressionLib.models.packages import verify_model

    print(json.dumps(verify_model(args.model), indent=2))
    return 0
