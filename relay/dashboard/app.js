// app.js — the relay dashboard's script (see index.html).
//
// It reads the admin API (GET admin/sessions, DELETE admin/sessions/ID)
// and the relay's metrics (GET admin/metrics: /metrics's text behind the
// admin API's authentication) every REFRESH_MS, and shows them.  Every
// value is put into the page as text (textContent, text nodes, dataset);
// nothing is ever parsed as HTML, and the page's CSP (require-trusted-types-
// for 'script') makes the browser refuse it if a change ever tried.
//
// Sign-in: the relay's /.well-known/swsrs-config names the identity
// provider.  The page runs the OAuth 2.0 authorization-code flow with PKCE
// (RFC 7636, S256) as a public client with the relay's client_id_hint: the
// code verifier and state wait in sessionStorage only while the browser is
// at the provider and are removed the moment it comes back; the provider
// redirects back with a one-time code (never a token), which the page
// exchanges at the token endpoint.  Or an operator pastes a token.  Either
// way the access token lives in one variable of this script: never in a
// URL, a cookie or any storage, so it is gone with the tab (or a reload).
// A relay run with --no-auth answers 404 for the discovery document and
// needs no sign-in.
'use strict';

(() => {
  const REFRESH_MS = 2000;
  const PAGE_SIZE = 500; // one page of sessions: the dashboard is not a bulk export
  const CONFIRM_MS = 4000;
  const FLOW_KEY = 'relay.dashboard.pkce';
  const STATES = new Set(['pending', 'half_open', 'open', 'closed']);

  let token = null; // the access token: here and nowhere else
  let disc = null; // the swsrs-config document; null with --no-auth
  let timer = null;
  let generation = 0; // bumps on sign-in and sign-out: late answers are dropped
  const rows = new Map(); // session id -> its table row

  const $ = (id) => document.getElementById(id);

  // ---- small DOM helpers: text only -----------------------------------------

  function el(tag, cls, ...kids) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    e.append(...kids.map((k) => (k instanceof Node ? k : String(k))));
    return e;
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function show(node, on) {
    node.hidden = !on;
  }

  function notice(text, isError) {
    const n = $('notice');
    n.textContent = text;
    n.classList.toggle('error', !!isError);
    show(n, true);
  }

  function setLive(state, text) {
    const n = $('live');
    n.dataset.state = state;
    setText(n, text);
  }

  // ---- formatting ----------------------------------------------------------------

  function bytes(n) {
    if (typeof n !== 'number' || !isFinite(n)) return '';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i++;
    }
    return (i ? n.toFixed(1) : String(n)) + ' ' + units[i];
  }

  function duration(seconds) {
    if (typeof seconds !== 'number' || !isFinite(seconds)) return '';
    const s = Math.max(0, Math.round(seconds));
    if (s < 120) return s + ' s';
    if (s < 7200) return Math.round(s / 60) + ' min';
    if (s < 172800) return (s / 3600).toFixed(1) + ' h';
    return (s / 86400).toFixed(1) + ' d';
  }

  function since(rfc3339) {
    const t = Date.parse(rfc3339);
    return isNaN(t) ? '' : duration((Date.now() - t) / 1000);
  }

  function until(rfc3339) {
    const t = Date.parse(rfc3339);
    return isNaN(t) ? '' : duration((t - Date.now()) / 1000);
  }

  // ---- the relay's API --------------------------------------------------------------

  function api(method, path) {
    const headers = {};
    if (token) headers.Authorization = 'Bearer ' + token;
    return fetch(path, {
      method,
      headers,
      cache: 'no-store',
      credentials: 'omit',
      redirect: 'error',
      referrerPolicy: 'no-referrer',
    });
  }

  // "HTTP 403 insufficient_scope: message", from the relay's error body.
  async function refusal(r) {
    let what = '';
    try {
      const body = await r.json();
      if (body && typeof body.error === 'string') what = ' ' + body.error;
      if (body && typeof body.message === 'string' && body.message) what += ': ' + body.message;
    } catch (e) {
      // not JSON: the status says it
    }
    return 'HTTP ' + r.status + what;
  }

  // The Prometheus text format, as far as the relay writes it:
  // name{label="value",...} number.  Returns name -> [{labels, value}].
  function parseMetrics(text) {
    const out = new Map();
    const line = /^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?[ \t]+(\S+)/;
    const label = /([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
    for (const l of text.split('\n')) {
      if (!l || l[0] === '#') continue;
      const m = line.exec(l);
      if (!m) continue;
      const labels = {};
      for (const lm of (m[2] || '').matchAll(label))
        labels[lm[1]] = lm[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
      if (!out.has(m[1])) out.set(m[1], []);
      out.get(m[1]).push({ labels, value: Number(m[3]) });
    }
    return out;
  }

  function metric(ms, name) {
    const v = ms.get('relay_' + name);
    return v && v.length ? v[0].value : undefined;
  }

  // ---- rendering -------------------------------------------------------------------

  function renderOverview(ms) {
    const cards = [
      ['connections', metric(ms, 'connections')],
      ['sessions', metric(ms, 'sessions')],
      ['peers', metric(ms, 'peers')],
      ['controller links', metric(ms, 'controller_links')],
      ['workers', metric(ms, 'workers') ?? 1],
      ['upgrades', metric(ms, 'ws_upgrades_total')],
      ['relayed', bytes(metric(ms, 'ws_bytes_out_total'))],
      ['uptime', duration(metric(ms, 'uptime_seconds'))],
    ];
    const box = $('overview');
    if (box.childElementCount !== cards.length) {
      box.replaceChildren(
        ...cards.map(([k]) => {
          const c = el('div', 'card', el('span', 'value'), el('span', 'label', k));
          c.dataset.metric = k;
          return c;
        })
      );
    }
    cards.forEach(([, v], i) => setText(box.children[i].firstChild, v === undefined ? '–' : String(v)));
    const info = ms.get('relay_build_info');
    if (info && info.length) {
      const l = info[0].labels;
      setText($('node'), [l.node, l.version && 'relay ' + l.version].filter(Boolean).join(' · '));
    }
  }

  function fillTable(tbody, data) {
    tbody.replaceChildren(...data.map((cells) => el('tr', null, ...cells.map((c, i) =>
      el('td', i ? 'num' : null, c)))));
  }

  function renderLinks(ms) {
    const links = (ms.get('relay_controller_link') || []).map((s) => [s.labels.controller || '?', s.value ? 'up' : 'down']);
    if (!links.length) links.push(['none', 'down']);
    fillTable($('links').tBodies[0], links);
  }

  function renderWorkers(ms) {
    const conns = ms.get('relay_worker_connections') || [];
    const sess = new Map((ms.get('relay_worker_sessions') || []).map((s) => [s.labels.worker, s.value]));
    const data = conns.map((s) => [s.labels.worker, String(s.value), String(sess.get(s.labels.worker) ?? '')]);
    if (!data.length) data.push(['1 (one loop)', String(metric(ms, 'connections') ?? ''), String(metric(ms, 'sessions') ?? '')]);
    fillTable($('workers').tBodies[0], data);
  }

  function renderLimits(ms) {
    const limits = [
      ['connections', 'limit_max_connections', String],
      ['sessions', 'limit_max_sessions', String],
      ['connections per client address', 'limit_max_conns_per_ip', (v) => (v ? String(v) : 'no limit')],
      ['message size', 'limit_max_message_bytes', bytes],
      ['held for a lone peer', 'limit_hold_bytes', bytes],
      ['lone peer waits', 'limit_peer_wait_seconds', duration],
    ];
    const data = [];
    for (const [label, name, fmt] of limits) {
      const v = metric(ms, name);
      if (v !== undefined) data.push([label, fmt(v)]);
    }
    const tbody = $('limits').tBodies[0];
    tbody.replaceChildren(...data.map(([k, v]) => el('tr', null, el('th', null, k), el('td', 'num', v))));
  }

  function renderCerts(ms) {
    const certs = ms.get('relay_certificate_not_after_seconds') || [];
    show($('certs-section'), certs.length > 0);
    fillTable($('certs').tBodies[0], certs.map((s) => [
      s.labels.cert || '?',
      new Date(s.value * 1000).toISOString(),
      ((s.value * 1000 - Date.now()) / 86400000).toFixed(1),
    ]));
  }

  function connected(on) {
    const s = el('span', on ? 'peer on' : 'peer off', on ? 'connected' : '—');
    return s;
  }

  function sessionRow(id) {
    const tr = document.createElement('tr');
    tr.dataset.id = id;
    for (let i = 0; i < 9; i++) tr.append(el('td', i >= 4 ? 'num' : null));
    tr.cells[0].append(el('code', null, id));
    const btn = el('button', 'delete', 'Delete');
    btn.type = 'button';
    btn.addEventListener('click', () => deleteSession(id, btn));
    tr.append(el('td', null, btn));
    return tr;
  }

  function renderSessions(list, more) {
    const tbody = $('sessions').tBodies[0];
    const seen = new Set();
    const order = [];
    for (const s of list) {
      if (!s || typeof s.id !== 'string' || seen.has(s.id)) continue;
      seen.add(s.id);
      let tr = rows.get(s.id);
      if (!tr) {
        tr = sessionRow(s.id);
        rows.set(s.id, tr);
      }
      const state = typeof s.state === 'string' ? s.state : '';
      const badge = el('span', 'state ' + (STATES.has(state) ? 'state-' + state : 'state-other'), state);
      tr.dataset.state = state;
      tr.cells[1].replaceChildren(badge);
      tr.cells[2].replaceChildren(connected(s.initiator_connected === true));
      tr.cells[3].replaceChildren(connected(s.responder_connected === true));
      setText(tr.cells[4], bytes(s.bytes_in));
      setText(tr.cells[5], bytes(s.bytes_out));
      setText(tr.cells[6], since(s.created_at));
      setText(tr.cells[7], until(s.expires_at));
      setText(tr.cells[8], s.last_activity ? since(s.last_activity) + ' ago' : '');
      order.push(tr);
    }
    for (const [id, tr] of rows) if (!seen.has(id)) rows.delete(id);
    tbody.replaceChildren(...order);
    setText($('sessions-count'), '(' + order.length + (more ? '+' : '') + ')');
    show($('sessions-more'), !!more);
    setText($('sessions-more'), more ? 'The first ' + PAGE_SIZE + ' sessions are shown.' : '');
  }

  // ---- actions -------------------------------------------------------------------

  // The first click arms the button, a second within CONFIRM_MS deletes.
  async function deleteSession(id, btn) {
    if (btn.dataset.armed !== '1') {
      btn.dataset.armed = '1';
      btn.textContent = 'Confirm delete';
      setTimeout(() => {
        btn.dataset.armed = '';
        btn.textContent = 'Delete';
      }, CONFIRM_MS);
      return;
    }
    btn.disabled = true;
    const gen = generation;
    try {
      const r = await api('DELETE', 'admin/sessions/' + encodeURIComponent(id));
      if (gen !== generation) return;
      if (r.status === 204) notice('Deleted session ' + id + '; its peers were closed (1001).');
      else if (r.status === 401) signedOut('The relay refused the token (' + (await refusal(r)) + ').');
      else notice('Could not delete session ' + id + ': ' + (await refusal(r)), true);
    } catch (e) {
      notice('Could not delete session ' + id + ': ' + e.message, true);
    } finally {
      btn.disabled = false;
      btn.dataset.armed = '';
      btn.textContent = 'Delete';
    }
    refreshSoon(0);
  }

  async function refresh() {
    timer = null;
    const gen = generation;
    try {
      const [sr, mr] = await Promise.all([
        api('GET', 'admin/sessions?limit=' + PAGE_SIZE),
        api('GET', 'admin/metrics'),
      ]);
      if (gen !== generation) return;
      if (sr.status === 401 || mr.status === 401) {
        signedOut('The relay refused the token (' + (await refusal(sr.status === 401 ? sr : mr)) + ').');
        return;
      }
      if (mr.ok) {
        const ms = parseMetrics(await mr.text());
        renderOverview(ms);
        renderLinks(ms);
        renderWorkers(ms);
        renderLimits(ms);
        renderCerts(ms);
      }
      if (sr.ok) {
        const body = await sr.json();
        renderSessions(Array.isArray(body.sessions) ? body.sessions : [], body.next_page_token);
      }
      if (gen !== generation) return;
      if (sr.ok && mr.ok) setLive('live', 'live');
      else setLive('error', 'sessions: ' + (sr.ok ? 'ok' : await refusal(sr)) + '; metrics: ' + (mr.ok ? 'ok' : await refusal(mr)));
      setText($('updated'), 'updated ' + new Date().toLocaleTimeString());
    } catch (e) {
      if (gen === generation) setLive('error', 'cannot reach the relay: ' + e.message);
    }
    if (gen === generation) refreshSoon(REFRESH_MS);
  }

  function refreshSoon(ms) {
    if (timer !== null) clearTimeout(timer);
    timer = setTimeout(refresh, ms);
  }

  // ---- signing in ------------------------------------------------------------------

  function b64url(bytesArr) {
    let s = '';
    for (const b of bytesArr) s += String.fromCharCode(b);
    return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  function random(n) {
    return b64url(crypto.getRandomValues(new Uint8Array(n)));
  }

  // Secrets go only to https (http on loopback, for development).
  function safeEndpoint(u) {
    try {
      const url = new URL(u);
      const loop = ['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname);
      return url.protocol === 'https:' || (url.protocol === 'http:' && loop) ? url : null;
    } catch (e) {
      return null;
    }
  }

  function redirectUri() {
    return location.origin + location.pathname;
  }

  function scopes() {
    const s = Array.isArray(disc.scopes) ? disc.scopes.filter((x) => typeof x === 'string') : [];
    return ['openid', ...s].join(' ');
  }

  async function startSignIn() {
    const ep = safeEndpoint(disc.authorization_endpoint);
    if (!ep || !disc.client_id_hint) {
      signinError('This relay names no authorization endpoint or client id: paste a token instead.');
      return;
    }
    const verifier = random(32);
    const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier));
    const state = random(16);
    sessionStorage.setItem(FLOW_KEY, JSON.stringify({ verifier, state }));
    const q = ep.searchParams;
    q.set('response_type', 'code');
    q.set('client_id', disc.client_id_hint);
    q.set('redirect_uri', redirectUri());
    q.set('scope', scopes());
    q.set('state', state);
    q.set('code_challenge', b64url(new Uint8Array(digest)));
    q.set('code_challenge_method', 'S256');
    if (disc.audience) q.set('audience', disc.audience);
    location.assign(ep.href);
  }

  // Back from the provider: ?code=&state= (or ?error=).  The flow's
  // secrets leave sessionStorage and the query leaves the address bar
  // before anything else happens.
  async function finishSignIn(params) {
    const saved = sessionStorage.getItem(FLOW_KEY);
    sessionStorage.removeItem(FLOW_KEY);
    history.replaceState(null, '', location.pathname);
    if (params.has('error')) {
      signinError('The identity provider refused: ' + params.get('error') +
        (params.get('error_description') ? ' (' + params.get('error_description') + ')' : ''));
      return false;
    }
    let flow = null;
    try {
      flow = JSON.parse(saved);
    } catch (e) {
      flow = null;
    }
    if (!flow || typeof flow.state !== 'string' || flow.state !== params.get('state')) {
      signinError('The sign-in answer does not match a sign-in started here; try again.');
      return false;
    }
    const ep = safeEndpoint(disc.token_endpoint);
    if (!ep) {
      signinError('The identity provider has no usable token endpoint.');
      return false;
    }
    const form = new URLSearchParams({
      grant_type: 'authorization_code',
      code: params.get('code'),
      redirect_uri: redirectUri(),
      client_id: disc.client_id_hint,
      code_verifier: flow.verifier,
    });
    try {
      const r = await fetch(ep.href, { method: 'POST', body: form, cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer' });
      const body = await r.json().catch(() => ({}));
      if (!r.ok || typeof body.access_token !== 'string' || !/^[\x21-\x7e]+$/.test(body.access_token)) {
        signinError('The token exchange failed: HTTP ' + r.status + (body.error ? ' ' + body.error : ''));
        return false;
      }
      useToken(body.access_token);
      return true;
    } catch (e) {
      signinError('The token exchange failed: ' + e.message);
      return false;
    }
  }

  function signinError(text) {
    const n = $('signin-error');
    n.textContent = text;
    show(n, true);
  }

  function useToken(t) {
    token = t;
    generation++;
    show($('signin'), false);
    show($('signout'), true);
    show($('signin-error'), false);
    show($('main'), true);
    setText($('who'), 'signed in');
    refreshSoon(0);
  }

  function signedOut(why) {
    token = null;
    generation++;
    if (timer !== null) clearTimeout(timer);
    timer = null;
    rows.clear();
    $('sessions').tBodies[0].replaceChildren();
    show($('main'), false);
    show($('signout'), false);
    setText($('who'), '');
    setLive('signed-out', 'signed out');
    show($('signin'), true);
    if (why) signinError(why);
  }

  // clear false: keep the message finishSignIn left.
  function showSignIn(clear = true) {
    const about = 'Signs in at ' + (disc.issuer || 'the identity provider') +
      (disc.client_id_hint ? ' as client ' + disc.client_id_hint : '') + '.';
    setText($('signin-about'), about);
    $('signin-oidc').disabled = !disc.client_id_hint || !safeEndpoint(disc.authorization_endpoint);
    if (clear) show($('signin-error'), false);
    signedOut(null);
  }

  // ---- start ------------------------------------------------------------------------

  function wire() {
    $('signin-oidc').addEventListener('click', () => {
      startSignIn().catch((e) => signinError('Cannot start the sign-in: ' + e.message));
    });
    $('token-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const box = $('token-input');
      const t = box.value.trim();
      box.value = '';
      if (!/^[\x21-\x7e]+$/.test(t)) {
        signinError('That does not look like a token.');
        return;
      }
      useToken(t);
    });
    $('signout').addEventListener('click', () => signedOut(null));
  }

  async function start() {

    let r;
    try {
      r = await fetch('dashboard/config.json', { cache: 'no-store', credentials: 'omit' });
      if (r.ok && (await r.json()).auth === 'none') {
        // --no-auth: the admin API is open (on loopback); no sign-in.
        disc = null;
        setText($('who'), 'no sign-in (--no-auth)');
        show($('main'), true);
        refreshSoon(0);
        return;
      }
      r = await fetch('.well-known/swsrs-config', { cache: 'no-store', credentials: 'omit' });
    } catch (e) {
      r = null;
    }
    if (!r || !r.ok) {
      // The relay may not have its provider's discovery yet.  Load the
      // page again (its CSP names the token endpoint only once known).
      setLive('error', 'discovery: ' + (r ? await refusal(r) : 'cannot reach the relay'));
      setTimeout(() => location.reload(), REFRESH_MS);
      return;
    }
    disc = await r.json();
    const params = new URLSearchParams(location.search);
    if (params.has('code') || params.has('error')) {
      if (await finishSignIn(params)) return;
      showSignIn(false);
      return;
    }
    showSignIn();
  }

  wire();
  start();
})();
