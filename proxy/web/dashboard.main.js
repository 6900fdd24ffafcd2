// The dashboard's entry point: the admin credential (asked for, kept in sessionStorage,
// asked for again when the proxy refuses it) and the sections loaded with it.

import { credential } from "./dashboard.api.js";
import { initBudgets, loadBudgets } from "./dashboard.budgets.js";
import { $, say } from "./dashboard.dom.js";
import { initKeys, loadKeys } from "./dashboard.keys.js";
import { initRequests, loadFilterdata, loadLogs, restartTail, stopLiveTail } from "./dashboard.requests.js";
import { initUsage, loadUsage } from "./dashboard.usage.js";

// Charts go stale while the page is open: redrawn this often (when the tab is seen).
const REFRESH_MS = 60_000;

// What every section is handed: how to report a failure, and how to reload.
const ctx = {
  /**
   * A call failed. A refused credential (401, or 403 where an operator's key is
   * needed) is said once at the top and the key is asked for again; anything else
   * is said in the section's own status line.
   */
  failed(error, statusId) {
    if (error.isAuth) refused(error);
    else say(statusId, error.message, true);
  },
  refresh,
  rangeChanged() {
    loadUsage();
    loadLogs();
  },
};

function refused(error) {
  stopLiveTail();
  credential.set("");
  say("auth-message", `The proxy refused the credential (${error.status}): ${error.message} Enter an admin key.`, true);
  document.body.dataset.auth = "refused";
  const input = $("admin-key");
  if (document.activeElement !== input) input.focus();
}

/** Load every section again, with the credential as it now is. */
export async function refresh() {
  document.body.dataset.auth = credential.get() ? "key" : "none";
  const first = !document.body.dataset.painted;
  const keys = loadKeys();
  await Promise.all([loadUsage(), loadLogs(), keys, loadBudgets(keys), loadFilterdata()]);
  if (first && document.body.dataset.auth !== "refused") {
    // For whoever measures the first paint (scripts/bench_dashboard.py) and for tests.
    document.body.dataset.painted = "true";
    performance.mark("dashboard:painted");
  }
}

function init() {
  initUsage(ctx);
  initRequests(ctx);
  initBudgets(ctx);
  initKeys(ctx);
  $("signin").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("admin-key");
    const value = input.value.trim();
    if (!value) {
      say("auth-message", "Enter an admin key first.", true);
      input.focus();
      return;
    }
    credential.set(value);
    input.value = ""; // kept in sessionStorage only, not in the page
    say("auth-message", "");
    refresh().then(restartTail);
  });
  $("forget").addEventListener("click", () => {
    stopLiveTail();
    credential.set("");
    // Loaded again, the page keeps nothing the key showed, and asks for a key.
    location.reload();
  });
  setInterval(() => {
    if (document.visibilityState === "visible" && document.body.dataset.auth !== "refused") loadUsage();
  }, REFRESH_MS);
  // Whatever the proxy asks for: with no admin credential configured (a proxy on
  // loopback) it answers without one, otherwise the first 401 asks for it.
  refresh();
}

init();
