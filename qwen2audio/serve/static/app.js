// The chat page: multi-turn conversation with the model over /v1/chat/completions (streamed as server-sent
// events read from fetch), audio from the microphone (MediaRecorder, webm/opus) or a file, sent as base64
// input_audio parts. Plain JavaScript, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { history: [], attachments: [], model: null, busy: false, recorder: null };

// -- settings --------------------------------------------------------------------------------------------------------
for (const id of ["api-key", "max-tokens", "temperature", "system-prompt"]) {
  const saved = localStorage.getItem("qwen2audio:" + id);
  if (saved !== null) $(id).value = saved;
  $(id).addEventListener("change", () => localStorage.setItem("qwen2audio:" + id, $(id).value));
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || JSON.stringify(body);
  } catch (e) {
    return response.status + " " + response.statusText;
  }
}

async function loadModel() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) {
    $("model-name").textContent = response.status === 401 ? "enter the API key in Settings" : await errorMessage(response);
    return;
  }
  state.model = (await response.json()).data[0].id;
  $("model-name").textContent = state.model;
}
$("api-key").addEventListener("change", loadModel);

// -- attachments: microphone and files ----------------------------------------------------------------------------------
const FORMATS = { "audio/webm": "webm", "audio/ogg": "ogg", "audio/mp4": "mp4", "audio/mpeg": "mp3", "audio/wav": "wav",
                  "audio/x-wav": "wav", "audio/flac": "flac", "video/webm": "webm", "video/mp4": "mp4" };

function formatOf(name, type) {
  const base = (type || "").split(";")[0];
  if (FORMATS[base]) return FORMATS[base];
  const ext = (name.split(".").pop() || "").toLowerCase();
  return ext || "wav";
}

function base64Of(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

async function attach(blob, name) {
  const item = { name, format: formatOf(name, blob.type), data: await base64Of(blob), url: URL.createObjectURL(blob) };
  state.attachments.push(item);
  renderAttachments();
}

function renderAttachments() {
  const box = $("attachments");
  box.replaceChildren();
  state.attachments.forEach((item, i) => {
    const div = document.createElement("div");
    div.className = "attachment";
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.src = item.url;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "×";
    remove.title = "Remove";
    remove.onclick = () => { state.attachments.splice(i, 1); renderAttachments(); };
    div.append(item.name, audio, remove);
    box.append(div);
  });
}

$("file").addEventListener("change", async (event) => {
  for (const file of event.target.files) await attach(file, file.name);
  event.target.value = "";
});

$("record").addEventListener("click", async () => {
  if (state.recorder) { state.recorder.stop(); return; }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (e) {
    setStatus("no microphone: " + e.message + " (browsers allow it on https:// or http://localhost only)", true);
    return;
  }
  const type = MediaRecorder.isTypeSupported("audio/webm;codecs=opus") ? "audio/webm;codecs=opus" : "";
  const recorder = new MediaRecorder(stream, type ? { mimeType: type } : {});
  const chunks = [];
  recorder.ondataavailable = (e) => { if (e.data.size) chunks.push(e.data); };
  recorder.onstop = async () => {
    stream.getTracks().forEach((t) => t.stop());
    state.recorder = null;
    $("record").classList.remove("recording");
    $("record").textContent = "● Record";
    const blob = new Blob(chunks, { type: recorder.mimeType || "audio/webm" });
    await attach(blob, "recording." + formatOf("", blob.type));
    setStatus("recorded " + (blob.size / 1024).toFixed(0) + " KiB: send it alone (voice chat) or with a text instruction");
  };
  recorder.start();
  state.recorder = recorder;
  $("record").classList.add("recording");
  $("record").textContent = "■ Stop";
  setStatus("recording… press Stop when done");
});

// -- the conversation ---------------------------------------------------------------------------------------------------
function setStatus(text, bad) {
  $("status").textContent = text || "";
  $("status").style.color = bad ? "var(--bad)" : "";
}

function bubble(role) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  $("log").append(div);
  $("hint").hidden = true;
  return div;
}

function showUserTurn(parts, attachments) {
  const div = bubble("user");
  for (const item of attachments) {
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.src = item.url;
    div.append(audio);
  }
  const text = parts.filter((p) => p.type === "text").map((p) => p.text).join("\n");
  if (text) div.append(text);
  if (!text) { const meta = document.createElement("span"); meta.className = "meta"; meta.textContent = "voice chat"; div.append(meta); }
}

function requestBody() {
  const system = $("system-prompt").value.trim();
  const messages = (system ? [{ role: "system", content: system }] : []).concat(state.history);
  const body = { messages, stream: true, stream_options: { include_usage: true },
                 max_tokens: parseInt($("max-tokens").value, 10) || 256,
                 temperature: parseFloat($("temperature").value) || 0 };
  if (state.model) body.model = state.model;
  return body;
}

// Read server-sent events from a fetch response: calls onEvent(parsed JSON) per `data:` line until [DONE].
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
    }
  }
}

async function send() {
  if (state.busy) return;
  const text = $("text").value.trim();
  if (!text && !state.attachments.length) { setStatus("type a message or attach audio first"); return; }
  const attachments = state.attachments;
  const parts = attachments.map((a) => ({ type: "input_audio", input_audio: { data: a.data, format: a.format } }));
  if (text) parts.push({ type: "text", text });
  state.history.push({ role: "user", content: parts });
  showUserTurn(parts, attachments);
  state.attachments = [];
  renderAttachments();
  $("text").value = "";

  state.busy = true;
  $("send").disabled = true;
  const answer = bubble("assistant");
  const out = document.createElement("span");
  out.className = "text";
  answer.append(out);
  answer.dataset.done = "false";
  answer.dataset.chunks = "0";
  const started = performance.now();
  let finish = null, usage = null, failed = null;
  try {
    const response = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(requestBody()) });
    if (!response.ok) throw new Error(await errorMessage(response));
    await readEvents(response, (event) => {
      if (event.error) throw new Error(event.error.message);
      if (event.usage) usage = event.usage;
      for (const choice of event.choices || []) {
        if (choice.delta && choice.delta.content) {
          out.textContent += choice.delta.content;
          answer.dataset.chunks = String(Number(answer.dataset.chunks) + 1);
          $("log").scrollTop = $("log").scrollHeight;
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    });
  } catch (e) {
    failed = e.message;
  }
  const meta = document.createElement("span");
  meta.className = "meta";
  if (failed) {
    answer.classList.add("error");
    out.textContent += (out.textContent ? "\n" : "") + "error: " + failed;
    state.history.pop();  // the turn was not answered: leave it out of the conversation
  } else {
    state.history.push({ role: "assistant", content: out.textContent });
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    meta.textContent = [finish && "finish: " + finish, usage && usage.completion_tokens + " tokens", seconds + " s"].filter(Boolean).join(" · ");
  }
  answer.append(meta);
  answer.dataset.done = "true";
  state.busy = false;
  $("send").disabled = false;
  setStatus("");
}

$("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
$("text").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); }
});
$("new-chat").addEventListener("click", () => {
  state.history = [];
  $("log").querySelectorAll(".msg").forEach((m) => m.remove());
  $("hint").hidden = false;
});

loadModel();
