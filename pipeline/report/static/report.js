/* caption report: draws the page from the JSON in #report-data.
 *
 * Every text from the dataset (captions, errors, paths, typed values) is model or server
 * output: it is only ever put on the page as text (text nodes, textContent, attribute
 * values), never parsed as markup. This file uses no innerHTML, outerHTML,
 * insertAdjacentHTML, document.write or eval. */
'use strict';
(function () {
  const T0 = performance.now();
  const D = JSON.parse(document.getElementById('report-data').textContent);
  const thumbsText = document.getElementById('report-thumbs').textContent;
  const THUMBS = thumbsText ? thumbsText.split('\n') : [];
  const T1 = performance.now();
  const COLORS = { ok: '#2a9d8f', failed: '#d62839', invalid: '#e9a23b' };
  const PALETTE = ['#3d5a98', '#2a9d8f', '#e76f51', '#8e5ea2', '#e9a23b', '#5b8e3e', '#c2477b', '#4a9fc4'];
  const $ = (id) => document.getElementById(id);

  // --- DOM: elements from tags, attributes and text; nothing is parsed as HTML -----------
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === null || v === undefined || v === false) continue;
        if (k === 'class') e.className = v;
        else if (k === 'text') e.textContent = v;
        else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
        else e.setAttribute(k, String(v));
      }
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      e.append(kid instanceof Node ? kid : String(kid));
    }
    return e;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  // --- formatting --------------------------------------------------------------------------
  const nf = new Intl.NumberFormat('en-US');
  const int = (n) => (n === null || n === undefined ? '–' : nf.format(Math.round(n)));
  function num(n, digits) {
    if (n === null || n === undefined) return '–';
    return n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });
  }
  function secs(s) {
    if (s === null || s === undefined) return '–';
    if (s < 1) return num(s * 1000, 0) + ' ms';
    if (s < 120) return num(s, 2) + ' s';
    if (s < 7200) return Math.floor(s / 60) + ' min ' + Math.round(s % 60) + ' s';
    return Math.floor(s / 3600) + ' h ' + Math.round((s % 3600) / 60) + ' min';
  }
  function pair(a, b) { // "401 / 488 ms", "0.4 / 1.2 s": one unit for both
    if (a === null || a === undefined || b === null || b === undefined) return secs(a) + ' / ' + secs(b);
    if (b < 1) return num(a * 1000, 0) + ' / ' + num(b * 1000, 0) + ' ms';
    if (b < 120) return num(a, a < 10 ? 2 : 1) + ' / ' + num(b, b < 10 ? 2 : 1) + ' s';
    return secs(a) + ' / ' + secs(b);
  }
  function rate(r) {
    if (r === null || r === undefined) return '–';
    return num(r, r < 10 ? 2 : r < 100 ? 1 : 0) + '/s';
  }
  function when(iso) {
    if (!iso) return '–';
    const d = new Date(iso);
    if (isNaN(d)) return String(iso);
    const p = (x) => String(x).padStart(2, '0');
    return d.getFullYear() + '-' + p(d.getMonth() + 1) + '-' + p(d.getDate()) + ' ' + p(d.getHours()) + ':' + p(d.getMinutes()) + ':' + p(d.getSeconds());
  }
  const pct = (a, b) => (b ? num((100 * a) / b, a === b || a === 0 ? 0 : 1) + '%' : '–');
  const plural = (n, one, many) => int(n) + ' ' + (n === 1 ? one : many || one + 's');
  function show(v) {
    if (v === null || v === undefined) return '';
    const flat = (x) => x === null || typeof x !== 'object';
    if (Array.isArray(v) && v.every(flat)) return v.map(String).join(', ');
    if (Array.isArray(v) && v.every((o) => o && !Array.isArray(o) && typeof o === 'object' && Object.values(o).every(flat))) {
      return v.map((o) => Object.entries(o).map(([k, x]) => k + ': ' + x).join(', ')).join(' · ');
    }
    if (typeof v === 'object') return JSON.stringify(v);
    return String(v);
  }

  // --- summary -----------------------------------------------------------------------------
  const J = D.job;
  function card(label, value, sub, extra) {
    return el('div', { class: 'card' }, el('div', { class: 'label', text: label }),
      el('div', { class: 'value', text: value }), sub ? el('div', { class: 'sub', text: sub }) : null, extra || null);
  }
  function statusBar(counts) {
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    const bar = el('div', { class: 'statusbar', title: Object.entries(counts).map(([k, v]) => k + ' ' + int(v)).join(', ') });
    if (total) for (const [k, v] of Object.entries(counts)) {
      if (v) bar.append(el('span', { class: 's-' + k, style: 'width:' + ((100 * v) / total).toFixed(3) + '%' }));
    }
    return bar;
  }
  function renderSummary() {
    $('out-name').textContent = J.output;
    const c = J.counts;
    const cards = $('cards');
    cards.append(
      card('items', int(J.items), int(c.ok) + ' ok · ' + int(c.failed) + ' failed · ' + int(c.invalid) + ' invalid', statusBar(c)),
      card('ok', pct(c.ok, J.items), plural(J.images, 'image') + ' × ' + plural(J.prompts.length, 'prompt')),
      card('throughput', J.images_per_s ? rate(J.images_per_s) : '–', 'images per second over ' + secs(J.busy_s) + ' of runs'),
      card('latency p50 / p95', pair(J.latency.p50, J.latency.p95), 'max ' + secs(J.latency.max) + ' per request'),
      card('tokens', int(J.prompt_tokens + J.completion_tokens), int(J.prompt_tokens) + ' prompt + ' + int(J.completion_tokens) + ' completion'),
      card('requests', int(J.requests), plural(J.runs, 'run') + ' · ' + plural(J.rows, 'row') + ' kept'),
    );
    const job = $('job');
    const dd = (label, ...value) => { job.append(el('dt', { text: label }), el('dd', null, ...value)); };
    dd('model', J.model || '–');
    dd('endpoint', (J.endpoints || []).join(', ') || '–');
    dd('input', J.input || '–');
    dd('output', J.output);
    if (J.source) dd('job file', J.source);
    const prompts = D.prompts.length ? D.prompts : J.prompts.map((name) => ({ name }));
    dd('prompts', ...prompts.map((p, i) => el('div', null, el('span', { class: 'badge b-prompt', text: p.name }), ' ',
      p.text ? el('span', { class: 'prompt-text', text: p.text.length > 240 ? p.text.slice(0, 240) + '…' : p.text }) : null,
      p.schema ? el('span', { class: 'muted', text: ' (JSON schema)' }) : null)));
    if (J.fields.length) dd('typed columns', J.fields.join(', '));
    dd('span', when(J.first_started) + ' → ' + when(J.last_finished));
    $('footer').textContent = 'Generated ' + when(D.generated_at) + ' by caption ' + D.caption_version +
      ' · ' + int(D.thumbs.made || 0) + ' thumbnails (' + D.thumbs.size + ' px) · plots by uPlot';
  }

  // --- runs --------------------------------------------------------------------------------
  function table(head, rows, numeric) {
    return el('table', null,
      el('thead', null, el('tr', null, head.map((h, i) => el('th', { class: numeric[i] ? 'num' : null, text: h })))),
      el('tbody', null, rows.map((r) => el('tr', null, r.map((v, i) => el('td', { class: numeric[i] ? 'num' : null }, v))))));
  }
  function renderRuns(all) {
    const box = $('runs-table');
    clear(box);
    if (!D.runs.length) { box.append(el('div', { class: 'empty', text: 'No runs yet.' })); return; }
    const LIMIT = 15;
    const runs = all ? D.runs : D.runs.slice(-LIMIT);
    const head = ['run', 'started', 'wall', 'items', 'ok', 'failed', 'invalid', 'images/s', 'p50', 'p95', 'tokens in', 'tokens out', 'exit'];
    const numeric = [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0];
    const rows = runs.slice().reverse().map((r) => [
      el('span', { class: 'mono', text: r.run_id, title: r.command || '' }), when(r.started_at), secs(r.wall_s), int(r.rows),
      int(r.counts.ok), int(r.counts.failed), int(r.counts.invalid), rate(r.images_per_s), secs(r.latency.p50),
      secs(r.latency.p95), int(r.prompt_tokens), int(r.completion_tokens),
      r.logged ? (r.exit_code === null ? (r.ended_at && r.stop_reason ? r.stop_reason : 'running or killed') : String(r.exit_code) + (r.stop_reason ? ' (' + r.stop_reason + ')' : '')) : el('span', { class: 'muted', text: 'not in run log' }),
    ]);
    box.append(table(head, rows, numeric));
    if (!all && D.runs.length > LIMIT) {
      box.append(el('div', { class: 'empty' }, el('button', { class: 'link', type: 'button', onclick: () => renderRuns(true), text: 'Show all ' + int(D.runs.length) + ' runs' })));
    }
  }

  // --- plots (uPlot) -----------------------------------------------------------------------
  const plots = [];
  const HEIGHT = 230;
  const INT_INCRS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6];
  function place(box, make) {
    clear(box);
    const u = make(Math.max(box.clientWidth, 280));
    if (u) plots.push([u, box]); else box.append(el('div', { class: 'empty', text: 'No data.' }));
  }
  function throughputPlot(box, s) {
    const idx = plots.findIndex((p) => p[1] === box);
    if (idx >= 0) { plots[idx][0].destroy(); plots.splice(idx, 1); }
    place(box, (width) => {
      if (!s || !s.x.length) return null;
      const names = Object.keys(s.ys).filter((k) => k !== 'concurrency');
      const used = names.filter((k) => s.ys[k].some((v) => v));
      // one more point at the end of the last bin: a step is drawn from each x to the next
      const end = s.x[s.x.length - 1] + s.step;
      const ext = (ys) => ys.concat([ys[ys.length - 1]]);
      const series = [{ label: 'time' }];
      const data = [s.x.concat([end])];
      for (const k of (used.length ? used : names)) {
        series.push({ label: k + ' /s', stroke: COLORS[k] || '#555', width: 1.5, fill: k === 'ok' ? 'rgba(42,157,143,0.12)' : undefined,
          paths: uPlot.paths.stepped({ align: 1 }), points: { show: false }, value: (u, v) => (v === null ? '–' : num(v, 1)) });
        data.push(ext(s.ys[k]));
      }
      series.push({ label: 'concurrency', scale: 'c', stroke: '#8a91a3', width: 1, dash: [4, 3], points: { show: false }, spanGaps: true,
        paths: uPlot.paths.stepped({ align: 1 }), value: (u, v) => (v === null ? '–' : num(v, 1)) });
      data.push(ext(s.ys.concurrency));
      return new uPlot({
        width, height: HEIGHT,
        scales: { x: { time: true, range: () => [s.x[0], end] }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.08 : 1] }, c: { range: (u, min, max) => [0, max > 0 ? max * 1.15 : 1] } },
        axes: [{}, { label: 'rows/s', size: 54 }, { scale: 'c', side: 1, grid: { show: false }, label: 'concurrency', size: 54 }],
        series, legend: { live: true },
      }, data, box);
    });
  }
  function histPlot(box, s, unit, digits) {
    place(box, (width) => {
      const names = Object.keys(s.ys || {});
      if (!s.x.length || !names.length) return null;
      const x = s.x.concat([s.x[s.x.length - 1] + s.step]);
      const data = [x];
      const series = [{ label: unit, value: (u, v) => (v === null ? '–' : num(v, digits) + '–' + num(v + s.step, digits)) }];
      names.forEach((k, i) => {
        const c = PALETTE[i % PALETTE.length];
        series.push({ label: k, stroke: c, fill: c + '33', width: 1.5, paths: uPlot.paths.stepped({ align: 1 }), points: { show: false }, value: (u, v) => (v === null ? '–' : int(v)) });
        data.push(s.ys[k].concat([0]));
      });
      return new uPlot({
        width, height: HEIGHT,
        scales: { x: { time: false }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.08 : 1] } },
        axes: [{ label: unit, incrs: digits ? undefined : INT_INCRS, values: (u, ticks) => ticks.map((t) => num(t, digits)) },
          { label: 'rows', size: 50, incrs: INT_INCRS, values: (u, ticks) => ticks.map((t) => int(t)) }],
        series,
      }, data, box);
    });
  }
  function renderPlots() {
    const sel = $('tp-run');
    const runIds = Object.keys(D.charts.runs || {});
    sel.append(el('option', { value: '', text: 'all runs' }));
    for (const id of runIds.slice().reverse()) sel.append(el('option', { value: id, text: 'run ' + id }));
    sel.hidden = !runIds.length;
    sel.addEventListener('change', () => throughputPlot($('plot-throughput'), sel.value ? D.charts.runs[sel.value] : D.charts.throughput));
    throughputPlot($('plot-throughput'), D.charts.throughput);
    histPlot($('plot-latency'), D.charts.latency, 'seconds', 2);
    histPlot($('plot-completion'), D.charts.completion_tokens, 'tokens', 0);
    histPlot($('plot-prompt'), D.charts.prompt_tokens, 'tokens', 0);
    let pending = 0;
    window.addEventListener('resize', () => {
      clearTimeout(pending);
      pending = setTimeout(() => { for (const [u, box] of plots) u.setSize({ width: Math.max(box.clientWidth, 280), height: HEIGHT }); }, 150);
    });
  }

  // --- errors ------------------------------------------------------------------------------
  function renderErrors() {
    const box = $('errors-table');
    const groups = D.errors;
    const total = groups.reduce((a, g) => a + g.count, 0);
    $('errors-count').textContent = total ? '(' + plural(total, 'item') + ' failed or invalid now, ' + plural(groups.length, 'kind') + ')' : '';
    if (!groups.length) { box.append(el('div', { class: 'empty', text: 'No failed or invalid items.' })); return; }
    const rows = groups.map((g, i) => [
      int(g.count),
      el('span', { class: 'badge b-' + g.status, text: g.status }),
      el('div', null, el('div', { class: 'kind mono', text: g.kind }),
        el('ul', { class: 'examples' }, g.examples.map((x) => el('li', null,
          el('span', { class: 'mono', text: x.image_path }), ' · ', x.prompt_name, ': ', x.error || '(no message)')))),
      Object.entries(g.prompts).map(([p, n]) => el('div', null, el('span', { class: 'badge b-prompt', text: p }), ' ', int(n))),
      el('button', { type: 'button', onclick: () => { setFilters({ error: String(i) }); $('gallery').scrollIntoView(); }, text: 'show' }),
    ]);
    box.append(table(['items', 'status', 'kind and examples', 'prompts', ''], rows, [1, 0, 0, 0, 0]));
  }

  // --- gallery -----------------------------------------------------------------------------
  const G = D.gallery;
  const C = Object.fromEntries(G.columns.map((c, i) => [c, i]));
  const ROWS = G.rows;
  const SCHEMA_PROMPTS = new Set(D.prompts.filter((p) => p.schema).map((p) => p.name));
  let hay = null; // lowercased search text per row, made on the first search
  const state = { q: '', status: '', prompt: '', flag: '', error: '', page: 0, size: 60 };
  let matches = ROWS.map((_, i) => i);

  function haystack() {
    if (hay === null) {
      hay = ROWS.map((r) => [r[C.image_path], r[C.prompt_name], r[C.caption], r[C.error], r[C.finish_reason],
        r[C.fields] ? JSON.stringify(r[C.fields]) : '', r[C.flags].join(' ')].join('\n').toLowerCase());
    }
    return hay;
  }
  function filter() {
    const words = state.q.toLowerCase().split(/\s+/).filter(Boolean);
    const h = words.length ? haystack() : null;
    const err = state.error === '' ? null : Number(state.error);
    const out = [];
    for (let i = 0; i < ROWS.length; i++) {
      const r = ROWS[i];
      if (state.status && r[C.status] !== state.status) continue;
      if (state.prompt && r[C.prompt_name] !== state.prompt) continue;
      if (state.flag === '*any') { if (!r[C.flags].length) continue; }
      else if (state.flag === '*none') { if (r[C.flags].length) continue; }
      else if (state.flag && !r[C.flags].includes(state.flag)) continue;
      if (err !== null && r[C.error_group] !== err) continue;
      if (h && !words.every((w) => h[i].includes(w))) continue;
      out.push(i);
    }
    matches = out;
  }
  function thumb(r) {
    const t = r[C.thumb];
    if (typeof t === 'number' && t >= 0 && t < THUMBS.length) {
      const img = el('img', { alt: r[C.image_path], decoding: 'async' });
      img.src = 'data:image/jpeg;base64,' + THUMBS[t];
      return el('div', { class: 'thumb' }, img);
    }
    return el('div', { class: 'thumb none', title: 'no thumbnail: ' + t, text: 'no image\n(' + t + ')' });
  }
  function item(i) {
    const r = ROWS[i];
    const st = r[C.status];
    const body = el('div', { class: 'body' });
    body.append(el('div', { class: 'path mono', title: r[C.image_path], text: r[C.image_path] }));
    body.append(el('div', { class: 'tags' },
      el('span', { class: 'badge b-prompt', text: r[C.prompt_name] }),
      el('span', { class: 'badge b-' + (COLORS[st] ? st : 'failed'), text: st }),
      r[C.flags].map((f) => el('span', { class: 'badge b-flag', text: f }))));
    const cap = r[C.caption];
    const fields = r[C.fields];
    if (cap !== null && cap !== undefined && cap !== '') {
      // a schema'd prompt's answer is the JSON its typed fields came from: folded away
      const raw = SCHEMA_PROMPTS.has(r[C.prompt_name]) && fields && st === 'ok';
      const p = el('p', { class: raw ? 'caption mono' : 'caption clamp', text: cap, hidden: raw });
      body.append(p);
      if (raw) {
        const t = el('button', { class: 'link', type: 'button', text: 'raw answer' });
        t.addEventListener('click', () => { p.hidden = !p.hidden; t.textContent = p.hidden ? 'raw answer' : 'hide raw answer'; });
        body.append(el('div', null, t));
      } else if (cap.length > 280 || cap.split('\n').length > 5) {
        const more = el('button', { class: 'link', type: 'button', text: 'more' });
        more.addEventListener('click', () => { const open = p.classList.toggle('clamp'); more.textContent = open ? 'more' : 'less'; });
        body.append(el('div', null, more));
      }
    } else if (st === 'ok') {
      body.append(el('p', { class: 'caption muted', text: '(empty answer)' }));
    }
    if (r[C.error]) body.append(el('p', { class: 'error', text: r[C.error] }));
    if (fields) {
      body.append(el('dl', { class: 'fields' }, Object.entries(fields).map(([k, v]) => [el('dt', { text: k }), el('dd', { text: show(v) })])));
    }
    const meta = [];
    if (r[C.latency_s] !== null) meta.push(secs(r[C.latency_s]));
    if (r[C.prompt_tokens] !== null || r[C.completion_tokens] !== null) meta.push(int(r[C.prompt_tokens]) + ' + ' + int(r[C.completion_tokens]) + ' tokens');
    if (r[C.finish_reason]) meta.push(r[C.finish_reason]);
    if (r[C.attempts] > 1) meta.push(r[C.attempts] + ' attempts');
    if (r[C.width]) meta.push(r[C.width] + '×' + r[C.height]);
    body.append(el('div', { class: 'meta', text: meta.join(' · ') }));
    return el('article', { class: 'item st-' + st, 'data-row': i }, thumb(r), body);
  }
  function pager(box) {
    clear(box);
    const pages = Math.max(1, Math.ceil(matches.length / state.size));
    const go = (p) => () => { state.page = Math.min(pages - 1, Math.max(0, p)); renderGrid(); };
    const first = state.page * state.size;
    box.append(
      el('span', { text: matches.length ? int(first + 1) + '–' + int(Math.min(matches.length, first + state.size)) + ' of ' + int(matches.length) : '' }),
      el('button', { type: 'button', onclick: go(0), disabled: state.page === 0, title: 'first page', text: '«' }),
      el('button', { type: 'button', onclick: go(state.page - 1), disabled: state.page === 0, title: 'previous page', 'aria-label': 'previous page', text: '‹ prev' }),
      el('span', { class: 'at', text: 'page ' + int(state.page + 1) + ' of ' + int(pages) }),
      el('button', { type: 'button', onclick: go(state.page + 1), disabled: state.page >= pages - 1, title: 'next page', 'aria-label': 'next page', text: 'next ›' }),
      el('button', { type: 'button', onclick: go(pages - 1), disabled: state.page >= pages - 1, title: 'last page', text: '»' }),
    );
  }
  function renderGrid() {
    const grid = $('grid');
    const pages = Math.max(1, Math.ceil(matches.length / state.size));
    if (state.page >= pages) state.page = pages - 1;
    const frag = document.createDocumentFragment();
    const first = state.page * state.size;
    for (const i of matches.slice(first, first + state.size)) frag.append(item(i));
    if (!matches.length) frag.append(el('div', { class: 'nothing', text: ROWS.length ? 'No row matches.' : 'The dataset has no rows yet.' }));
    clear(grid);
    grid.append(frag);
    $('gallery-count').textContent = '(' + (matches.length === ROWS.length ? plural(ROWS.length, 'row') : int(matches.length) + ' of ' + plural(ROWS.length, 'row')) + ')';
    pager($('pager-top'));
    pager($('pager-bottom'));
    for (const b of document.querySelectorAll('#flag-chips button')) b.classList.toggle('on', b.dataset.flag === state.flag);
  }
  function update() { filter(); state.page = 0; renderGrid(); }
  function setFilters(f) {
    Object.assign(state, f);
    $('q').value = state.q; $('f-status').value = state.status; $('f-prompt').value = state.prompt;
    $('f-flag').value = state.flag; $('f-error').value = state.error;
    update();
  }
  function options(sel, first, values) {
    sel.append(el('option', { value: '', text: first }));
    for (const [value, text] of values) sel.append(el('option', { value, text }));
  }
  function count(col) {
    const m = new Map();
    for (const r of ROWS) m.set(r[col], (m.get(r[col]) || 0) + 1);
    return m;
  }
  function renderGallery() {
    const statuses = count(C.status);
    options($('f-status'), 'any status', [...statuses].map(([s, n]) => [s, s + ' (' + int(n) + ')']));
    const prompts = count(C.prompt_name);
    options($('f-prompt'), 'any prompt', [...prompts].map(([p, n]) => [p, p + ' (' + int(n) + ')']));
    const flagged = ROWS.reduce((a, r) => a + (r[C.flags].length ? 1 : 0), 0);
    const fc = D.flags.counts;
    options($('f-flag'), 'any quality', [['*any', 'any flag (' + int(flagged) + ')'], ['*none', 'no flag (' + int(ROWS.length - flagged) + ')'],
      ...D.flags.known.map((f) => [f, f + ' (' + int(fc[f] || 0) + ')'])]);
    options($('f-error'), 'any error kind', D.errors.map((g, i) => [String(i), g.status + ': ' + (g.kind.length > 60 ? g.kind.slice(0, 60) + '…' : g.kind) + ' (' + int(g.count) + ')']));
    $('f-error').hidden = !D.errors.length;
    for (const n of [30, 60, 120, 240]) $('f-size').append(el('option', { value: String(n), text: n + ' per page' }));
    $('f-size').value = String(state.size);
    const chips = $('flag-chips');
    for (const f of D.flags.known) {
      if (!fc[f]) continue;
      chips.append(el('button', { type: 'button', 'data-flag': f, title: 'show the rows flagged ' + f,
        onclick: () => setFilters({ flag: state.flag === f ? '' : f }), text: f + ' ' + int(fc[f]) }));
    }
    let pending = 0;
    $('q').addEventListener('input', () => { clearTimeout(pending); pending = setTimeout(() => { state.q = $('q').value; update(); }, 120); });
    $('q').addEventListener('keydown', (e) => { if (e.key === 'Enter') { clearTimeout(pending); state.q = $('q').value; update(); } });
    $('f-status').addEventListener('change', (e) => { state.status = e.target.value; update(); });
    $('f-prompt').addEventListener('change', (e) => { state.prompt = e.target.value; update(); });
    $('f-flag').addEventListener('change', (e) => { state.flag = e.target.value; update(); });
    $('f-error').addEventListener('change', (e) => { state.error = e.target.value; update(); });
    $('f-size').addEventListener('change', (e) => { state.size = Number(e.target.value); state.page = 0; renderGrid(); });
    $('f-clear').addEventListener('click', () => setFilters({ q: '', status: '', prompt: '', flag: '', error: '' }));
    renderGrid();
  }

  const T = (window.__reportTimes = { start: T0, parsed: T1 });
  renderSummary();
  renderGallery();
  T.gallery = performance.now();
  renderRuns(false);
  renderErrors();
  renderPlots();
  T.all = performance.now();
  document.body.dataset.ready = 'all';
  // the first frame with everything drawn (benchmarks read it: bench/report.py)
  requestAnimationFrame(() => setTimeout(() => { T.painted = performance.now(); document.body.dataset.painted = '1'; }, 0));
})();
