// spotleash dashboard: reads api/state (relative to the page, so the local server's token travels with
// it) every POLL_MS, renders with textContent only, and moves ages and countdowns on every second.
"use strict";

(function () {
  const POLL_MS = 2000;
  const SVG = "http://www.w3.org/2000/svg";
  let skewMs = 0; // server clock minus this browser's clock, at the last read
  let lastOk = null;

  function $(id) { return document.getElementById(id); }

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) e.setAttribute(k, String(v));
    }
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "–";
    const neg = seconds < 0;
    let s = Math.floor(Math.abs(seconds));
    const h = Math.floor(s / 3600); s -= h * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    const text = h > 0 ? `${h}h ${String(m).padStart(2, "0")}m` : m > 0 ? `${m}m ${String(s).padStart(2, "0")}s` : `${s}s`;
    return neg ? `${text} ago` : text;
  }

  function money(v) { return v === null || v === undefined ? "–" : `$${Number(v).toFixed(4)}`; }

  function serverNow() { return Date.now() + skewMs; }

  // A cell whose text is an age (since = ISO) or a countdown (until = ISO), kept moving by tick().
  function clockCell(kind, iso, cls) {
    const td = el("td", { class: cls || null });
    if (iso) { td.dataset[kind] = iso; }
    td.textContent = "–";
    return td;
  }

  function tick() {
    const now = serverNow();
    for (const e of document.querySelectorAll("[data-since]")) {
      const age = (now - Date.parse(e.dataset.since)) / 1000;
      e.textContent = age >= 0 ? `${duration(age)} ago` : duration(-age);
    }
    for (const e of document.querySelectorAll("[data-until]")) {
      const left = (Date.parse(e.dataset.until) - now) / 1000;
      e.textContent = left >= 0 ? duration(left) : `passed ${duration(-left)} ago`;
      e.classList.toggle("bad", left < 0);
    }
  }

  function fillRows(tableId, rows, emptyText, columns) {
    const body = $(tableId).tBodies[0];
    const fresh = document.createElement("tbody");
    if (rows.length === 0) {
      const tr = el("tr");
      tr.appendChild(el("td", { colspan: columns }, emptyText));
      fresh.appendChild(tr);
    }
    for (const row of rows) fresh.appendChild(row);
    body.replaceWith(fresh);
  }

  function healthClass(state) {
    return state === "healthy" ? "ok" : state === "failing" || state === "gave up" ? "bad" : "warn";
  }

  function instanceRow(inst, routesAvailable) {
    const tr = el("tr", { "data-instance-id": inst.instance_id });
    tr.appendChild(el("th", { scope: "row", class: "id" }, inst.instance_id));
    tr.appendChild(el("td", { class: "id" }, inst.lease_id));
    tr.appendChild(el("td", {}, `${inst.provider}${inst.machine ? " · " + inst.machine : ""}${inst.zone ? " · " + inst.zone : ""}`));
    tr.appendChild(stateCell(inst));
    const leaseStart = inst.lease.age_s === null ? null : new Date(Date.parse(inst.now_iso) - inst.lease.age_s * 1000).toISOString();
    tr.appendChild(clockCell("since", leaseStart));
    const exp = clockCell("until", inst.lease.expires_at);
    if (!inst.lease.known) { delete exp.dataset.until; exp.textContent = "lease unknown"; exp.className = "bad"; }
    if (inst.lease.released) { delete exp.dataset.until; exp.textContent = "released"; exp.className = "warn"; }
    tr.appendChild(exp);
    const beat = clockCell("since", inst.last_heartbeat, "heartbeat");
    if (!inst.last_heartbeat) beat.textContent = "none yet";
    tr.appendChild(beat);
    tr.appendChild(clockCell("until", inst.deadline));
    const comps = el("td");
    const traffic = el("td");
    if (inst.components.length === 0) comps.textContent = "no components";
    for (const c of inst.components) {
      const state = c.gave_up ? "gave up" : c.state;
      const line = el("span", { class: `comp ${healthClass(state)}` }, `${c.name}: ${state}${c.endpoint ? " @ " + c.endpoint : ""}`);
      if (c.error) line.title = c.error;
      comps.appendChild(line);
      let where;
      if (!routesAvailable) where = "not available";
      else if (!c.route) where = "no route known";
      else if (c.route.to_this_instance) where = "here (remote)";
      else where = c.route.target === "remote" ? `another instance (${c.route.instance_id})` : c.route.target;
      traffic.appendChild(el("span", { class: "comp" }, `${c.name}: ${where}`));
    }
    if (inst.components.length === 0) traffic.textContent = routesAvailable ? "–" : "not available";
    tr.appendChild(comps);
    tr.appendChild(traffic);
    tr.appendChild(el("td", { class: "num" }, Number(inst.price_per_hour).toFixed(4)));
    return tr;
  }

  function hibernatedRow(h) {
    const tr = el("tr", { "data-lease-id": h.lease_id });
    tr.appendChild(el("th", { scope: "row", class: "id" }, h.lease_id));
    tr.appendChild(el("td", {}, h.components.length ? h.components.join(", ") : "none declared"));
    tr.appendChild(el("td", { class: "id" }, h.snapshot_id));
    tr.appendChild(clockCell("since", h.snapshot_created_at, "snapshot-age"));
    const size = el("td", { class: "num", "data-bytes": h.size_bytes }, (h.size_bytes / 1e6).toFixed(1));
    if (h.raw_bytes) size.title = `${(h.raw_bytes / 1e6).toFixed(1)} MB before compression`;
    tr.appendChild(size);
    tr.appendChild(clockCell("since", h.hibernated_at));
    tr.appendChild(el("td", { class: "id" }, h.instance_id));
    return tr;
  }

  // Under an instance's state: a hibernation under way, and a replacement's failover phases.
  function stateCell(inst) {
    const td = el("td", { class: inst.preempted ? "bad" : null });
    td.appendChild(el("span", { class: "comp" }, inst.state + (inst.preempted ? " (preempted)" : "")));
    const req = inst.snapshot_request;
    if (req && req.reason === "hibernate") {
      td.appendChild(el("span", { class: "comp warn" }, req.postponed
        ? `hibernation postponed: ${req.postponed}; asked again` : "hibernating: idle, snapshot asked"));
    }
    const f = inst.failover;
    if (f) {
      const names = { detection_s: "detection", provisioning_s: "provisioning", boot_s: "boot", restore_s: "restore",
        ready_s: "ready", total_s: "total" };
      const parts = Object.entries(names).map(([k, name]) =>
        `${name} ${f.phases[k] === null || f.phases[k] === undefined ? "–" : Number(f.phases[k]).toFixed(1) + " s"}`);
      td.appendChild(el("span", { class: "comp failover" }, `replaces ${f.replaces}`));
      td.appendChild(el("span", { class: "comp muted failover-phases" }, parts.join(" · ")));
    }
    return td;
  }

  function chart(days) {
    const box = $("chart-box");
    const w = Math.max(320, days.length * 22 + 60), h = 180, left = 50, bottom = 24, top = 10;
    const max = Math.max(0.0001, ...days.map((d) => d.cost));
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.setAttribute("width", String(w));
    svg.setAttribute("height", String(h));
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-labelledby", "chart-title");
    const title = document.createElementNS(SVG, "title");
    title.id = "chart-title";
    const total = days.reduce((a, d) => a + d.cost, 0);
    title.textContent = `Bar chart: spend per day over ${days.length} day(s), ${money(total)} in all, highest ${money(max)}`;
    svg.appendChild(title);
    const axis = document.createElementNS(SVG, "line");
    for (const [k, v] of Object.entries({ x1: left, x2: w - 5, y1: h - bottom, y2: h - bottom })) axis.setAttribute(k, String(v));
    svg.appendChild(axis);
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("x", "2"); label.setAttribute("y", String(top + 10));
    label.textContent = money(max);
    svg.appendChild(label);
    const slot = (w - left - 5) / Math.max(1, days.length);
    days.forEach((d, i) => {
      const bh = (d.cost / max) * (h - bottom - top);
      const r = document.createElementNS(SVG, "rect");
      r.setAttribute("class", i === days.length - 1 ? "bar today" : "bar");
      r.setAttribute("x", String(left + i * slot + 2));
      r.setAttribute("y", String(h - bottom - bh));
      r.setAttribute("width", String(Math.max(2, slot - 4)));
      r.setAttribute("height", String(bh));
      r.setAttribute("data-date", d.date);
      r.setAttribute("data-cost", String(d.cost));
      const t = document.createElementNS(SVG, "title");
      t.textContent = `${d.date}: ${money(d.cost)}`;
      r.appendChild(t);
      svg.appendChild(r);
      if (i === 0 || i === days.length - 1 || (i + 1) % 7 === 0) {
        const x = document.createElementNS(SVG, "text");
        x.setAttribute("x", String(left + i * slot + 2));
        x.setAttribute("y", String(h - 8));
        x.textContent = d.date.slice(8);
        svg.appendChild(x);
      }
    });
    box.replaceChildren(svg);
    fillRows("days", days.map((d) => {
      const tr = el("tr");
      tr.appendChild(el("th", { scope: "row" }, d.date));
      tr.appendChild(el("td", { class: "num" }, Number(d.cost).toFixed(6)));
      return tr;
    }), "no days", 2);
  }

  function render(v) {
    $("deployment").textContent = `· ${v.deployment_id}`;
    const routesAvailable = v.routes.available;
    fillRows("instances", v.instances.map((i) => instanceRow({ ...i, now_iso: v.now }, routesAvailable)),
      "No live instances.", 11);
    $("routes-note").textContent = routesAvailable ? "" : `Traffic: not available — ${v.routes.reason}.`;
    const lc = v.local_copies || { available: false, components: [] };
    $("local-note").textContent = lc.available ? "" : `Not available — ${lc.reason}.`;
    fillRows("local-copies", lc.components.map((c) => {
      const tr = el("tr", { "data-component": c.name, "data-where": c.where });
      tr.appendChild(el("th", { scope: "row" }, c.name));
      tr.appendChild(el("td", {}, c.where));
      tr.appendChild(el("td", {}, c.local + (c.pid ? ` (pid ${c.pid})` : "")));
      tr.appendChild(el("td", { class: "num" }, c.footprint_mb === null ? "–" : String(c.footprint_mb)));
      const freed = c.freed_mb ? String(c.freed_mb) + (c.freed_total_mb && c.freed_total_mb !== c.freed_mb
        ? ` (${c.freed_total_mb} in all)` : "") : "–";
      tr.appendChild(el("td", { class: "num" }, freed));
      tr.appendChild(el("td", { class: "reason" }, c.reason + (c.home ? `; way home: ${c.home}` : "")));
      return tr;
    }), lc.available ? "The agent runs no component." : "Not available here.", 6);

    $("spend-today").textContent = money(v.spend.today);
    $("spend-today").dataset.value = String(v.spend.today);
    $("spend-month").textContent = money(v.spend.month);
    $("spend-month").dataset.value = String(v.spend.month);
    $("budget-monthly").textContent = money(v.budget.monthly_usd);
    const used = v.budget.used_fraction;
    $("budget-used").textContent = used === null ? "–" : `${(used * 100).toFixed(1)} %`;
    $("budget-used").className = used !== null && used >= 1 ? "bad" : used !== null && used >= 0.8 ? "warn" : "";
    chart(v.spend.days);
    const a = v.budget.last_alert;
    $("budget-alert").textContent = a
      ? `${a.at || "?"}: ${money(a.cost)} of ${money(a.budget)} (threshold ${a.threshold})${a.exceeded ? " — budget exceeded, launches refused" : ""}`
      : "No billing alert received this month.";
    $("budget-alert").className = a && a.exceeded ? "bad" : "";
    $("guessed").textContent = v.spend.guessed.length
      ? `Estimated (a timestamp or a price was missing): ${v.spend.guessed.join(", ")}` : "";

    fillRows("hibernated", v.hibernated.map(hibernatedRow), "No hibernated leases.", 7);

    fillRows("deletions", v.deletions.map((d) => {
      const tr = el("tr", { "data-instance-id": d.instance_id });
      tr.appendChild(el("td", {}, d.at));
      tr.appendChild(el("th", { scope: "row", class: "id" }, d.instance_id));
      tr.appendChild(el("td", { class: "id" }, d.lease_id));
      tr.appendChild(el("td", {}, d.action));
      tr.appendChild(el("td", { class: "reason" }, d.reason + (d.detail ? ` (${d.detail})` : "")));
      tr.appendChild(el("td", { class: d.confirmed ? "ok" : "bad" }, d.confirmed ? "yes" : "not yet"));
      tr.appendChild(el("td", { class: "num" }, d.cost_so_far === null ? "–" : Number(d.cost_so_far).toFixed(4)));
      return tr;
    }), "No deletions recorded.", 7);

    fillRows("rejected", v.rejected.map((r) => {
      const tr = el("tr");
      tr.appendChild(el("td", {}, r.at));
      tr.appendChild(el("td", {}, r.source));
      tr.appendChild(el("th", { scope: "row" }, r.reason));
      tr.appendChild(el("td", {}, r.detail));
      tr.appendChild(el("td", { class: "num" }, r.size));
      return tr;
    }), "No rejected events.", 5);
    tick();
  }

  async function refresh() {
    try {
      const resp = await fetch("api/state", { cache: "no-store", credentials: "same-origin" });
      if (!resp.ok) throw new Error(`the server answered ${resp.status}`);
      const v = await resp.json();
      skewMs = Date.parse(v.now) - Date.now();
      render(v);
      lastOk = new Date();
      $("status").textContent = "Up to date.";
      $("updated").textContent = `Read at ${v.now.slice(11, 19)} UTC.`;
      $("updated").dataset.now = v.now;
    } catch (err) {
      $("status").textContent = `Could not update${lastOk ? " since " + lastOk.toLocaleTimeString() : ""}: ${err.message}`;
    } finally {
      setTimeout(refresh, POLL_MS);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    refresh();
    setInterval(tick, 1000);
  });
})();
