"""`tokserve serve`: flags built from `Settings` (each field's description is its help), logging, uvicorn."""

import argparse
import logging
import sys
from collections.abc import Sequence

import uvicorn
from pydantic import ValidationError

from tokserve.config import Settings
from tokserve.engine import embedded_model_file
from tokserve.errors import StartupError
from tokserve.server import create_app


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokserve", description="OpenAI-compatible streaming server.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="Serve a model over HTTP (flags override TOKSERVE_* variables).")
    for name, field in Settings.model_fields.items():
        extra = field.json_schema_extra
        if isinstance(extra, dict) and extra.get("cli") is False:
            continue
        flag, help_text = "--" + name.replace("_", "-"), field.description or ""
        if name == "replace":
            serve.add_argument(flag, action="append", metavar="FROM=TO", help=help_text)
            continue
        if "default" not in help_text:
            help_text += f" (default: {field.default})"
        serve.add_argument(flag, metavar=name.upper(), help=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = vars(_parser().parse_args(argv))
    args.pop("command")
    try:
        settings = Settings(**{name: value for name, value in args.items() if value is not None})
        if settings.model is None:
            embedded_model_file()  # fail now, with the install command, rather than after the server started
    except (ValidationError, StartupError) as error:
        sys.exit(f"tokserve: {error}")
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)
