// The caption page: an audio file or the microphone in, server-sent captions out.
// Plain browser JavaScript, no build step; also a reference client for
// front ends that consume the proxy's stream=true events.
"use strict";

const ENDPOINT = "/v1/audio/transcriptions";
const KEY_STORAGE = "transcription-proxy.virtual-key";
// The microphone is sent in slices this long, one streaming request each, in order.
const SLICE_SECONDS = 4;

const $ = (id) => document.getElementById(id);

const page = {
  // One entry per request (a file, or a microphone slice): {offset, text, segments, li}.
  parts: [],
  xhr: null, // the request in flight
  queue: Promise.resolve(), // microphone slices, sent one after another
  recorder: null,
  stream: null,
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
  try {
    page.stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (error) {
    showError(`the microphone is not available: ${error.message}`);
    return;
  }
  page.recording = true;
  $("progress").hidden = true;
  busy(true);
  recordSlice(0);
}

function recordSlice(offset) {
  const recorder = new MediaRecorder(page.stream);
  const pieces = [];
  const begun = performance.now();
  recorder.ondataavailable = (event) => {
    if (event.data.size) pieces.push(event.data);
  };
  recorder.onstop = () => {
    const next = offset + (performance.now() - begun) / 1000;
    if (page.recording) recordSlice(next); // the next slice starts at once
    const blob = new Blob(pieces, { type: recorder.mimeType || "audio/webm" });
    const extension = (recorder.mimeType || "").includes("ogg") ? "ogg" : "webm";
    if (blob.size) {
      page.queue = page.queue.then(() => transcribe(blob, `slice.${extension}`, offset));
    }
  };
  page.recorder = recorder;
  recorder.start();
  setTimeout(() => {
    if (recorder.state === "recording") recorder.stop();
  }, SLICE_SECONDS * 1000);
}

function stop() {
  if (page.recording) {
    page.recording = false;
    if (page.recorder && page.recorder.state === "recording") page.recorder.stop();
    page.stream.getTracks().forEach((track) => track.stop());
    // What was said before Stop is still transcribed, in order.
    setTimeout(() => page.queue.then(() => {
      busy(false);
      setStatus("Stopped.");
    }), 0);
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
