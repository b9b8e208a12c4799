// Cove's dashboard: a few enhancements over plain forms. Everything works without it
// except the live updates and the log stream.
'use strict';

// Forms that ask first (stop, restart, revoke).
document.addEventListener('submit', (e) => {
  const form = e.target.closest('form[data-confirm]');
  if (form && !window.confirm(form.dataset.confirm)) e.preventDefault();
});

// The wizard: repository fields only when the source is a repository.
function syncSource() {
  const chosen = document.querySelector('input[name="source"]:checked');
  document.querySelectorAll('[data-when-source]').forEach((el) => {
    el.hidden = chosen && chosen.value !== el.dataset.whenSource;
  });
}
document.addEventListener('change', (e) => {
  if (e.target.name === 'source') syncSource();
});

// Live state over server-sent events: the list is re-rendered by the server, a
// workspace page gets its fields.
function live() {
  const list = document.querySelector('[data-live="list"]');
  const pages = document.querySelectorAll('[data-live-ws]');
  if (!list && pages.length === 0) return;
  const status = document.getElementById('live');
  const events = new EventSource('/events');
  events.addEventListener('workspaces', (e) => {
    const data = JSON.parse(e.data);
    if (list) list.innerHTML = data.html;
    pages.forEach((el) => {
      const s = data.states[el.dataset.liveWs];
      if (!s) return;
      for (const [field, value] of Object.entries(s)) {
        const target = el.querySelector(`[data-field="${field}"]`);
        if (target && target.textContent !== value) target.textContent = value;
      }
      const state = el.querySelector('[data-field="state"]');
      if (state) state.className = `state state-${String(s.actual).toLowerCase()}`;
    });
    if (status) status.textContent = 'Live: states update as they change.';
  });
  events.onerror = () => {
    if (status) status.textContent = 'Live updates paused; reconnecting…';
  };
}

// Logs: the followed stream, appended as it comes; restarted when the workspace starts.
async function logs() {
  const pre = document.getElementById('logs');
  if (!pre) return;
  const max = 200 * 1024;
  for (;;) {
    try {
      const r = await fetch(pre.dataset.src, { credentials: 'same-origin', cache: 'no-store' });
      if (r.ok) {
        const reader = r.body.getReader();
        const decoder = new TextDecoder();
        let first = true;
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
          if (first) { pre.textContent = ''; first = false; }
          pre.textContent = (pre.textContent + decoder.decode(value, { stream: true })).slice(-max);
          if (atBottom) pre.scrollTop = pre.scrollHeight;
        }
      }
    } catch (e) {
      // The workspace stopped or the network dropped: try again below.
    }
    await new Promise((res) => setTimeout(res, 3000));
  }
}

syncSource();
live();
logs();
