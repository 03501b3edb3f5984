// Small DOM helpers shared by the views (the only modules that touch the DOM).

/** h('div', {class: 'x', dataset: {testid: 'y'}, onclick}, child, ...) -> Element */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'style' && typeof v === 'object') Object.assign(el.style, v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = v;
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

/**
 * Show a remote slot's state in a status element: loading text, the error in
 * words, or nothing (hidden) when it is ready. Returns true when data is ready.
 */
export function showStatus(el, remote, { loading = 'Loading…', idle = '' } = {}) {
  el.classList.remove('error', 'loading');
  if (remote.status === 'loading') {
    el.textContent = loading;
    el.classList.add('loading');
    el.hidden = false;
    return false;
  }
  if (remote.status === 'error') {
    el.textContent = remote.error;
    el.classList.add('error');
    el.hidden = false;
    return false;
  }
  if (remote.status === 'idle') {
    el.textContent = idle;
    el.hidden = !idle;
    return false;
  }
  el.textContent = '';
  el.hidden = true;
  return true;
}

/** Set an <img>'s src only when it changes (no reload, no flicker). */
export function setSrc(img, url) {
  if (!url) {
    if (img.hasAttribute('src')) img.removeAttribute('src');
    img.hidden = true;
    return;
  }
  img.hidden = false;
  if (img.getAttribute('src') !== url) img.setAttribute('src', url);
}

/** Place a receptive-field box (percentages from state.boxToPercent) or hide it. */
export function placeBox(el, pct) {
  if (!pct) { el.hidden = true; return; }
  el.hidden = false;
  el.style.top = `${pct.top}%`;
  el.style.left = `${pct.left}%`;
  el.style.width = `${pct.width}%`;
  el.style.height = `${pct.height}%`;
}

/** Replace an element's children only when `key` changed; returns true if it rebuilt. */
export function rebuild(el, key, build) {
  if (el.dataset.key === key) return false;
  el.dataset.key = key;
  el.replaceChildren(...[].concat(build()).filter(Boolean));
  return true;
}

export function fmt(v, digits = 3) {
  if (v === null || v === undefined || !Number.isFinite(Number(v))) return '–';
  const n = Number(v);
  const a = Math.abs(n);
  if (a !== 0 && (a >= 1e4 || a < 1e-3)) return n.toExponential(2);
  return n.toFixed(a >= 100 ? 1 : digits);
}

/** An <img> that says in words when it fails to load (for server URLs used directly). */
export function img(src, alt, attrs = {}) {
  const el = h('img', { src, alt, decoding: 'async', ...attrs });
  el.addEventListener('error', () => {
    const note = h('span', { class: 'img-error', role: 'note', text: `${alt}: could not load (${src})` });
    el.replaceWith(note);
  }, { once: true });
  return el;
}

/** Save a canvas as a PNG file named `name` (a download, as the links above, but drawn here). */
export function saveCanvas(canvas, name) {
  canvas.toBlob((blob) => {
    if (!blob) return;
    const a = h('a', { href: URL.createObjectURL(blob), download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  });
}

/** A download link for an object URL (or hide it): `<a download=name href=url>`. */
export function setDownload(a, url, name) {
  if (!url) { a.hidden = true; a.removeAttribute('href'); return; }
  a.hidden = false;
  if (a.getAttribute('href') !== url) a.setAttribute('href', url);
  a.setAttribute('download', name);
  a.title = `Save as ${name}`;
}
