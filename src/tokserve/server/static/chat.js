"use strict";
// The chat page: a client of /v1/chat/completions like any other, streaming over fetch and a ReadableStream.
// Model output only ever becomes text (textContent), never markup.

const $ = (id) => document.getElementById(id);
let turns = []; // this conversation's user and assistant messages; the system prompt is added per request
let inFlight = null; // the AbortController of the reply being streamed
// Sent as X-Session-Id: behind nginx's `scale` profile or an inference gateway, every turn of a conversation goes
// to the replica whose cache holds it. getRandomValues, since crypto.randomUUID needs https or localhost.
const newSession = () =>
  Array.from(crypto.getRandomValues(new Uint8Array(16)), (byte) => byte.toString(16).padStart(2, "0")).join("");
let session = newSession();

function headers() {
  const key = $("api-key").value.trim(); // sent only when filled in: a server without keys needs none
  const auth = key ? { Authorization: `Bearer ${key}` } : {};
  return { "Content-Type": "application/json", "X-Session-Id": session, ...auth };
}

function addMessage(role, text) {
  const item = document.createElement("article");
  item.className = `message ${role}`;
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  item.append(body);
  $("transcript").append(item);
  item.scrollIntoView({ block: "end" });
  return item;
}

function addNote(item, text) {
  const note = document.createElement("div");
  note.className = "note";
  note.textContent = text;
  item.append(note);
}

// The payloads of an SSE response's `data:` lines, as they arrive.
async function* sseData(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    pending += value;
    const lines = pending.split(/\r?\n/);
    pending = lines.pop(); // an incomplete line waits for the next read
    for (const line of lines) {
      if (line.startsWith("data:")) yield line.slice(line.startsWith("data: ") ? 6 : 5);
    }
  }
}

async function errorMessage(response) {
  try {
    return (await response.json()).error.message;
  } catch {
    return `HTTP ${response.status}`;
  }
}

function requestBody(question) {
  const system = $("system").value.trim();
  const body = {
    messages: [...(system ? [{ role: "system", content: system }] : []), ...turns, question],
    stream: true,
    stream_options: { include_usage: true },
  };
  const temperature = $("temperature").valueAsNumber;
  const maxTokens = $("max-tokens").valueAsNumber;
  if (!Number.isNaN(temperature)) body.temperature = temperature;
  if (!Number.isNaN(maxTokens)) body.max_tokens = maxTokens;
  return body;
}

function describe(started, firstAt, endedAt, usage) {
  if (firstAt === null) return "";
  const parts = [`TTFT ${((firstAt - started) / 1000).toFixed(2)} s`];
  const tokens = usage?.completion_tokens;
  // Decoding speed: the tokens after the first, over the time after the first.
  if (tokens > 1 && endedAt > firstAt) {
    parts.push(`${((tokens - 1) / ((endedAt - firstAt) / 1000)).toFixed(1)} tokens/s`);
  }
  if (tokens) parts.push(`${tokens} tokens`);
  return parts.join(" · ");
}

async function send(text) {
  const question = { role: "user", content: text };
  const body = requestBody(question);
  const conversation = turns; // "New chat" during the reply starts another array: this one stays with its reply
  addMessage("user", text);
  const item = addMessage("assistant", "");
  const shownText = item.querySelector(".text");
  item.dataset.state = "waiting";
  inFlight = new AbortController();
  setBusy(true);
  const started = performance.now();
  let firstAt = null;
  let shown = "";
  let usage = null;
  try {
    const response = await fetch("v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: inFlight.signal,
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    for await (const data of sseData(response)) {
      if (data === "[DONE]") break;
      const event = JSON.parse(data);
      if (event.error) throw new Error(event.error.message);
      usage = event.usage ?? usage;
      const piece = event.choices?.[0]?.delta?.content;
      if (piece) {
        firstAt ??= performance.now();
        shown += piece;
        shownText.textContent = shown;
        item.dataset.state = "streaming";
        item.scrollIntoView({ block: "end" });
      }
    }
    item.dataset.state = "done";
  } catch (error) {
    item.dataset.state = error.name === "AbortError" ? "stopped" : "error";
    addNote(item, error.name === "AbortError" ? "stopped" : `error: ${error.message}`);
  } finally {
    inFlight = null;
    setBusy(false);
  }
  if (item.dataset.state !== "error") conversation.push(question, { role: "assistant", content: shown });
  addNote(item, describe(started, firstAt, performance.now(), usage));
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

async function showModel() {
  try {
    const response = await fetch("v1/models", { headers: headers() });
    $("model").textContent = response.ok ? (await response.json()).data[0].id : "";
  } catch {
    $("model").textContent = "";
  }
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("message").value.trim();
  if (!text || inFlight) return;
  $("message").value = "";
  send(text);
});
$("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => inFlight?.abort());
$("new-chat").addEventListener("click", () => {
  inFlight?.abort();
  turns = [];
  session = newSession();
  $("transcript").replaceChildren();
  $("message").focus();
});
$("api-key").addEventListener("change", showModel);
showModel();
