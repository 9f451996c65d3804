"""The dry-run gallery's style and script, inlined into ``preview/index.html`` (nothing loads from elsewhere).

The page holds every annotation as an element with ``data-label`` and ``data-score`` (the float32 score in
full, so that ``score >= Math.fround(t)`` is the label filter's own comparison), and a prompted model's boxes
``data-prompt`` (the prompt that scored them). The script:

- sets the threshold slider from ``#conf=0.6`` in the address (else the run's threshold) and hides every
  annotation below it, or of a label unticked in the table, and updates the per-label counts (the previewed
  items' live counts, and the whole run's from the 0.01-step counts the summary kept), and so the per-prompt
  counts of the Prompts table (a prompted model's: each row's own 0.01-step counts);
- writes what is visible into ``#state``'s ``data-conf``, ``data-visible`` and ``data-visible-labels`` (JSON),
  ``data-run`` and ``data-run-labels``, and per label and prompt ``data-visible-prompts`` and
  ``data-run-prompts`` (JSON ``{label: {prompt: count}}``, counts above zero of the labels ticked; the run's
  empty where unknown): what a browser test reads;
- keeps the ``avala-infer auto-label create ...`` and ``client.auto_label_jobs.create(...)`` lines in step;
- enlarges a picture when clicked (Escape or a click closes it); shows the tables' rows past 15 on demand.

It never turns data into markup: names are read from attributes and written with ``textContent``. Counts by
name live in objects without a prototype, so that a label called ``constructor`` counts like any other.
"""

from __future__ import annotations

import base64
import hashlib

STYLE = """
body{font:14px system-ui,sans-serif;margin:24px;background:#fafafa;color:#222}
h1{font-size:20px;margin:0 0 8px}h2{font-size:16px;margin:16px 0 0}table{border-collapse:collapse;margin:8px 0 16px}
td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:middle}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:14px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;min-width:0;overflow-wrap:anywhere}
.card.failed{border-color:#d33;color:#a00}.card.failed>div{white-space:pre-wrap;word-break:break-word}
figure{position:relative;margin:0;cursor:zoom-in;line-height:0}figure img{width:100%;height:auto}
figure svg{position:absolute;left:0;top:0;width:100%;height:100%;pointer-events:none}
.tag{display:inline-block;padding:1px 6px;margin:2px;border-radius:3px;font-size:12px;max-width:100%;
overflow-wrap:anywhere}.off{display:none}mark.off{display:inline;background:none!important;border:0!important}
mark.off sub{display:none}
.muted{color:#666;font-size:12px}.text{white-space:pre-wrap;font-size:13px;line-height:1.7}
mark{padding:1px 2px;border-radius:3px}mark sub{font-size:10px;margin-left:2px;color:#222}
.controls{position:sticky;top:0;z-index:2;background:#fafafa;padding:8px 0;border-bottom:1px solid #ddd;
margin-bottom:12px}.controls input[type=range]{width:320px;vertical-align:middle}
#conf-value{font:bold 16px monospace;margin:0 12px 0 6px}
pre.cmd{background:#222;color:#eee;padding:6px 10px;border-radius:4px;margin:4px 0;white-space:pre-wrap;
overflow-wrap:anywhere;font-size:12px;user-select:all}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px;vertical-align:middle}
svg.hist{width:120px;height:22px;vertical-align:middle}svg.hist rect{fill:#8ab}svg.hist line{stroke:#d22}
#zoom{position:fixed;inset:0;background:rgba(0,0,0,.85);display:none;align-items:center;justify-content:center;
z-index:5;cursor:zoom-out}#zoom.on{display:flex}#zoom figure{width:min(96vw,calc(92vh * var(--ar,1)));
cursor:zoom-out}
.layout{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}
"""

SCRIPT = r"""
(function () {
  'use strict';
  var doc = document, state = doc.getElementById('state');
  var slider = doc.getElementById('conf'), shown = doc.getElementById('conf-value');
  function list(selector) { return Array.prototype.slice.call(doc.querySelectorAll(selector)); }
  function dict() { return Object.create(null); }  // keyed by names: no inherited keys
  function steps(r) { return r.getAttribute('data-fine').split(' ').map(Number); }
  var anns = list('[data-score]');  // .a: an annotation; else its tag
  var scores = anns.map(function (a) { return parseFloat(a.getAttribute('data-score')); });
  var rows = list('tr.label-row'), promptRows = list('tr.prompt-row');
  var knownFrom = parseInt(state.getAttribute('data-known-from'), 10);
  var fine = dict();
  rows.forEach(function (r) { fine[r.getAttribute('data-label')] = steps(r); });
  var promptFine = promptRows.map(steps);
  var all = rows.map(function (r) { return r.getAttribute('data-label'); });
  var runLabels = JSON.parse(state.getAttribute('data-run-labels-setting') || 'null');
  function fromHash() {
    var m = /(?:^#|&)conf=([0-9]*\.?[0-9]+)/.exec(location.hash);
    if (m && !slider.disabled) slider.value = String(Math.min(1, Math.max(Number(slider.min), Number(m[1]))));
  }
  function shq(s) {
    return /^[A-Za-z0-9_.,:\/=@%+-]+$/.test(s) ? s : "'" + s.replace(/'/g, "'\\''") + "'";
  }
  function chosen() {
    var on = dict();
    rows.forEach(function (r) { on[r.getAttribute('data-label')] = r.querySelector('input').checked; });
    return on;
  }
  function commands(t, labels) {
    var project = state.getAttribute('data-project'), type = state.getAttribute('data-model-type');
    var aggregation = state.getAttribute('data-aggregation');
    var cli = 'avala-infer auto-label create ' + shq(project) + ' --model-type ' + shq(type) + ' --confidence ' + t;
    var py = 'client.auto_label_jobs.create(project_uid=' + JSON.stringify(project) + ', model_type=' +
      JSON.stringify(type) +
      ', confidence_threshold=' + t;
    if (labels) {
      cli += ' --labels ' + shq(labels.join(','));
      py += ', labels=[' + labels.map(function (l) { return JSON.stringify(l); }).join(', ') + ']';
    }
    if (aggregation) {
      cli += ' --aggregation ' + shq(aggregation);
      py += ', aggregation=' + JSON.stringify(aggregation);
    }
    doc.getElementById('cmd-cli').textContent = cli;
    doc.getElementById('cmd-py').textContent = py + ')';
  }
  function add(nested, label, prompt, n) {  // nested[label][prompt] += n
    var inner = nested[label] || (nested[label] = dict());
    inner[prompt] = (inner[prompt] || 0) + n;
  }
  function update() {
    var t = Number(slider.value), tf = Math.fround(t), step = Math.round(t * 100), on = chosen();
    var text = String(Number(t.toFixed(2)));
    shown.textContent = '\u2265 ' + text;
    var counts = dict(), prompts = dict(), total = 0;
    anns.forEach(function (a, i) {
      var label = a.getAttribute('data-label'), visible = scores[i] >= tf && on[label] !== false;
      a.classList.toggle('off', !visible);
      if (visible && a.classList.contains('a')) {
        counts[label] = (counts[label] || 0) + 1;
        total += 1;
        if (a.hasAttribute('data-prompt')) add(prompts, label, a.getAttribute('data-prompt'), 1);
      }
    });
    var run = dict(), runTotal = 0, known = step >= knownFrom;
    rows.forEach(function (r) {
      var label = r.getAttribute('data-label'), n = known ? fine[label][step] : null;
      r.querySelector('.n-run').textContent = n === null ? '?' : n;
      r.querySelector('.n-preview').textContent = counts[label] || 0;
      r.querySelector('svg.hist line').setAttribute('x1', t * 100);
      r.querySelector('svg.hist line').setAttribute('x2', t * 100);
      r.classList.toggle('muted', !on[label]);
      if (n && on[label]) { run[label] = n; runTotal += n; }
    });
    var runPrompts = dict();
    promptRows.forEach(function (r, k) {
      var label = r.getAttribute('data-label'), prompt = r.getAttribute('data-prompt');
      var n = known ? promptFine[k][step] : null, ticked = on[label] !== false;
      r.querySelector('.n-run').textContent = n === null ? '?' : n;
      r.querySelector('.n-preview').textContent = (prompts[label] && prompts[label][prompt]) || 0;
      r.classList.toggle('muted', !ticked);
      if (n && ticked) add(runPrompts, label, prompt, n);
    });
    var picked = all.filter(function (l) { return on[l]; });
    var labels = picked.length === all.length ? runLabels : picked;
    commands(text, labels);
    state.setAttribute('data-conf', text);
    state.setAttribute('data-visible', total);
    state.setAttribute('data-visible-labels', JSON.stringify(counts));
    state.setAttribute('data-run', known ? runTotal : '');
    state.setAttribute('data-run-labels', known ? JSON.stringify(run) : '');
    state.setAttribute('data-visible-prompts', JSON.stringify(prompts));
    state.setAttribute('data-run-prompts', known ? JSON.stringify(runPrompts) : '');
    doc.getElementById('n-visible').textContent = total;
    doc.getElementById('n-run').textContent = known ? runTotal : '?';
    try { history.replaceState(null, '', '#conf=' + text); } catch (e) { /* a file: page in a frame */ }
  }
  fromHash();
  slider.addEventListener('input', update);
  window.addEventListener('hashchange', function () { fromHash(); update(); });
  rows.forEach(function (r) { r.querySelector('input').addEventListener('change', update); });
  function tick(value) {
    return function () { rows.forEach(function (r) { r.querySelector('input').checked = value; }); update(); };
  }
  doc.getElementById('all-labels').addEventListener('click', tick(true));
  doc.getElementById('no-labels').addEventListener('click', tick(false));
  function unfolds(buttonId, bodyId) {  // a table's rows past 15, on demand
    var more = doc.getElementById(buttonId);
    if (more) more.addEventListener('click', function () {
      var body = doc.getElementById(bodyId);
      body.hidden = !body.hidden;
      more.textContent = body.hidden ? more.getAttribute('data-show') : 'show fewer';
    });
  }
  unfolds('more-labels', 'more-rows');
  unfolds('more-prompts', 'more-prompt-rows');
  var zoom = doc.getElementById('zoom');
  doc.querySelectorAll('.card figure').forEach(function (f) {
    f.addEventListener('click', function () {
      zoom.textContent = '';
      var copy = f.cloneNode(true), img = f.querySelector('img');
      if (img && img.naturalHeight) zoom.style.setProperty('--ar', img.naturalWidth / img.naturalHeight);
      zoom.appendChild(copy);
      zoom.classList.add('on');
    });
  });
  function close() { zoom.classList.remove('on'); zoom.textContent = ''; }
  zoom.addEventListener('click', close);
  doc.addEventListener('keydown', function (e) { if (e.key === 'Escape') close(); });
  update();
})();
"""

# Only this script may run, and nothing may load from anywhere but the page's own folder.
SCRIPT_HASH = base64.b64encode(hashlib.sha256(SCRIPT.encode("utf-8")).digest()).decode("ascii")
CSP = (
    "default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; "
    f"script-src 'sha256-{SCRIPT_HASH}'; base-uri 'none'; form-action 'none'"
)
