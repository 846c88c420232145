"""Settings: `--replace` parsing, environment variables, the served name, the CLI's flags."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from tokserve.cli import main
from tokserve.config import Settings, parse_replacement


@pytest.mark.parametrize(
    ("rule", "pair"),
    [
        ("<NL>=\\n", ("<NL>", "\n")),
        ("a=b=c", ("a", "b=c")),
        ("a\\=b=c", ("a=b", "c")),
        ("x=", ("x", "")),
        ("\\t=\\\\", ("\t", "\\")),
        ("###=\\n\\n", ("###", "\n\n")),
    ],
)
def test_replacement_rules(rule: str, pair: tuple[str, str]) -> None:
    assert parse_replacement(rule) == pair


@pytest.mark.parametrize("rule", ["abc", "=x", "a\\q=b", "a\\"])
def test_bad_replacement_rules(rule: str) -> None:
    with pytest.raises(ValueError, match="replacement"):
        parse_replacement(rule)


def test_replacements_from_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(replace=["<NL>=\\n", "<TAB>=\\t"]).replace == [("<NL>", "\n"), ("<TAB>", "\t")]
    monkeypatch.setenv("TOKSERVE_REPLACE", "<NL>=\\n\n<TAB>=\\t")
    assert Settings().replace == [("<NL>", "\n"), ("<TAB>", "\t")]
    with pytest.raises(ValidationError, match="once"):
        Settings(replace=["a=b", "a=c"])


def test_no_ui_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().no_ui is False
    monkeypatch.setenv("TOKSERVE_NO_UI", "1")
    assert Settings().no_ui is True


@pytest.mark.parametrize(
    ("model", "served", "name"),
    [
        (None, None, "SmolLM2-135M-Instruct"),
        ("/models/SmolLM2-135M-Instruct.Q4_1.gguf", None, "SmolLM2-135M-Instruct"),
        ("/models/Llama-3.2-1B-Instruct-Q4_K_M.gguf", None, "Llama-3.2-1B-Instruct"),
        ("HuggingFaceTB/SmolLM2-360M-Instruct", None, "HuggingFaceTB/SmolLM2-360M-Instruct"),
        (None, "my-model", "my-model"),
    ],
)
def test_served_model_name(model: str | None, served: str | None, name: str) -> None:
    assert Settings(model=model, **({"served_model_name": served} if served else {})).model_name == name


def test_several_served_names_the_first_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKSERVE_SERVED_MODEL_NAME", "tiny, gpt-4o-mini")
    assert Settings().model_names == ["tiny", "gpt-4o-mini"]
    flags = Settings(served_model_name=["a", "b", "a"])
    assert (flags.model_names, flags.model_name) == (["a", "b"], "a")


def test_cli_help_lists_flags_but_not_the_fault_hook(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--model", "--served-model-name", "--host", "--port", "--device", "--dtype", "--replace", "--no-ui"):
        assert flag in help_text
    operations = ("--api-key API-KEY", "--cors-origin CORS-ORIGIN", "--protect-metrics", "--log-format")
    for flag in (*operations, "--drain-timeout", "--quantization", "--device-map"):
        assert flag in help_text
    assert "--fault" not in help_text and "TOKSERVE_FAULT_MARKER" not in help_text


def test_cli_rejects_bad_settings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="replacement"):
        main(["serve", "--replace", "no-equals-sign"])


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--replace", "a=b", "--replace", "a=c"], "tokserve: --replace: each replacement FROM may be given once"),
        (["--max-messages", "0"], "tokserve: --max-messages: Input should be greater than or equal to 1"),
        (["--max-tokens-cap", "many"], "tokserve: --max-tokens-cap: Input should be a valid integer"),
    ],
)
def test_bad_settings_stop_the_start_with_one_line_per_flag(argv: list[str], line: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", *argv])
    message = str(exited.value.code)
    assert message.startswith(line) and "\n" not in message


def test_chat_template_file_is_read_and_parsed_once(tmp_path: Path) -> None:
    good = tmp_path / "good.jinja"
    good.write_text("{% for message in messages %}{{ message['content'] }}{% endfor %}")
    assert Settings(chat_template=good).chat_template_text == good.read_text()
    assert Settings().chat_template_text is None
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for message in messages %}")
    with pytest.raises(ValidationError, match=r"broken\.jinja"):
        Settings(chat_template=broken)
    with pytest.raises(ValidationError, match="chat_template"):
        Settings(chat_template=tmp_path / "missing.jinja")
