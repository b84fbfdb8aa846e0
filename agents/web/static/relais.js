// relais web interface: deadlines counting down, and the inbox kept current by polling.
// No content ever goes through here: the inbox refresh carries metadata only, and every
// text is set with textContent (never as markup).
"use strict";

function remaining(ms) {
  const late = ms < 0;
  let s = Math.floor(Math.abs(ms) / 1000);
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  const text = (h ? h + " h " : "") + m + " min " + String(s).padStart(2, "0") + " s";
  return late ? "dépassé de " + text : "reste " + text;
}

let skew = 0; // server clock minus browser clock

function tick() {
  const now = Date.now() + skew;
  for (const el of document.querySelectorAll("[data-deadline]")) {
    const left = Number(el.dataset.deadline) - now;
    el.textContent = remaining(left);
    el.classList.toggle("late", left < 0);
  }
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function rowOf(r) {
  const tr = document.createElement("tr");
  tr.className = "prio-" + r.priority + " state-" + r.state;
  tr.dataset.eventId = r.event_id;
  const prio = document.createElement("td");
  const badge = document.createElement("span");
  badge.className = "badge " + r.priority;
  badge.textContent = r.priority_label;
  prio.appendChild(badge);
  const kind = document.createElement("td");
  const link = document.createElement("a");
  link.href = "/events/" + encodeURIComponent(r.event_id);
  link.textContent = r.type_label;
  kind.appendChild(link);
  const deadline = document.createElement("td");
  if (r.deadline_ms) {
    const span = document.createElement("span");
    span.className = "deadline";
    span.dataset.deadline = String(r.deadline_ms);
    deadline.appendChild(span);
  } else {
    deadline.textContent = "—";
  }
  tr.append(prio, kind, cell(r.sender_name), cell(r.received), deadline, cell(r.state_label));
  return tr;
}

async function refresh(table) {
  try {
    const answer = await fetch("/inbox.json", {credentials: "same-origin", cache: "no-store"});
    if (answer.redirected || answer.status === 401) { window.location.assign("/login"); return; }
    if (!answer.ok) return;
    const body = await answer.json();
    skew = body.now_ms - Date.now();
    const rows = document.getElementById("inbox-rows");
    const fresh = body.rows.map(rowOf);
    if (!fresh.length) {
      const tr = document.createElement("tr");
      tr.className = "empty";
      const td = cell("Aucune transmission reçue.");
      td.colSpan = 6;
      tr.appendChild(td);
      fresh.push(tr);
    }
    rows.replaceChildren(...fresh);
    table.dataset.refreshed = String(body.rows.length);
    tick();
  } catch (e) {
    // the agent is restarting or the network is away: try again at the next period
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const table = document.getElementById("inbox");
  if (table && table.dataset.now) skew = Number(table.dataset.now) - Date.now();
  tick();
  setInterval(tick, 1000);
  if (table) {
    const every = Math.max(1, Number(table.dataset.pollSeconds || "5")) * 1000;
    setInterval(() => refresh(table), every);
  }
});
