"""`tokserve chat` in a pseudo-terminal against the real server: turns, /reset, Ctrl-C, one-shot mode."""

import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import openai
import pexpect

from tokserve.engine import Engine

QUESTION = "What is the capital of France?"
SYSTEM = {"role": "system", "content": "Answer briefly."}


def command(base_url: str, *options: str) -> list[str]:
    return [sys.executable, "-m", "tokserve", "chat", "--base-url", f"{base_url}/v1", *options]


def spawn(base_url: str, *options: str, ignoring_sigint: bool = False) -> pexpect.spawn:
    """`tokserve chat` in a pseudo-terminal; `ignoring_sigint`: started by a parent that ignores SIGINT."""
    executable, *arguments = command(base_url, *options)
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignoring_sigint else None
    child = pexpect.spawn(executable, arguments, encoding="utf-8", timeout=60, preexec_fn=ignore)
    child.expect_exact("> ")
    return child


def say(child: pexpect.spawn, line: str) -> str:
    """Type a line at the prompt; return what was printed before the next prompt, as the user read it."""
    child.sendline(line)
    child.expect_exact(f"{line}\r\n")  # the terminal's echo
    child.expect_exact("\r\n> ")
    return str(child.before).replace("\r\n", "\n")


def whole_reply(base_url: str, messages: list[dict[str, str]], max_tokens: int) -> str:
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0) as client:
        reply = client.chat.completions.create(
            model="SmolLM2-135M-Instruct", messages=messages, temperature=0, max_tokens=max_tokens
        )
    return reply.choices[0].message.content or ""


def test_conversation_keeps_turns_and_reset_starts_over(logged_server: tuple[str, list[tuple[Any, Any]]]) -> None:
    url, received = logged_server
    child = spawn(url, "--temperature", "0", "--max-tokens", "16", "--system", SYSTEM["content"], "--api-key", "k")
    first = say(child, QUESTION)
    session = received[-1][0]["x-session-id"]  # one per conversation: replicas behind nginx or a gateway keep its cache
    assert first == whole_reply(url, [SYSTEM, {"role": "user", "content": QUESTION}], 16)

    say(child, "And of Germany?")
    headers, body = received[-1]
    assert headers["authorization"] == "Bearer k"
    assert headers["x-session-id"] == session
    assert body["messages"] == [
        SYSTEM,
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "And of Germany?"},
    ]
    assert (body["temperature"], body["max_tokens"]) == (0, 16)

    assert say(child, "/reset") == "(new conversation)"
    say(child, "Capital of Italy?")
    assert received[-1][1]["messages"] == [SYSTEM, {"role": "user", "content": "Capital of Italy?"}]
    assert received[-1][0]["x-session-id"] not in ("", session)
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.wait()
    assert child.exitstatus == 0


def test_ctrl_c_stops_the_reply_and_the_generation(
    base_url: str, engine: Engine, wait_until: Callable[..., None]
) -> None:
    wait_until(lambda: engine.counters.running == 0)  # the worker counts a request just after its last token
    before = engine.counters
    # Started as some process managers (and this test run, at times) start it: with SIGINT ignored.
    child = spawn(base_url, "--temperature", "0", "--max-tokens", "4000", ignoring_sigint=True)
    child.sendline("Tell me a long story about a dragon.")
    child.expect_exact("dragon.\r\n")  # the terminal's echo
    # A word of the reply: the reply is streaming. (A bare \w can match readline's bracketed-paste escape sequence,
    # written as the line is entered, and Ctrl-C would then land while the request is still being sent.)
    child.expect(r"[A-Za-z]{3}")
    child.sendintr()
    child.expect_exact(" [stopped]\r\n> ")
    wait_until(lambda: engine.counters.cancelled == before.cancelled + 1)
    assert engine.counters.running == 0 and engine.counters.finished == before.finished
    assert say(child, "Hi")  # still chatting
    child.sendeof()
    child.expect(pexpect.EOF)
    child.wait()
    assert child.exitstatus == 0


def test_one_shot_from_stdin_or_argument(base_url: str) -> None:
    expected = whole_reply(base_url, [{"role": "user", "content": QUESTION}], 12) + "\n"
    options = ("--temperature", "0", "--max-tokens", "12")
    piped = subprocess.run(
        command(base_url, *options), input=f"{QUESTION}\n", capture_output=True, text=True, timeout=60
    )
    assert (piped.returncode, piped.stdout, piped.stderr) == (0, expected, "")
    argument = subprocess.run(
        command(base_url, *options, QUESTION), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
    )
    assert (argument.returncode, argument.stdout) == (0, expected)


def test_unreachable_server_is_one_clear_line() -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{free.getsockname()[1]}"
    result = subprocess.run(command(url, "Hi"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr == f"tokserve chat: cannot reach {url}/v1: is `tokserve serve` running?\n"
