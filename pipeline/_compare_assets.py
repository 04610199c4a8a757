"""Inline CSS, HTML body and JavaScript of the compare page (see :mod:`campipe.compare_page`).

Kept apart from the Python that writes the page so each stays readable. No external resource: system fonts, no
images besides the ones the page shows, no network request (the page also sets a Content-Security-Policy that forbids
them). The UI is dark neutral grey so it does not tint the viewer's judgement of colour.

References: MDN clip-path, Pointer Events (setPointerCapture), KeyboardEvent.code.
"""

CSS = r"""
:root{--bg:#161616;--panel:#202020;--panel2:#2a2a2a;--line:#333;--text:#d6d6d6;--dim:#8c8c8c;--hi:#f0f0f0;
--ovl:0.6;font-synthesis:none}
*{box-sizing:border-box}
html,body{margin:0;height:100%;background:var(--bg);color:var(--text);
font:13px/1.35 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
body{display:flex;flex-direction:column;overflow:hidden}
header{display:flex;align-items:center;gap:10px;padding:6px 10px;background:var(--panel);
border-bottom:1px solid var(--line);flex-wrap:wrap;min-height:40px}
header h1{font-size:14px;font-weight:600;margin:0;color:var(--hi);white-space:nowrap}
header .sub{color:var(--dim);white-space:nowrap;overflow:hidden;text-overflow:ellipsis;max-width:32vw}
header .sp{flex:1}
.seg{display:inline-flex;border:1px solid #3a3a3a;border-radius:5px;overflow:hidden}
.seg button,button.b{background:var(--panel2);color:var(--text);border:0;padding:4px 10px;font:inherit;cursor:pointer}
.seg button+button{border-left:1px solid #3a3a3a}
.seg button.on{background:#4a4a4a;color:#fff}
button.b{border:1px solid #3a3a3a;border-radius:5px}
button.b.on{background:#4a4a4a;color:#fff}
button:hover{background:#383838}
label.sel{color:var(--dim);display:inline-flex;align-items:center;gap:5px}
select{background:var(--panel2);color:var(--text);border:1px solid #3a3a3a;border-radius:5px;padding:3px 6px;font:inherit}
#main{flex:1;display:flex;min-height:0}
#stagewrap{flex:1;position:relative;display:flex;min-width:0;overflow:hidden}
#viewport{flex:1;position:relative;overflow:hidden;display:flex;align-items:center;justify-content:center;min-width:0}
#viewport.zoom{overflow:auto;align-items:flex-start;justify-content:flex-start}
#viewport.zoom #canvas{margin:auto}
#canvas{position:relative;flex:none;user-select:none;-webkit-user-select:none;touch-action:none;cursor:ew-resize;
background:#000;box-shadow:0 0 0 1px #000,0 6px 30px rgba(0,0,0,.5)}
#viewport.zoom #canvas{cursor:grab}
#viewport.zoom.panning #canvas{cursor:grabbing}
#canvas img,.frame img{position:absolute;left:0;top:0;width:100%;height:100%;display:block;object-fit:contain;-webkit-user-drag:none;
pointer-events:none}
#viewport.zoom #canvas img{image-rendering:pixelated}
#after{position:absolute;inset:0;clip-path:inset(0 0 0 50%)}
#pair{position:absolute;inset:0;isolation:isolate}
body.diff #after{clip-path:none!important;mix-blend-mode:difference}
body.diff #pair{filter:brightness(var(--gain,4))}
body.diff #handle{display:none}
.ovl img{opacity:var(--ovl)}
.ovl img.off{display:none!important}
#handle{position:absolute;top:0;bottom:0;left:50%;width:0;border-left:1px solid rgba(255,255,255,.9);
box-shadow:0 0 0 .5px rgba(0,0,0,.5);cursor:ew-resize}
#handle .grip{position:absolute;top:50%;left:-15px;width:30px;height:30px;margin-top:-15px;border-radius:50%;
background:rgba(18,18,18,.78);border:1px solid rgba(255,255,255,.9);color:#eee;font-size:11px;display:flex;
align-items:center;justify-content:center;letter-spacing:-1px}
body.before #handle,body.before #after{visibility:hidden}
.tag{position:absolute;top:8px;z-index:2;padding:2px 8px;background:rgba(0,0,0,.6);color:#eee;border-radius:4px;font-size:12px;
pointer-events:none;white-space:nowrap;max-width:45%;overflow:hidden;text-overflow:ellipsis}
.tag.l{left:8px}.tag.r{right:8px}
body.before .tag.r{display:none}
#zoomtag{position:absolute;bottom:8px;left:8px;z-index:2;padding:2px 8px;background:rgba(0,0,0,.6);border-radius:4px;
font-size:12px;color:#ccc;pointer-events:none}
aside{width:230px;flex:none;background:var(--panel);border-left:1px solid var(--line);padding:10px 12px;overflow:auto}
aside h2{font-size:11px;text-transform:uppercase;letter-spacing:.08em;color:var(--dim);margin:4px 0 8px;font-weight:600}
aside .row{display:flex;align-items:center;gap:8px;padding:3px 0;cursor:pointer}
aside .row input{margin:0;accent-color:#9a9a9a}
aside .chip{width:12px;height:12px;border-radius:3px;flex:none;border:1px solid rgba(255,255,255,.25)}
aside .key{margin-left:auto;color:var(--dim);font-size:11px;border:1px solid #3c3c3c;border-radius:3px;padding:0 4px}
aside .note{color:var(--dim);font-size:12px}
aside input[type=range]{width:100%;accent-color:#9a9a9a}
aside canvas{width:206px;height:90px;display:block;border-radius:4px;border:1px solid #2e2e2e}
#grid,#sheet{display:none;flex:1;overflow:auto;padding:12px;gap:12px;align-content:start;
grid-template-columns:repeat(auto-fill,minmax(300px,1fr));grid-auto-rows:max-content}
body.mode-grid #grid,body.mode-sheet #sheet{display:grid}
body.mode-grid #stagewrap,body.mode-sheet #stagewrap,body.mode-sheet aside{display:none}
figure{margin:0;background:var(--panel);border:1px solid var(--line);border-radius:6px;cursor:pointer}
figure:hover{border-color:#555}
figure.is-r{outline:2px solid #bbb}
figure.is-l{outline:2px dashed #777}
.frame{position:relative;background:#000;overflow:hidden;border-radius:5px 5px 0 0}
figcaption{padding:6px 8px;display:flex;gap:8px;align-items:baseline;flex-wrap:wrap}
figcaption b{color:var(--hi);font-weight:600}
figcaption span{color:var(--dim);font-size:12px}
.pair{display:flex;gap:2px;background:#000}
.pair img{width:50%;height:auto;object-fit:contain;display:block}
#stats{flex:none;max-height:34vh;overflow:auto;border-top:1px solid var(--line);background:var(--panel)}
body.nostats #stats{display:none}
table{border-collapse:collapse;width:max-content;font-variant-numeric:tabular-nums}
th,td{padding:4px 10px;text-align:right;border-bottom:1px solid #2c2c2c;white-space:nowrap}
th{color:var(--dim);font-weight:500;position:sticky;top:0;background:var(--panel)}
thead tr+tr th{top:24px}
th.grp{text-align:center;border-bottom:1px solid #3a3a3a}
td:first-child,th:first-child{text-align:left}
tbody tr{cursor:pointer}
tbody tr:hover{background:#262626}
tbody tr.is-r{background:#2b2b2b}
tr.is-r td:first-child{box-shadow:inset 3px 0 0 #ddd}
tr.is-l td:first-child{box-shadow:inset 3px 0 0 #777}
td.na{color:#666}
#help{display:none;position:fixed;inset:0;background:rgba(0,0,0,.6);align-items:center;justify-content:center;z-index:9}
body.help #help{display:flex}
#help .box{background:var(--panel);border:1px solid #444;border-radius:8px;padding:16px 22px;max-width:560px}
#help table{min-width:0}#help td{text-align:left;border:0;padding:2px 10px 2px 0}
kbd{font:11px ui-monospace,monospace;border:1px solid #555;border-bottom-width:2px;border-radius:3px;padding:0 4px;
color:#eee;background:#2b2b2b}
"""

BODY = r"""
<header>
 <h1 id="title"></h1><span class="sub" id="subtitle"></span>
 <span class="sp"></span>
 <span class="seg" id="modes"><button data-mode="split" title="split view (G)">Split</button><button data-mode="grid"
 title="grid (G)">Grid</button><button data-mode="sheet" title="contact sheet (C)">Sheet</button></span>
 <label class="sel">left <select id="selL" title="left image (Shift+1..9)"></select></label>
 <button class="b" id="swap" title="swap left and right (X)">⇄</button>
 <label class="sel">right <select id="selR" title="right image (1..9, [ ])"></select></label>
 <button class="b" id="diffbtn" title="difference |right - left| x4 (D)">Diff</button>
 <span class="seg"><button id="fit" class="on" title="fit to window (Z)">Fit</button><button id="one"
 title="1:1 pixels (Z, double-click)">1:1</button></span>
 <button class="b" id="helpbtn" title="keyboard shortcuts (?)">?</button>
</header>
<div id="main">
 <div id="stagewrap"><div id="viewport"><div id="canvas">
  <div id="pair"><img id="imgL" alt=""><div id="after"><img id="imgR" alt=""></div></div>
  <div class="ovl" id="ovl"></div>
  <div id="handle"><div class="grip">◂▸</div></div>
 </div></div>
 <div class="tag l" id="tagL"></div><div class="tag r" id="tagR"></div><div id="zoomtag"></div>
 </div>
 <div id="grid"></div>
 <div id="sheet"></div>
 <aside id="side"></aside>
</div>
<section id="stats"></section>
<div id="help"><div class="box"><h2 style="margin-top:0">Keyboard</h2><table>
<tr><td><kbd>←</kbd> <kbd>→</kbd></td><td>move the split (with <kbd>Shift</kbd>: fine); drag or click the image</td></tr>
<tr><td><kbd>Space</kbd> (hold)</td><td>show the left image whole</td></tr>
<tr><td><kbd>1</kbd>…<kbd>9</kbd></td><td>right image; <kbd>Shift</kbd>+digit: left image</td></tr>
<tr><td><kbd>[</kbd> <kbd>]</kbd></td><td>previous / next right image</td></tr>
<tr><td><kbd>,</kbd> <kbd>.</kbd></td><td>step both images (consecutive stages)</td></tr>
<tr><td><kbd>X</kbd></td><td>swap left and right</td></tr>
<tr><td><kbd>D</kbd></td><td>difference view |right − left| ×4 (what a stage or style changed)</td></tr>
<tr><td><kbd>Z</kbd>, double-click</td><td>1:1 pixels / fit; at 1:1 drag to pan, <kbd>Shift</kbd>+drag moves the split</td></tr>
<tr><td><kbd>G</kbd> <kbd>C</kbd></td><td>grid / contact sheet (again: back to split)</td></tr>
<tr><td><kbd>S</kbd> <kbd>P</kbd> <kbd>H</kbd> <kbd>K</kbd> <kbd>T</kbd> <kbd>L</kbd></td>
<td>mask overlays: sky, person, hair, skin, teeth, glasses</td></tr>
<tr><td><kbd>M</kbd></td><td>all overlays on / off</td></tr>
<tr><td><kbd>O</kbd> / <kbd>Shift</kbd>+<kbd>O</kbd></td><td>overlay opacity up / down</td></tr>
<tr><td><kbd>↑</kbd> <kbd>↓</kbd></td><td>previous / next pair (batch compare)</td></tr>
<tr><td><kbd>I</kbd></td><td>numbers table on / off</td></tr>
<tr><td><kbd>F</kbd></td><td>full screen</td></tr>
<tr><td><kbd>?</kbd> <kbd>Esc</kbd></td><td>this help / close</td></tr>
</table></div></div>
"""

JS = r"""
(function(){
"use strict";
const D = JSON.parse(document.getElementById("campipe-data").textContent);
const $ = (id) => document.getElementById(id);
const body = document.body, vp = $("viewport"), cv = $("canvas"), after = $("after");
const S = {g:0, l:0, r:1, split:0.5, mode:"split", zoom:false, diff:false, active:new Set(), lastActive:null, opacity:0.6};
const clamp = (x,a,b) => Math.min(b, Math.max(a, x));
const grp = () => D.groups[S.g];
function h(tag, attrs, kids){
  const e = document.createElement(tag);
  for (const k in (attrs||{})) { if (k === "text") e.textContent = attrs[k]; else e.setAttribute(k, attrs[k]); }
  for (const c of (kids||[])) e.appendChild(c);
  return e;
}

function overlayLayer(container){
  container.textContent = "";
  for (const o of grp().overlays) {
    const im = h("img", {src:o.src, alt:"", "data-key":o.key});
    if (!S.active.has(o.key)) im.className = "off";
    container.appendChild(im);
  }
}
function refreshOverlays(){
  document.querySelectorAll(".ovl img").forEach(im => im.classList.toggle("off", !S.active.has(im.dataset.key)));
  document.querySelectorAll("aside input[data-key]").forEach(cb => { cb.checked = S.active.has(cb.dataset.key); });
  document.documentElement.style.setProperty("--ovl", S.opacity);
  const op = $("opacity"); if (op) op.value = Math.round(S.opacity*100);
}
function toggleMask(key){
  if (!grp().overlays.some(o => o.key === key)) return;
  if (S.active.has(key)) S.active.delete(key); else S.active.add(key);
  refreshOverlays(); saveHash();
}
function toggleAll(){
  if (S.active.size) { S.lastActive = new Set(S.active); S.active.clear(); }
  else S.active = S.lastActive && S.lastActive.size ? new Set(S.lastActive) : new Set(grp().overlays.map(o => o.key));
  refreshOverlays(); saveHash();
}

function buildSide(){
  const side = $("side"); side.textContent = "";
  const g = grp();
  side.appendChild(h("h2", {text:"Mask overlays"}));
  if (!g.overlays.length) {
    side.appendChild(h("div", {class:"note", text:"No masks for this image (no segmentation weights installed, " +
      "or nothing detected)."}));
  } else {
    for (const o of g.overlays) {
      const cb = h("input", {type:"checkbox", "data-key":o.key});
      cb.addEventListener("change", () => toggleMask(o.key));
      const row = h("label", {class:"row", "data-key":o.key},
        [cb, h("span", {class:"chip", style:"background:"+o.colour}), h("span", {text:o.label})]);
      if (o.hotkey) row.appendChild(h("span", {class:"key", text:o.hotkey.toUpperCase()}));
      side.appendChild(row);
    }
    const all = h("button", {class:"b", text:"all on / off  (M)", style:"margin:8px 0 12px;width:100%"});
    all.addEventListener("click", toggleAll);
    side.appendChild(all);
    side.appendChild(h("h2", {text:"Opacity"}));
    const r = h("input", {type:"range", min:"5", max:"100", id:"opacity"});
    r.addEventListener("input", () => { S.opacity = r.value/100; refreshOverlays(); });
    side.appendChild(r);
  }
  if (g.renders.some(r => r.hist)) {
    side.appendChild(h("h2", {text:"Histogram", style:"margin-top:16px"}));
    side.appendChild(h("canvas", {id:"hist", width:"412", height:"180", title:"RGB of the right image (filled), " +
      "luma of the right (solid) and left (dashed) image"}));
    side.appendChild(h("div", {class:"note", id:"histlegend"}));
  }
  if (g.note) { side.appendChild(h("h2", {text:"Notes", style:"margin-top:16px"}));
    side.appendChild(h("div", {class:"note", text:g.note})); }
  refreshOverlays();
}

function drawHist(){
  const c = $("hist"); if (!c) return;
  const g = grp(), L = g.renders[S.l].hist, R = g.renders[S.r].hist;
  const ctx = c.getContext("2d"), W = c.width, H = c.height;
  ctx.globalCompositeOperation = "source-over";
  ctx.fillStyle = "#141414"; ctx.fillRect(0, 0, W, H);
  ctx.strokeStyle = "#2c2c2c"; ctx.lineWidth = 1;
  for (let i = 1; i < 4; i++) { const x = Math.round(W * i / 4) + 0.5;
    ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, H); ctx.stroke(); }
  const trace = (arr) => { const n = arr.length; ctx.beginPath(); ctx.moveTo(0, H);
    arr.forEach((v, i) => { const y = H - v * (H - 6); ctx.lineTo(W * i / n, y); ctx.lineTo(W * (i + 1) / n, y); });
    ctx.lineTo(W, H); };
  if (R) {
    ctx.globalCompositeOperation = "lighter";
    for (const [k, col] of [["r", "rgba(230,60,60,0.6)"], ["g", "rgba(60,200,80,0.6)"], ["b", "rgba(70,110,255,0.6)"]]) {
      trace(R[k]); ctx.closePath(); ctx.fillStyle = col; ctx.fill(); }
    ctx.globalCompositeOperation = "source-over";
    trace(R.y); ctx.strokeStyle = "rgba(235,235,235,0.95)"; ctx.lineWidth = 2; ctx.setLineDash([]); ctx.stroke();
  }
  if (L && S.l !== S.r) { trace(L.y); ctx.strokeStyle = "rgba(200,200,200,0.8)"; ctx.lineWidth = 2;
    ctx.setLineDash([6, 5]); ctx.stroke(); ctx.setLineDash([]); }
  $("histlegend").textContent = "filled: RGB of " + g.renders[S.r].label + "; solid: its luma; dashed: luma of " +
    g.renders[S.l].label;
}

function buildSelects(){
  for (const [id, key] of [["selL","l"],["selR","r"]]) {
    const s = $(id); s.textContent = "";
    grp().renders.forEach((r, i) => s.appendChild(h("option", {value:String(i),
      text:(i+1) + "  " + r.label})));
    s.value = String(S[key]);
  }
}

function layout(){
  const r = grp().renders[S.l];
  const W = r.width || 1, H = r.height || 1;
  let w, hgt;
  if (S.zoom) { const d = window.devicePixelRatio || 1; w = W / d; hgt = H / d; }
  else { const aw = vp.clientWidth - 24, ah = vp.clientHeight - 24;
    const f = Math.max(0.01, Math.min(aw / W, ah / H)); w = W * f; hgt = H * f; }
  cv.style.width = Math.round(w) + "px"; cv.style.height = Math.round(hgt) + "px";
  vp.classList.toggle("zoom", S.zoom);
  $("fit").classList.toggle("on", !S.zoom); $("one").classList.toggle("on", S.zoom);
  const pct = Math.round(100 * w * (window.devicePixelRatio || 1) / W);
  $("zoomtag").textContent = (S.zoom ? "1:1" : "fit") + " · " + pct + " % · " + W + "×" + H;
  placeTags();
}

// labels sit at the corners of the visible part of the image (image corners when fitted, viewport corners at 1:1)
function placeTags(){
  const wr = $("stagewrap").getBoundingClientRect(), cr = cv.getBoundingClientRect();
  const vr = {left:vp.getBoundingClientRect().left, top:vp.getBoundingClientRect().top,
              right:vp.getBoundingClientRect().left + vp.clientWidth, bottom:vp.getBoundingClientRect().top + vp.clientHeight};
  const l = Math.max(cr.left, vr.left) - wr.left, r = wr.right - Math.min(cr.right, vr.right);
  const t = Math.max(cr.top, vr.top) - wr.top, b = wr.bottom - Math.min(cr.bottom, vr.bottom);
  $("tagL").style.left = (l + 8) + "px"; $("tagL").style.top = (t + 8) + "px";
  $("tagR").style.right = (r + 8) + "px"; $("tagR").style.top = (t + 8) + "px";
  $("zoomtag").style.left = (l + 8) + "px"; $("zoomtag").style.bottom = (b + 8) + "px";
}
vp.addEventListener("scroll", placeTags);

function setSplit(x){
  S.split = clamp(x, 0, 1);
  const p = (S.split * 100).toFixed(2) + "%";
  after.style.clipPath = "inset(0 0 0 " + p + ")";
  $("handle").style.left = p;
}

function show(){
  const g = grp(), n = g.renders.length;
  S.l = clamp(S.l, 0, n-1); S.r = clamp(S.r, 0, n-1);
  const L = g.renders[S.l], R = g.renders[S.r];
  $("imgL").src = L.src; $("imgR").src = R.src;
  $("tagL").textContent = "◂ " + L.label; $("tagR").textContent = R.label + " ▸";
  if (S.diff) toggleDiff(true);
  $("selL").value = String(S.l); $("selR").value = String(S.r);
  document.title = D.title + " — " + L.label + " | " + R.label;
  layout(); setSplit(S.split); buildStats(); markSelection(); drawHist();
  if (S.mode === "grid") buildGrid();
  saveHash();
}

function toggleDiff(on){
  S.diff = on === undefined ? !S.diff : !!on;
  body.classList.toggle("diff", S.diff); $("diffbtn").classList.toggle("on", S.diff);
  $("tagR").textContent = S.diff ? "|" + grp().renders[S.r].label + " − " + grp().renders[S.l].label + "| ×4"
                                 : grp().renders[S.r].label + " ▸";
  $("tagL").style.visibility = S.diff ? "hidden" : "";
  saveHash();
}

function setMode(m){
  if (m === "sheet" && D.groups.length < 2) m = "grid";
  S.mode = m;
  body.classList.remove("mode-split", "mode-grid", "mode-sheet");
  body.classList.add("mode-" + m);
  document.querySelectorAll("#modes button").forEach(b => b.classList.toggle("on", b.dataset.mode === m));
  if (m === "grid") buildGrid();
  if (m === "sheet") buildSheet();
  if (m === "split") layout();
  buildStats(); markSelection();
  saveHash();
}

function buildGrid(){
  const grid = $("grid"); grid.textContent = "";
  grp().renders.forEach((r, i) => {
    const frame = h("div", {class:"frame", style:"aspect-ratio:" + r.width + "/" + r.height},
      [h("img", {src:r.src, alt:r.label})]);
    const ovl = h("div", {class:"ovl"}); overlayLayer(ovl); frame.appendChild(ovl);
    const cap = h("figcaption", {}, [h("b", {text:(i+1) + " · " + r.label})]);
    for (const c of D.columns.slice(0, 3)) if (r.values[c.key] !== undefined)
      cap.appendChild(h("span", {text:c.label + " " + r.values[c.key]}));
    const fig = h("figure", {"data-i":String(i)}, [frame, cap]);
    fig.addEventListener("click", (e) => { if (e.shiftKey) S.l = i; else S.r = i; setMode("split"); show(); });
    grid.appendChild(fig);
  });
  markSelection();
}

function buildSheet(){
  const sh = $("sheet"); sh.textContent = "";
  D.groups.forEach((g, gi) => {
    const a = g.renders[g.left], b = g.renders[g.right];
    const pair = h("div", {class:"pair"}, [h("img", {src:a.thumb || a.src, alt:a.label}),
      h("img", {src:b.thumb || b.src, alt:b.label})]);
    const cap = h("figcaption", {}, [h("b", {text:g.title})]);
    const de = b.values && b.values.de; if (de !== undefined) cap.appendChild(h("span", {text:"ΔE00 " + de}));
    const fig = h("figure", {"data-g":String(gi)}, [pair, cap]);
    if (gi === S.g) fig.classList.add("is-r");
    fig.addEventListener("click", () => { selectGroup(gi); setMode("split"); });
    sh.appendChild(fig);
  });
}

function buildSummary(){
  // contact-sheet mode: one row per group, "left → right" values
  const st = $("stats"); st.textContent = "";
  const t = h("table"), tr = h("tr", {}, [h("th", {text:"pair"})]);
  for (const c of D.columns) tr.appendChild(h("th", {text:c.label, title:c.title || ""}));
  t.appendChild(h("thead", {}, [tr]));
  const tb = h("tbody");
  D.groups.forEach((g, gi) => {
    const a = g.renders[g.left].values, b = g.renders[g.right].values;
    const row = h("tr", {"data-g":String(gi)}, [h("td", {text:(gi+1) + "  " + g.title})]);
    for (const c of D.columns) { const va = a[c.key], vb = b[c.key];
      row.appendChild(h("td", {text:vb === undefined ? "" : (va === undefined || va === vb || c.key === "de") ? vb
        : va + " → " + vb})); }
    if (gi === S.g) row.classList.add("is-r");
    row.addEventListener("click", () => { selectGroup(gi); setMode("split"); });
    tb.appendChild(row);
  });
  t.appendChild(tb); st.appendChild(t);
}

function buildStats(){
  if (S.mode === "sheet") { buildSummary(); return; }
  const st = $("stats"); st.textContent = "";
  const g = grp(); const cols = D.columns.filter(c => g.renders.some(r => r.values[c.key] !== undefined));
  const t = h("table"); const th = h("thead");
  const hasGroups = cols.some(c => c.group);
  if (hasGroups) {
    const tr = h("tr", {}, [h("th", {text:g.title})]);
    let i = 0;
    while (i < cols.length) { let j = i; while (j < cols.length && cols[j].group === cols[i].group) j++;
      tr.appendChild(h("th", {colspan:String(j-i), class:cols[i].group ? "grp" : "", text:cols[i].group})); i = j; }
    th.appendChild(tr);
  }
  const tr2 = h("tr", {}, [h("th", {text:hasGroups ? "" : g.title})]);
  for (const c of cols) tr2.appendChild(h("th", {text:c.label, title:c.title || ""}));
  th.appendChild(tr2); t.appendChild(th);
  const tb = h("tbody");
  g.renders.forEach((r, i) => {
    const tr = h("tr", {"data-i":String(i)}, [h("td", {text:(i+1) + "  " + r.label})]);
    for (const c of cols) { const v = r.values[c.key]; const td = h("td", {text:v === undefined ? "" : v});
      if (v === "n/a" || v === undefined) td.className = "na"; tr.appendChild(td); }
    tr.addEventListener("click", (e) => { if (e.shiftKey) S.l = i; else S.r = i; show(); });
    tb.appendChild(tr);
  });
  t.appendChild(tb); st.appendChild(t);
}

function markSelection(){
  document.querySelectorAll("#stats tbody tr, #grid figure").forEach(e => {
    const i = Number(e.dataset.i); e.classList.toggle("is-r", i === S.r); e.classList.toggle("is-l", i === S.l && i !== S.r);
  });
}

function selectGroup(gi){
  const keep = S.active; S.g = clamp(gi, 0, D.groups.length-1);
  const g = grp(); S.l = g.left; S.r = g.right;
  S.active = new Set([...keep].filter(k => g.overlays.some(o => o.key === k)));
  $("title").textContent = D.title + (D.groups.length > 1 ? " — " + g.title + " (" + (S.g+1) + "/" + D.groups.length + ")" : "");
  overlayLayer($("ovl")); buildSelects(); buildSide(); show();
  if (S.mode === "sheet") buildSheet();
}

function zoomAt(clientX, clientY){
  const rc = cv.getBoundingClientRect();
  const fx = clamp((clientX - rc.left) / rc.width, 0, 1), fy = clamp((clientY - rc.top) / rc.height, 0, 1);
  S.zoom = !S.zoom; layout();
  if (S.zoom) { const vr = vp.getBoundingClientRect();
    vp.scrollLeft = fx * cv.offsetWidth - (clientX - vr.left); vp.scrollTop = fy * cv.offsetHeight - (clientY - vr.top); }
  placeTags();
  saveHash();
}

// ---- pointer: drag the split (anywhere in fit mode, on the handle at 1:1); pan at 1:1
let drag = null;
cv.addEventListener("pointerdown", (e) => {
  if (e.button !== 0) return;
  const onHandle = e.target.closest && e.target.closest("#handle");
  if (S.zoom && !onHandle && !e.shiftKey) { drag = {pan:true, x:e.clientX, y:e.clientY, sl:vp.scrollLeft, st:vp.scrollTop};
    vp.classList.add("panning"); }
  else { drag = {pan:false}; moveSplit(e); }
  cv.setPointerCapture(e.pointerId); e.preventDefault();
});
cv.addEventListener("pointermove", (e) => {
  if (!drag) return;
  if (drag.pan) { vp.scrollLeft = drag.sl - (e.clientX - drag.x); vp.scrollTop = drag.st - (e.clientY - drag.y); }
  else moveSplit(e);
});
const endDrag = () => { if (drag) { drag = null; vp.classList.remove("panning"); saveHash(); } };
cv.addEventListener("pointerup", endDrag); cv.addEventListener("pointercancel", endDrag);
cv.addEventListener("dblclick", (e) => zoomAt(e.clientX, e.clientY));
function moveSplit(e){ const rc = cv.getBoundingClientRect(); setSplit((e.clientX - rc.left) / rc.width); }

// ---- controls
document.querySelectorAll("#modes button").forEach(b => b.addEventListener("click", () => setMode(b.dataset.mode)));
$("selL").addEventListener("change", (e) => { S.l = Number(e.target.value); e.target.blur(); show(); });
$("selR").addEventListener("change", (e) => { S.r = Number(e.target.value); e.target.blur(); show(); });
$("swap").addEventListener("click", () => { [S.l, S.r] = [S.r, S.l]; show(); });
$("diffbtn").addEventListener("click", () => toggleDiff());
$("fit").addEventListener("click", () => { S.zoom = false; layout(); saveHash(); });
$("one").addEventListener("click", () => { const r = vp.getBoundingClientRect();
  if (!S.zoom) zoomAt(r.left + r.width/2, r.top + r.height/2); });
$("helpbtn").addEventListener("click", () => body.classList.toggle("help"));
$("help").addEventListener("click", () => body.classList.remove("help"));
window.addEventListener("resize", () => { if (S.mode === "split") layout(); });

document.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const tag = (e.target.tagName || "").toLowerCase();
  if (tag === "input" && e.target.type !== "checkbox") return;
  const g = grp(), n = g.renders.length, k = e.key;
  const digit = /^Digit([1-9])$/.exec(e.code || "");
  let used = true;
  if (k === "ArrowLeft" || k === "ArrowRight") setSplit(S.split + (k === "ArrowLeft" ? -1 : 1) * (e.shiftKey ? 0.01 : 0.05));
  else if (k === " ") { if (!e.repeat) body.classList.add("before"); }
  else if (digit) { const i = Number(digit[1]) - 1; if (i < n) { if (e.shiftKey) S.l = i; else S.r = i; show(); } }
  else if (k === "[" || k === "]") { S.r = (S.r + (k === "]" ? 1 : n - 1)) % n; show(); }
  else if (k === "," || k === ".") { const d = k === "." ? 1 : -1;
    if (S.l + d >= 0 && S.r + d >= 0 && S.l + d < n && S.r + d < n) { S.l += d; S.r += d; show(); } }
  else if (k === "x" || k === "X") { [S.l, S.r] = [S.r, S.l]; show(); }
  else if (k === "d" || k === "D") toggleDiff();
  else if (k === "g" || k === "G") setMode(S.mode === "grid" ? "split" : "grid");
  else if (k === "c" || k === "C") setMode(S.mode === "sheet" ? "split" : "sheet");
  else if (k === "z" || k === "Z") { const r = vp.getBoundingClientRect(); zoomAt(r.left + r.width/2, r.top + r.height/2); }
  else if (k === "m" || k === "M") toggleAll();
  else if (k === "o") { S.opacity = clamp(S.opacity + 0.1, 0.05, 1); refreshOverlays(); }
  else if (k === "O") { S.opacity = clamp(S.opacity - 0.1, 0.05, 1); refreshOverlays(); }
  else if (k === "i" || k === "I") body.classList.toggle("nostats");
  else if (k === "f" || k === "F") { if (document.fullscreenElement) document.exitFullscreen();
    else if (document.documentElement.requestFullscreen) document.documentElement.requestFullscreen(); }
  else if (k === "ArrowDown" || k === "PageDown") { if (D.groups.length > 1) selectGroup((S.g + 1) % D.groups.length); }
  else if (k === "ArrowUp" || k === "PageUp") { if (D.groups.length > 1) selectGroup((S.g + D.groups.length - 1) % D.groups.length); }
  else if (k === "?") body.classList.toggle("help");
  else if (k === "Escape") { if (body.classList.contains("help")) body.classList.remove("help");
    else if (S.zoom) { S.zoom = false; layout(); } else if (S.mode !== "split") setMode("split"); }
  else { const o = g.overlays.find(o => o.hotkey && o.hotkey === k.toLowerCase()); if (o) toggleMask(o.key); else used = false; }
  if (used) e.preventDefault();
});
document.addEventListener("keyup", (e) => { if (e.key === " ") body.classList.remove("before"); });
window.addEventListener("blur", () => body.classList.remove("before"));

// ---- state in the URL hash, so a view can be linked / reloaded
let hashTimer = null;
function saveHash(){
  clearTimeout(hashTimer);
  hashTimer = setTimeout(() => {
    const p = new URLSearchParams({g:S.g, l:S.l, r:S.r, x:S.split.toFixed(3), m:S.mode, z:S.zoom ? 1 : 0,
      d:S.diff ? 1 : 0, o:[...S.active].join(",")});
    history.replaceState(null, "", "#" + p.toString());
  }, 150);
}
function loadHash(){
  const p = new URLSearchParams(location.hash.slice(1));
  const num = (k, d) => { const v = Number(p.get(k)); return p.has(k) && isFinite(v) ? v : d; };
  S.g = clamp(num("g", 0), 0, D.groups.length - 1);
  const g = grp();
  S.active = new Set((p.get("o") || "").split(",").filter(k => g.overlays.some(o => o.key === k)));
  return {l:num("l", g.left), r:num("r", g.right), x:num("x", 0.5), m:p.get("m") || D.mode || "split",
    z:num("z", 0) === 1, d:num("d", 0) === 1};
}

// ---- start
$("subtitle").textContent = D.subtitle || "";
$("modes").querySelector('[data-mode="sheet"]').style.display = D.groups.length > 1 ? "" : "none";
const st = loadHash();
selectGroup(S.g); S.l = st.l; S.r = st.r; S.split = clamp(st.x, 0, 1); S.zoom = st.z;
show(); setMode(["split","grid","sheet"].includes(st.m) ? st.m : "split"); if (st.d) toggleDiff(true);
$("imgL").addEventListener("load", layout);
window.campipeCompare = {state:S, show, setSplit, setMode, toggleMask, selectGroup, toggleDiff};
})();
"""
