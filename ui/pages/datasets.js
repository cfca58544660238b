// Datasets: the store's datasets; `#/datasets/NAME` shows a dataset's
// versions, the diff between any two, remotes, and a form to snapshot a
// directory on the daemon host as a new version.

import * as api from '../api.js';
import { h, swap, loading, empty, failure, alertLine, badge, icon } from '../lib/dom.js';
import { bytes, nsToMs, plural, shortId, timeEl } from '../lib/format.js';

export function mount(root, route, ctx) {
  return route.id ? detail(root, route, ctx) : list(root, ctx);
}

// The desktop shell offers a native folder picker (see src-tauri).
const invoke = () => window.__TAURI__?.core?.invoke;

/** Snapshot form; `name` fixed for a dataset's page, asked for otherwise. */
function snapshotForm({ name, onDone }) {
  const input = (id, attrs) => h('input', { id, name: id, type: 'text', autocomplete: 'off', spellcheck: 'false', ...attrs });
  const nameIn = name ? null : input('snap-name', { required: true, placeholder: 'imagenet' });
  const pathIn = input('snap-path', { class: 'mono', required: true, placeholder: '/data/imagenet' });
  const msgIn = input('snap-message', { placeholder: 'What changed' });
  const tagIn = input('snap-tag', { placeholder: 'v2' });
  const err = h('div', { class: 'form-notice' });
  const btn = h('button', { class: 'btn btn-primary', type: 'submit' }, 'Snapshot');
  const pick = invoke() ? h('button', {
    class: 'btn', type: 'button',
    async onclick() {
      try {
        const p = await invoke()('pick_folder');
        if (p) pathIn.value = p;
      } catch (e) { err.replaceChildren(alertLine('error', `Folder picker: ${e?.message ?? e}`)); }
    },
  }, icon('folder'), 'Choose folder…') : null;
  const field = (label, el, hint, span) => h('div', { class: 'field', style: { gridColumn: `span ${span}` } },
    h('label', { for: el.id }, label), el, hint ? h('p', { class: 'hint' }, hint) : null);

  return h('form', {
    class: 'snapshot-form', novalidate: true,
    async onsubmit(e) {
      e.preventDefault();
      const ds = name ?? nameIn.value.trim();
      const path = pathIn.value.trim();
      err.replaceChildren();
      if (!ds) return err.replaceChildren(alertLine('error', 'Give the dataset a name.'));
      if (!path.startsWith('/')) return err.replaceChildren(alertLine('error', 'Give an absolute path on the daemon\'s host, e.g. /data/imagenet.'));
      btn.disabled = true;
      btn.textContent = 'Snapshotting…';
      try {
        const r = await api.snapshot(ds, { path, message: msgIn.value.trim(), tag: tagIn.value.trim() });
        err.replaceChildren(alertLine('ok', r.created === false
          ? `Unchanged: ${path} matches version ${shortId(r.version)}.`
          : `Created version ${shortId(r.version)} of ${r.dataset ?? ds}: ${plural(r.files ?? 0, 'file')}, ${bytes(r.bytes)} (${bytes(r.new_bytes)} new).`));
        onDone?.(ds);
      } catch (x) {
        err.replaceChildren(alertLine('error', x.message));
      } finally {
        btn.disabled = false;
        btn.textContent = 'Snapshot';
      }
    },
  },
  h('div', { class: 'form-grid' },
    nameIn ? field('Dataset', nameIn, 'New or existing.', 3) : null,
    h('div', { class: 'field', style: { gridColumn: `span ${name ? 6 : 5}` } },
      h('label', { for: 'snap-path' }, 'Directory'),
      pick ? h('div', { class: 'input-group' }, pathIn, pick) : pathIn,
      h('p', { class: 'hint' }, 'Absolute path on the daemon\'s host.')),
    field('Message', msgIn, null, name ? 4 : 3),
    field('Tag', tagIn, null, 1),
    h('div', { class: 'form-actions', style: { gridColumn: 'span 12' } }, btn)),
  err);
}

function formPanel(name, onDone) {
  const panel = h('section', { class: 'panel form-panel', hidden: true, 'aria-label': 'New snapshot' },
    h('div', { class: 'panel-head' }, h('h2', null, 'New snapshot'),
      h('button', { class: 'icon-btn', type: 'button', 'aria-label': 'Close', onclick: () => toggle(false) }, icon('x'))),
    snapshotForm({ name, onDone }));
  const btn = h('button', { class: 'btn btn-primary', type: 'button', 'aria-expanded': 'false', onclick: () => toggle(panel.hidden) },
    icon('plus'), 'New snapshot');
  function toggle(open) {
    panel.hidden = !open;
    btn.setAttribute('aria-expanded', String(open));
    if (open) panel.querySelector('input')?.focus();
  }
  return { panel, btn, toggle };
}

// ------------------------------------------------------------------ list ---

function list(root, ctx) {
  const body = h('div', { class: 'panel table-panel' }, loading('Loading datasets…'));
  const form = formPanel(null, () => refresh());
  root.append(
    h('div', { class: 'page-head' },
      h('div', null, h('h1', null, 'Datasets'),
        h('p', { class: 'page-sub' }, 'Versioned directories in the daemon\'s store. Identical content is stored once.')),
      h('div', { class: 'page-actions' }, form.btn)),
    form.panel, body);

  async function refresh() {
    try {
      const ds = await api.datasets({ signal: ctx.signal });
      if (ds.length === 0) {
        form.toggle(true);
        swap(body, empty({
          icon: 'data', title: 'No datasets yet',
          body: ['Snapshot a directory with ', h('strong', null, 'New snapshot'), ', or from a shell: ',
            h('code', null, 'trainyard data add /data/imagenet --name imagenet')],
        }));
        return;
      }
      swap(body, h('table', { class: 'table' },
        h('thead', null, h('tr', null, h('th', null, 'Name'), h('th', { class: 'num' }, 'Versions'),
          h('th', { class: 'num' }, 'Files'), h('th', { class: 'num' }, 'Size'), h('th', null, 'Latest'))),
        h('tbody', null, ds.map((d) => {
          const href = `#/datasets/${encodeURIComponent(d.name)}`;
          return h('tr', { class: 'clickable', onclick(e) { if (!e.target.closest('a')) location.hash = href; } },
            h('td', null, h('a', { href, class: 'strong' }, d.name)),
            h('td', { class: 'num' }, String(d.versions)),
            h('td', { class: 'num' }, String(d.files)),
            h('td', { class: 'num' }, bytes(d.bytes)),
            h('td', { class: 'mono', title: d.latest ?? '' }, shortId(d.latest)));
        }))));
    } catch (e) {
      if (e.name !== 'AbortError') swap(body, failure(e, refresh));
    }
  }
  refresh();
}

// ---------------------------------------------------------------- detail ---

const CHANGE = { added: ['+', 'added'], deleted: ['−', 'deleted'], removed: ['−', 'deleted'], modified: ['~', 'modified'] };

function detail(root, route, ctx) {
  const name = route.id;
  let versions = null;
  let a = route.query.get('a');
  let b = route.query.get('b');

  const form = formPanel(name, () => refresh());
  const head = h('div', { class: 'page-head' },
    h('div', null,
      h('a', { class: 'back', href: '#/datasets' }, icon('back'), 'Datasets'),
      h('h1', null, name),
      h('p', { class: 'page-sub' }, '\u00a0')),
    h('div', { class: 'page-actions' }, form.btn));
  const sub = head.querySelector('.page-sub');
  const remotes = h('div');
  const table = h('div', { class: 'panel table-panel' }, loading('Loading versions…'));
  const diffEl = h('section', { class: 'panel', 'aria-label': 'Changes' });
  root.append(head, form.panel, remotes, table, diffEl);
  ctx.title(name);
  swap(remotes, loading('Asking the remotes…'));

  // Remote state: which versions each configured remote holds (GET
  // /datasets/NAME/remotes asks the remotes themselves, so it loads apart).
  let remoteList = [];
  const STATE_TEXT = { in_sync: 'in sync', behind: 'not all pushed', ahead: 'remote has more', diverged: 'diverged', empty: 'not pushed', error: 'unreachable' };
  function drawRemotes(list) {
    if (!Array.isArray(list) || list.length === 0) {
      swap(remotes, h('p', { class: 'quiet-note' }, icon('sync'),
        'No remotes configured: ', h('code', null, 'trainyard remote add NAME s3://bucket/prefix'), ' adds one.'));
      return;
    }
    swap(remotes, h('section', { class: 'panel', 'aria-label': 'Remotes' },
      h('div', { class: 'panel-head' }, h('h2', null, 'Remotes')),
      h('table', { class: 'table' }, h('tbody', null, list.map((r) => h('tr', { dataset: { remote: r.name } },
        h('td', { class: 'strong' }, r.name),
        h('td', { class: 'mono muted' }, r.url),
        h('td', null, badge(STATE_TEXT[r.state] ?? r.state)),
        h('td', { class: 'muted' }, r.detail),
        h('td', null, Object.entries(r.tags ?? {}).map(([t, v]) => h('span', { class: 'chip chip-tag', title: `${t} → ${v}` }, `${t} → ${shortId(v)}`)))))))));
  }
  async function loadRemotes() {
    try {
      remoteList = await api.datasetRemotes(name, { signal: ctx.signal });
      drawRemotes(remoteList);
      if (versions) drawVersions();
    } catch (e) {
      if (e.name !== 'AbortError') swap(remotes, failure(e, loadRemotes));
    }
  }
  const onRemotes = (id) => remoteList.filter((r) => (r.versions ?? []).includes(id)).map((r) => r.name);

  function drawVersions() {
    const pick = (which, v) => h('input', {
      type: 'radio', name: `diff-${which}`, value: v.id, checked: (which === 'a' ? a : b) === v.id,
      'aria-label': `Compare ${which === 'a' ? 'from' : 'to'} version ${shortId(v.id)}`,
      onchange() {
        if (which === 'a') a = v.id; else b = v.id;
        ctx.setQuery({ a, b });
        drawDiff();
      },
    });
    swap(table, h('table', { class: 'table versions' },
      h('thead', null, h('tr', null,
        h('th', { class: 'pick', title: 'Compare from' }, 'A'), h('th', { class: 'pick', title: 'Compare to' }, 'B'),
        h('th', null, 'Version'), h('th', null, 'Message'), h('th', null, 'Author'), h('th', null, 'Created'),
        h('th', { class: 'num' }, 'Files'), h('th', { class: 'num' }, 'Size'), h('th', { class: 'num' }, 'New data'))),
      h('tbody', null, versions.map((v) => h('tr', { dataset: { id: v.id } },
        h('td', { class: 'pick' }, pick('a', v)),
        h('td', { class: 'pick' }, pick('b', v)),
        h('td', null, h('span', { class: 'mono', title: v.id }, shortId(v.id)),
          (v.tags ?? []).map((t) => h('span', { class: 'chip chip-tag' }, t)),
          onRemotes(v.id).map((r) => h('span', { class: 'chip', title: `On remote ${r}` }, `☁ ${r}`))),
        h('td', { class: 'truncate', title: v.message ?? '' }, v.message ?? h('span', { class: 'muted' }, '—')),
        h('td', null, v.author ?? '—'),
        h('td', null, timeEl(nsToMs(v.created_ns))),
        h('td', { class: 'num' }, String(v.files)),
        h('td', { class: 'num' }, bytes(v.bytes)),
        h('td', { class: 'num muted' }, bytes(v.new_bytes)))))));
  }

  let diffSeq = 0;
  async function drawDiff() {
    if (versions.length < 2) {
      swap(diffEl, h('div', { class: 'panel-head' }, h('h2', null, 'Changes')),
        h('p', { class: 'muted pad' }, 'Only one version so far: snapshot again to compare.'));
      return;
    }
    const seq = ++diffSeq;
    const label = (id) => {
      const v = versions.find((x) => x.id === id);
      return [h('span', { class: 'mono' }, shortId(id)), v?.tags?.length ? ` (${v.tags.join(', ')})` : ''];
    };
    const headEl = h('div', { class: 'panel-head' }, h('h2', null, 'Changes from ', label(a), ' to ', label(b)));
    if (a === b) {
      swap(diffEl, headEl, h('p', { class: 'muted pad' }, 'Pick two different versions in the A and B columns.'));
      return;
    }
    swap(diffEl, headEl, loading('Comparing…'));
    try {
      const d = await api.diff(name, a, b, { signal: ctx.signal });
      if (seq !== diffSeq) return;
      const changes = d.changes ?? [];
      const count = (k) => changes.filter((c) => CHANGE[c.change]?.[1] === k).length;
      headEl.append(h('span', { class: 'diff-summary' },
        h('span', { class: 'diff-added' }, `+${count('added')} added`),
        h('span', { class: 'diff-deleted' }, `−${count('deleted')} deleted`),
        h('span', { class: 'diff-modified' }, `~${count('modified')} modified`)));
      if (changes.length === 0) {
        swap(diffEl, headEl, h('p', { class: 'muted pad' }, 'No changes: the two versions hold the same files.'));
        return;
      }
      swap(diffEl, headEl, h('table', { class: 'table diff' },
        h('thead', null, h('tr', null, h('th', null, 'Change'), h('th', null, 'Path'),
          h('th', { class: 'num' }, 'Before'), h('th', { class: 'num' }, 'After'), h('th', { class: 'num' }, 'Δ'))),
        h('tbody', null, changes.map((c) => {
          const [sign, kind] = CHANGE[c.change] ?? ['·', c.change];
          const before = c.old?.size;
          const after = c.new?.size;
          const delta = (after ?? 0) - (before ?? 0);
          return h('tr', { class: `change-${kind}` },
            h('td', null, h('span', { class: `badge badge-${kind}` }, `${sign} ${kind}`)),
            h('td', { class: 'mono' }, c.path, c.new?.kind && c.new.kind !== 'file' ? h('span', { class: 'muted' }, ` (${c.new.kind})`) : null),
            h('td', { class: 'num' }, before == null ? '—' : bytes(before)),
            h('td', { class: 'num' }, after == null ? '—' : bytes(after)),
            h('td', { class: ['num', delta > 0 ? 'pos' : delta < 0 ? 'neg' : 'muted'] }, delta === 0 ? '0' : `${delta > 0 ? '+' : ''}${bytes(delta)}`));
        }))));
    } catch (e) {
      if (e.name !== 'AbortError' && seq === diffSeq) swap(diffEl, headEl, failure(e, drawDiff));
    }
  }

  async function refresh() {
    try {
      const vs = await api.versions(name, { signal: ctx.signal });
      versions = vs;
      const latest = vs[0];
      sub.textContent = latest
        ? `${plural(vs.length, 'version')} · latest ${shortId(latest.id)}: ${plural(latest.files, 'file')}, ${bytes(latest.bytes)}`
        : 'No versions';
      if (vs.length === 0) {
        swap(table, empty({ title: 'No versions', body: 'Snapshot a directory to create the first version.' }));
        swap(diffEl);
        return;
      }
      if (!vs.some((v) => v.id === b)) b = vs[0].id;
      if (!vs.some((v) => v.id === a)) a = (vs[1] ?? vs[0]).id;
      drawVersions();
      drawDiff();
    } catch (e) {
      if (e.name !== 'AbortError') swap(table, failure(e, refresh));
    }
  }
  refresh();
  loadRemotes();
}
