// Live fleet: poll the scoped node states and update the page in place (no reload, no library).
"use strict";
(function () {
  const root = document.getElementById("fleet");
  if (!root) return;
  const url = root.dataset.stateUrl;
  const text = (el, value) => { if (el && el.textContent !== value) el.textContent = value; };

  function apply(state) {
    const byStore = {};
    let online = 0;
    for (const n of state.nodes) {
      if (n.online) online += 1;
      if (n.store) (byStore[n.store] = byStore[n.store] || []).push(n.online);
      const row = document.querySelector(`tr[data-node="${CSS.escape(n.id)}"]`);
      if (!row) continue;
      const badge = row.querySelector('[data-field="state"]');
      text(badge, n.online ? "online" : "offline");
      badge.className = "state " + (n.online ? "online" : "offline");
      text(row.querySelector('[data-field="last_seen"]'), n.last_seen || "–");
      text(row.querySelector('[data-field="software_version"]'), n.software_version || "–");
      text(row.querySelector('[data-field="config_hash"]'), (n.config_hash || "–").slice(0, 20));
    }
    for (const dot of document.querySelectorAll(".store-dot")) {
      const states = byStore[dot.dataset.store] || [];
      const up = states.filter(Boolean).length;
      const cls = !states.length ? "none" : up === states.length ? "online" : up === 0 ? "offline" : "partial";
      dot.setAttribute("class", "store-dot " + cls);
    }
    const count = document.getElementById("online-count");
    if (count && !location.search) text(count, String(online));
    text(document.getElementById("updated"), state.at.replace("T", " ").replace("+00:00", " UTC"));
  }

  async function tick() {
    try {
      const res = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (res.status === 401 || res.redirected) { location.reload(); return; }
      if (res.ok) apply(await res.json());
    } catch (_err) {
      // The cloud may be restarting; the next tick tries again.
    }
    setTimeout(tick, 1000);
  }
  setTimeout(tick, 1000);
})();
