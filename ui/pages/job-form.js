// The "New job" form: builds a JobSpec (see JobSpec in openapi.json),
// checks what it can locally, and shows the daemon's 400 message next to
// the field it names ("invalid job spec: gpus.model: empty pattern").

import * as api from '../api.js';
import { h, alertLine } from '../lib/dom.js';
import { keyValues, parseDuration, shellWords } from '../lib/util.js';

const REMEMBER = 'trainyard.jobform'; // user and project, for the next job

// Server field path → form field name.
function fieldFor(path) {
  if (path.startsWith('command')) return 'command';
  if (path.startsWith('inputs')) return 'inputs';
  if (path.startsWith('args')) return 'args';
  if (path.startsWith('env')) return 'env';
  return {
    'git.repo': 'git_repo', 'git.rev': 'git_rev', git: 'git_repo', workdir: 'workdir',
    'gpus.count': 'gpus', 'gpus.min_memory_mib': 'gpu_mem', 'gpus.model': 'gpu_model',
    max_attempts: 'max_attempts', timeout_s: 'timeout', priority: 'priority',
    name: 'name', project: 'project', user: 'user', tags: 'tags', depends_on: 'depends_on',
  }[path] ?? null;
}

/** The form element; `onSubmitted(ids)` after the daemon accepted the job. */
export function jobForm({ onSubmitted }) {
  const fields = {};
  const remembered = JSON.parse(localStorage.getItem(REMEMBER) ?? '{}');

  function field(name, label, input, { hint, span, addon } = {}) {
    input.id = `job-${name}`;
    input.name = name;
    const err = h('div', { class: 'field-error', id: `job-${name}-error` });
    const hintEl = hint ? h('p', { class: 'hint', id: `job-${name}-hint` }, hint) : null;
    input.setAttribute('aria-describedby', [hintEl?.id, err.id].filter(Boolean).join(' '));
    const wrap = h('div', { class: 'field', style: span ? { gridColumn: `span ${span}` } : null },
      h('label', { for: input.id }, label),
      addon ? h('div', { class: 'input-group' }, input, addon) : input,
      hintEl, err);
    fields[name] = { input, wrap, err };
    return wrap;
  }
  const text = (attrs = {}) => h('input', { type: 'text', autocomplete: 'off', spellcheck: 'false', ...attrs });
  const number = (attrs = {}) => h('input', { type: 'number', inputmode: 'numeric', ...attrs });

  const mode = h('select', { 'aria-label': 'How to run the command' },
    h('option', { value: 'shell' }, 'Shell line (sh -c)'),
    h('option', { value: 'argv' }, 'Program and arguments'));
  const notice = h('div', { class: 'form-notice' });
  const more = h('details', { class: 'more' },
    h('summary', null, 'More options: working directory, environment, attempts, timeout, tags'),
    h('div', { class: 'form-grid' },
      field('workdir', 'Working directory', text({ placeholder: '/home/me/project' }), { hint: 'On the agent; not with git.', span: 4 }),
      field('env', 'Environment', text({ placeholder: 'CUDA_LAUNCH_BLOCKING=1' }), { hint: 'KEY=VALUE, space separated.', span: 4 }),
      field('max_attempts', 'Max attempts', number({ min: 1, value: '1' }), { hint: 'Failed or lost attempts retry.', span: 2 }),
      field('timeout', 'Timeout', text({ placeholder: '12h' }), { hint: 'Per attempt: 90s, 30m, 2h.', span: 2 }),
      field('tags', 'Tags', text({ placeholder: 'baseline ablation' }), { span: 4 }),
      field('depends_on', 'Depends on', text({ placeholder: '12 13' }), { hint: 'Job ids that must succeed first.', span: 4 })));

  const submitBtn = h('button', { class: 'btn btn-primary', type: 'submit' }, 'Submit job');
  const form = h('form', { class: 'job-form', novalidate: true, 'aria-label': 'Submit a job' },
    h('div', { class: 'form-grid' },
      field('command', 'Command', text({ class: 'mono', placeholder: 'python train.py --epochs 10', required: true }),
        { span: 12, addon: mode }),
      field('name', 'Name', text({ placeholder: 'resnet50-baseline' }), { span: 3 }),
      field('project', 'Project', text({ placeholder: 'default', value: remembered.project ?? '' }), { span: 3 }),
      field('user', 'User', text({ placeholder: 'you', value: remembered.user ?? '' }), { span: 3 }),
      field('priority', 'Priority', number({ value: '0' }), { hint: 'Higher runs first.', span: 3 }),
      field('git_repo', 'Git repository', text({ placeholder: 'https://github.com/lab/model.git' }), { span: 5 }),
      field('git_rev', 'Revision', text({ placeholder: 'main' }), { hint: 'Branch, tag or commit.', span: 2 }),
      field('args', 'Arguments', text({ class: 'mono', placeholder: 'lr=3e-4 batch=256' }), { hint: 'KEY=VALUE → --KEY VALUE', span: 5 }),
      field('gpus', 'GPUs', number({ min: 0, max: 64, value: '1' }), { hint: '0 for a CPU job.', span: 2 }),
      field('gpu_mem', 'Min free memory (GiB)', number({ min: 0, step: 'any', placeholder: 'any' }), { span: 3 }),
      field('gpu_model', 'GPU model', text({ placeholder: 'A100|H100' }), { hint: 'Substrings, | for alternatives.', span: 3 }),
      field('inputs', 'Datasets', text({ placeholder: 'imagenet@v2' }), { hint: 'NAME@REF, space separated.', span: 4 })),
    more,
    h('div', { class: 'form-actions form-foot' }, submitBtn,
      h('button', { class: 'btn btn-ghost', type: 'reset' }, 'Reset'),
      h('span', { class: 'hint' }, 'All GPUs of a job are on one host.')),
    notice);

  function clearErrors() {
    for (const f of Object.values(fields)) {
      f.wrap.classList.remove('invalid');
      f.input.removeAttribute('aria-invalid');
      f.err.textContent = '';
    }
    notice.replaceChildren();
  }

  function setError(name, message) {
    const f = fields[name];
    if (!f) return false;
    f.wrap.classList.add('invalid');
    f.input.setAttribute('aria-invalid', 'true');
    f.err.textContent = message;
    if (f.wrap && more.contains(f.wrap)) more.open = true;
    return true;
  }

  const val = (n) => fields[n].input.value.trim();
  const words = (n) => val(n).split(/[\s,]+/).filter(Boolean);

  /** The JobSpec, or `{errors}` naming fields. */
  function build() {
    const errors = {};
    const spec = {};
    const cmd = val('command');
    if (!cmd) errors.command = 'Enter the command to run.';
    else if (mode.value === 'shell') spec.command = cmd;
    else {
      try { spec.command = shellWords(cmd); } catch (e) { errors.command = `Cannot split the command: ${e.message}.`; }
    }
    for (const n of ['name', 'project', 'user']) if (val(n)) spec[n] = val(n);
    const repo = val('git_repo');
    const rev = val('git_rev');
    if (repo || rev) {
      if (!repo) errors.git_repo = 'Give the repository the revision is in.';
      if (!rev) errors.git_rev = 'Give a branch, tag or commit.';
      spec.git = { repo, rev };
    }
    if (val('workdir')) spec.workdir = val('workdir');
    for (const n of ['args', 'env']) {
      try { const kv = keyValues(val(n)); if (Object.keys(kv).length) spec[n] = kv; } catch (e) { errors[n] = e.message; }
    }
    const gpus = {};
    const count = val('gpus');
    if (count !== '') {
      const c = Number(count);
      if (!Number.isInteger(c) || c < 0) errors.gpus = 'A whole number, 0 for a CPU job.';
      else gpus.count = c;
    }
    if (val('gpu_mem') !== '') {
      const g = Number(val('gpu_mem'));
      if (!(g >= 0)) errors.gpu_mem = 'A size in GiB, e.g. 40.';
      else gpus.min_memory_mib = Math.round(g * 1024);
    }
    if (val('gpu_model')) gpus.model = val('gpu_model');
    if (Object.keys(gpus).length) spec.gpus = gpus;
    if (words('inputs').length) spec.inputs = words('inputs');
    if (val('priority') !== '') {
      const p = Number(val('priority'));
      if (!Number.isInteger(p)) errors.priority = 'A whole number.';
      else spec.priority = p;
    }
    if (val('max_attempts') !== '') {
      const m = Number(val('max_attempts'));
      if (!Number.isInteger(m) || m < 1) errors.max_attempts = 'At least 1.';
      else spec.max_attempts = m;
    }
    if (val('timeout')) {
      try { spec.timeout_s = parseDuration(val('timeout')); } catch (e) { errors.timeout = e.message; }
    }
    if (words('tags').length) spec.tags = words('tags');
    if (words('depends_on').length) {
      const ids = words('depends_on').map(Number);
      if (ids.some((x) => !Number.isInteger(x) || x < 1)) errors.depends_on = 'Job ids, e.g. 12 13.';
      else spec.depends_on = ids;
    }
    return Object.keys(errors).length ? { errors } : { spec };
  }

  form.addEventListener('reset', () => queueMicrotask(clearErrors));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    clearErrors();
    const { spec, errors } = build();
    if (errors) {
      for (const [n, m] of Object.entries(errors)) setError(n, m);
      fields[Object.keys(errors)[0]].input.focus();
      return;
    }
    submitBtn.disabled = true;
    try {
      const { ids } = await api.submit([spec]);
      localStorage.setItem(REMEMBER, JSON.stringify({ user: spec.user ?? '', project: spec.project ?? '' }));
      notice.replaceChildren(alertLine('ok', 'Submitted ',
        ids.map((id, i) => [i ? ', ' : '', h('a', { href: `#/queue/${id}` }, `job ${id}`)])));
      onSubmitted?.(ids);
    } catch (err) {
      // "invalid job spec: FIELD: reason" → show it at the field.
      const m = /invalid job spec: ([^:]+): (.*)$/s.exec(err.message);
      const name = m && fieldFor(m[1]);
      if (name && setError(name, m[2])) fields[name].input.focus();
      else notice.replaceChildren(alertLine('error', err.message));
    } finally {
      submitBtn.disabled = false;
    }
  });

  return form;
}
