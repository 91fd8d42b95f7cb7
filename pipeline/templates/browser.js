// The sample browser of `r1 inspect --html`: rows from the JSON block #rows, filtered by text and domain.
const rows = JSON.parse(document.getElementById('rows').textContent);
const list = document.getElementById('list'), view = document.getElementById('view');
const q = document.getElementById('q'), dom = document.getElementById('dom');
let shown = [], cur = 0;
function esc(s){return String(s).replace(/[&<>]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;'}[c]));}
function box(cls, title, text){return `<div class="box ${cls}"><h4>${title}</h4><pre>${esc(text)}</pre></div>`;}
function render(){
  const r = shown[cur];
  [...list.children].forEach((d, i) => d.className = i === cur ? 'sel' : '');
  if (!r){view.innerHTML = '<p>no rows match</p>'; return;}
  const flags = r.flags.length ? `<div class="flag">${esc(r.flags.join(', '))}</div>` : '';
  view.innerHTML = `<div id="sample-id"><b>${esc(r.id)}</b> · ${esc(r.domain)} · ${esc(r.data_source)}</div>`
    + `<div>${esc(Object.entries(r.rewards).map(([k, v]) => k + '=' + v).join('  '))}</div>` + flags
    + (r.system ? box('', 'system', r.system) : '') + box('user', 'user', r.user)
    + (r.think ? box('think', 'think · ' + r.reasoning_tokens, r.think) : '')
    + box('answer', 'answer · ' + r.answer_tokens, r.answer);
}
function filter(){
  const needle = q.value.toLowerCase(), d = dom.value;
  shown = rows.filter(r => (!d || r.domain === d) && (!needle || (r.id + r.user + r.think + r.answer).toLowerCase().includes(needle)));
  list.innerHTML = shown.map((r, i) => `<div data-i="${i}">${esc(r.id)}</div>`).join('');
  cur = 0; render();
}
list.addEventListener('click', e => { if (e.target.dataset.i !== undefined){ cur = +e.target.dataset.i; render(); } });
document.getElementById('prev').onclick = () => { if (cur > 0){ cur--; render(); } };
document.getElementById('next').onclick = () => { if (cur < shown.length - 1){ cur++; render(); } };
q.oninput = filter; dom.onchange = filter;
[...new Set(rows.map(r => r.domain))].sort().forEach(d => dom.add(new Option(d, d)));
filter();
window.addEventListener('load', () => {
  const ok = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.imagesLoaded = ok;
});
