"""`tokserve chat`: a terminal client of a running server through the `openai` SDK, printing each reply as it
streams. A thin client of the HTTP API: no torch and nothing of the server is imported here."""

import signal
import sys
import uuid
from typing import TextIO

import openai
from openai.types.chat import ChatCompletionMessageParam

_HELP = (
    "Type a message and press Enter. /reset starts a new conversation, /exit or Ctrl-D leaves, Ctrl-C stops a reply."
)


class Conversation:
    """The turns so far, and the settings every request of this conversation uses."""

    def __init__(
        self, client: openai.OpenAI, model: str, system: str | None, temperature: float | None, max_tokens: int | None
    ) -> None:
        self._client = client
        self._model = model
        self._system: list[ChatCompletionMessageParam] = [{"role": "system", "content": system}] if system else []
        self._temperature = openai.omit if temperature is None else temperature
        self._max_tokens = openai.omit if max_tokens is None else max_tokens
        self.turns: list[ChatCompletionMessageParam] = []
        # Sent as X-Session-Id: behind nginx's `scale` profile or an inference gateway, every turn goes to the
        # replica whose cache holds the conversation so far.
        self.session_id = uuid.uuid4().hex

    def reset(self) -> None:
        self.turns = []
        self.session_id = uuid.uuid4().hex

    def reply(self, text: str, out: TextIO) -> None:
        """Send `text` as the next user turn and write the reply to `out` as it streams; keep both turns.

        A KeyboardInterrupt stops the reply: the connection is closed, so the server cancels the generation, and
        the text shown so far stays in the conversation as the reply.
        """
        question: ChatCompletionMessageParam = {"role": "user", "content": text}
        stream = self._client.chat.completions.create(
            model=self._model,
            messages=[*self._system, *self.turns, question],
            temperature=self._temperature,
            max_tokens=self._max_tokens,
            stream=True,
            extra_headers={"X-Session-Id": self.session_id},
        )
        shown: list[str] = []
        try:
            for chunk in stream:
                piece = chunk.choices[0].delta.content if chunk.choices else None
                if piece:
                    out.write(piece)
                    out.flush()
                    shown.append(piece)
        finally:
            stream.close()
            self.turns += [question, {"role": "assistant", "content": "".join(shown)}]


def chat(
    prompt: str | None,
    base_url: str,
    api_key: str,
    model: str | None,
    system: str | None,
    temperature: float | None,
    max_tokens: int | None,
) -> int:
    """Run `tokserve chat`; return the exit status."""
    # Ctrl-C stops a reply even when the parent process ignored SIGINT (Python then keeps it ignored at start-up).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read().strip()  # one-shot from a pipe: `echo question | tokserve chat`
    try:
        conversation = Conversation(client, model or client.models.list().data[0].id, system, temperature, max_tokens)
        if prompt is not None:
            conversation.reply(prompt, sys.stdout)
            print()
            return 0
    except openai.APIError as error:
        print(f"tokserve chat: {_describe(error, base_url)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130  # the shell's convention for a command ended by SIGINT
    return _converse(conversation, base_url)


def _converse(conversation: Conversation, base_url: str) -> int:
    print(_HELP)
    while True:
        try:
            line = input("> ").strip()
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:  # at the prompt, Ctrl-C only clears the line, as in a shell
            print()
            continue
        if line == "/exit":
            return 0
        if line == "/reset":
            conversation.reset()
            print("(new conversation)")
        elif line:
            try:
                conversation.reply(line, sys.stdout)
            except KeyboardInterrupt:
                print(" [stopped]", end="")
            except openai.APIError as error:
                print(f"\nerror: {_describe(error, base_url)}", end="")
            print()


def _describe(error: openai.APIError, base_url: str) -> str:
    if isinstance(error, openai.APIConnectionError):
        return f"cannot reach {base_url}: is `tokserve serve` running?"
    return error.message
