'use strict';
// Dashboard for the gateway's admin listener: this page is served at /ui/, the
// JSON API is at /v1/. The ids and classes used here are what the browser tests
// select on, so keep them stable.
//
// Rules kept throughout, because of the Content-Security-Policy and because
// tunnel, agent and caller names come from other people:
// - no HTML parsed from strings: every node is made with createElement(NS)
//   and text goes in as text nodes / textContent;
// - no inline styles: classes, plus SVG presentation attributes for charts;
// - no code built from strings, no external resources;
// - secrets (new keys and tokens) live only in the DOM of the #secret panel.

(() => {
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const POLL_MS = 1000; // the contract's ceiling: never poll faster than once a second
  const SESSION_ENDED = 'Your session ended; sign in again';
  const APP_TITLE = 'Tunnel gateway';

  const $ = (id) => document.getElementById(id);
  const dom = {
    app: $('app'), nav: $('nav'), who: $('who'), whoami: $('whoami'), signout: $('signout'),
    status: $('status'), signinPanel: $('signin-panel'), signin: $('signin'), token: $('token'),
    signinSubmit: $('signin-submit'), signinError: $('signin-error'), view: $('view'),
  };

  let session = null;          // {name, scope, csrf}: in memory only, never stored
  let navGen = 0;              // bumped on every navigation / sign-out; late answers for an older page are dropped
  let pendingStatus = null;    // message to show after the next navigation (e.g. "Deleted tunnel x")
  let statusFromLoad = false;  // an error from loading data is cleared by the next good load, an action's error is not
  let routedOnce = false;      // focus moves to the page heading on navigation, not on first load

  // ---------------------------------------------------------------- DOM helpers

  // el('td', {class: 'name'}, 'text', node, [more]) -> element. Event handlers are
  // never attributes (CSP forbids them anyway): use addEventListener.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    appendAll(node, children);
    return node;
  }

  function svgEl(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    appendAll(node, children);
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (/^on/i.test(k)) throw new Error(`use addEventListener, not ${k}`);
      if (v === false || v == null) continue;
      node.setAttribute(k, v === true ? '' : String(v));
    }
  }

  function appendAll(node, children) {
    for (const c of children.flat(Infinity)) {
      if (c == null || c === false) continue;
      node.append(c instanceof Node ? c : String(c)); // strings become text nodes
    }
  }

  // Only touch the DOM when the text changed: polling then does not make screen
  // readers or selection flicker.
  function setText(node, text) {
    const t = String(text);
    if (node.textContent !== t) node.textContent = t;
  }

  const cell = (tr, cls) => tr.querySelector(`:scope > td.${cls}`);
  const asArray = (x) => (Array.isArray(x) ? x : []);
  // Own properties only: a tunnel called "constructor" must not find Object's.
  const own = (obj, key) => (obj && Object.prototype.hasOwnProperty.call(obj, key) ? obj[key] : undefined);
  const canWrite = () => !!session && session.scope === 'write';
  const dash = (v) => (v == null || v === '' ? '-' : String(v));

  function heading(text, attrs) {
    return el('h2', Object.assign({ tabindex: -1 }, attrs), text);
  }

  function field(label, control) {
    return el('div', { class: 'field' }, el('label', { for: control.id }, label), control);
  }

  // Wraps an async action of a form or button: one run at a time (a double
  // click does not create two tunnels), errors go to #status.
  function action(btn, fn) {
    let busy = false;
    return async (ev) => {
      if (ev && ev.type === 'submit') ev.preventDefault();
      if (busy) return;
      busy = true;
      btn.setAttribute('aria-busy', 'true');
      try {
        await fn();
      } catch (e) {
        showError(e);
      } finally {
        busy = false;
        btn.removeAttribute('aria-busy');
      }
    };
  }

  // ----------------------------------------------------------------- formatting

  const pad = (n) => String(n).padStart(2, '0');

  // Local time, YYYY-MM-DD HH:MM:SS, from unix seconds.
  function fmtDate(secs) {
    if (secs == null || secs === '') return '-';
    const d = new Date(Number(secs) * 1000);
    if (Number.isNaN(d.getTime())) return '-';
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  const fmtDateMs = (ms) => (ms == null ? '-' : fmtDate(Number(ms) / 1000));

  function fmtBytes(n) {
    n = Number(n) || 0;
    if (n < 1024) return `${n} B`;
    const units = ['KiB', 'MiB', 'GiB', 'TiB'];
    let v = n;
    let i = -1;
    do { v /= 1024; i += 1; } while (v >= 1024 && i < units.length - 1);
    return `${v.toFixed(1)} ${units[i]}`;
  }

  function fmtDuration(s) {
    s = Math.max(0, Math.floor(Number(s) || 0));
    if (s < 60) return `${s}s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m}m ${s % 60}s`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h}h ${m % 60}m`;
    return `${Math.floor(h / 24)}d ${h % 24}h`;
  }

  const fmtRate = (r) => `${r.toFixed(1)}/s`;

  // "0%", "50%", "33.3%"; a few errors among many requests is "<0.1%", not "0%".
  function fmtPct(p) {
    if (p > 0 && p < 0.05) return '<0.1%';
    return `${Math.round(p * 10) / 10}%`;
  }

  const sum = (a) => asArray(a).reduce((x, y) => x + (Number(y) || 0), 0);

  // Average requests/s over the last 10 complete seconds (the last entry is the
  // second still running, so it is left out).
  function rateOf(act) {
    const done = asArray(act && act.requests).slice(-11, -1);
    return done.length ? sum(done) / 10 : 0;
  }

  // errors/requests over the last 60 s, "-" when there were no requests.
  function errorRateOf(act) {
    if (!act) return '-';
    const req = sum(asArray(act.requests).slice(-60));
    const err = sum(asArray(act.errors).slice(-60));
    return req ? fmtPct((err / req) * 100) : '-';
  }

  const fmtLastError = (le) => (le ? `${dash(le.status)} ${dash(le.reason)}` : '-');

  // ---------------------------------------------------------------------- status

  function setStatus(text, kind, fromLoad) {
    setText(dom.status, text || '');
    dom.status.className = text ? (kind || 'info') : '';
    statusFromLoad = !!(text && fromLoad);
  }

  function showError(e, fromLoad) {
    if (e && e.sessionEnded) return; // the sign-in form already says so
    setStatus((e && e.message) || String(e), 'error', fromLoad);
  }

  // A page's data arrived: a stale load error goes away, tests may proceed.
  function loaded(page) {
    if (statusFromLoad) setStatus('');
    dom.view.removeAttribute('aria-busy');
    if (dom.view.getAttribute('data-page') !== page) dom.view.setAttribute('data-page', page);
  }

  function loading() {
    dom.view.removeAttribute('data-page');
    dom.view.setAttribute('aria-busy', 'true');
  }

  // ------------------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, message, sessionEnded) {
      super(message);
      this.status = status;
      this.sessionEnded = !!sessionEnded;
    }
  }

  async function readJson(res) {
    try {
      const text = await res.text();
      return text ? JSON.parse(text) : null;
    } catch (_) {
      return null;
    }
  }

  function errorText(data, res) {
    if (data && typeof data.error === 'string' && data.error) return data.error;
    return `Request failed: HTTP ${res.status}${res.statusText ? ` ${res.statusText}` : ''}`;
  }

  // Same-origin cookie; anything but GET carries the CSRF header (once there is
  // a session) and a JSON body. Answers {res, data}; throws only when the
  // gateway cannot be reached.
  async function request(method, path, body) {
    const headers = { Accept: 'application/json' };
    const init = { method, credentials: 'same-origin', cache: 'no-store', headers };
    if (method !== 'GET') {
      if (session) headers['X-CSRF-Token'] = session.csrf;
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body || {});
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (_) {
      throw new ApiError(0, 'Cannot reach the gateway (network error).');
    }
    return { res, data: await readJson(res) };
  }

  // Every call of a signed-in page goes through here: the server's `error`
  // text on failure, and a 401 ends the session (the sign-in form comes back).
  async function api(method, path, body) {
    const asked = session;
    const { res, data } = await request(method, path, body);
    if (res.status === 401) {
      if (session === asked) sessionEnded(); // not a newer session's business
      throw new ApiError(401, SESSION_ENDED, true);
    }
    if (!res.ok) throw new ApiError(res.status, errorText(data, res));
    return data;
  }

  // --------------------------------------------------------------------- polling

  // One poller at a time. It waits for an answer before asking again, so calls
  // never overlap and never start less than POLL_MS apart; it sleeps while the
  // tab is hidden and is stopped by any navigation.
  let poller = null;

  function startPolling(fn) {
    stopPolling();
    poller = { fn, timer: 0, last: 0, busy: false, stopped: false };
    tick(poller);
  }

  function stopPolling() {
    if (!poller) return;
    poller.stopped = true;
    clearTimeout(poller.timer);
    poller = null;
  }

  function schedule(p) {
    clearTimeout(p.timer);
    p.timer = 0;
    if (p.stopped || p.busy || document.hidden) return;
    p.timer = setTimeout(() => tick(p), Math.max(0, p.last + POLL_MS - Date.now()));
  }

  async function tick(p) {
    p.timer = 0;
    if (p.stopped || p.busy || document.hidden) return;
    if (Date.now() - p.last < POLL_MS) { schedule(p); return; }
    p.busy = true;
    p.last = Date.now();
    try {
      await p.fn();
    } catch (e) {
      if (!p.stopped) showError(e, true);
    }
    p.busy = false;
    schedule(p);
  }

  document.addEventListener('visibilitychange', () => { if (poller) schedule(poller); });

  // ---------------------------------------------------------------------- charts

  const charts = new WeakMap(); // svg element -> its updater
  const ZEROES = new Array(300).fill(0);

  function points(values, w, h, max) {
    const n = values.length;
    const step = n > 1 ? w / (n - 1) : 0;
    // keep 1 unit of margin so a flat line at 0 or at the peak is not clipped
    return values.map((v, i) => `${(i * step).toFixed(1)},${(h - 1 - ((Number(v) || 0) / max) * (h - 2)).toFixed(1)}`).join(' ');
  }

  // A line chart of requests/s (and errors/s in a second colour) over the 300
  // seconds of /v1/activity. The <title> is its accessible name; the rate is
  // also written as text next to it.
  function makeChart(attrs, w, h) {
    const title = svgEl('title');
    const line = (cls, colour) => svgEl('polyline', {
      class: cls, fill: 'none', stroke: colour, 'stroke-width': 1.5,
      'stroke-linejoin': 'round', 'vector-effect': 'non-scaling-stroke',
    });
    const req = line('line-req', '#0b5cad');
    const err = line('line-err', '#c62828');
    const root = svgEl('svg', Object.assign({
      viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: 'none', role: 'img', focusable: 'false',
    }, attrs),
    title,
    svgEl('line', { class: 'axis', x1: 0, y1: h - 0.5, x2: w, y2: h - 0.5, stroke: '#888', 'vector-effect': 'non-scaling-stroke' }),
    req, err);

    const chart = {
      root,
      peak: 0,
      update(act) {
        const reqs = act && Array.isArray(act.requests) ? act.requests : ZEROES;
        const errs = act && Array.isArray(act.errors) ? act.errors : ZEROES;
        const peakReq = Math.max(0, ...reqs.map(Number).filter(Number.isFinite));
        const max = Math.max(1, peakReq, ...errs.map(Number).filter(Number.isFinite));
        req.setAttribute('points', points(reqs, w, h, max));
        err.setAttribute('points', points(errs, w, h, max));
        chart.peak = peakReq;
        setText(title, `Requests per second over the last 5 minutes: now ${fmtRate(rateOf(act))}, ` +
          `peak ${peakReq}/s, ${sum(errs)} errors`);
      },
    };
    charts.set(root, chart);
    chart.update(null);
    return chart;
  }

  // ---------------------------------------------------------------------- tables

  function makeTable(id, label, headers) {
    const tbody = el('tbody');
    const table = el('table', { id },
      el('caption', { class: 'sr-only' }, label),
      el('thead', {}, el('tr', {}, headers.map((h) => el('th', { scope: 'col' }, h)))),
      tbody);
    // The wrapper scrolls sideways on narrow screens; it is focusable so the
    // keyboard can scroll it too.
    const wrap = el('div', { class: 'table-wrap', role: 'region', 'aria-label': label, tabindex: 0 }, table);
    tbody.append(emptyRow(headers.length, 'Loading…'));
    return { wrap, table, tbody, cols: headers.length };
  }

  function emptyRow(cols, text) {
    return el('tr', { class: 'empty' }, el('td', { colspan: cols }, text));
  }

  // Update rows in place, keyed by a data attribute, instead of rebuilding the
  // table: a button the user has focused survives the next poll.
  function syncRows(t, items, attr, keyOf, create, update, emptyText) {
    t.tbody.querySelectorAll(':scope > tr.empty').forEach((tr) => tr.remove());
    const old = new Map();
    for (const tr of t.tbody.rows) if (tr.hasAttribute(attr)) old.set(tr.getAttribute(attr), tr);
    let prev = null;
    for (const item of items) {
      const key = String(keyOf(item));
      let tr = old.get(key);
      if (tr) old.delete(key);
      else { tr = create(item); tr.setAttribute(attr, key); }
      update(tr, item);
      const at = prev ? prev.nextSibling : t.tbody.firstChild;
      if (at !== tr) t.tbody.insertBefore(tr, at); // moves only when the order changed
      prev = tr;
    }
    for (const tr of old.values()) tr.remove();
    if (!items.length) t.tbody.append(emptyRow(t.cols, emptyText));
  }

  // Read-only tables are simply rebuilt.
  function fillRows(t, items, rowOf, emptyText) {
    t.tbody.replaceChildren(...(items.length ? items.map(rowOf) : [emptyRow(t.cols, emptyText)]));
  }

  const td = (cls, ...content) => el('td', { class: cls }, ...content);

  // --------------------------------------------------------- confirmation panel

  let confirmState = null;

  // Modal question; resolves true on yes. Focus goes into the panel, Escape or
  // "Cancel" says no, and focus returns to the button that opened it. With
  // `mustType`, the yes button stays disabled until that exact text is typed.
  function confirmDialog({ text, yes, mustType, opener }) {
    closeConfirm(false);
    return new Promise((resolve) => {
      const yesBtn = el('button', { type: 'submit', id: 'confirm-yes', class: 'danger' }, yes);
      const noBtn = el('button', { type: 'button', id: 'confirm-no' }, 'Cancel');
      let input = null;
      const body = [el('p', { id: 'confirm-text' }, text)];
      if (mustType != null) {
        input = el('input', { id: 'confirm-input', type: 'text', autocomplete: 'off', spellcheck: 'false' });
        yesBtn.disabled = true;
        input.addEventListener('input', () => { yesBtn.disabled = input.value !== mustType; });
        body.push(field(`Type the name “${mustType}” to confirm`, input));
      }
      const form = el('form', { class: 'confirm-form' }, body, el('div', { class: 'buttons' }, noBtn, yesBtn));
      const panel = el('div', {
        id: 'confirm', class: 'dialog', role: 'dialog', 'aria-modal': 'true', 'aria-labelledby': 'confirm-text',
      }, form);
      const overlay = el('div', { class: 'overlay' }, panel);

      confirmState = { overlay, opener, resolve };
      form.addEventListener('submit', (ev) => {
        ev.preventDefault();
        if (input && input.value !== mustType) return;
        closeConfirm(true);
      });
      noBtn.addEventListener('click', () => closeConfirm(false));
      overlay.addEventListener('click', (ev) => { if (ev.target === overlay) closeConfirm(false); });
      overlay.addEventListener('keydown', (ev) => {
        if (ev.key === 'Escape') { ev.preventDefault(); closeConfirm(false); return; }
        if (ev.key !== 'Tab') return;
        // keep Tab inside the panel
        const stops = [input, noBtn, yesBtn].filter((x) => x && !x.disabled);
        const first = stops[0];
        const last = stops[stops.length - 1];
        if (ev.shiftKey && document.activeElement === first) { ev.preventDefault(); last.focus(); }
        else if (!ev.shiftKey && document.activeElement === last) { ev.preventDefault(); first.focus(); }
      });

      dom.app.setAttribute('inert', ''); // the rest of the page is out of reach meanwhile
      document.body.append(overlay);
      (input || noBtn).focus(); // the safe choice has focus
    });
  }

  function closeConfirm(result) {
    const st = confirmState;
    if (!st) return;
    confirmState = null;
    st.overlay.remove();
    dom.app.removeAttribute('inert');
    restoreFocus(st.opener);
    st.resolve(result);
  }

  // Back to the opener if it is still on the page, else to the page heading.
  function restoreFocus(opener) {
    if (opener && opener.isConnected && !opener.disabled && !opener.closest('[hidden]')) opener.focus();
    else focusHeading();
  }

  function focusHeading() {
    const h = dom.view.querySelector('h2');
    (h || dom.view).focus();
  }

  // --------------------------------------------------------------- secret panel

  // Shows a new key or token once. It lives outside main#view so polling and
  // navigation leave it alone until "Done"; nothing is stored anywhere else.
  function showSecret({ title, value, note, opener }) {
    removeSecret();
    const code = el('code', { id: 'secret-value' }, value);
    const result = el('span', { class: 'copy-result', 'aria-live': 'polite' });
    const copy = el('button', { type: 'button', id: 'secret-copy' }, 'Copy');
    const done = el('button', { type: 'button', id: 'secret-done' }, 'Done');
    const panel = el('section', { id: 'secret', class: 'secret', 'aria-labelledby': 'secret-title' },
      el('h2', { id: 'secret-title' }, title),
      el('p', { class: 'secret-warning' },
        el('strong', {}, 'Shown once, copy it now.'),
        ' It is not stored by this page and the gateway cannot show it again.'),
      el('div', { class: 'secret-box' }, code),
      note ? el('p', { class: 'hint' }, note) : null,
      el('div', { class: 'buttons' }, copy, done, result));
    copy.addEventListener('click', () => copySecret(code, result));
    done.addEventListener('click', () => {
      removeSecret();
      restoreFocus(opener);
    });
    dom.view.before(panel);
    copy.focus();
  }

  function removeSecret() {
    const old = $('secret');
    if (!old) return;
    const sel = window.getSelection();
    if (sel && old.contains(sel.anchorNode)) sel.removeAllRanges();
    old.remove();
  }

  async function copySecret(code, result) {
    const text = code.textContent;
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(text);
        setText(result, 'Copied.');
        return;
      }
    } catch (_) { /* fall back to selecting it */ }
    // No clipboard API (or refused): select the text so Ctrl+C works, and try the old command.
    const range = document.createRange();
    range.selectNodeContents(code);
    const sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    let ok = false;
    try { ok = document.execCommand('copy'); } catch (_) { ok = false; }
    setText(result, ok ? 'Copied.' : 'Selected: press Ctrl+C (⌘C) to copy.');
  }

  // --------------------------------------------------------------------- session

  function signedIn(s) {
    session = { name: String(s.name), scope: s.scope, csrf: String(s.csrf || '') };
    setText(dom.whoami, `${session.name} (${canWrite() ? 'read & write' : 'read-only'})`);
    dom.signinPanel.hidden = true;
    dom.signinError.textContent = '';
    dom.nav.hidden = false;
    dom.who.hidden = false;
    dom.view.hidden = false;
    route();
  }

  // Back to the sign-in form; everything that belonged to the session goes.
  function showSignin(statusText, statusKind, errorText_) {
    session = null;
    navGen += 1;
    stopPolling();
    closeConfirm(false);
    removeSecret();
    dom.nav.hidden = true;
    dom.who.hidden = true;
    dom.whoami.textContent = '';
    dom.view.hidden = true;
    dom.view.replaceChildren();
    dom.view.removeAttribute('data-page');
    dom.view.removeAttribute('aria-busy');
    dom.signinPanel.hidden = false;
    dom.signinError.textContent = errorText_ || '';
    setStatus(statusText || '', statusKind);
    document.title = `Sign in · ${APP_TITLE}`;
    dom.token.value = '';
    dom.token.focus();
  }

  function sessionEnded() {
    if (!session) return; // several calls may fail at once
    showSignin(SESSION_ENDED, 'error', SESSION_ENDED);
  }

  dom.signin.addEventListener('submit', action(dom.signinSubmit, async () => {
    const token = dom.token.value.trim();
    dom.signinError.textContent = '';
    let answer = null;
    if (!token) dom.signinError.textContent = 'Enter an admin token.';
    else {
      try {
        answer = await request('POST', '/ui/session', { token });
      } catch (e) {
        dom.signinError.textContent = e.message;
      }
    }
    if (answer && answer.res.ok && answer.data) {
      dom.token.value = ''; // the token is not kept: the session cookie replaces it
      routedOnce = true;    // moving focus to the first page's heading helps here
      signedIn(answer.data);
      return;
    }
    // wrong token (401) or too many tries (429): the server says which
    if (answer) dom.signinError.textContent = errorText(answer.data, answer.res);
    dom.token.select();
    dom.token.focus();
  }));

  dom.signout.addEventListener('click', async () => {
    try {
      await api('DELETE', '/ui/session');
    } catch (e) {
      if (!e.sessionEnded) { showError(e); return; }
    }
    showSignin('Signed out.');
  });

  // -------------------------------------------------------------------- routing

  const PAGES = {
    tunnels: { title: 'Tunnels', render: pageTunnels },
    callers: { title: 'Callers', render: pageCallers },
    plugins: { title: 'Plugins', render: pagePlugins },
    refusals: { title: 'Refusals', render: pageRefusals },
    audit: { title: 'Audit', render: pageAudit },
  };

  // Navigate, with a message that must survive the page change.
  function go(hash, message) {
    pendingStatus = message ? { text: message, kind: 'ok' } : null;
    if (location.hash === hash) route();
    else location.hash = hash;
  }

  // "#/tunnel/<name>" -> {page: 'tunnel', name}; unknown -> {page: null}.
  function parseHash(hash) {
    if (hash === '' || hash === '#' || hash === '#/') return { page: 'tunnels' };
    if (hash.startsWith('#/tunnel/')) {
      let name = '';
      try { name = decodeURIComponent(hash.slice('#/tunnel/'.length)); } catch (_) { name = ''; }
      return name ? { page: 'tunnel', name } : { page: null };
    }
    const key = hash.slice(2);
    return hash.startsWith('#/') && own(PAGES, key) ? { page: key } : { page: null };
  }

  function route() {
    if (!session) return;
    const gen = ++navGen;
    stopPolling();
    closeConfirm(false);
    dom.view.replaceChildren();
    dom.view.removeAttribute('data-page');
    dom.view.setAttribute('aria-busy', 'true');
    if (pendingStatus) setStatus(pendingStatus.text, pendingStatus.kind);
    else setStatus('');
    pendingStatus = null;

    const r = parseHash(location.hash);
    let navKey = r.page;
    let title;
    if (r.page === 'tunnel') {
      navKey = 'tunnels';
      title = r.name;
      pageTunnel(gen, r.name);
    } else if (r.page) {
      title = PAGES[r.page].title;
      PAGES[r.page].render(gen);
    } else {
      title = 'Not found';
      pageNotFound();
    }

    document.title = `${title} · ${APP_TITLE}`;
    for (const a of dom.nav.querySelectorAll('a')) {
      if (navKey && a.getAttribute('href') === `#/${navKey}`) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    if (routedOnce) focusHeading();
    routedOnce = true;
  }

  window.addEventListener('hashchange', route);

  function pageNotFound() {
    dom.view.removeAttribute('aria-busy');
    dom.view.append(heading('Page not found'),
      el('p', {}, 'There is no such page. ', el('a', { href: '#/tunnels' }, 'Go to the tunnels.')));
  }

  // Shell for the pages that load once and have a Refresh button.
  function staticPage(gen, page, title, intro) {
    const refresh = el('button', { type: 'button', class: 'refresh' }, 'Refresh');
    dom.view.append(el('div', { class: 'page-head' }, heading(title), refresh));
    if (intro) dom.view.append(el('p', { class: 'hint' }, intro));
    return (fetchData, render) => {
      const run = async () => {
        if (gen !== navGen) return;
        loading();
        try {
          const data = await fetchData();
          if (gen !== navGen) return; // the user went elsewhere meanwhile
          render(data);
          loaded(page);
        } catch (e) {
          if (gen !== navGen) return;
          dom.view.removeAttribute('aria-busy');
          showError(e, true);
        }
      };
      refresh.addEventListener('click', run);
      run();
      return run;
    };
  }

  // ---------------------------------------------------------------- tunnels page

  function pageTunnels(gen) {
    dom.view.append(el('div', { class: 'page-head' }, heading('Tunnels'),
      el('span', { class: 'hint live' }, 'Live, updated every second')));
    if (canWrite()) dom.view.append(newTunnelForm());
    const t = makeTable('tunnels', 'Tunnels',
      ['Name', 'Org', 'Agents', 'Requests/s (10 s)', 'Errors (60 s)', 'Last error', 'Last 5 minutes']);
    dom.view.append(t.wrap);

    startPolling(async () => {
      const [tunnels, activity] = await Promise.all([api('GET', '/v1/tunnels'), api('GET', '/v1/activity')]);
      if (gen !== navGen) return;
      const acts = (activity && activity.tunnels) || {};
      syncRows(t, asArray(tunnels), 'data-tunnel', (x) => x.name, createTunnelRow,
        (tr, x) => updateTunnelRow(tr, x, own(acts, x.name)),
        canWrite() ? 'No tunnels yet: create one above.' : 'No tunnels yet.');
      loaded('tunnels');
    });
  }

  function createTunnelRow() {
    const chart = makeChart({ class: 'spark', width: 120, height: 24 }, 300, 24);
    return el('tr', {},
      td('name', el('a')), td('org'), td('agents num'), td('rate num'), td('error-rate num'),
      td('last-error'), td('chart', chart.root));
  }

  function updateTunnelRow(tr, t, act) {
    const link = cell(tr, 'name').firstChild;
    const href = `#/tunnel/${encodeURIComponent(t.name)}`;
    if (link.getAttribute('href') !== href) link.setAttribute('href', href);
    setText(link, t.name);
    setText(cell(tr, 'org'), dash(t.org));
    setText(cell(tr, 'agents'), dash(t.agents));
    setText(cell(tr, 'rate'), fmtRate(rateOf(act)));
    setText(cell(tr, 'error-rate'), errorRateOf(act));
    const last = act ? act.last_error : null;
    const lastCell = cell(tr, 'last-error');
    setText(lastCell, fmtLastError(last));
    if (last) lastCell.setAttribute('title', `at ${fmtDate(last.at)}`);
    else lastCell.removeAttribute('title');
    charts.get(tr.querySelector('svg.spark')).update(act);
  }

  function newTunnelForm() {
    const org = el('input', { id: 'new-tunnel-org', name: 'org', required: true, autocomplete: 'off', spellcheck: 'false' });
    const name = el('input', { id: 'new-tunnel-name', name: 'name', required: true, autocomplete: 'off', spellcheck: 'false' });
    const submit = el('button', { type: 'submit' }, 'Create tunnel');
    const form = el('form', { id: 'new-tunnel', class: 'create', 'aria-labelledby': 'new-tunnel-h' },
      el('h3', { id: 'new-tunnel-h' }, 'New tunnel'),
      el('div', { class: 'fields' }, field('Org', org), field('Name', name), submit));
    form.addEventListener('submit', action(submit, async () => {
      const r = await api('POST', '/v1/tunnels', { org: org.value.trim(), name: name.value.trim() });
      form.reset();
      setStatus(`Created tunnel ${r.name}.`, 'ok');
      showSecret({
        title: `Key for tunnel ${r.name}`,
        value: r.key,
        note: `Key generation ${dash(r.key_generation)}, org ${dash(r.org)}. The tunnel's agent needs this key to connect.`,
        opener: submit,
      });
    }));
    return form;
  }

  // ----------------------------------------------------------------- tunnel page

  function pageTunnel(gen, name) {
    const path = `/v1/tunnels/${encodeURIComponent(name)}`;
    const meta = {};
    const metaItem = (key, label) => {
      meta[key] = el('dd');
      return el('div', {}, el('dt', {}, label), meta[key]);
    };
    const rate = el('span', { id: 'tunnel-rate' }, '-');
    const errRate = el('span', { id: 'tunnel-error-rate' }, '-');
    const lastErr = el('span', { id: 'tunnel-last-error' }, '-');
    const peak = el('span', { class: 'peak' }, '');
    const chart = makeChart({ id: 'tunnel-chart', width: 600, height: 160 }, 300, 100);
    const agentsTitle = el('h3', {}, 'Agents');

    dom.view.append(
      el('p', { class: 'back' }, el('a', { href: '#/tunnels' }, '← All tunnels')),
      el('div', { class: 'page-head' }, heading(name, { id: 'tunnel-title' }),
        el('span', { class: 'hint live' }, 'Live, updated every second')),
      el('dl', { class: 'meta' }, metaItem('org', 'Org'), metaItem('id', 'Id'), metaItem('created', 'Created'),
        metaItem('gen', 'Key generation'), metaItem('prev', 'Previous key valid until')));

    if (canWrite()) {
      const rotate = el('button', { type: 'button', id: 'rotate-key' }, 'Rotate key');
      const del = el('button', { type: 'button', id: 'delete-tunnel', class: 'danger' }, 'Delete tunnel');
      rotate.addEventListener('click', action(rotate, () => rotateKey(name, rotate)));
      del.addEventListener('click', () => deleteTunnel(name, del));
      dom.view.append(el('div', { class: 'toolbar' }, rotate, del));
    }

    dom.view.append(
      el('h3', {}, 'Traffic'),
      el('p', { class: 'rates' },
        'Requests: ', rate, ' (average of the last 10 s) · Errors: ', errRate,
        ' (last 60 s) · Last error: ', lastErr),
      el('figure', { class: 'chart' }, chart.root,
        el('figcaption', {},
          el('span', { class: 'swatch req', 'aria-hidden': 'true' }), ' requests/s ',
          el('span', { class: 'swatch err', 'aria-hidden': 'true' }), ' errors/s · last 5 minutes, ',
          peak)));

    const agentCols = ['Agent', 'Version', 'Protocol', 'Address', 'Connected since', 'In flight', 'Bytes in / out', 'State'];
    if (canWrite()) agentCols.push('Actions');
    const agents = makeTable('agents', 'Connected agents', agentCols);
    const routes = makeTable('routes', 'Routes to this tunnel', ['Route', 'Match', 'Plugins']);
    dom.view.append(agentsTitle, agents.wrap, el('h3', {}, 'Routes'), routes.wrap);

    startPolling(async () => {
      let t;
      let activity;
      try {
        [t, activity] = await Promise.all([
          api('GET', path),
          api('GET', '/v1/activity?tunnel=' + encodeURIComponent(name)),
        ]);
      } catch (e) {
        if (e.status !== 404 || gen !== navGen) throw e;
        // deleted (maybe by someone else): say so and stop asking
        stopPolling();
        dom.view.removeAttribute('aria-busy');
        dom.view.removeAttribute('data-page');
        dom.view.replaceChildren(heading(name, { id: 'tunnel-title' }),
          el('p', {}, 'This tunnel does not exist (any more). ', el('a', { href: '#/tunnels' }, 'Back to the tunnels.')));
        showError(e);
        return;
      }
      if (gen !== navGen || !t) return;
      const now = Number(activity && activity.now) || Date.now() / 1000;
      const act = own(activity && activity.tunnels, name);

      setText(meta.org, dash(t.org));
      setText(meta.id, dash(t.id));
      setText(meta.created, fmtDate(t.created_at));
      setText(meta.gen, dash(t.key_generation));
      setText(meta.prev, t.previous_key_valid_until == null ? '-' : fmtDate(t.previous_key_valid_until));

      setText(rate, fmtRate(rateOf(act)));
      setText(errRate, errorRateOf(act));
      const le = act ? act.last_error : null;
      setText(lastErr, le ? `${fmtLastError(le)} at ${fmtDate(le.at)}` : '-');
      chart.update(act);
      setText(peak, `peak ${chart.peak}/s`);

      const list = asArray(t.agents);
      setText(agentsTitle, `Agents (${list.length})`);
      syncRows(agents, list, 'data-conn', (a) => a.conn_id, (a) => createAgentRow(a, name),
        (tr, a) => updateAgentRow(tr, a, now), 'No agent is connected.');
      syncRows(routes, asArray(t.routes), 'data-route', (r) => r.name, createRouteRow, updateRouteRow,
        'No route sends traffic to this tunnel.');
      loaded('tunnel');
    });
  }

  function createAgentRow(a, tunnel) {
    const tr = el('tr', {}, td('name'), td('version'), td('protocol'), td('addr'), td('since'),
      td('inflight num'), td('bytes num'), td('state'));
    if (canWrite()) {
      const conn = a.conn_id;
      const drain = el('button', { type: 'button', class: 'drain' }, 'Drain');
      const disconnect = el('button', { type: 'button', class: 'disconnect danger' }, 'Disconnect');
      drain.addEventListener('click', action(drain, () => drainAgent(conn, tr, drain)));
      disconnect.addEventListener('click', () => disconnectAgent(conn, tr, disconnect, tunnel));
      tr.append(td('actions', drain, ' ', disconnect));
    }
    return tr;
  }

  function updateAgentRow(tr, a, now) {
    setText(cell(tr, 'name'), dash(a.agent));
    setText(cell(tr, 'version'), dash(a.version));
    setText(cell(tr, 'protocol'), dash(a.protocol));
    setText(cell(tr, 'addr'), dash(a.remote_addr));
    setText(cell(tr, 'since'), `${fmtDate(a.connected_at)} (${fmtDuration(now - Number(a.connected_at))})`);
    setText(cell(tr, 'inflight'), dash(a.inflight));
    setText(cell(tr, 'bytes'), `${fmtBytes(a.bytes_in)} / ${fmtBytes(a.bytes_out)}`);
    setText(cell(tr, 'state'), (a.draining ? 'draining' : 'serving') + (a.key === 'previous' ? ' (previous key)' : ''));
    tr.classList.toggle('draining', !!a.draining);
    tr.classList.toggle('old-key', a.key === 'previous');
    const drain = tr.querySelector('button.drain');
    if (drain) {
      // aria-disabled rather than disabled: a focused button keeps its focus
      drain.setAttribute('aria-disabled', a.draining ? 'true' : 'false');
      drain.setAttribute('aria-label', `Drain agent ${dash(a.agent)}`);
      tr.querySelector('button.disconnect').setAttribute('aria-label', `Disconnect agent ${dash(a.agent)}`);
    }
  }

  const agentLabel = (tr, conn) => `${cell(tr, 'name').textContent} (connection ${conn})`;

  async function drainAgent(conn, tr, btn) {
    if (btn.getAttribute('aria-disabled') === 'true') {
      setStatus(`Agent ${agentLabel(tr, conn)} is already draining.`);
      return;
    }
    await api('POST', `/v1/agents/${encodeURIComponent(conn)}/drain`, {});
    setStatus(`Agent ${agentLabel(tr, conn)} is draining: it finishes its requests and takes no new ones.`, 'ok');
  }

  async function disconnectAgent(conn, tr, btn, tunnel) {
    const who = agentLabel(tr, conn);
    const ok = await confirmDialog({
      text: `Disconnect agent ${who} from tunnel “${tunnel}”? Its requests in flight are cut off.`,
      yes: 'Disconnect', opener: btn,
    });
    if (!ok) return;
    try {
      await api('POST', `/v1/agents/${encodeURIComponent(conn)}/disconnect`, {});
      setStatus(`Disconnected agent ${who}.`, 'ok');
    } catch (e) {
      showError(e);
    }
  }

  function createRouteRow() {
    return el('tr', {}, td('name'), td('match'), td('plugins'));
  }

  function updateRouteRow(tr, r) {
    const plugins = asArray(r.plugins);
    setText(cell(tr, 'name'), dash(r.name));
    setText(cell(tr, 'match'), `${r.host || '*'}${r.path_prefix || ''}`);
    setText(cell(tr, 'plugins'), plugins.length ? plugins.join(' → ') : 'none');
  }

  async function rotateKey(name, btn) {
    const r = await api('POST', `/v1/tunnels/${encodeURIComponent(name)}/rotate-key`, {});
    const until = r.previous_key_valid_until;
    setStatus(`Rotated the key of tunnel ${name}.`, 'ok');
    showSecret({
      title: `New key for tunnel ${name}`,
      value: r.key,
      note: `Key generation ${dash(r.key_generation)}.` +
        (until != null ? ` The previous key keeps working until ${fmtDate(until)}.` : ''),
      opener: btn,
    });
  }

  async function deleteTunnel(name, btn) {
    const ok = await confirmDialog({
      text: `Delete tunnel “${name}”? Its agents are disconnected, its key stops working and its routes stop answering.`,
      yes: 'Delete tunnel', mustType: name, opener: btn,
    });
    if (!ok) return;
    try {
      const r = await api('DELETE', `/v1/tunnels/${encodeURIComponent(name)}`, {});
      const n = Number(r && r.agents_disconnected) || 0;
      go('#/tunnels', `Deleted tunnel ${name}; ${n} agent${n === 1 ? '' : 's'} disconnected.`);
    } catch (e) {
      showError(e);
    }
  }

  // ----------------------------------------------------------------- callers page

  const EXPIRES = [['', 'Never'], ['3600', '1 hour'], ['86400', '1 day'], ['2592000', '30 days'], ['31536000', '1 year']];

  function pageCallers(gen) {
    const start = staticPage(gen, 'callers', 'Callers', 'Tokens that callers present to reach routes.');
    let reload = () => {};
    if (canWrite()) dom.view.append(newCallerForm(() => reload()));
    const cols = ['Name', 'Org', 'Token prefix', 'Created', 'Expires', 'Revoked', 'State'];
    if (canWrite()) cols.push('Actions');
    const t = makeTable('callers', 'Caller tokens', cols);
    dom.view.append(t.wrap);
    reload = start(() => api('GET', '/v1/callers'), (list) => {
      syncRows(t, asArray(list), 'data-caller', (c) => c.id, createCallerRow,
        (tr, c) => updateCallerRow(tr, c, () => reload()), 'No caller tokens yet.');
    });
  }

  function createCallerRow() {
    const tr = el('tr', {}, td('name'), td('org'), td('prefix mono'), td('created'), td('expires'),
      td('revoked'), td('state'));
    if (canWrite()) tr.append(td('actions'));
    return tr;
  }

  function updateCallerRow(tr, c, reload) {
    setText(cell(tr, 'name'), c.name == null || c.name === '' ? '(unnamed)' : c.name);
    setText(cell(tr, 'org'), dash(c.org));
    setText(cell(tr, 'prefix'), dash(c.token_prefix));
    setText(cell(tr, 'created'), fmtDate(c.created_at));
    setText(cell(tr, 'expires'), c.expires_at == null ? 'never' : fmtDate(c.expires_at));
    setText(cell(tr, 'revoked'), c.revoked_at == null ? '-' : fmtDate(c.revoked_at));
    setText(cell(tr, 'state'), dash(c.state));
    tr.className = `state-${String(c.state).replace(/[^a-z]/g, '')}`;
    const actions = cell(tr, 'actions');
    if (!actions) return;
    const btn = actions.querySelector('button.revoke');
    if (c.state === 'active' && !btn) {
      const revoke = el('button', { type: 'button', class: 'revoke danger' }, 'Revoke');
      revoke.setAttribute('aria-label', `Revoke token ${dash(c.token_prefix)}`);
      revoke.addEventListener('click', () => revokeCaller(c, revoke, reload));
      actions.append(revoke);
    } else if (c.state !== 'active' && btn) {
      btn.remove();
    }
  }

  async function revokeCaller(c, btn, reload) {
    const label = `${c.name ? `“${c.name}” ` : ''}(${dash(c.token_prefix)}…, org ${dash(c.org)})`;
    const ok = await confirmDialog({
      text: `Revoke the caller token ${label}? Requests carrying it are refused from now on.`,
      yes: 'Revoke', opener: btn,
    });
    if (!ok) return;
    try {
      await api('POST', `/v1/callers/${encodeURIComponent(c.id)}/revoke`, {});
      setStatus(`Revoked the caller token ${label}.`, 'ok');
      await reload();
      if (document.activeElement === document.body) focusHeading(); // its button is gone
    } catch (e) {
      showError(e);
    }
  }

  function newCallerForm(reload) {
    const org = el('input', { id: 'new-caller-org', name: 'org', required: true, autocomplete: 'off', spellcheck: 'false' });
    const name = el('input', { id: 'new-caller-name', name: 'name', autocomplete: 'off', spellcheck: 'false' });
    const expires = el('select', { id: 'new-caller-expires', name: 'expires' },
      EXPIRES.map(([v, label]) => el('option', { value: v }, label)));
    const submit = el('button', { type: 'submit' }, 'Create caller token');
    const form = el('form', { id: 'new-caller', class: 'create', 'aria-labelledby': 'new-caller-h' },
      el('h3', { id: 'new-caller-h' }, 'New caller token'),
      el('div', { class: 'fields' }, field('Org', org), field('Name (optional)', name),
        field('Expires', expires), submit));
    form.addEventListener('submit', action(submit, async () => {
      // name and expiry are optional: leave them out rather than send ""
      const body = { org: org.value.trim() };
      if (name.value.trim()) body.name = name.value.trim();
      if (expires.value) body.expires_in_secs = Number(expires.value);
      const r = await api('POST', '/v1/callers', body);
      form.reset();
      setStatus(`Created a caller token for org ${dash(r.org)}.`, 'ok');
      showSecret({
        title: `Caller token${r.name ? ` “${r.name}”` : ''} for org ${dash(r.org)}`,
        value: r.token,
        note: r.expires_at == null ? 'It does not expire.' : `It expires at ${fmtDate(r.expires_at)}.`,
        opener: submit,
      });
      reload();
    }));
    return form;
  }

  // ----------------------------------------------------------------- plugins page

  const FAILURE_KINDS = ['trap', 'deadline', 'memory', 'busy', 'init', 'invalid'];

  function pagePlugins(gen) {
    const start = staticPage(gen, 'plugins', 'Plugins', 'Policy plugins loaded now, and the history of loads and rejections.');
    const plugins = makeTable('plugins', 'Loaded plugins', ['Name', 'Version', 'SHA-256', 'Decisions', 'Failures', 'Routes', 'Path']);
    const history = makeTable('plugin-history', 'Plugin load history',
      ['At', 'Plugin', 'Event', 'Version', 'SHA-256', 'Error']);
    dom.view.append(plugins.wrap, el('h3', {}, 'History'), history.wrap);
    start(() => api('GET', '/v1/plugins'), (data) => {
      fillRows(plugins, asArray(data && data.plugins), pluginRow, 'No plugin is loaded.');
      fillRows(history, asArray(data && data.history), historyRow, 'Nothing loaded or rejected yet.');
    });
  }

  function pluginRow(p) {
    const d = p.decisions || {};
    const f = p.failures || {};
    const failures = FAILURE_KINDS.filter((k) => Number(f[k])).map((k) => `${k} ${f[k]}`);
    const routes = asArray(p.routes);
    const tr = el('tr', {},
      td('name', dash(p.name)), td('version', dash(p.version)), td('sha256 mono', dash(p.sha256)),
      td('decisions', `allow ${Number(d.allow) || 0} · deny ${Number(d.deny) || 0}`),
      td('failures', failures.length ? failures.join(' · ') : 'none'),
      td('routes', routes.length ? routes.join(', ') : '-'), td('path mono', dash(p.path)));
    tr.setAttribute('data-plugin', String(p.name));
    if (failures.length) tr.className = 'has-failures';
    return tr;
  }

  function historyRow(h) {
    return el('tr', { class: `event-${String(h.event).replace(/[^a-z]/g, '')}` },
      td('at', fmtDateMs(h.at)), td('plugin', dash(h.plugin)), td('event', dash(h.event)),
      td('version', dash(h.version)), td('sha256 mono', dash(h.sha256)), td('error wrap', dash(h.error)));
  }

  // ---------------------------------------------------------------- refusals page

  function pageRefusals(gen) {
    const start = staticPage(gen, 'refusals', 'Refusals', 'The latest 100 requests refused by a route or a plugin, newest first.');
    const t = makeTable('refusals', 'Refused requests',
      ['At', 'Route', 'Tunnel', 'Org', 'Status', 'Plugin', 'Reason']);
    dom.view.append(t.wrap);
    start(() => api('GET', '/v1/refusals?limit=100'), (list) => {
      fillRows(t, asArray(list), (r) => el('tr', {},
        td('at', fmtDateMs(r.at)), td('route', dash(r.route)), td('tunnel', dash(r.tunnel)),
        td('org', dash(r.org)), td('status num', dash(r.status)), td('plugin', dash(r.plugin)),
        td('reason wrap', dash(r.reason))), 'No refusals.');
    });
  }

  // ------------------------------------------------------------------- audit page

  // {"a":1,"b":"x"} -> "a=1, b=x": one line, and still only text.
  function fmtDetail(d) {
    if (d == null) return '-';
    if (typeof d !== 'object') return String(d);
    const parts = Object.entries(d).map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`);
    return parts.length ? parts.join(', ') : '-';
  }

  function pageAudit(gen) {
    const start = staticPage(gen, 'audit', 'Audit', 'The latest 100 administrative actions, newest first.');
    const t = makeTable('audit', 'Audit log', ['At', 'Actor', 'Source', 'Action', 'Object', 'Detail']);
    dom.view.append(t.wrap);
    start(() => api('GET', '/v1/audit?limit=100'), (list) => {
      fillRows(t, asArray(list), (a) => {
        const tr = el('tr', {},
          td('at', fmtDateMs(a.at)), td('actor', dash(a.actor)), td('source', dash(a.source)),
          td('action', dash(a.action)), td('object', dash(a.object)), td('detail wrap mono', fmtDetail(a.detail)));
        if (a.id != null) tr.setAttribute('data-audit', String(a.id));
        return tr;
      }, 'Nothing recorded yet.');
    });
  }

  // ----------------------------------------------------------------------- start

  // Signed in already (the session cookie is valid)? Else the sign-in form.
  async function start() {
    let answer;
    try {
      answer = await request('GET', '/ui/session');
    } catch (e) {
      showSignin(e.message, 'error');
      return;
    }
    const { res, data } = answer;
    if (res.ok && data && data.csrf) signedIn(data);
    else showSignin(res.status === 401 ? '' : errorText(data, res), 'error');
  }

  start();
})();
