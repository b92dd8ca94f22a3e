"""The live view of one job's search, served by the gateway at ``/view``: plain HTML and JS, no
build step. ``/view?job=ID`` watches a job; ``/view?q=QUESTION&strategy=beam&generations=8``
asks a new one (a form on the page does the same).

The page reads ``/v1/jobs/ID/events`` (server-sent events, one ponder event as JSON each) and
draws the tree as it grows: each step under its parent, coloured by its PRM score (red 0 →
green 1), candidates marked with their answer, the vote tally, the controller's decisions, and
at the end the answer and the usage; leaves that were neither expanded nor kept as candidates
(pruned branches) turn grey. A restarted attempt clears the tree.
"""

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ponder · live search</title>
<style>
 body { font: 14px/1.35 system-ui, sans-serif; margin: 16px; color: #222; }
 h1 { font-size: 18px; margin: 0 0 8px; }
 form input[name=q] { width: 420px; } form * { font: inherit; }
 #status { color: #555; margin: 6px 0; }
 #tree ul { list-style: none; padding-left: 18px; margin: 0; border-left: 1px dotted #bbb; }
 #tree > ul { border-left: none; padding-left: 0; }
 .node { display: inline-block; margin: 2px 0; padding: 1px 6px; border-radius: 4px; white-space: pre-wrap;
         font-family: ui-monospace, monospace; font-size: 12px; }
 .node.pruned { background: #e6e6e6 !important; color: #999; }
 .node.candidate { outline: 2px solid #1a7f37; }
 .score { font-size: 11px; color: #333; margin-left: 6px; }
 #side { float: right; width: 330px; margin-left: 16px; }
 #side section { border: 1px solid #ddd; border-radius: 6px; padding: 8px; margin-bottom: 10px; }
 #final .answer { font-size: 18px; font-weight: 600; }
 #decisions li { font-size: 12px; }
</style></head>
<body>
<div id="side">
 <section id="final"><b>Answer</b><div class="answer">…</div><div class="usage"></div></section>
 <section><b>Votes</b><ol id="votes"></ol></section>
 <section><b>Decisions</b><ul id="decisions"></ul></section>
</div>
<h1>ponder · live search</h1>
<form id="ask"><input name="q" placeholder="a question, e.g. Compute 2 + 3 * 4.">
 <select name="strategy"><option>best_of_n</option><option selected>beam</option><option>dvts</option>
 <option>lookahead</option><option>auto</option><option>revision</option></select>
 <input name="generations" type="number" value="8" min="1" style="width:60px"> <button>Ask</button></form>
<div id="status">idle</div>
<div id="tree"><ul id="root"></ul></div>
<script>
const $ = (s) => document.querySelector(s);
const nodes = new Map(); let kids = new Map(); let candidates = new Set();
function colour(s) { if (s === undefined || s === null) return "#eef"; const h = Math.round(120 * Math.max(0, Math.min(1, s)));
  return `hsl(${h}, 70%, 82%)`; }
function reset() { nodes.clear(); kids = new Map(); candidates = new Set(); $("#root").innerHTML = "";
  $("#votes").innerHTML = ""; $("#decisions").innerHTML = ""; $("#final .answer").textContent = "…";
  $("#final .usage").textContent = ""; }
function addStep(st) {
  const id = String(st.node_id), parent = String(st.parent_id ?? -1);
  const li = document.createElement("li"); li.id = "n" + id;
  const span = document.createElement("span"); span.className = "node"; span.style.background = colour(st.score);
  span.textContent = (st.text || "").trim();
  if (st.score !== undefined) { const sc = document.createElement("span"); sc.className = "score";
    sc.textContent = Number(st.score).toFixed(2); span.appendChild(sc); }
  li.appendChild(span); const ul = document.createElement("ul"); li.appendChild(ul);
  const host = parent === "-1" ? $("#root") : (nodes.get(parent)?.ul || $("#root"));
  host.appendChild(li); nodes.set(id, {li, span, ul}); kids.set(parent, (kids.get(parent) || 0) + 1);
}
function tally(votes) { $("#votes").innerHTML = ""; for (const v of votes || []) { const li = document.createElement("li");
  li.textContent = `${v.answer || "(none)"} × ${v.count}` + (v.score !== undefined ? ` (score ${Number(v.score).toFixed(2)})` : "");
  $("#votes").appendChild(li); } }
function finish(f) {
  $("#final .answer").textContent = "Answer: " + (f.answer || "(none)");
  const u = f.usage || {}; $("#final .usage").textContent =
    `${u.generations || 0} generations, ${u.decode_tokens || 0} decoded tokens, ${((u.flops || 0) / 1e9).toFixed(2)} GFLOPs`;
  tally(f.votes);
  for (const [id, n] of nodes) if (!kids.get(id) && !candidates.has(id)) n.span.classList.add("pruned");
}
function watch(job) {
  $("#status").textContent = `job ${job}: connecting…`; reset();
  const es = new EventSource(`/v1/jobs/${job}/events`);
  es.onmessage = (m) => { const e = JSON.parse(m.data);
    if (e.queued) $("#status").textContent = `job ${job}: queued`;
    else if (e.started) { if (e.started.restart_reason) reset();
      $("#status").textContent = `job ${job}: ${e.started.plan || e.started.strategy} on ${e.started.worker || "a worker"}`; }
    else if (e.step) addStep(e.step);
    else if (e.candidate) { const id = String(e.candidate.node_id); candidates.add(id); const n = nodes.get(id);
      if (n) { n.span.classList.add("candidate"); n.span.title = "answer " + (e.candidate.answer || "(none)"); } }
    else if (e.progress) $("#status").textContent = `job ${job}: best so far ${e.progress.best_answer || "(none)"}`;
    else if (e.decision) { const li = document.createElement("li"); li.textContent = `${e.decision.kind}: ${e.decision.reason || e.decision.plan || ""}`;
      $("#decisions").appendChild(li); }
    else if (e.final) { finish(e.final); $("#status").textContent = `job ${job}: done`; document.body.dataset.state = "done"; es.close(); }
    else if (e.error) { $("#status").textContent = `job ${job}: ${e.error.code}: ${e.error.message}`; document.body.dataset.state = "error"; es.close(); }
  };
  es.onerror = () => { if (!document.body.dataset.state) $("#status").textContent = `job ${job}: connection lost`; };
}
async function ask(q, strategy, generations) {
  const r = await fetch("/v1/jobs", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({question: q, strategy, generations: Number(generations)})});
  const body = await r.json(); if (!r.ok) { $("#status").textContent = body.error?.message || r.statusText; return; }
  history.replaceState(null, "", `?job=${body.job_id}`); watch(body.job_id);
}
$("#ask").onsubmit = (ev) => { ev.preventDefault(); const f = new FormData(ev.target);
  ask(f.get("q"), f.get("strategy"), f.get("generations")); };
const p = new URLSearchParams(location.search);
if (p.get("job")) watch(p.get("job"));
else if (p.get("q")) ask(p.get("q"), p.get("strategy") || "beam", p.get("generations") || "8");
</script></body></html>
"""
