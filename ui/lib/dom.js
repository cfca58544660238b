// DOM helpers. Everything the UI shows is built from nodes and text nodes;
// server data never goes through innerHTML.

import morphdom from '../vendor/morphdom/morphdom-esm.js';

const SVG_NS = 'http://www.w3.org/2000/svg';

// Properties set as such rather than as attributes (live form state).
const PROPS = new Set(['value', 'checked', 'disabled', 'selected', 'indeterminate', 'open', 'hidden']);

function apply(el, attrs) {
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v == null || v === false) continue;
    if (k === 'class') el.setAttribute('class', Array.isArray(v) ? v.filter(Boolean).join(' ') : v);
    else if (k === 'style' && typeof v === 'object') Object.assign(el.style, v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2).toLowerCase(), v);
    else if (PROPS.has(k) && !(el instanceof SVGElement)) {
      // Inputs also get the attribute, so a form reset returns to it.
      if (k === 'value' && el instanceof HTMLInputElement) el.setAttribute('value', v);
      el[k] = v;
    }
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

function append(el, children) {
  for (const c of children) {
    if (c == null || c === false || c === true) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/**
 * Create an element: `h('a', {href: '#/x', class: 'link'}, 'text', child)`.
 * Attributes: `class` (string or array), `style` (object), `dataset`,
 * `onclick`-style listeners, and `value`/`checked`/... as properties.
 * Children: nodes, strings (as text), arrays; null/false are skipped.
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  apply(el, attrs);
  append(el, children);
  return el;
}

/** Same as `h` for SVG elements. */
export function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  apply(el, attrs);
  append(el, children);
  return el;
}

/**
 * Replace a container's children, keeping keyboard focus on the element with
 * the same `data-key` if the focused one was inside (live refreshes must not
 * throw the user's focus away).
 */
export function swap(container, ...children) {
  const active = document.activeElement;
  const key = active && container.contains(active) ? active.dataset?.key : null;
  container.replaceChildren();
  append(container, children);
  if (key) container.querySelector(`[data-key="${CSS.escape(key)}"]`)?.focus();
}

/**
 * Like `swap`, but turn the container's children into the new ones in place
 * (morphdom, vendored: see vendor/morphdom/VERSION): elements that did not
 * change are left alone, changed ones get only their new attributes and
 * text. Live views redraw every second or two; replacing the whole tree made
 * WebKit relayout and repaint all of it each time. Elements keep their
 * identity by `data-id` where given. Only for views whose elements carry no
 * listeners: a kept element keeps its old ones, and a new tree's are lost.
 */
export function patch(container, ...children) {
  const next = container.cloneNode(false);
  append(next, children);
  morphdom(container, next, {
    childrenOnly: true,
    getNodeKey: (n) => (n.nodeType === 1 ? n.getAttribute('data-id') || n.id || undefined : undefined),
    onBeforeElUpdated: (from, to) => !from.isEqualNode(to),
  });
}

/** A small inline icon from the sprite-free set below. */
export function icon(name, cls = 'icon') {
  const paths = ICONS[name];
  return svg('svg', { class: cls, viewBox: '0 0 24 24', 'aria-hidden': 'true' },
    ...paths.map((d) => svg('path', { d })));
}

const ICONS = {
  gpu: ['M4 7h16v10H4z', 'M8 10h3v4H8zM13 10h3v4h-3z', 'M7 17v3M12 17v3M17 17v3M7 4v3M12 4v3M17 4v3'],
  queue: ['M4 6h16M4 12h16M4 18h10'],
  data: ['M4 6c0-1.7 3.6-3 8-3s8 1.3 8 3-3.6 3-8 3-8-1.3-8-3z', 'M4 6v12c0 1.7 3.6 3 8 3s8-1.3 8-3V6', 'M4 12c0 1.7 3.6 3 8 3s8-1.3 8-3'],
  runs: ['M3 20h18', 'M4 16l5-6 4 3 7-9'],
  usage: ['M5 20V10M12 20V4M19 20v-7'],
  clock: ['M12 3a9 9 0 1 0 0 18 9 9 0 0 0 0-18z', 'M12 7v5l3 2'],
  sun: ['M12 4V2M12 22v-2M4 12H2M22 12h-2M5.6 5.6 4.2 4.2M19.8 19.8l-1.4-1.4M5.6 18.4l-1.4 1.4M19.8 4.2l-1.4 1.4', 'M12 8a4 4 0 1 0 0 8 4 4 0 0 0 0-8z'],
  moon: ['M20 14.5A8 8 0 0 1 9.5 4 8 8 0 1 0 20 14.5z'],
  auto: ['M12 3a9 9 0 1 0 0 18z', 'M12 3a9 9 0 1 1 0 18 9 9 0 0 1 0-18z'],
  back: ['M15 18l-6-6 6-6'],
  plus: ['M12 5v14M5 12h14'],
  x: ['M6 6l12 12M18 6 6 18'],
  retry: ['M4 12a8 8 0 0 1 14-5.3L20 9', 'M20 4v5h-5', 'M20 12a8 8 0 0 1-14 5.3L4 15', 'M4 20v-5h5'],
  folder: ['M3 7a2 2 0 0 1 2-2h4l2 2h8a2 2 0 0 1 2 2v8a2 2 0 0 1-2 2H5a2 2 0 0 1-2-2z'],
  alert: ['M12 3 2 20h20z', 'M12 10v4M12 17v.5'],
  search: ['M11 4a7 7 0 1 0 0 14 7 7 0 0 0 0-14zM20 20l-4-4'],
  down: ['M12 5v14M6 13l6 6 6-6'],
  lock: ['M6 11h12v9H6z', 'M8 11V8a4 4 0 0 1 8 0v3'],
  sync: ['M4 12a8 8 0 0 1 14-5.3L20 9M20 4v5h-5'],
  bell: ['M6 16v-5a6 6 0 0 1 12 0v5l2 2H4z', 'M10 20a2 2 0 0 0 4 0'],
};

// --- designed states: loading, empty, error (pages are never blank) ---

export function loading(text = 'Loading…') {
  return h('div', { class: 'state state-loading', role: 'status' },
    h('span', { class: 'spinner', 'aria-hidden': 'true' }), h('span', null, text));
}

/** An empty state: a title, an explanation and optional actions/nodes. */
export function empty({ title, body, icon: ic = null, actions = null }) {
  return h('div', { class: 'state state-empty' },
    ic ? icon(ic, 'icon state-icon') : null,
    h('h3', null, title),
    body ? h('p', null, body) : null,
    actions ? h('div', { class: 'state-actions' }, actions) : null);
}

/** An error state showing the server's message, with a retry button. */
export function failure(err, retry) {
  return h('div', { class: 'state state-error', role: 'alert' },
    icon('alert', 'icon state-icon'),
    h('h3', null, err?.title ?? ({ 0: 'Cannot reach the daemon', 404: 'Not found', 409: 'Conflict' }[err?.status] ?? 'Could not load this')),
    h('p', { class: 'error-message' }, err?.message ?? String(err)),
    retry ? h('div', { class: 'state-actions' }, h('button', { class: 'btn', onclick: retry }, 'Try again')) : null);
}

/** An inline alert line (form errors, notices). */
export function alertLine(kind, ...children) {
  return h('div', { class: `alert alert-${kind}`, role: kind === 'error' ? 'alert' : 'status' }, ...children);
}

/** A colored state badge (`queued`, `running`, `finished`, …). */
export function badge(state, text = state) {
  return h('span', { class: `badge badge-${state}` }, text);
}

/** A stat card: a label, a big value and a line under it. */
export function stat(label, value, sub, attrs = {}) {
  return h('div', { class: 'stat', ...attrs },
    h('div', { class: 'stat-label' }, label),
    h('div', { class: 'stat-value' }, value),
    h('div', { class: 'stat-sub' }, sub ?? '\u00a0'));
}

/** A `<dl>` of label/value rows, skipping empty values. */
export function facts(rows) {
  return h('dl', { class: 'facts' }, rows
    .filter(([, v]) => v != null && v !== '' && !(Array.isArray(v) && v.length === 0))
    .map(([k, v]) => [h('dt', null, k), h('dd', null, v)]));
}
