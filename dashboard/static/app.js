// sitebridge dashboard: polls api/v1/topology (relative to this page) and
// draws it. Plain JavaScript, no framework, no build step, nothing loaded
// from elsewhere. Elements are kept by key and updated in place, so buttons
// stay put between polls.
'use strict';

(() => {
  const POLL_MS = 1000;
  const TOKEN_KEY = 'sitebridge.token';
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const FED_OPS = [
    ['start', 'Start', ''],
    ['pause', 'Pause', ''],
    ['resume', 'Resume', ''],
    ['stop', 'Stop', 'danger'],
    ['replicate-all', 'Replicate all', 'primary'],
    ['start-with-no-backlog', 'Start, no backlog', 'danger'],
  ];
  const CONFIRM = {
    stop: 'Stop federation to %s? Its backlog is dropped: a later start sends only new changes.',
    'start-with-no-backlog': 'Start federation to %s without its backlog? Changes pending now are never sent.',
  };

  const $ = (sel, root = document) => root.querySelector(sel);
  let token = sessionStorage.getItem(TOKEN_KEY) || '';
  let timer = null;
  let current = null;
  // Instances seen earlier and not reported any more (a stopped member
  // leaves its cluster; a stopped remote instance loses its tunnels).
  const seen = new Map(); // name -> {inst, at}

  function h(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const k of kids) e.append(k);
    return e;
  }

  function esc(s) {
    return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
  }

  // keyed returns parent's child with data-key=key, made by make() if
  // missing, and puts it at position i.
  function keyed(parent, key, i, make) {
    let e = null;
    for (const c of parent.children) {
      if (c.dataset.key === key) { e = c; break; }
    }
    if (!e) {
      e = make();
      e.dataset.key = key;
    }
    if (parent.children[i] !== e) parent.insertBefore(e, parent.children[i] || null);
    return e;
  }

  // prune removes parent's keyed children whose key is not in keys.
  function prune(parent, keys) {
    for (const c of [...parent.children]) {
      if (c.dataset.key !== undefined && !keys.has(c.dataset.key)) c.remove();
    }
  }

  function setText(e, s) {
    if (e.textContent !== s) e.textContent = s;
  }

  // applyWidths sizes the bars of HTML made from strings (the page's
  // Content-Security-Policy allows no inline style attributes).
  function applyWidths(root) {
    for (const i of root.querySelectorAll('i[data-w]')) i.style.width = i.dataset.w + '%';
  }

  function fmtCount(n) {
    return Number(n || 0).toLocaleString('en-US');
  }

  function fmtAge(ms) {
    if (!(ms >= 0)) return '';
    const s = Math.floor(ms / 1000);
    if (s < 60) return s + 's';
    if (s < 3600) return Math.floor(s / 60) + 'm ' + (s % 60) + 's';
    return Math.floor(s / 3600) + 'h ' + Math.floor((s % 3600) / 60) + 'm';
  }

  function fmtBytes(n) {
    if (n < 1024) return n + ' B';
    if (n < 1 << 20) return (n / 1024).toFixed(1) + ' KiB';
    return (n / (1 << 20)).toFixed(1) + ' MiB';
  }

  function fmtTime(d) {
    return d.toLocaleTimeString('en-GB', { hour12: false });
  }

  let toastTimer = null;
  function toast(msg, error) {
    const t = $('#toast');
    t.textContent = msg;
    t.classList.toggle('error', !!error);
    t.classList.add('show');
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => t.classList.remove('show'), error ? 6000 : 3000);
  }

  class AuthError extends Error {}

  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    if (token) headers.Authorization = 'Bearer ' + token;
    const init = { method, headers, cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    if (r.status === 401) {
      $('#auth').hidden = false;
      throw new AuthError(token ? 'the bearer token was refused' : 'this admin endpoint wants a bearer token');
    }
    let data = null;
    try { data = await r.json(); } catch (_) { /* not JSON */ }
    if (!r.ok) throw new Error((data && data.error) || r.status + ' ' + r.statusText);
    return data;
  }

  // act runs a button's request, disabling it meanwhile, and polls at once.
  async function act(button, what, method, path, body) {
    button.disabled = true;
    try {
      await api(method, path, body);
      toast(what + ': done');
    } catch (e) {
      toast(what + ': ' + e.message, true);
    } finally {
      button.disabled = false;
      pollNow();
    }
  }

  function setConn(ok, text) {
    const c = $('#conn');
    c.dataset.ok = ok ? 'true' : 'false';
    setText($('#conn-text'), text);
  }

  async function poll() {
    timer = null;
    try {
      const t = await api('GET', 'api/v1/topology');
      current = t;
      render(t);
      setConn(true, 'live · updated ' + fmtTime(new Date()));
    } catch (e) {
      setConn(false, (e instanceof AuthError ? '' : 'not reachable: ') + e.message);
    } finally {
      if (timer === null) timer = setTimeout(poll, POLL_MS);
    }
  }

  function pollNow() {
    if (timer !== null) clearTimeout(timer);
    timer = setTimeout(poll, 0);
  }

  // ---- topology ----

  function render(t) {
    setText($('#title'), t.title);
    document.title = 'sitebridge · ' + t.title;
    setText($('#observer'), t.observer ? 'served by ' + t.observer + ', which sees its own site directly and the others through tunnels' : 'served by sitebridge demo, which runs every instance');
    const notes = $('#notes');
    notes.replaceChildren(...(t.notes || []).map((n) => h('p', { class: 'note', text: n })));
    const sites = withGone(t);
    renderSites(sites, t);
    renderFederation(t.sites);
    renderCaches(t.sites);
    renderDemo(t);
    requestAnimationFrame(() => drawLinks(sites));
  }

  // withGone adds the instances seen before and missing now, as "gone"
  // (only where the answer does not report stopped instances itself).
  function withGone(t) {
    const now = Date.now();
    const sites = t.sites.map((s) => ({ ...s, instances: [...s.instances] }));
    const present = new Set();
    for (const s of sites) {
      for (const i of s.instances) {
        present.add(i.name);
        seen.set(i.name, { inst: i, at: now });
      }
    }
    for (const [name, rec] of seen) {
      if (present.has(name)) continue;
      const site = sites.find((s) => s.name === rec.inst.site);
      if (!site) continue;
      site.instances.push({ ...rec.inst, state: 'gone', tunnels: [], error: '', lastSeen: rec.at });
      site.instances.sort((a, b) => a.name.localeCompare(b.name));
    }
    return sites;
  }

  function renderSites(sites, t) {
    const box = $('#sites');
    box.style.gridTemplateColumns = 'repeat(' + Math.max(sites.length, 1) + ', minmax(230px, 1fr))';
    const keys = new Set();
    sites.forEach((site, n) => {
      keys.add(site.name);
      const panel = keyed(box, site.name, n, () => h('div', { class: 'site' },
        h('div', { class: 'site-head' }, h('span', { class: 'site-name' }), h('span', { class: 'site-count' })),
        h('div', { class: 'insts' })));
      panel.id = 'site-' + site.name;
      panel.dataset.site = site.name;
      panel.dataset.n = String(n % 3);
      const own = t.observer && site.instances.some((i) => i.seen === 'self');
      const how = t.observer ? (own ? 'this instance\u2019s site' : 'seen through tunnels') : 'site';
      const nameEl = $('.site-name', panel);
      nameEl.replaceChildren(site.name, h('small', { text: how }));
      const running = site.instances.filter((i) => i.state === 'running').length;
      setText($('.site-count', panel), running + ' of ' + site.instances.length + ' running');
      const list = $('.insts', panel);
      const ikeys = new Set();
      site.instances.forEach((inst, i) => {
        ikeys.add(inst.name);
        const card = keyed(list, inst.name, i, () => newCard(inst.name));
        fillCard(card, inst, t);
      });
      prune(list, ikeys);
      let empty = $('.site-empty', panel);
      if (site.instances.length === 0) {
        if (!empty) panel.append(empty = h('div', { class: 'site-empty' }));
        setText(empty, 'No instance of this site has a tunnel up.');
      } else if (empty) {
        empty.remove();
      }
    });
    prune(box, keys);
  }

  function newCard(name) {
    const stop = h('button', { type: 'button', class: 'stop danger', text: 'Stop', title: 'Stop this instance (its admin endpoint stays up)' });
    const start = h('button', { type: 'button', class: 'start primary', text: 'Start', title: 'Start this instance again (a new epoch)' });
    const card = h('div', { class: 'inst', id: 'inst-' + name, 'data-instance': name },
      h('div', { class: 'inst-head' },
        h('span', { class: 'inst-name', text: name }),
        h('span', { class: 'badge' }),
        h('span', { class: 'spacer' }),
        h('span', { class: 'inst-ops' }, stop, start)),
      h('div', { class: 'inst-meta' }),
      h('div', { class: 'inst-err' }),
      h('ul', { class: 'svcs' }));
    stop.addEventListener('click', () => act(stop, 'stop ' + name, 'POST', card.dataset.ops + '/stop'));
    start.addEventListener('click', () => act(start, 'start ' + name, 'POST', card.dataset.ops + '/start'));
    return card;
  }

  function fillCard(card, inst, t) {
    card.dataset.state = inst.state;
    card.dataset.seen = inst.seen;
    card.dataset.tunnels = String(inst.state === 'running' ? inst.tunnels.length : 0);
    const badge = $('.badge', card);
    badge.className = 'badge ' + inst.state;
    setText(badge, inst.state === 'gone' ? 'not seen' : inst.state);

    const ops = $('.inst-ops', card);
    ops.hidden = !inst.ops;
    card.dataset.ops = inst.ops || '';
    $('button.stop', card).disabled = inst.state !== 'running';
    $('button.start', card).disabled = inst.state !== 'stopped';

    const meta = [];
    if (inst.state === 'gone') {
      meta.push('not seen since ' + fmtTime(new Date(inst.lastSeen)));
    } else if (inst.state === 'running' && inst.epoch) {
      meta.push('up ' + fmtAge(Date.parse(t.time) - inst.epoch / 1e6));
    }
    if (inst.seen === 'self') meta.push('this instance');
    if (inst.seen === 'tunnel' && inst.state !== 'gone') {
      meta.push('seen through ' + inst.tunnels.length + (inst.tunnels.length === 1 ? ' tunnel' : ' tunnels') + ' to this site');
    } else if (inst.state !== 'gone') {
      meta.push(inst.tunnels.length + (inst.tunnels.length === 1 ? ' tunnel' : ' tunnels'));
    }
    if (inst.admin) meta.push('admin ' + inst.admin);
    setText($('.inst-meta', card), meta.join(' · '));
    setText($('.inst-err', card), inst.error || '');

    const list = $('.svcs', card);
    const rows = (inst.services || []).map((s) => {
      const li = h('li', { class: 'svc', 'data-service': s.name, 'data-up': String(!!s.up) },
        h('span', { class: 'up', title: s.role === 'accept' ? (s.up ? 'a tunnel reaches this service' : 'no tunnel reaches this service') : (s.up ? 'target healthy' : 'target not healthy') }),
        h('span', { class: 'svc-name', text: s.name }),
        h('span', { class: 'role', text: (s.role === 'accept' ? 'clients on ' : 'server at ') + s.addr }),
        h('span', { class: 'conns' + (s.active_connections > 0 ? ' busy' : ''), text: fmtCount(s.active_connections) + ' conn' + (s.active_connections === 1 ? '' : 's') }));
      return li;
    });
    const sig = JSON.stringify(inst.services || []);
    if (list.dataset.sig !== sig) {
      list.dataset.sig = sig;
      list.replaceChildren(...rows);
    }
  }

  // drawLinks draws one line per pair of instances with a live tunnel,
  // between their cards, with the connections it carries.
  function drawLinks(sites) {
    const svg = $('#links');
    const topo = $('#topo');
    const base = topo.getBoundingClientRect();
    svg.setAttribute('viewBox', '0 0 ' + base.width + ' ' + base.height);
    const pairs = new Map();
    const remote = new Set(); // instances seen through tunnels: their own counts are not known here
    for (const s of sites) for (const i of s.instances) if (i.seen === 'tunnel') remote.add(i.name);
    for (const s of sites) {
      for (const inst of s.instances) {
        if (inst.state !== 'running') continue;
        for (const tn of inst.tunnels) {
          const key = [inst.name, tn.peer].sort().join('|');
          const p = pairs.get(key) || { a: inst.name, b: tn.peer, active: 0 };
          // Each end counts the connections it opened over the tunnel.
          p.active += tn.active_connections || 0;
          pairs.set(key, p);
        }
      }
    }
    const keys = new Set();
    let i = 0;
    for (const [key, p] of pairs) {
      const ea = document.getElementById('inst-' + p.a);
      const eb = document.getElementById('inst-' + p.b);
      if (!ea || !eb || ea.dataset.state !== 'running' || eb.dataset.state !== 'running') continue;
      keys.add(key);
      const g = keyed(svg, key, i++, () => {
        const g = document.createElementNS(SVG_NS, 'g');
        g.append(document.createElementNS(SVG_NS, 'line'), document.createElementNS(SVG_NS, 'circle'), document.createElementNS(SVG_NS, 'text'));
        const title = document.createElementNS(SVG_NS, 'title');
        g.append(title);
        return g;
      });
      const ra = ea.getBoundingClientRect();
      const rb = eb.getBoundingClientRect();
      let [x1, x2] = ra.left < rb.left ? [ra.right, rb.left] : [ra.left, rb.right];
      const y1 = ra.top + ra.height / 2 - base.top;
      const y2 = rb.top + rb.height / 2 - base.top;
      x1 -= base.left;
      x2 -= base.left;
      g.setAttribute('class', 'tunnel' + (p.active > 0 ? ' busy' : ''));
      g.dataset.a = p.a;
      g.dataset.b = p.b;
      const [line, circle, text, title] = g.children;
      line.setAttribute('x1', x1); line.setAttribute('y1', y1);
      line.setAttribute('x2', x2); line.setAttribute('y2', y2);
      // The label sits a third of the way along, so crossing lines keep theirs apart.
      const lx = x1 + (x2 - x1) / 3;
      const ly = y1 + (y2 - y1) / 3;
      circle.setAttribute('cx', lx); circle.setAttribute('cy', ly); circle.setAttribute('r', 11);
      text.setAttribute('x', lx); text.setAttribute('y', ly);
      text.textContent = String(p.active);
      circle.style.display = text.style.display = p.active > 0 ? '' : 'none';
      title.textContent = 'tunnel ' + p.a + ' \u2194 ' + p.b + ': ' + p.active + ' connection(s) open now' +
        (remote.has(p.a) || remote.has(p.b) ? ' (those opened from this site; the other site\u2019s dashboard counts its own)' : '');
    }
    prune(svg, keys);
  }

  // ---- federation ----

  function stateClass(s) {
    if (s === 'started') return 'running';
    if (s === 'stopped') return 'stopped-fed';
    if (s === 'paused') return 'paused';
    if (s === 'error') return 'error';
    return 'gone';
  }

  function renderFederation(sites) {
    const box = $('#fed');
    const keys = new Set();
    sites.forEach((site, n) => {
      keys.add(site.name);
      const sec = keyed(box, site.name, n, () => h('div', { class: 'fed-site' }, h('h3'), h('p', { class: 'note' }), h('div', { class: 'parts' })));
      sec.dataset.site = site.name;
      setText($('h3', sec), 'From site ' + site.name);
      const note = $('.note', sec);
      note.hidden = !site.federation_note;
      setText(note, site.federation_note || '');
      const parts = $('.parts', sec);
      const byPart = new Map();
      for (const f of site.federation || []) {
        if (!byPart.has(f.participant)) byPart.set(f.participant, []);
        byPart.get(f.participant).push(f);
      }
      const pkeys = new Set();
      let i = 0;
      for (const [participant, rows] of byPart) {
        pkeys.add(participant);
        const part = keyed(parts, participant, i++, () => newFedPart(participant));
        part.dataset.site = site.name;
        part.dataset.participant = participant;
        part.dataset.ops = site.fed_ops || '';
        $('.fed-ops', part).hidden = !site.fed_ops;
        const worst = rows.find((r) => r.state !== 'started') || rows[0];
        const badge = $('.badge', part);
        badge.className = 'badge ' + stateClass(worst.state);
        setText(badge, worst.state + (worst.reason ? ' (' + worst.reason + ')' : ''));
        const body = $('.rows', part);
        body.innerHTML = fedTable(rows);
        applyWidths(body);
      }
      prune(parts, pkeys);
      if (!site.federation_note && byPart.size === 0) {
        note.hidden = false;
        setText(note, 'No federation participants.');
      }
    });
    prune(box, keys);
  }

  function newFedPart(participant) {
    const ops = h('div', { class: 'fed-ops' });
    const part = h('div', { class: 'fed-part' },
      h('div', { class: 'fed-part-head' },
        h('span', { class: 'arrow', text: '\u2192 ' + participant }),
        h('span', { class: 'badge' }),
        ops),
      h('div', { class: 'rows' }));
    for (const [op, label, cls] of FED_OPS) {
      const b = h('button', { type: 'button', class: 'fed-op ' + cls, 'data-op': op, text: label });
      b.addEventListener('click', () => {
        const q = CONFIRM[op];
        if (q && !window.confirm(q.replace('%s', participant))) return;
        act(b, op + ' ' + participant, 'POST', part.dataset.ops + '/' + encodeURIComponent(participant) + '/' + op);
      });
      ops.append(b);
    }
    return part;
  }

  function fedTable(rows) {
    let html = '<table><thead><tr><th>Scheme</th><th>State</th><th class="num">Pending</th><th class="num">Lag</th>' +
      '<th class="num">Sent/s</th><th class="num">Applied from it</th><th>Replicate-all</th></tr></thead><tbody>';
    for (const f of rows) {
      let ra = '<span class="muted">\u2014</span>';
      if (f.replicate_all) {
        const p = Math.max(0, Math.min(100, f.replicate_all.percent || 0));
        const eta = f.replicate_all.eta_seconds > 0 ? ' · ETA ' + fmtAge(f.replicate_all.eta_seconds * 1000) : '';
        ra = '<div class="ra"><div class="bar' + (p >= 100 ? ' done' : '') + '" data-percent="' + p.toFixed(1) + '"><i data-w="' + p.toFixed(1) + '"></i></div>' +
          '<span>' + p.toFixed(0) + '%' + esc(eta) + '</span></div>';
      }
      const at = f.last_error_at ? ' at ' + fmtTime(new Date(f.last_error_at)) : '';
      const err = f.last_error ? '<div class="fed-err">last error' + esc(at) + ': ' + esc(f.last_error) + '</div>' : '';
      html += '<tr data-scheme="' + esc(f.scheme) + '"><td>' + esc(f.scheme) + err + '</td>' +
        '<td><span class="badge ' + stateClass(f.state) + '">' + esc(f.state) + '</span></td>' +
        '<td class="num">' + fmtCount(f.pending_entries) + (f.pending_bytes ? ' <span class="muted">(' + fmtBytes(f.pending_bytes) + ')</span>' : '') + '</td>' +
        '<td class="num">' + (f.lag_seconds || 0).toFixed(2) + ' s</td>' +
        '<td class="num">' + (f.send_rate || 0).toFixed(1) + '</td>' +
        '<td class="num">' + fmtCount(f.applied_from_participant) + '</td>' +
        '<td>' + ra + '</td></tr>';
    }
    return html + '</tbody></table>';
  }

  // ---- caches ----

  function renderCaches(sites) {
    const box = $('#cache-sites');
    const max = new Map();
    for (const s of sites) for (const c of s.caches || []) max.set(c.name, Math.max(max.get(c.name) || 0, c.size));
    const keys = new Set();
    sites.forEach((site, n) => {
      keys.add(site.name);
      const sec = keyed(box, site.name, n, () => h('div', { class: 'cache-site' }, h('h3'), h('div', { class: 'body' })));
      sec.dataset.site = site.name;
      setText($('h3', sec), 'Site ' + site.name);
      let html;
      if (!site.caches) {
        html = '<p class="note">' + esc(site.caches_note || 'not known here') + '</p>';
      } else if (site.caches.length === 0) {
        html = '<p class="muted">No caches yet.</p>';
      } else {
        html = '<table><thead><tr><th>Cache</th><th>Scheme</th><th class="num">Entries</th></tr></thead><tbody>';
        for (const c of site.caches) {
          const w = max.get(c.name) ? (100 * c.size) / max.get(c.name) : 0;
          html += '<tr class="cache" data-site="' + esc(site.name) + '" data-cache="' + esc(c.name) + '" data-size="' + c.size + '">' +
            '<td>' + esc(c.name) + '</td><td>' + esc(c.scheme) + '</td>' +
            '<td><div class="size-cell"><div class="bar"><i data-w="' + w.toFixed(1) + '"></i></div><b>' + fmtCount(c.size) + '</b></div></td></tr>';
        }
        html += '</tbody></table>';
      }
      const body = $('.body', sec);
      if (body.dataset.html !== html) {
        body.dataset.html = html;
        body.innerHTML = html;
        applyWidths(body);
      }
    });
    prune(box, keys);
  }

  // ---- demo ----

  function fillSites(select, sites) {
    const names = sites.map((s) => s.name);
    if ([...select.options].map((o) => o.value).join() === names.join()) return;
    const keep = select.value;
    select.replaceChildren(...names.map((n) => h('option', { value: n, text: n })));
    if (names.includes(keep)) select.value = keep;
  }

  function jobStatus(box, job, what) {
    if (!job || !job.started) {
      box.replaceChildren(h('span', { text: 'not started yet' }));
      return;
    }
    const parts = [];
    if (job.total) {
      const p = Math.min(100, (100 * (job.done + job.errors)) / job.total);
      const bar = h('div', { class: 'bar' + (job.running ? '' : ' done') });
      const fill = h('i');
      fill.style.width = p.toFixed(1) + '%';
      bar.append(fill);
      parts.push(bar);
    }
    let text = (job.running ? what + ' on ' + job.site + ': ' : 'last run on ' + job.site + ': ') + fmtCount(job.done) + (job.total ? ' of ' + fmtCount(job.total) : '') + ' written';
    if (job.rate) text += ' at ' + job.rate + '/s';
    if (job.running && job.ends) text += ', stops by itself in ' + fmtAge(Date.parse(job.ends) - Date.now());
    if (job.errors) text += ', ' + fmtCount(job.errors) + ' failed (' + (job.last_error || '') + ')';
    if (!job.running) text += ' · finished ' + fmtTime(new Date(job.finished));
    parts.push(h('span', { text }));
    box.dataset.running = String(job.running);
    box.dataset.done = String(job.done);
    box.replaceChildren(...parts);
  }

  function renderDemo(t) {
    const sec = $('#demo');
    sec.hidden = !t.demo;
    if (!t.demo) return;
    fillSites($('#add-site'), t.sites);
    fillSites($('#prices-site'), t.sites);
    jobStatus($('#add-status'), t.demo.add, 'adding trades');
    jobStatus($('#prices-status'), t.demo.prices, 'updating prices');
    $('#add-btn').disabled = t.demo.add.running;
    $('#prices-btn').disabled = t.demo.prices.running || t.demo.trades === 0;
    $('#prices-btn').title = t.demo.trades === 0 ? 'add trades first' : '';
    $('#prices-stop').disabled = !t.demo.prices.running;
  }

  function init() {
    $('#token-use').addEventListener('click', () => {
      token = $('#token').value.trim();
      sessionStorage.setItem(TOKEN_KEY, token);
      $('#auth').hidden = true;
      pollNow();
    });
    $('#token').addEventListener('keydown', (e) => { if (e.key === 'Enter') $('#token-use').click(); });
    const add = $('#add-btn');
    add.addEventListener('click', () => act(add, 'add trades', 'POST', 'api/v1/demo/trades',
      { site: $('#add-site').value, count: Number($('#add-count').value) }));
    const prices = $('#prices-btn');
    prices.addEventListener('click', () => act(prices, 'price updates', 'POST', 'api/v1/demo/prices',
      { site: $('#prices-site').value, rate: Number($('#prices-rate').value), seconds: Number($('#prices-seconds').value) }));
    const stop = $('#prices-stop');
    stop.addEventListener('click', () => act(stop, 'stop price updates', 'POST', 'api/v1/demo/prices/stop', {}));
    window.addEventListener('resize', () => { if (current) drawLinks(withGone(current)); });
    poll();
  }

  init();
})();
