// The caption page: an audio file in, server-sent captions out; or the
// microphone over a realtime session (WebSocket), captions as people speak.
// Plain browser JavaScript, no build step; also a reference client for
// front ends that consume the proxy's stream=true events and realtime sessions.
"use strict";

const ENDPOINT = "/v1/audio/transcriptions";
const REALTIME = "/v1/realtime?intent=transcription";
const CLIENT_SECRETS = "/v1/realtime/client_secrets";
const KEY_STORAGE = "transcription-proxy.virtual-key";
const TRANSCRIPTION = "conversation.item.input_audio_transcription";
// After Stop, how long the turns still being transcribed are waited for.
const STOP_WAIT_MS = 15000;

const $ = (id) => document.getElementById(id);

const page = {
  // One entry per request (a file) or per spoken turn: {offset, text, segments, li}.
  parts: [],
  xhr: null, // the request in flight
  live: null, // the microphone's realtime session: {ws, stream, context, turns, open}
  recording: false,
  started: 0,
  ticker: null,
};

function authHeaders() {
  const key = $("key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function clock(seconds, separator) {
  const ms = Math.max(0, Math.round(seconds * 1000));
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(Math.floor(ms / 3600000))}:${pad(Math.floor(ms / 60000) % 60)}:` +
    `${pad(Math.floor(ms / 1000) % 60)}${separator}${pad(ms % 1000, 3)}`;
}

function shortClock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

// --- the models the caller may use --------------------------------------------------------

async function loadModels() {
  let response;
  try {
    response = await fetch("/v1/models", { headers: authHeaders() });
  } catch (error) {
    showError(`cannot reach the proxy: ${error.message}`);
    return;
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    showError(errorMessage(body, response.status));
    return;
  }
  showError("");
  const select = $("model");
  const chosen = select.value;
  const ids = (body && Array.isArray(body.data) ? body.data : []).map((m) => m.id);
  if (!ids.length) return; // keep the default: bare names still route
  select.replaceChildren(...ids.map((id) => new Option(id, id)));
  if (ids.includes(chosen)) select.value = chosen;
}

function errorMessage(body, status) {
  const error = body && body.error;
  if (error && error.message) return `${error.message} (${status || error.code || "error"})`;
  return status ? `the proxy answered ${status}` : "the request failed";
}

// --- one streaming request ----------------------------------------------------------------

// Resolves once the request has ended: with true when it was stopped.
function transcribe(blob, filename, offset) {
  return new Promise((resolve) => {
    const part = { offset, text: "", segments: null, li: document.createElement("li") };
    page.parts.push(part);
    $("captions").append(part.li);

    const form = new FormData();
    form.append("model", $("model").value);
    const language = $("language").value.trim();
    if (language) form.append("language", language);
    form.append("response_format", $("format").value);
    form.append("stream", "true");
    form.append("file", blob, filename); // last: the proxy streams it straight through

    const xhr = new XMLHttpRequest();
    page.xhr = xhr;
    let seen = 0;
    let buffer = "";
    xhr.open("POST", ENDPOINT);
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (event) => {
      if (!event.lengthComputable) return;
      const percent = Math.round((event.loaded / event.total) * 100);
      $("upload-bar").value = percent;
      $("upload-text").textContent =
        `${event.loaded.toLocaleString()} of ${event.total.toLocaleString()} bytes (${percent}%)`;
    };
    xhr.onprogress = () => {
      if (!isEventStream(xhr)) return;
      buffer += xhr.responseText.slice(seen);
      seen = xhr.responseText.length;
      const frames = buffer.split("\n\n");
      buffer = frames.pop();
      for (const frame of frames) handleFrame(frame, part);
    };
    xhr.onload = () => {
      if (isEventStream(xhr)) {
        buffer += xhr.responseText.slice(seen);
        for (const frame of buffer.split("\n\n")) if (frame) handleFrame(frame, part);
      } else {
        let body = null;
        try {
          body = JSON.parse(xhr.responseText);
        } catch (_) {
          body = null;
        }
        if (xhr.status !== 200) showError(errorMessage(body, xhr.status));
      }
      finish(part, () => resolve(false), xhr);
    };
    xhr.onerror = () => {
      showError("the connection to the proxy failed");
      finish(part, () => resolve(false), xhr);
    };
    xhr.onabort = () => finish(part, () => resolve(true), xhr);
    xhr.send(form);
  });
}

function isEventStream(xhr) {
  return (xhr.getResponseHeader("Content-Type") || "").startsWith("text/event-stream");
}

function finish(part, done, xhr) {
  if (page.xhr === xhr) page.xhr = null;
  if (!part.text && !part.segments) part.li.remove();
  updateDownloads();
  done();
}

function handleFrame(frame, part) {
  const data = frame
    .split("\n")
    .filter((line) => line.startsWith("data:"))
    .map((line) => line.slice(5).replace(/^ /, ""))
    .join("\n");
  if (!data || data === "[DONE]") return;
  let event;
  try {
    event = JSON.parse(data);
  } catch (_) {
    return;
  }
  if (event.error) {
    showError(errorMessage(event, event.status_code));
    return;
  }
  if (event.type === "transcript.text.delta") {
    part.text += event.delta || "";
    render(part);
  } else if (event.type === "transcript.text.segment") {
    part.segments = (part.segments || []).concat([event]);
    render(part);
  } else if (event.type === "transcript.text.done") {
    const format = $("format").value;
    if (Array.isArray(event.segments) && event.segments.length) {
      part.segments = event.segments;
    } else if ((format === "srt" || format === "vtt") && event.text) {
      part.segments = parseCues(event.text);
    }
    part.text = part.segments ? part.segments.map((s) => s.text.trim()).join(" ") : event.text;
    render(part);
    showFacts(event.extra_fields || {});
  }
}

function render(part) {
  if (!part.segments) {
    part.li.textContent = part.text.trim();
    return;
  }
  part.li.replaceChildren(
    ...part.segments.map((segment) => {
      const line = document.createElement("span");
      line.className = "segment";
      const time = document.createElement("time");
      time.textContent = shortClock(part.offset + (segment.start || 0));
      line.append(time, `${(segment.text || "").trim()} `);
      return line;
    }),
  );
}

function parseCues(text) {
  const cues = [];
  const timing = /((?:\d+:)?\d{1,2}:\d{2}[.,]\d{1,3})\s*-->\s*((?:\d+:)?\d{1,2}:\d{2}[.,]\d{1,3})/;
  for (const block of text.split(/\r?\n\s*\r?\n/)) {
    const lines = block.trim().split(/\r?\n/);
    const at = lines.findIndex((line) => timing.test(line));
    if (at < 0) continue;
    const [, start, end] = lines[at].match(timing);
    cues.push({ start: seconds(start), end: seconds(end), text: lines.slice(at + 1).join(" ") });
  }
  return cues;
}

function seconds(value) {
  return value
    .replace(",", ".")
    .split(":")
    .reduce((total, piece) => total * 60 + Number(piece), 0);
}

function showFacts(extra) {
  const facts = [
    ["Provider", extra.provider],
    ["Model", extra.model_deployment || extra.model_requested],
    ["Latency", extra.latency !== undefined ? `${extra.latency} ms` : undefined],
    ["Chunks", extra.audio_chunks],
    ["Cache", extra.cache_debug ? (extra.cache_debug.cache_hit ? "hit" : "miss") : undefined],
    ["Elapsed", `${((performance.now() - page.started) / 1000).toFixed(1)} s`],
  ].filter(([, value]) => value !== undefined && value !== null);
  const list = $("facts");
  list.replaceChildren(
    ...facts.flatMap(([name, value]) => {
      const dt = document.createElement("dt");
      dt.textContent = name;
      const dd = document.createElement("dd");
      dd.textContent = String(value);
      return [dt, dd];
    }),
  );
  list.hidden = false;
}

// --- results -------------------------------------------------------------------------------

function allSegments() {
  if (!page.parts.length || page.parts.some((part) => part.text && !part.segments)) return null;
  return page.parts.flatMap((part) =>
    (part.segments || []).map((s) => ({
      start: part.offset + (s.start || 0),
      end: part.offset + (s.end || 0),
      text: (s.text || "").trim(),
    })),
  );
}

function plainText() {
  return page.parts.map((part) => part.text.trim()).filter(Boolean).join(" ");
}

function srt(segments) {
  return segments
    .map((s, n) => `${n + 1}\n${clock(s.start, ",")} --> ${clock(s.end, ",")}\n${s.text}\n\n`)
    .join("");
}

function vtt(segments) {
  return "WEBVTT\n\n" +
    segments.map((s) => `${clock(s.start, ".")} --> ${clock(s.end, ".")}\n${s.text}\n\n`).join("");
}

function updateDownloads() {
  const hasText = Boolean(plainText());
  const timed = allSegments();
  $("download-txt").disabled = !hasText;
  $("copy").disabled = !hasText;
  $("download-srt").disabled = !(timed && timed.length);
  $("download-vtt").disabled = !(timed && timed.length);
}

function download(name, type, text) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([text], { type }));
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

// --- sources: a file, or the microphone ----------------------------------------------------

function reset() {
  page.parts = [];
  $("captions").replaceChildren();
  $("facts").hidden = true;
  showError("");
  updateDownloads();
}

function busy(on) {
  $("stop").disabled = !on;
  $("mic").disabled = on;
  $("file").disabled = on;
  if (on) {
    page.started = performance.now();
    page.ticker = setInterval(() => {
      const elapsed = ((performance.now() - page.started) / 1000).toFixed(1);
      setStatus(page.recording ? `Recording… ${elapsed} s` : `Transcribing… ${elapsed} s`);
    }, 200);
  } else {
    clearInterval(page.ticker);
  }
}

async function sendFile(file) {
  if (!file || page.xhr || page.recording) return;
  reset();
  $("progress").hidden = false;
  busy(true);
  const stopped = await transcribe(file, file.name || "audio", 0);
  busy(false);
  if (stopped) setStatus("Stopped.");
  else if (!$("error").hidden) setStatus("Failed.");
  else setStatus(`Done in ${((performance.now() - page.started) / 1000).toFixed(1)} s.`);
}

async function startMicrophone() {
  if (page.xhr || page.recording) return;
  reset();
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
    });
  } catch (error) {
    showError(`the microphone is not available: ${error.message}`);
    return;
  }
  const context = new AudioContext();
  try {
    await context.audioWorklet.addModule("/ui/mic-worklet.js");
  } catch (error) {
    stream.getTracks().forEach((track) => track.stop());
    context.close();
    showError(`this browser cannot capture audio for a live session: ${error.message}`);
    return;
  }
  let ws;
  try {
    ws = await openSession();
  } catch (error) {
    stream.getTracks().forEach((track) => track.stop());
    context.close();
    showError(error.message);
    return;
  }
  const live = {
    ws, stream, context, node: null, turns: new Map(), open: null, stopping: false, committing: false,
  };
  page.live = live;
  page.recording = true;
  $("progress").hidden = true;
  busy(true);
  ws.addEventListener("open", () => {
    const language = $("language").value.trim();
    ws.send(JSON.stringify({
      type: "session.update",
      session: {
        type: "transcription",
        audio: {
          input: {
            format: { type: "audio/pcm", rate: 24000 },
            transcription: { model: $("model").value, ...(language ? { language } : {}) },
            turn_detection: { type: "server_vad" },
          },
        },
      },
    }));
    const source = context.createMediaStreamSource(stream);
    const node = new AudioWorkletNode(context, "microphone-pcm");
    node.port.onmessage = (event) => {
      if (ws.readyState === WebSocket.OPEN && !live.stopping) {
        ws.send(JSON.stringify({ type: "input_audio_buffer.append", audio: base64(event.data) }));
      }
    };
    source.connect(node);
    live.node = node;
  });
  ws.addEventListener("message", (message) => handleLiveEvent(live, JSON.parse(message.data)));
  ws.addEventListener("close", (event) => {
    if (!live.stopping && event.code !== 1000) {
      showError(event.code === 1012
        ? "the server is restarting: start the microphone again to go on"
        : `the live session ended (${event.reason || event.code})`);
    }
    endMicrophone(live);
  });
}

async function openSession() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const model = encodeURIComponent($("model").value);
  const url = `${scheme}://${location.host}${REALTIME}&model=${model}`;
  const key = $("key").value.trim();
  if (!key) return new WebSocket(url, ["realtime"]);
  // A browser cannot set a header on a WebSocket, and the virtual key should not
  // sit in a page's WebSocket either: a short-lived client secret goes instead.
  const response = await fetch(CLIENT_SECRETS, {
    method: "POST",
    headers: { ...authHeaders(), "Content-Type": "application/json" },
    body: JSON.stringify({ expires_after: { anchor: "created_at", seconds: 600 } }),
  });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error(errorMessage(body, response.status));
  return new WebSocket(url, ["realtime", `openai-insecure-api-key.${body.value}`]);
}

function base64(samples) {
  const bytes = new Uint8Array(samples.buffer, samples.byteOffset, samples.byteLength);
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

function liveTurn(live, itemId, startMs) {
  let part = live.turns.get(itemId);
  if (!part) {
    part = { offset: (startMs || 0) / 1000, text: "", segments: null, li: document.createElement("li") };
    part.li.className = "partial";
    live.turns.set(itemId, part);
    page.parts.push(part);
    $("captions").append(part.li);
  }
  return part;
}

function handleLiveEvent(live, event) {
  switch (event.type) {
    case "input_audio_buffer.speech_started":
      live.open = event.item_id;
      liveTurn(live, event.item_id, event.audio_start_ms);
      break;
    case "input_audio_buffer.speech_stopped": {
      const part = liveTurn(live, event.item_id, 0);
      part.endMs = event.audio_end_ms;
      break;
    }
    case "input_audio_buffer.committed":
      if (live.open === event.item_id) live.open = null;
      live.committing = false;
      liveTurn(live, event.item_id, 0).committed = true;
      break;
    case `${TRANSCRIPTION}.delta`: {
      const part = liveTurn(live, event.item_id, 0);
      part.text += event.delta || "";
      render(part);
      break;
    }
    case `${TRANSCRIPTION}.completed`: {
      const part = liveTurn(live, event.item_id, 0);
      part.text = event.transcript || "";
      const end = part.endMs !== undefined ? part.endMs / 1000 - part.offset : 0;
      part.segments = part.text ? [{ start: 0, end: Math.max(end, 0), text: part.text }] : [];
      part.done = true;
      part.li.classList.remove("partial");
      render(part);
      if (!part.text) part.li.remove();
      updateDownloads();
      break;
    }
    case `${TRANSCRIPTION}.failed`: {
      const part = liveTurn(live, event.item_id, 0);
      part.done = true;
      part.li.remove();
      showError(errorMessage(event, null));
      break;
    }
    case "error":
      // After Stop, a commit with nothing left to commit is no news.
      if (live.stopping && event.error.code === "input_audio_buffer_commit_empty") {
        live.committing = false;
        break;
      }
      showError(errorMessage(event, null));
      break;
    default:
      break;
  }
  const waiting = [...live.turns.values()].some((part) => part.committed && !part.done);
  if (live.stopping && !live.committing && !waiting) live.ws.close(1000);
}

function endMicrophone(live) {
  if (page.live !== live) return;
  page.live = null;
  page.recording = false;
  live.stream.getTracks().forEach((track) => track.stop());
  live.context.close();
  for (const part of live.turns.values()) {
    if (!part.done) part.li.classList.remove("partial");
    if (!part.text) part.li.remove();
  }
  page.parts = page.parts.filter((part) => part.text);
  updateDownloads();
  busy(false);
  setStatus($("error").hidden ? "Stopped." : "Failed.");
}

function stop() {
  const live = page.live;
  if (live) {
    if (live.stopping) return;
    live.stopping = true;
    live.stream.getTracks().forEach((track) => track.stop());
    if (live.node) live.node.port.onmessage = null;
    setStatus("Finishing the last words…");
    // What was said before Stop is still transcribed: the turn in progress is
    // committed, and the session closes once every turn has its transcript.
    if (live.ws.readyState === WebSocket.OPEN) {
      if (live.open) {
        live.ws.send(JSON.stringify({ type: "input_audio_buffer.commit" }));
        live.open = null;
        live.committing = true;
      }
      handleLiveEvent(live, { type: "stopping" });
      setTimeout(() => live.ws.close(1000), STOP_WAIT_MS);
    } else {
      endMicrophone(live);
    }
    return;
  }
  if (page.xhr) page.xhr.abort();
}

// --- wiring ---------------------------------------------------------------------------------

function init() {
  const key = $("key");
  key.value = sessionStorage.getItem(KEY_STORAGE) || "";
  key.addEventListener("change", () => {
    sessionStorage.setItem(KEY_STORAGE, key.value.trim());
    loadModels();
  });
  $("file").addEventListener("change", (event) => sendFile(event.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    sendFile(event.dataTransfer.files[0]);
  });
  $("mic").addEventListener("click", startMicrophone);
  $("stop").addEventListener("click", stop);
  $("download-txt").addEventListener("click", () =>
    download("transcript.txt", "text/plain", `${plainText()}\n`));
  $("download-srt").addEventListener("click", () =>
    download("transcript.srt", "application/x-subrip", srt(allSegments())));
  $("download-vtt").addEventListener("click", () =>
    download("transcript.vtt", "text/vtt", vtt(allSegments())));
  $("copy").addEventListener("click", async () => {
    await navigator.clipboard.writeText(plainText());
    setStatus("Copied to the clipboard.");
  });
  loadModels();
}

document.addEventListener("DOMContentLoaded", init);
