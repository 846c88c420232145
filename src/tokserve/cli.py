"""`tokserve serve` (flags built from `Settings`, each field's description its help) and `tokserve chat`."""

import argparse
import json
import logging
import sys
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from tokserve.config import Settings
from tokserve.errors import StartupError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokserve", description="OpenAI-compatible streaming server.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_serve(commands.add_parser("serve", help="Serve a model over HTTP (flags override TOKSERVE_* variables)."))
    _add_chat(commands.add_parser("chat", help="Chat with a running server in the terminal, streaming the replies."))
    return parser


def _add_serve(serve: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        extra = field.json_schema_extra
        if isinstance(extra, dict) and extra.get("cli") is False:
            continue
        flag = str(extra["flag"]) if isinstance(extra, dict) and "flag" in extra else "--" + name.replace("_", "-")
        help_text = field.description or ""
        if name == "replace":
            serve.add_argument(flag, dest=name, action="append", metavar="FROM=TO", help=help_text)
        elif typing.get_origin(field.annotation) is list:  # repeatable: --api-key A --api-key B
            serve.add_argument(
                flag, dest=name, action="append", metavar=flag.removeprefix("--").upper(), help=help_text
            )
        elif field.annotation is bool:
            # default None, not False: an absent flag leaves the TOKSERVE_* variable in charge
            serve.add_argument(flag, action="store_true", default=None, help=help_text)
        else:
            if "default" not in help_text:
                help_text += f" (default: {field.default})"
            serve.add_argument(flag, metavar=name.upper(), help=help_text)


def _add_chat(chat: argparse.ArgumentParser) -> None:
    chat.add_argument(
        "prompt", nargs="?", help="Ask this once, print the reply and exit (also: text on stdin when it is not a TTY)"
    )
    chat.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="The server's API (default: %(default)s)")
    chat.add_argument("--api-key", default="none", help="Sent as `Authorization: Bearer KEY`")
    chat.add_argument("--model", help="Model name (default: the first one the server lists)")
    chat.add_argument("--system", help="System prompt")
    chat.add_argument("--temperature", type=float, help="Sampling temperature, 0 for greedy (default: the server's)")
    chat.add_argument("--max-tokens", type=int, help="Reply length limit in tokens (default: the server's)")


def _setting_error(problem: ErrorDetails) -> str:
    """One line per bad setting, named as its flag: `tokserve: --replace: replacement 'abc' is not ...`."""
    name = "--" + str(problem["loc"][0]).replace("_", "-") if problem["loc"] else "settings"
    message = problem["msg"].removeprefix("Value error, ")
    return f"tokserve: {name}: {message} (got {problem['input']!r})"


def main(argv: Sequence[str] | None = None) -> None:
    args = vars(_parser().parse_args(argv))
    if args.pop("command") == "chat":
        # Imported here: the chat client must start quickly, without the server's torch and transformers.
        from tokserve.chat import chat

        sys.exit(chat(**args))
    _serve(args)


def _serve(args: dict[str, Any]) -> None:  # argparse's namespace: untyped
    from tokserve.engine import check_quantization, embedded_model_file
    from tokserve.server import serve

    try:
        settings = Settings(**{name: value for name, value in args.items() if value is not None})
        if settings.model is None:
            embedded_model_file()  # fail now, with the install command, rather than after the server started
        check_quantization(settings.quantization, settings.device)  # likewise: no GPU, or no bitsandbytes
    except ValidationError as error:
        sys.exit("\n".join(_setting_error(problem) for problem in error.errors()))
    except StartupError as error:
        sys.exit(f"tokserve: {error}")
    _configure_logging(settings.log_level, settings.log_format)
    serve(settings)


def _configure_logging(level: str, log_format: str) -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.getLogger("uvicorn.access").addFilter(_without_query_string)


def _without_query_string(record: logging.LogRecord) -> bool:
    """uvicorn's access log line without the query string: a key sent as `?api_key=` never reaches the log."""
    # uvicorn logs '%s - "%s %s HTTP/%s" %d' with (client, method, path and query, HTTP version, status).
    if isinstance(record.args, tuple) and len(record.args) == 5:
        client, method, target, version, status = record.args
        record.args = (client, method, str(target).split("?", 1)[0], version, status)
    return True


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and a request's fields (`extra={"request": ...}`)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request = getattr(record, "request", None)
        if isinstance(request, dict):
            line.update(request)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)
