// Desktop only: which daemon the window shows — this computer's or a lab
// server's — and the desktop app's own settings (close to tray, start with
// the session). Everything here is a Tauri command of the desktop shell
// (src-tauri/src/lib.rs); in a browser the page says so and the header
// shows nothing. The shell tests every address and token before it
// switches, so a failed connect leaves the window where it was.

import { h, icon, alertLine } from '../lib/dom.js';

const invoke = () => window.__TAURI__?.core?.invoke;

/** Whether the page runs in the desktop app. */
export const inDesktop = () => typeof invoke() === 'function';

/** A command's rejection (`{kind, message}`, or a string from Tauri itself) as text. */
const messageOf = (e) => (typeof e === 'string' ? e : e?.message ?? String(e));

/**
 * The header's connection control: on a lab server's page, one click back
 * to this computer's daemon; on this computer's, a link to this page.
 */
export async function decorateHeader() {
  if (!inDesktop()) return;
  let c;
  try { c = await invoke()('connection'); } catch { return; }
  const right = document.querySelector('.topbar-right');
  if (!right || document.getElementById('desktop-conn')) return;
  const el = c.showing === 'lab'
    ? h('button', {
      id: 'desktop-conn', class: 'btn btn-sm', type: 'button',
      title: `Showing the lab server ${c.lab ?? ''}. Click to show this computer's daemon.`,
      async onclick() { await invoke()('use_local').catch((e) => alert(messageOf(e))); },
    }, `Lab ${c.lab ? new URL(c.lab).host : ''} · Back to this computer`)
    : h('a', { id: 'desktop-conn', class: 'btn btn-sm', href: '#/connect', title: 'Connect this window to a lab server' },
      'This computer · Lab server…');
  right.prepend(el);
}

export function mount(root, route, ctx) {
  root.append(h('div', { class: 'page-head' }, h('h1', null, 'Connection')));
  if (!inDesktop()) {
    root.append(alertLine('info', 'Connecting to a lab server is a feature of the desktop app. In a browser, open the lab daemon\'s address instead.'));
    return;
  }
  const body = h('div');
  root.append(body);
  const render = (c, message = null) => body.replaceChildren(...(c.showing === 'lab' ? onLab(c) : onLocal(c, message, render)).filter(Boolean));
  invoke()('connection').then((c) => render(c)).catch((e) => body.replaceChildren(alertLine('error', messageOf(e))));
}

/** On a lab server's page: only the way back (the shell allows no more here). */
function onLab(c) {
  return [h('section', { class: 'panel', style: { padding: '14px' } },
    h('p', null, 'This window shows the lab server ', h('code', null, c.lab ?? '?'), '.'),
    h('button', {
      id: 'use-local', class: 'btn btn-primary', type: 'button',
      async onclick() { await invoke()('use_local').catch((e) => alert(messageOf(e))); },
    }, 'Show this computer\'s daemon'))];
}

function onLocal(c, message, render) {
  const url = h('input', {
    id: 'lab-url', name: 'lab-url', type: 'url', spellcheck: 'false', autocomplete: 'off',
    placeholder: 'http://gpu-lab:7171', value: c.lab ?? '',
  });
  const token = h('input', {
    id: 'lab-token', name: 'lab-token', type: 'password', spellcheck: 'false', autocomplete: 'off',
    placeholder: c.lab ? 'Leave empty to use the remembered token' : 'The lab daemon\'s token',
  });
  const out = h('div', { id: 'lab-message', class: 'form-notice', 'aria-live': 'polite' });
  const say = (kind, text) => out.replaceChildren(alertLine(kind, text));
  if (message) say(message.kind, message.text);
  else if (c.last_error) say('error', c.last_error);
  const buttons = [];
  const busy = (on) => { for (const b of buttons) b.disabled = on; };
  const args = () => ({ url: url.value, token: token.value.trim() || null });
  const testBtn = h('button', {
    id: 'lab-test', class: 'btn', type: 'button',
    async onclick() {
      busy(true);
      out.replaceChildren();
      try {
        const info = await invoke()('test_lab', args());
        say('ok', `Connection works: Trainyard ${info.version} at ${info.url}, token accepted.`);
      } catch (e) {
        say('error', messageOf(e));
      } finally { busy(false); }
    },
  }, 'Test connection');
  const connectBtn = h('button', { id: 'lab-connect', class: 'btn btn-primary', type: 'submit' }, 'Connect');
  buttons.push(testBtn, connectBtn);
  const form = h('form', {
    class: 'panel',
    async onsubmit(e) {
      e.preventDefault();
      busy(true);
      out.replaceChildren();
      try {
        // On success the window leaves this page for the lab's.
        await invoke()('connect_lab', args());
      } catch (err) {
        say('error', messageOf(err));
        busy(false);
      }
    },
  },
  h('div', { class: 'panel-head' }, h('h2', null, 'Connect to a lab server')),
  h('div', { class: 'form-grid' },
    h('div', { class: 'field', style: { gridColumn: 'span 6' } },
      h('label', { for: 'lab-url' }, 'Lab daemon address'), url,
      h('p', { class: 'hint' }, 'The address its ', h('code', null, 'trainyard up'), ' listens on.')),
    h('div', { class: 'field', style: { gridColumn: 'span 6' } },
      h('label', { for: 'lab-token' }, 'Token'), token,
      h('p', { class: 'hint' }, c.token_store === 'keyring'
        ? 'Kept in the system keyring.'
        : c.token_store === 'file'
          ? 'No system keyring answered: kept in a file only you can read.'
          : `It cannot be kept: ${c.token_store_error ?? 'no token store'}.`))),
  out,
  h('div', { class: 'form-grid' }, h('div', { style: { gridColumn: 'span 12', display: 'flex', gap: '8px' } }, testBtn, connectBtn)));

  const remembered = c.lab
    ? h('section', { class: 'panel', style: { padding: '14px', display: 'flex', gap: '8px', alignItems: 'center', flexWrap: 'wrap' } },
      h('span', null, 'Remembered lab server: ', h('code', { id: 'lab-remembered' }, c.lab)),
      h('button', {
        id: 'lab-show', class: 'btn', type: 'button',
        async onclick() {
          try { await invoke()('connect_lab', { url: c.lab, token: null }); } catch (e) { say('error', messageOf(e)); }
        },
      }, 'Show it'),
      h('button', {
        id: 'lab-forget', class: 'btn btn-danger', type: 'button',
        async onclick() {
          try { render(await invoke()('forget_lab'), { kind: 'ok', text: 'Forgot the lab server and its token.' }); } catch (e) { say('error', messageOf(e)); }
        },
      }, 'Forget it and its token'))
    : null;

  const toggle = (id, label, checked, command, then = null) => h('label', { class: 'check', style: { display: 'flex', gap: '8px', alignItems: 'center' } },
    h('input', {
      id, type: 'checkbox', checked,
      async onchange(e) {
        const box = e.target;
        // Lending takes a while (the agent stops its jobs): no second click meanwhile.
        if (then) box.disabled = true;
        try {
          const next = await invoke()(command, { on: box.checked });
          if (then) then(next);
        } catch (err) { box.checked = !box.checked; say('error', messageOf(err)); } finally { box.disabled = false; }
      },
    }), label);
  // The workstation's GPUs in the lab's pool: its agent serves the lab.
  const lend = c.lab && c.can_lend
    ? h('section', { class: 'panel', style: { padding: '14px', display: 'grid', gap: '8px' } },
      h('h2', null, 'Share this computer\'s GPUs'),
      toggle('lend-gpus', 'Lend this computer\'s GPUs to the lab server: its agent joins the lab\'s pool and runs the lab\'s jobs here', Boolean(c.lent_to), 'lend_gpus',
        (next) => render(next, next.lent_to
          ? { kind: 'ok', text: `This computer's GPUs are lent to ${next.lent_to}.` }
          : { kind: 'ok', text: 'This computer\'s GPUs are back with its own daemon.' })),
      h('p', { id: 'lend-status', class: 'hint' }, c.lent_to
        ? ['Lent to ', h('code', null, c.lent_to), ': this computer\'s own queue waits until you take them back. Taking them back stops the lab\'s jobs running here; the lab runs them again elsewhere.']
        : 'Not lent: only this computer\'s daemon runs jobs on them. Lending waits until no local job runs.'))
    : null;
  const app = h('section', { class: 'panel', style: { padding: '14px', display: 'grid', gap: '8px' } },
    h('h2', null, 'Desktop app'),
    toggle('close-to-tray', 'Close to tray: closing the window keeps this computer\'s daemon and its jobs running', c.close_to_tray, 'set_close_to_tray'),
    toggle('autostart', 'Start with the session (in the tray)', c.autostart, 'set_autostart'));

  return [
    h('p', { class: 'muted' }, icon('gpu'), ' This window shows this computer\'s daemon (', h('code', null, c.local_url), ').'),
    form, remembered, lend, app,
  ];
}
