"""The HTML, CSS and JavaScript of the inspect report's page (stage: insight); filled by ``report.write_report``.

Plain HTML and a small script with no library: it draws the map on a canvas and shows a row's thumbnail and path
on hover. It records any script error in ``#js-errors`` and marks ``<body data-ready="1">`` when it has run,
which the browser test checks.
"""

__all__ = ["PAGE", "STYLE", "SCRIPT"]

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1180px; padding: 0 1em; color: #222; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin: 1.6em 0 0.3em; }
h3 { font-size: 0.95em; margin: 0.2em 0; } .count { color: #fff; background: #555; border-radius: 9px;
  padding: 0 8px; font-size: 0.8em; } .about, .cache { color: #555; margin: 0.2em 0 0.6em; }
ul.summary li { margin: 0.15em 0; } .gallery { display: flex; flex-wrap: wrap; gap: 10px; }
.tile { margin: 0; width: 132px; border: 1px solid #ddd; border-radius: 4px; padding: 4px; background: #fafafa; }
.tile img, .missing { width: 96px; height: 96px; object-fit: contain; image-rendering: pixelated; display: block;
  margin: 0 auto; background: #eee; } .missing { line-height: 96px; text-align: center; color: #a00;
  font-size: 12px; border: 1px dashed #a00; } figcaption { font-size: 11px; word-break: break-all; }
.path { display: block; color: #777; } .pair, .cluster { display: flex; gap: 4px; border: 1px solid #ccc;
  padding: 4px; border-radius: 4px; flex-wrap: wrap; max-width: 600px; } .cluster h3 { width: 100%; }
.leak { border-color: #333; } .issue { border-color: #d33; } .outlier { border-color: #d80; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ccc; padding: 2px 8px; }
img.plot { max-width: 100%; } #map-wrap { position: relative; display: inline-block; }
#map { border: 1px solid #ccc; } #tip { position: absolute; display: none; pointer-events: none; background: #fff;
  border: 1px solid #888; padding: 4px; font-size: 11px; max-width: 260px; word-break: break-all;
  box-shadow: 2px 2px 6px rgba(0,0,0,.2); } #tip img { width: 72px; height: 72px; image-rendering: pixelated;
  display: block; } #js-errors { color: #a00; } .empty { color: #777; font-style: italic; }
"""

SCRIPT = r"""
(function () {
  var D = window.MAPDATA;
  if (!D) { return; }
  var canvas = document.getElementById('map'), tip = document.getElementById('tip');
  var ctx = canvas.getContext('2d'), W = canvas.width, H = canvas.height, pad = 14;
  var colours = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f',
                 '#bcbd22', '#17becf', '#aec7e8', '#ffbb78', '#98df8a', '#ff9896', '#c5b0d5', '#c49c94',
                 '#f7b6d2', '#c7c7c7', '#dbdb8d', '#9edae5'];
  var n = D.x.length, minx = Infinity, maxx = -Infinity, miny = Infinity, maxy = -Infinity, i;
  for (i = 0; i < n; i++) {
    minx = Math.min(minx, D.x[i]); maxx = Math.max(maxx, D.x[i]);
    miny = Math.min(miny, D.y[i]); maxy = Math.max(maxy, D.y[i]);
  }
  var sx = (W - 2 * pad) / ((maxx - minx) || 1), sy = (H - 2 * pad) / ((maxy - miny) || 1);
  var px = new Float32Array(n), py = new Float32Array(n), r = n > 5000 ? 2 : 3;
  for (i = 0; i < n; i++) { px[i] = pad + (D.x[i] - minx) * sx; py[i] = H - pad - (D.y[i] - miny) * sy; }
  function mark(i) {
    var x = px[i], y = py[i], s = D.s[i];
    ctx.fillStyle = D.c[i] < 0 ? '#999' : colours[D.c[i] % colours.length];
    ctx.beginPath();
    if (s === 'val') { ctx.rect(x - r, y - r, 2 * r, 2 * r); }
    else if (s === 'test') { ctx.moveTo(x, y - r - 1); ctx.lineTo(x + r + 1, y + r); ctx.lineTo(x - r - 1, y + r); }
    else { ctx.arc(x, y, r, 0, 2 * Math.PI); }
    ctx.fill();
  }
  function ring(i, colour, radius) {
    ctx.strokeStyle = colour; ctx.lineWidth = 1.2; ctx.beginPath();
    ctx.arc(px[i], py[i], radius, 0, 2 * Math.PI); ctx.stroke();
  }
  ctx.globalAlpha = 0.75;
  for (i = 0; i < n; i++) { mark(i); }
  ctx.globalAlpha = 1;
  for (i = 0; i < n; i++) {
    if (D.f[i] & 1) { ring(i, '#d00', r + 3); }
    if (D.f[i] & 2) { ring(i, '#000', r + 5); }
  }
  function esc(t) { var d = document.createElement('div'); d.textContent = t; return d.innerHTML; }
  canvas.addEventListener('mousemove', function (ev) {
    var box = canvas.getBoundingClientRect();
    var mx = (ev.clientX - box.left) * W / box.width, my = (ev.clientY - box.top) * H / box.height;
    var best = -1, bd = 64, j, d;
    for (j = 0; j < n; j++) {
      d = (px[j] - mx) * (px[j] - mx) + (py[j] - my) * (py[j] - my);
      if (d < bd) { bd = d; best = j; }
    }
    if (best < 0) { tip.style.display = 'none'; return; }
    var flags = (D.f[best] & 1 ? ' · label issue' : '') + (D.f[best] & 2 ? ' · leak' : '');
    var label = D.c[best] < 0 ? 'unlabelled' : D.classes[D.c[best]];
    tip.innerHTML = (D.t[best] ? '<img src="' + D.t[best] + '">' : '') + '<b>' + esc(label) + '</b> ' +
      esc(D.s[best]) + esc(flags) + '<br>' + esc(D.p[best]);
    tip.style.left = Math.min(px[best] + 12, W - 200) + 'px';
    tip.style.top = (py[best] + 12) + 'px';
    tip.style.display = 'block';
  });
  canvas.addEventListener('mouseleave', function () { tip.style.display = 'none'; });
  document.getElementById('map').setAttribute('data-points', String(n));
})();
document.body.setAttribute('data-ready', '1');
"""

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>@@title@@</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>@@style@@</style>
<script>
window.JS_ERRORS = [];
window.onerror = function (msg, src, line) {
  window.JS_ERRORS.push(msg + ' (line ' + line + ')');
  var el = document.getElementById('js-errors');
  if (el) { el.textContent = window.JS_ERRORS.join('\\n'); }
};
</script></head>
<body>
<h1>@@title@@</h1>
<p class="cache">@@cache@@</p>
<pre id="js-errors"></pre>
<section><h2>Summary</h2><ul class="summary">@@summary@@</ul><p>Tables: @@csvs@@</p></section>
@@map@@
@@galleries@@
@@confusion@@
<script>window.MAPDATA = @@data@@;</script>
<script>@@script@@</script>
</body></html>
"""
