// Virtual keys (`/api/governance/virtual-keys`): listed with their id and last four
// characters, created, deactivated and rotated. A new key's value is in the answer of its
// create or rotate only: it is shown once, with a copy button, and kept nowhere (not in
// storage, not in a variable past the moment it is shown; "Done" takes it off the page).

import { api, listOf } from "./dashboard.api.js";
import { $, el, say } from "./dashboard.dom.js";

const BASE = "/api/governance/virtual-keys";
// How long a first click on Rotate waits for the second.
const ROTATE_CONFIRM_MS = 5000;
// Fields of the create form that the API may name in a 400's `param`.
const FIELD_ERRORS = { id: "k-id-error", rate_limit_id: "k-rate-limit-error", budget_id: "k-budget-error" };

const state = { ctx: null, generation: 0, available: true };

export function initKeys(ctx) {
  state.ctx = ctx;
  $("create-key").addEventListener("submit", (event) => {
    event.preventDefault();
    create();
  });
  $("add-provider").addEventListener("click", () => addProviderRow("", "*", true));
  $("copy-key").addEventListener("click", copyNewKey);
  $("dismiss-key").addEventListener("click", hideNewKey);
  addProviderRow("", "*", false);
}

/** List the keys; the list (the budgets section reads it too), or null when it failed. */
export async function loadKeys() {
  const generation = ++state.generation;
  say("keys-status", "Loading…");
  try {
    const keys = listOf(await api(BASE), "virtual_keys");
    if (generation !== state.generation) return keys;
    setAvailable(true);
    say("keys-status", keys.length ? "" : "No virtual keys yet.");
    $("keys-table").tBodies[0].replaceChildren(...keys.map(rowOf));
    return keys;
  } catch (error) {
    if (generation !== state.generation) return null;
    $("keys-table").tBodies[0].replaceChildren();
    if (error.status === 404) {
      setAvailable(false);
      say(
        "keys-status",
        "Keys cannot be managed here: this proxy has no governance API " +
          "(GET /api/governance/virtual-keys answered 404).",
      );
    } else {
      state.ctx.failed(error, "keys-status");
    }
    return null;
  }
}

function setAvailable(available) {
  state.available = available;
  for (const control of $("create-key").elements) control.disabled = !available;
}

function allowedText(key) {
  const configs = Array.isArray(key.provider_configs) ? key.provider_configs : [];
  if (!configs.length) return "none";
  return configs
    .map((config) => {
      const models = Array.isArray(config.allowed_models) ? config.allowed_models : ["*"];
      return `${config.provider}: ${models.length ? models.join(", ") : "none"}`;
    })
    .join("; ");
}

function rowOf(key) {
  const readOnly = key.source === "config";
  const active = key.is_active !== false;
  const name = key.value_last4 ? `${key.id} (…${key.value_last4})` : String(key.id);
  const actions = el("td", { class: "actions" });
  if (readOnly) {
    actions.append("read-only (config file)");
  } else {
    const toggle = el(
      "button",
      { type: "button", class: "secondary", "aria-label": `${active ? "Deactivate" : "Activate"} key ${key.id}` },
      active ? "Deactivate" : "Activate",
    );
    const path = `${BASE}/${encodeURIComponent(key.id)}`;
    toggle.addEventListener("click", () => change(toggle, path, "PUT", { is_active: !active }));
    const rotate = el("button", { type: "button", class: "secondary", "aria-label": `Rotate key ${key.id}` }, "Rotate");
    // Rotation ends the old value at once: a second click, on purpose and soon after
    // the first, does it. Left armed, a stray click minutes later would rotate.
    const disarm = () => {
      clearTimeout(rotate.disarming);
      delete rotate.dataset.armed;
      rotate.textContent = "Rotate";
      rotate.setAttribute("aria-label", `Rotate key ${key.id}`);
    };
    rotate.addEventListener("click", () => {
      if (rotate.dataset.armed !== "true") {
        rotate.dataset.armed = "true";
        rotate.textContent = "Confirm rotate";
        rotate.setAttribute("aria-label", `Confirm: rotate key ${key.id}; its current value stops working`);
        rotate.disarming = setTimeout(disarm, ROTATE_CONFIRM_MS);
        return;
      }
      disarm();
      change(rotate, `${path}/rotate`, "POST", undefined, key.id);
    });
    rotate.addEventListener("blur", disarm);
    actions.append(toggle, rotate);
  }
  return el(
    "tr",
    { "data-id": key.id },
    el("th", { scope: "row" }, name),
    el("td", {}, active ? "yes" : "no"),
    el("td", {}, allowedText(key)),
    el("td", {}, key.rate_limit_id ?? "—"),
    el("td", {}, key.budget_id ?? "—"),
    el("td", {}, key.source ?? "—"),
    actions,
  );
}

async function change(button, path, method, body, rotated) {
  button.disabled = true;
  say("keys-status", "Saving…");
  try {
    const answer = await api(path, { method, body: body ?? {} });
    say("keys-status", "Saved.");
    if (rotated !== undefined) showNewKey(answer, `New value of ${rotated}`);
    await loadKeys();
  } catch (error) {
    button.disabled = false;
    state.ctx.failed(error, "keys-status");
  }
}

// --- creating -----------------------------------------------------------------------

function addProviderRow(provider, models, focus) {
  const index = $("k-provider-rows").children.length;
  const typed = { autocomplete: "off", spellcheck: "false" };
  const providerInput = el("input", {
    ...typed, id: `k-provider-${index}`, class: "provider", list: "providers-list", value: provider,
  });
  const modelsInput = el("input", {
    ...typed, id: `k-models-${index}`, class: "models", list: "models-list", value: models,
  });
  const remove = el(
    "button",
    { type: "button", class: "secondary", "aria-label": `Remove provider row ${index + 1}` },
    "Remove",
  );
  const row = el(
    "div",
    { class: "provider-row" },
    el("div", { class: "field" }, el("label", { for: providerInput.id }, "Provider"), providerInput),
    el("div", { class: "field" }, el("label", { for: modelsInput.id }, "Models (comma-separated)"), modelsInput),
    remove,
  );
  remove.addEventListener("click", () => {
    row.remove();
    $("add-provider").focus();
  });
  $("k-provider-rows").append(row);
  if (focus) providerInput.focus();
}

function providerConfigs() {
  return [...$("k-provider-rows").querySelectorAll(".provider-row")]
    .map((row) => ({
      provider: row.querySelector(".provider").value.trim(),
      allowed_models: row.querySelector(".models").value.split(",").map((m) => m.trim()).filter(Boolean),
    }))
    .filter((config) => config.provider);
}

function clearFieldErrors() {
  for (const id of [...Object.values(FIELD_ERRORS), "k-providers-error", "k-form-error"]) say(id, "");
}

async function create() {
  if (!state.available) return;
  clearFieldErrors();
  const form = $("create-key");
  const body = { provider_configs: providerConfigs() };
  for (const name of ["id", "rate_limit_id", "budget_id"]) {
    const value = form.elements[name].value.trim();
    if (value) body[name] = value;
  }
  say("keys-status", "Creating…");
  try {
    const answer = await api(BASE, { method: "POST", body });
    say("keys-status", "Created.");
    form.reset();
    $("k-provider-rows").replaceChildren();
    addProviderRow("", "*", false);
    showNewKey(answer, `New key ${answer.id ?? ""}`.trim());
    await loadKeys();
  } catch (error) {
    say("keys-status", "");
    if (error.status === 400) {
      const param = String(error.param || "");
      const field =
        FIELD_ERRORS[param] || (param.startsWith("provider_configs") ? "k-providers-error" : "k-form-error");
      say(field, param && field === "k-form-error" ? `${param}: ${error.message}` : error.message, true);
    } else {
      state.ctx.failed(error, "k-form-error");
    }
  }
}

// --- a new value, shown once ------------------------------------------------------------

function showNewKey(answer, titleText) {
  const value = answer && (answer.value ?? answer.key ?? answer.virtual_key?.value);
  if (typeof value !== "string" || !value) {
    say("keys-status", "The proxy did not answer with the key's value.", true);
    return;
  }
  $("new-key-title").textContent = titleText;
  $("new-key-value").textContent = value;
  $("new-key").hidden = false;
  $("copy-key").textContent = "Copy";
  $("copy-key").focus();
}

async function copyNewKey() {
  const value = $("new-key-value").textContent;
  try {
    await navigator.clipboard.writeText(value);
    $("copy-key").textContent = "Copied";
  } catch {
    // No clipboard permission: leave the value selected for Ctrl+C.
    const range = document.createRange();
    range.selectNodeContents($("new-key-value"));
    const selection = getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    $("copy-key").textContent = "Select and copy";
  }
}

function hideNewKey() {
  $("new-key-value").textContent = "";
  $("new-key").hidden = true;
  $("keys-title").focus();
}
