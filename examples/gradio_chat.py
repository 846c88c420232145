"""The seed's Gradio ChatInterface, rewritten as a thin client of tokserve through the `openai` SDK.

The seed loaded the model into the Gradio process, ran `model.generate` in a thread with a TextIteratorStreamer,
built a Llama-2 prompt by hand and stripped stray spaces from every line. tokserve now does all of that (chat
template, incremental detokenization, streaming); this file only sends the conversation and shows the text.

    make serve                        # in one terminal: the server on http://127.0.0.1:8000
    .venv/bin/pip install gradio      # Gradio is not a dependency of tokserve
    .venv/bin/python examples/gradio_chat.py

Environment: TOKSERVE_URL (default http://127.0.0.1:8000/v1), TOKSERVE_API_KEY, SYSTEM_PROMPT.
"""

import functools
import os
from collections.abc import Iterator
from typing import Any

from openai import OpenAI

SYSTEM_PROMPT = os.environ.get("SYSTEM_PROMPT", "You are an honest and capable assistant.")
client = OpenAI(
    base_url=os.environ.get("TOKSERVE_URL", "http://127.0.0.1:8000/v1"),
    api_key=os.environ.get("TOKSERVE_API_KEY", "none"),
)


@functools.cache
def served_model() -> str:
    return client.models.list().data[0].id


def conversation(message: str, history: list[Any]) -> list[Any]:
    """The whole conversation as OpenAI messages: the server applies the model's own chat template."""
    messages: list[Any] = [{"role": "system", "content": SYSTEM_PROMPT}]
    for turn in history:
        if isinstance(turn, dict):  # Gradio's "messages" history; text parts are fine as they are
            messages.append({"role": turn["role"], "content": turn["content"]})
        else:  # older Gradio: [user, assistant] pairs, as in the seed
            user, assistant = turn
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return [*messages, {"role": "user", "content": message}]


def chat(message: str, history: list[Any]) -> Iterator[str]:
    """Gradio shows each yielded value in place of the last, so yield the whole reply so far.

    Gradio's Stop closes this generator; leaving the `with` then closes the connection, and the server cancels.
    """
    with client.chat.completions.create(
        model=served_model(),
        messages=conversation(message, history),
        stream=True,
        max_tokens=512,
        temperature=1.0,
        top_p=0.95,
    ) as stream:
        reply = ""
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                reply += chunk.choices[0].delta.content
                yield reply


if __name__ == "__main__":
    import gradio as gr

    gr.ChatInterface(chat).queue().launch()
