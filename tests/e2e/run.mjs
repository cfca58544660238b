#!/usr/bin/env node
// End-to-end tests of the web UI: a real daemon (fake GPUs), real jobs, a
// real dataset, the wandb fixtures, and the system Chromium.
//
//   node run.mjs                      run the tests (PASS/FAIL per test)
//   node run.mjs --screenshots DIR    write the README screenshots instead
//   --ui-from-disk                    serve ui/ from the working tree in front
//                                     of the daemon (no rebuild needed)
//
// Env: TRAINYARD_BIN (default ../../target/debug/trainyard), CHROMIUM
// (default /usr/bin/chromium), KEEP_HOME=1 keeps the temp homes.

import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { join, resolve } from 'node:path';
import {
  FIXTURES, GPU_TRACE, HERE, cancelActive, cli, launchBrowser, prepareDataset, scanFixtures, sleep, startDaemon, startWandbServer, uiUrl,
  until,
} from './setup.mjs';

const argv = process.argv.slice(2);
const shotsAt = argv.indexOf('--screenshots');
const SHOTS = shotsAt >= 0 ? resolve(argv[shotsAt + 1] ?? join(HERE, '../../docs/screenshots')) : null;
const FROM_DISK = argv.includes('--ui-from-disk');
const ARTIFACTS = join(HERE, 'artifacts');
const VIEWPORT = { width: 1280, height: 800 };

const cleanups = [];
async function cleanup() {
  for (const f of cleanups.splice(0).reverse()) await f().catch((e) => console.error(`cleanup: ${e.message}`));
}

/**
 * A page that records uncaught errors and CSP violations; with `token`, the
 * tab starts logged in (as `trainyard ui`'s address does).
 */
async function newPage(browser, problems, opts = {}, token = null) {
  const context = await browser.newContext({ viewport: VIEWPORT, colorScheme: 'light', ...opts });
  if (token) await context.addInitScript((t) => sessionStorage.setItem('trainyard.token', t), token);
  const page = await context.newPage();
  page.setDefaultTimeout(10_000);
  page.on('pageerror', (e) => problems.push(`uncaught: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy|Refused to/.test(m.text())) problems.push(`CSP: ${m.text()}`);
  });
  return page;
}

/** Fill and submit the New job form; returns the new job's id. */
async function submitJob(page, { command, name, gpus = '1' }) {
  await page.goto(`${page.baseUrl}/#/queue`);
  // Wait for the list: an empty queue opens the form by itself.
  await page.locator('.table-panel table, .table-panel .state-empty').first().waitFor();
  const cmd = page.locator('#job-command');
  const toggle = page.getByRole('button', { name: 'New job' });
  if ((await toggle.getAttribute('aria-expanded')) !== 'true') await toggle.click();
  await cmd.fill(command);
  await page.locator('#job-name').fill(name);
  await page.locator('#job-gpus').fill(gpus);
  await page.getByRole('button', { name: 'Submit job' }).click();
  const link = page.locator('.form-notice .alert-ok a').first();
  await link.waitFor();
  return Number((await link.textContent()).replace(/\D+/g, ''));
}

const headingBadge = (page) => page.locator('main h1 .badge');

// ------------------------------------------------------------------ tests ---

async function runTests() {
  await mkdir(ARTIFACTS, { recursive: true });
  // Screenshots of an earlier run would mislead: start clean.
  for (const f of await readdir(ARTIFACTS)) if (f.endsWith('.png')) await rm(join(ARTIFACTS, f));
  const t0 = Date.now();
  const results = [];
  const problems = [];

  const wb = await startWandbServer();
  cleanups.push(wb.stop);
  const d = await startDaemon({ logDir: ARTIFACTS, label: 'daemon', env: wb.env, trace: GPU_TRACE });
  cleanups.push(d.stop, () => cancelActive(d));
  await prepareDataset(d.home);
  // Jobs for the usage and telemetry tests (5c–5e), submitted now so they
  // run while the first tests do: ada on an A100 (busy), grace on the RTX
  // 4090 (idle, 2 %), and a job that writes a wandb run on its own GPU (an
  // A100). 3 s each: the daemon learns who holds a GPU when the agent's
  // samples arrive (every 1.25 s here), so an attempt must outlast a batch.
  const wandbOut = join(d.home, 'linked-runs');
  const usageJob = (spec) => d.api('POST', '/jobs', { jobs: [{ command: ['sleep', '3'], ...spec }] }).then((r) => r.ids[0]);
  const [linkedJob, ...usageJobs] = await Promise.all([
    usageJob({
      user: 'ada', project: 'vision', name: 'writes-a-run', gpus: { count: 1, model: 'A100' },
      command: [process.execPath, join(HERE, 'wandb-run.mjs'), wandbOut, 'e2elink1', '3'],
    }),
    usageJob({ user: 'ada', project: 'vision', gpus: { count: 1, model: 'A100' } }),
    usageJob({ user: 'grace', project: 'nlp', gpus: { count: 1, model: 'RTX4090' } }),
  ]);

  const ui = await uiUrl(d, { fromDisk: FROM_DISK });
  cleanups.push(ui.close);
  const browser = await launchBrowser();
  cleanups.push(() => browser.close());
  const page = await newPage(browser, problems, {}, d.token);
  page.baseUrl = ui.url;

  async function test(n, name, fn) {
    const start = Date.now();
    let error = null;
    try {
      await fn();
    } catch (e) {
      error = e;
    }
    const shot = join(ARTIFACTS, `${String(n).padStart(2, '0')}-${name.replace(/\W+/g, '-').toLowerCase()}${error ? '-FAIL' : ''}.png`);
    await (test.page ?? page).screenshot({ path: shot }).catch(() => {});
    test.page = null;
    const ms = Date.now() - start;
    results.push({ name, ok: !error });
    console.log(`${error ? 'FAIL' : 'PASS'} ${n}. ${name} (${ms} ms)${error ? `\n     ${error.message.split('\n')[0]}` : ''}`);
  }

  await test(1, 'GPUs page shows 3 GPU cards with their models', async () => {
    await page.goto(`${ui.url}/#/gpus`);
    await page.locator('.gpu').nth(2).waitFor();
    const names = await page.locator('.gpu .gpu-name').allTextContents();
    if (names.length !== 3) throw new Error(`expected 3 GPU cards, got ${names.length}: ${names}`);
    const a100 = names.filter((n) => n.includes('A100')).length;
    const rtx = names.filter((n) => n.includes('RTX4090')).length;
    if (a100 !== 2 || rtx !== 1) throw new Error(`expected 2× A100 and 1× RTX4090, got ${names.join(', ')}`);
    await page.getByText('Fake GPUs').first().waitFor();
    await page.locator('.conn[data-state="live"]').waitFor();
  });

  await test(2, 'Queue: a submitted job succeeds and its log shows its output', async () => {
    const id = await submitJob(page, { command: 'echo hello-e2e; sleep 1', name: 'e2e-hello' });
    await page.locator(`tr[data-id="${id}"]`).waitFor();
    await page.locator(`tr[data-id="${id}"] a`).first().click();
    await page.waitForURL(`**/#/queue/${id}`);
    await until('the job to succeed', async () => (await headingBadge(page).textContent()) === 'succeeded', 20_000);
    await until('hello-e2e in the log view', async () => (await page.locator('pre.log').textContent()).includes('hello-e2e'), 10_000);
  });

  await test(3, 'Queue: a long job is cancelled from the UI', async () => {
    const id = await submitJob(page, { command: 'sleep 300', name: 'e2e-sleep' });
    await page.goto(`${ui.url}/#/queue/${id}`);
    await until('the job to run', async () => (await headingBadge(page).textContent()) === 'running', 15_000);
    await page.getByRole('button', { name: 'Cancel', exact: true }).click();
    await page.getByRole('button', { name: 'Confirm cancel' }).click();
    await until('the job to be cancelled', async () => (await headingBadge(page).textContent()) === 'cancelled', 10_000);
    await page.goto(`${ui.url}/#/queue`);
    await until('the list to show it cancelled', async () =>
      (await page.locator(`tr[data-id="${id}"] .badge`).textContent()) === 'cancelled');
  });

  await test('3b', 'Queue: 250 waiting jobs come page by page, with why they cannot run', async () => {
    // A sweep the daemon expands: 250 jobs for a GPU model no agent has.
    const values = Array.from({ length: 250 }, (_, i) => String(i));
    const { ids } = await d.api('POST', '/jobs', {
      jobs: [{ command: ['true'], gpus: { count: 1, model: 'NoSuchGPU' }, tags: ['e2e-paged'] }],
      sweep: { i: values },
    });
    if (ids.length !== 250) throw new Error(`the sweep made ${ids.length} jobs`);
    try {
      await page.goto(`${ui.url}/#/queue`);
      await page.locator('[data-key="f-queued"]').click();
      const rows = page.locator('table.jobs tbody tr');
      // The Queued lists, not the All ones still shown while they load.
      const panel = page.locator('.table-panel:not([aria-busy])');
      await until('the Queued list to load', async () => (await panel.count()) === 1);
      await until('the first page (100 rows)', async () => (await rows.count()) === 100);
      const foot = page.locator('[data-key="jobs-shown"]');
      await until('the footer to count all 250', async () => /Showing 100 of 250 jobs/.test(await foot.textContent()));
      const count = await page.locator('[data-key="f-queued"] .count').textContent();
      if (Number(count) < 250) throw new Error(`the Queued filter counts ${count}`);
      await until('the reason to say no agent can run it', async () =>
        (await page.locator(`tr[data-id="${ids[0]}"] .reason`).textContent()).includes('no agent has'), 10_000);
      await page.locator('[data-key="jobs-more"]').click();
      await until('the second page (200 rows)', async () => {
        const n = await rows.count();
        if (n !== 200) throw new Error(`${n} rows shown; footer: ${await foot.textContent()}`);
        return true;
      });
      // The text search runs on the daemon: one job by its id.
      await page.locator('[data-search]').fill(String(ids[249]));
      await until('the search to find the last job', async () =>
        (await page.locator(`tr[data-id="${ids[249]}"]`).count()) === 1 && (await rows.count()) < 10);
      await page.locator('[data-search]').fill('');
    } finally {
      await Promise.all(ids.map((id) => d.api('POST', `/jobs/${id}/cancel`).catch(() => {})));
    }
  });

  await test(4, 'Datasets: 2 versions, the diff, and which versions a remote holds', async () => {
    await page.goto(`${ui.url}/#/datasets`);
    await page.getByRole('link', { name: 'mnist' }).click();
    await page.locator('table.versions tbody tr').nth(1).waitFor();
    const n = await page.locator('table.versions tbody tr').count();
    if (n !== 2) throw new Error(`expected 2 versions, got ${n}`);
    const diff = page.locator('table.diff');
    await diff.waitFor();
    const text = await diff.textContent();
    for (const want of ['train/labels.csv', 'modified', 'val/labels.csv', 'added', 'notes.txt', 'deleted']) {
      if (!text.includes(want)) throw new Error(`diff lacks "${want}": ${text}`);
    }
    // The remote holds v1 only: it is "not all pushed", and v1's row says so.
    const remote = page.locator('tr[data-remote="nas"]');
    await remote.waitFor();
    const rt = await remote.textContent();
    if (!rt.includes('not all pushed') || !rt.includes('1 of 2')) throw new Error(`remote row: ${rt}`);
    const v1 = await page.locator('table.versions tbody tr').nth(1).textContent();
    if (!v1.includes('nas')) throw new Error(`v1 row does not show the remote: ${v1}`);
  });

  await test('4b', 'Schedules: next fire time, run now, last outcome, pause and resume', async () => {
    await d.api('POST', '/schedules', { name: 'e2e-nightly', cron: '0 3 * * *', tz: 'Asia/Seoul', job: { command: ['true'] } });
    await page.goto(`${ui.url}/#/schedules`);
    const row = page.locator('tr[data-schedule="e2e-nightly"]');
    await row.waitFor();
    const next = await row.locator('td.next time').getAttribute('title');
    if (!next.includes('T03:00:00+09:00')) throw new Error(`next fire time: ${next}`);
    const last = row.locator('td.last');
    if (!(await last.textContent()).includes('never fired')) throw new Error(`last outcome: ${await last.textContent()}`);
    await row.getByRole('button', { name: 'Run now' }).click();
    await page.locator('.form-notice .alert-ok a').first().waitFor();
    await until('the last outcome to show its job succeeded', async () => (await last.textContent()).includes('succeeded'), 20_000);
    await row.getByRole('button', { name: 'Pause' }).click();
    await until('the row to say paused', async () => (await row.locator('td.next').textContent()).includes('paused'));
    await row.getByRole('button', { name: 'Resume' }).click();
    await until('a next fire time again', async () => (await row.locator('td.next time').count()) === 1);
    if (await row.locator('td.missed').textContent() !== '0') throw new Error('missed occurrences shown');
    await row.getByRole('link', { name: 'e2e-nightly' }).click();
    await page.waitForURL('**/#/schedules/e2e-nightly');
    await until('5 next fire times', async () => (await page.locator('.next-times li').count()) === 5);
    const runs = page.locator('section[aria-label="Last runs"] tbody tr');
    await until('one run listed', async () => (await runs.count()) === 1);
    await page.locator('section[aria-label="Missed occurrences"]').getByText('No missed occurrences yet.').waitFor();
  });

  await test('4c', 'Watches: a watched directory snapshotted by inotify, its state and log; pause and resume', async () => {
    const dir = join(d.home, 'work', 'watched');
    await mkdir(join(dir, 'sub'), { recursive: true });
    await writeFile(join(dir, 'a.txt'), 'one\n');
    const w = await d.api('POST', '/watches', { path: dir, snapshot: 'watched', quiet: '1s' });
    await page.goto(`${ui.url}/#/watches`);
    const row = page.locator(`table.watches tbody tr[data-watch="${w.id}"]`);
    await row.waitFor();
    if (!(await row.textContent()).includes(dir)) throw new Error(`the row does not show the path: ${await row.textContent()}`);
    await until('the watch to be idle on events', async () => {
      const t = await row.textContent();
      return t.includes('idle') && t.includes('events');
    }, 30_000);
    // Its log: the first look's snapshot, then one made after an inotify event.
    const created = page.locator(`table.watch-log tbody tr[data-watch="${w.id}"]`, { hasText: 'created' });
    await until('the first snapshot in the log', async () => (await created.count()) === 1, 30_000);
    await writeFile(join(dir, 'sub', 'b.txt'), 'two\n');
    await until('a second snapshot, triggered by events', async () => (await created.count()) === 2, 30_000);
    const line = await created.first().textContent();
    if (!/snapshot/.test(line) || !/events: quiet for 1s/.test(line) || !/watched@/.test(line)) throw new Error(`log line: ${line}`);
    await row.getByRole('link', { name: 'watched' }).waitFor();
    // Pause and resume from the page.
    await row.getByRole('button', { name: 'Pause' }).click();
    await until('the row to say paused', async () => (await row.textContent()).includes('paused'));
    await row.getByRole('button', { name: 'Resume' }).click();
    await until('the row to be watching again', async () => {
      const t = await row.textContent();
      return !t.includes('paused') && t.includes('events');
    }, 30_000);
    const resumed = page.locator(`table.watch-log tbody tr[data-watch="${w.id}"]`, { hasText: 'resume' });
    await until('the resume in the log', async () => (await resumed.count()) >= 1);
  });

  await test(5, 'Runs: scan the fixtures, list them, chart a run\'s history', async () => {
    await page.goto(`${ui.url}/#/runs`);
    await page.locator('table.runs, .state-empty, .state-error').first().waitFor();
    const err = page.locator('.state-error');
    if (await err.count()) throw new Error(`runs page error: ${await err.textContent()}`);
    const path = page.locator('#scan-path');
    if (!(await path.isVisible())) await page.getByRole('button', { name: 'Scan folder' }).click();
    await path.fill(FIXTURES);
    await page.getByRole('button', { name: 'Scan', exact: true }).click();
    await page.getByText(/Found 6 runs/).waitFor();
    await page.locator('table.runs tbody tr').nth(5).waitFor();
    await page.getByRole('link', { name: 'plain run' }).click();
    await page.locator('.chart-card .uplot canvas').first().waitFor();
    const titles = await page.locator('.chart-card .u-title').allTextContents();
    if (!titles.includes('loss')) throw new Error(`no chart titled "loss"; charts: ${titles.join(', ')}`);
    const legend = await page.locator('.chart-card .u-legend').first().textContent();
    if (!legend.includes('plain run')) throw new Error(`legend lacks the run name: ${legend}`);
  });

  await test('5b', 'Runs: sync a run to the wandb server, see it synced in the list', async () => {
    await page.goto(`${ui.url}/#/runs/plain001`);
    await page.locator('.sync-line').getByText('not synced').waitFor();
    await page.getByRole('button', { name: 'Sync' }).click();
    await page.getByText(/Synced to .*plain001 and verified: 300 history rows/).waitFor({ timeout: 30_000 });
    await page.locator('.sync-line .chip-sync-synced').waitFor();
    // a second sync has nothing to send
    await page.getByRole('button', { name: 'Sync' }).click();
    await page.getByText(/Already synced to/).waitFor({ timeout: 30_000 });
    await page.goto(`${ui.url}/#/runs`);
    await page.locator('tr[data-id="plain001"] .chip-sync-synced').waitFor();
    if (await page.locator('tr[data-id="crash001"] .chip-sync-synced').count()) throw new Error('crash001 shown as synced');
  });

  await test('5c', 'Job page: its GPUs\' utilization and memory, and the wandb run it produced, linked both ways', async () => {
    for (const id of [linkedJob, ...usageJobs]) {
      await until(`job ${id} to succeed`, async () => {
        const j = await d.api('GET', `/jobs/${id}`);
        if (['failed', 'lost', 'cancelled'].includes(j.state)) throw new Error(`job ${id} ${j.state}: ${j.reason}`);
        return j.state === 'succeeded';
      }, 30_000);
    }
    // The agent ships its samples about every second: wait for the job's.
    await until('the job\'s GPU samples', async () => (await d.api('GET', `/telemetry?job=${linkedJob}`)).series.length === 1, 10_000);
    await d.api('POST', '/runs/scan', { paths: [wandbOut] });
    await page.goto(`${ui.url}/#/queue/${linkedJob}`);
    const panel = page.locator('.job-gpus');
    await until('the GPU charts to have points', async () => Number(await panel.getAttribute('data-points')) > 0);
    const titles = await panel.locator('.u-title').allTextContents();
    if (titles.join() !== 'Utilization,Memory used') throw new Error(`charts: ${titles}`);
    if (await panel.locator('.uplot canvas').count() !== 2) throw new Error('expected 2 chart canvases');
    const legend = await panel.locator('.u-legend').first().textContent();
    if (!/GPU [01]/.test(legend)) throw new Error(`legend does not name the GPU: ${legend}`);
    // The run it produced, and back.
    const link = page.locator('.run-links a[data-run="e2elink1"]');
    await link.waitFor();
    await link.click();
    await page.waitForURL('**/#/runs/e2elink1');
    const back = page.locator(`.run-jobs a[data-job="${linkedJob}"]`);
    await back.waitFor();
    await back.click();
    await page.waitForURL(`**/#/queue/${linkedJob}`);
    await page.locator('.run-links a[data-run="e2elink1"]').waitFor();
  });

  await test('5d', 'Usage: stacked daily bars and a table whose totals are the API\'s; dimension, range, CSV, idle per user', async () => {
    const q = (params) => d.api('GET', `/usage?${new URLSearchParams(params)}`);
    const body = page.locator('.usage-body:not([aria-busy])');
    const table = page.locator('table.usage-table');
    const cells = async (tr) => Object.fromEntries(await tr.locator('td[data-v]').evaluateAll((tds) => tds.map((td, i) => [i, Number(td.dataset.v)])));
    const want = (r) => ({ 0: r.allocated_gpu_h, 1: r.used_gpu_h, 2: r.idle_gpu_h, 3: r.energy_kwh, 4: r.peak_mem_mib, 5: r.jobs, 6: r.runs });
    const canon = (v) => (v && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, canon(v[k])])) : Array.isArray(v) ? v.map(canon) : v);
    const same = (a, b) => JSON.stringify(canon(a)) === JSON.stringify(canon(b));
    // Shows `by`, and says what it saw unless the table equals the API's answer
    // (asked before and after the page's, so samples arriving meanwhile retry).
    const tableIsApi = async (by, params) => {
      let seen = '';
      return until(`the ${by} table to equal GET /usage`, async () => {
        const before = await q({ by, ...params });
        await page.locator(`[data-key="by-${by}"]`).click();
        await body.waitFor();
        await page.locator(`table.usage-table[data-by="${by}"]`).waitFor();
        const total = await cells(table.locator('tfoot tr'));
        const rows = {};
        for (const tr of await table.locator('tbody tr').all()) rows[await tr.getAttribute('data-key')] = await cells(tr);
        const after = await q({ by, ...params });
        const api = Object.fromEntries(after.rows.map((r) => [r.key.map((k) => (k === '-' ? '(none)' : k)).join(' · '), want(r)]));
        seen = JSON.stringify({ total, rows, api: want(after.total) });
        const settled = same(before.rows, after.rows) && same(before.total, after.total);
        return settled && same(total, want(after.total)) && same(rows, api) ? after : null;
      }, 20_000, 200).catch((e) => { throw new Error(`${e.message}; saw ${seen}`); });
    };
    // Wait until every sample of the jobs above is in (grace's GPU idle).
    await until('grace\'s idle hours', async () => (await q({ by: 'user' })).rows.some((r) => r.key[0] === 'grace' && r.idle_gpu_h > 0), 10_000);

    await page.goto(`${ui.url}/#/usage`);
    await body.waitFor();
    // Project (the default) and the last 30 days.
    await tableIsApi('project', { since: '30d' });
    for (const p of ['vision', 'nlp']) await table.locator(`tbody tr[data-key="${p}"]`).waitFor();
    // Stacked daily bars: every day of the range, today's bar holding the projects.
    const bars = page.locator('.ubar[data-day]');
    const days = await bars.count();
    if (days < 30 || days > 32) throw new Error(`${days} daily bars for 30 days`);
    const daily = await q({ by: 'project', since: '30d', period: 'daily' });
    const barSum = (await bars.evaluateAll((els) => els.map((e) => Number(e.dataset.total)))).reduce((a, b) => a + b, 0);
    if (Math.abs(barSum - daily.total.allocated_gpu_h) > 1e-9) throw new Error(`bars add up to ${barSum}, the API says ${daily.total.allocated_gpu_h}`);
    for (const p of ['vision', 'nlp']) await page.locator(`.ubar-seg[data-key="${p}"]`).first().waitFor();
    // The linked run is counted once, as its job.
    await page.locator('.usage-recon').getByText('e2elink1').waitFor();

    // By user: ada used her GPU, grace left hers idle.
    const users = await tableIsApi('user', { since: '30d' });
    await page.locator('.ubar-seg[data-key="grace"]').first().waitFor();
    const grace = users.rows.find((r) => r.key[0] === 'grace');
    const idleRow = page.locator('.idle-row[data-user="grace"]');
    await idleRow.waitFor();
    if (Number(await idleRow.getAttribute('data-v')) !== grace.idle_gpu_h) throw new Error(`grace's idle row says ${await idleRow.getAttribute('data-v')}, the API ${grace.idle_gpu_h}`);
    if (await page.locator('.idle-row[data-user="ada"]').count()) throw new Error('ada left no GPU idle, but the idle card lists her');
    if (Number(await page.locator('[data-key="stat-idle"]').getAttribute('data-v')) !== users.total.idle_gpu_h) throw new Error('the idle stat is not the API\'s total');
    // The bars can show idle hours: only grace's.
    await page.locator('[data-key="metric-idle_gpu_h"]').click();
    await page.locator('.ubars[data-metric="idle_gpu_h"]').waitFor();
    if (await page.locator('.ubar-seg[data-key="ada"]').count()) throw new Error('ada has idle bars');
    await page.locator('.ubar-seg[data-key="grace"]').first().waitFor();
    await page.locator('[data-key="metric-allocated_gpu_h"]').click();

    // The CSV is `trainyard usage --csv`'s, byte for byte.
    let csv = '';
    let fromCli = '';
    await until('the downloaded CSV to equal trainyard usage --csv', async () => {
      const before = await cli(d.home, ['usage', '--csv', '--by', 'user', '--since', '30d']);
      await page.locator('[data-key="by-user"]').click();
      await body.waitFor();
      const [download] = await Promise.all([page.waitForEvent('download'), page.locator('[data-key="csv"]').click()]);
      csv = await readFile(await download.path(), 'utf8');
      fromCli = await cli(d.home, ['usage', '--csv', '--by', 'user', '--since', '30d']);
      return before === fromCli && csv === fromCli;
    }, 20_000, 200).catch((e) => { throw new Error(`${e.message}\n     UI:  ${JSON.stringify(csv)}\n     CLI: ${JSON.stringify(fromCli)}`); });
    const lines = csv.trim().split('\n');
    if (lines[0] !== 'user,alloc_gpu_h,used_gpu_h,idle_gpu_h,energy_kwh,peak_mem_mib,jobs,runs') throw new Error(`CSV header: ${lines[0]}`);
    if (!lines.some((l) => l.startsWith('grace,')) || !lines.at(-1).startsWith('total,')) throw new Error(`CSV rows: ${csv}`);

    // Last month: nothing yet (the daemon started today).
    await page.locator('[data-key="range-last-month"]').click();
    await body.waitFor();
    await page.locator('.usage-body .state-empty').getByText('No GPU usage in this range').waitFor();
    if (await page.locator('[data-key="stat-allocated"]').getAttribute('data-v') !== '0') throw new Error('last month shows allocated hours');
    // A custom range of today (in the lab's zone): the same hours as 30 days.
    const zone = users.timezone === 'system' ? undefined : users.timezone;
    const today = new Intl.DateTimeFormat('en-CA', { timeZone: zone, year: 'numeric', month: '2-digit', day: '2-digit' }).format(new Date());
    await page.locator('[data-key="range-custom"]').click();
    await page.locator('[data-key="range-since"]').fill(today);
    await page.locator('[data-key="range-until"]').fill(today);
    await tableIsApi('user', { since: today, until: today });
    if (await page.locator('.ubar[data-day]').count() !== 1) throw new Error('a one-day range has more than one bar');
    if (!page.url().includes(`since=${today}`)) throw new Error(`the range is not in the URL: ${page.url()}`);

    // Runs outside the queue, with a double claim: the real client's usage
    // fixtures (2026-11-30; a run initialised twice on one GPU).
    await d.api('POST', '/runs/scan', { paths: [join(FIXTURES, '../wandb-usage')] });
    await page.locator('[data-key="range-since"]').fill('2026-11-29');
    await page.locator('[data-key="range-until"]').fill('2026-12-01');
    const fixtures = await tableIsApi('user', { since: '2026-11-29', until: '2026-12-01' });
    if (fixtures.total.runs !== 3 || fixtures.conflicts.length !== 1) throw new Error(`fixtures: ${JSON.stringify(fixtures.total)}, ${fixtures.conflicts.length} conflicts`);
    const conflict = page.locator('.usage-recon .conflict');
    await conflict.waitFor();
    const said = await conflict.textContent();
    if (!/gpu-host-b.*run dinit001 and run dinit002 claimed it at once.*for run dinit001/.test(said)) throw new Error(`conflict: ${said}`);
  });

  await test('5e', 'GPUs page: each GPU\'s history for 1 h, 24 h and 7 d', async () => {
    await page.goto(`${ui.url}/#/gpus`);
    const grid = page.locator('.gpu-history .history-grid');
    for (const range of ['1h', '24h', '7d']) {
      if (range !== '1h') await page.locator(`[data-key="history-${range}"]`).click();
      await page.locator(`.gpu-history .history-grid[data-loaded="${range}"]`).waitFor();
      const charts = grid.locator('figure.chart-card[data-uuid]');
      const n = await charts.count();
      const api = await d.api('GET', `/telemetry?since=${range}`);
      if (n !== 3 || api.series.length !== 3) throw new Error(`${range}: ${n} charts, ${api.series.length} series in the API`);
      if (await grid.locator('.uplot canvas').count() !== 3) throw new Error(`${range}: charts without a canvas`);
      const titles = await grid.locator('.u-title').allTextContents();
      if (!titles.some((t) => t.includes('RTX4090')) || titles.filter((t) => t.includes('A100')).length !== 2) throw new Error(`${range}: ${titles}`);
    }
    if (!page.url().includes('history=7d')) throw new Error(`the range is not in the URL: ${page.url()}`);
  });

  await test('5f', 'Notifications: sinks and rules, a dead letter, subscribe, send test', async () => {
    // A webhook receiver: /ok accepts, /gone answers 410 (a sink that
    // refuses the request itself: dead at once, no retries).
    const got = [];
    const rx = http.createServer((req, res) => {
      let body = '';
      req.on('data', (c) => { body += c; });
      req.on('end', () => {
        const status = req.url.startsWith('/gone') ? 410 : 200;
        got.push({ path: req.url, status, body: JSON.parse(body || 'null') });
        res.writeHead(status, { 'content-type': 'text/plain' });
        res.end(status === 200 ? 'ok' : 'this hook was deleted');
      });
    });
    await new Promise((r) => rx.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise((r) => { rx.closeAllConnections(); rx.close(r); }));
    const hook = (p) => `http://127.0.0.1:${rx.address().port}${p}`;
    await d.api('POST', '/notify/sinks', { name: 'e2e-gone', kind: 'webhook', url: hook('/gone/s3cr3t'), events: ['agent_lost'] });
    const t = await d.api('POST', '/notify/sinks/e2e-gone/test');
    await until('the dead letter', async () => (await d.api('GET', '/notify/log?state=dead')).deliveries.some((x) => x.event_id === t.event_id));

    await page.goto(`${ui.url}/#/notifications`);
    const sinkRow = page.locator('.notify-sinks tr[data-sink="e2e-gone"]');
    await sinkRow.waitFor();
    if (!(await sinkRow.textContent()).includes(`http://127.0.0.1:${rx.address().port}/…`)) throw new Error(`the sink row: ${await sinkRow.textContent()}`);
    if ((await page.content()).includes('s3cr3t')) throw new Error('the page shows the webhook URL\'s path');
    const dead = page.locator(`.dead-letters tr[data-event="${t.event_id}"][data-sink="e2e-gone"]`);
    await dead.waitFor();
    const deadText = await dead.textContent();
    if (!deadText.includes('HTTP 410') || !deadText.includes('dead')) throw new Error(`the dead letter: ${deadText}`);

    // Subscribe: ada's failures and a daily digest, to the /ok hook.
    await page.locator('#sub-name').fill('e2e-ada');
    await page.locator('#sub-kind').selectOption('webhook');
    await page.locator('#sub-url').fill(hook('/ok/ada'));
    await page.locator('#sub-user').fill('ada');
    await page.locator('#sub-digest').selectOption('daily');
    await page.getByRole('button', { name: 'Subscribe' }).click();
    await page.locator('.alert-ok').getByText('Subscribed: e2e-ada').waitFor();
    const mine = page.locator('.notify-sinks tr[data-sink="e2e-ada"]');
    await mine.waitFor();
    const sinks = await d.api('GET', '/notify/sinks');
    const s = sinks.find((x) => x.name === 'e2e-ada');
    if (!s || s.digest !== 'daily' || JSON.stringify(s.users) !== '["ada"]' || !s.events.includes('job_failed')) throw new Error(`the subscription: ${JSON.stringify(s)}`);
    if (!(await mine.locator('.sink-digest').textContent()).includes('daily')) throw new Error('the digest is not listed');

    // Send test: delivered to the receiver, and the page says so.
    await page.locator('[data-key="test-e2e-ada"]').click();
    await page.locator('.alert-ok').getByText('Test message delivered to e2e-ada.').waitFor({ timeout: 20_000 });
    const tests = got.filter((g) => g.path === '/ok/ada' && g.body?.kind === 'test');
    if (tests.length !== 1) throw new Error(`the receiver got ${tests.length} test messages`);
    await page.locator('.delivery-log tr[data-sink="e2e-ada"][data-state="delivered"]').waitFor();
  });

  await test('5g', 'Usage: monthly table, leave a job out and count it again', async () => {
    const q = (params) => d.api('GET', `/usage?${new URLSearchParams(params)}`);
    await page.goto(`${ui.url}/#/usage?range=12mo&by=user&table=monthly`);
    const table = page.locator('table.usage-table[data-period="monthly"][data-by="user"]');
    await table.waitFor();
    const first = (await q({ by: 'user', since: '7d' })).timezone; // the lab's zone
    const zone = first === 'system' ? undefined : first;
    const month = new Intl.DateTimeFormat('en-CA', { timeZone: zone, year: 'numeric', month: '2-digit' }).format(new Date()).slice(0, 7);
    const m = new Date(`${month}-01T00:00:00Z`);
    m.setUTCMonth(m.getUTCMonth() - 11);
    const since = m.toISOString().slice(0, 7);
    const api = await q({ by: 'user', since, period: 'monthly' });
    const uiRows = await table.locator('tbody tr').count();
    if (uiRows !== api.rows.length) throw new Error(`${uiRows} rows, the API has ${api.rows.length}`);
    const months = new Set(api.rows.map((r) => r.period));
    if (!months.has(month) || months.size < 2) throw new Error(`months: ${[...months]}`);
    const adaRow = table.locator(`tbody tr[data-key="ada"][data-period="${month}"] td[data-v]`).first();
    const before = Number(await adaRow.getAttribute('data-v'));
    const apiAda = () => q({ by: 'user', since, period: 'monthly' }).then((a) => a.rows.find((r) => r.key[0] === 'ada' && r.period === month).allocated_gpu_h);
    if (before !== await apiAda()) throw new Error(`ada's month: UI ${before}, API ${await apiAda()}`);

    // Leave ada's plain job out: her month shrinks at once, retroactively.
    const job = usageJobs[0];
    await page.locator('#ignore-kind').selectOption('job');
    await page.locator('#ignore-id').fill(String(job));
    await page.locator('[data-key="ignore"]').click();
    await page.locator(`.ignored-jobs tr[data-job="${job}"]`).waitFor();
    const tags = (await d.api('GET', `/jobs/${job}`)).spec.tags ?? [];
    if (!tags.includes('ignore-usage')) throw new Error(`job ${job} tags: ${tags}`);
    let after = before;
    await until('ada\'s month to shrink', async () => {
      after = Number(await table.locator(`tbody tr[data-key="ada"][data-period="${month}"] td[data-v]`).first().getAttribute('data-v'));
      return after < before;
    });
    if (after !== await apiAda()) throw new Error(`after: UI ${after}, API ${await apiAda()}`);
    // And count it again.
    await page.locator(`[data-key="count-${job}"]`).click();
    await until('ada\'s month to be whole again', async () => Number(await table.locator(`tbody tr[data-key="ada"][data-period="${month}"] td[data-v]`).first().getAttribute('data-v')) === before);
    if (await page.locator(`.ignored-jobs tr[data-job="${job}"]`).count()) throw new Error('the job is still listed as left out');
    if (!page.url().includes('table=monthly')) throw new Error(`the table period is not in the URL: ${page.url()}`);
  });

  // (6) with a second daemon, in a tab that has no token yet.
  const d2 = await startDaemon({ logDir: ARTIFACTS, label: 'daemon-token', agentName: 'secure-node' });
  cleanups.push(d2.stop);
  const ui2 = await uiUrl(d2, { fromDisk: FROM_DISK, log: () => {} });
  cleanups.push(ui2.close);
  const page2 = await newPage(browser, problems);
  await test(6, 'Token: login form, wrong token rejected, right token opens GPUs', async () => {
    test.page = page2;
    await page2.goto(`${ui2.url}/#/gpus`);
    const input = page2.locator('#token');
    await input.waitFor();
    await input.fill('not-the-token');
    await page2.getByRole('button', { name: 'Sign in' }).click();
    await page2.getByText('rejected this token').waitFor();
    await input.fill(d2.token);
    await page2.getByRole('button', { name: 'Sign in' }).click();
    await page2.locator('.gpu').nth(2).waitFor();
    // The desktop shell's way: URL#token=T, taken out of the address bar.
    const page3 = await newPage(browser, problems);
    test.page = page3;
    await page3.goto(`${ui2.url}/#token=${encodeURIComponent(d2.token)}`);
    await page3.locator('.gpu').nth(2).waitFor();
    if (page3.url().includes(d2.token)) throw new Error(`token left in the URL: ${page3.url()}`);
    await page3.context().close();
    test.page = page2;
  });

  await test(7, 'Another site cannot drive the daemon: form post, fetch, DNS rebinding', async () => {
    // The attacker: a page on evil.example (mapped to 127.0.0.1 by the
    // browser's resolver, as a rebinding DNS server would), trying what any
    // web page can do to a loopback daemon.
    const daemon = new URL(d.url);
    const marker = join(d.home, 'pwned');
    const job = JSON.stringify({ jobs: [{ command: ['touch', marker] }] });
    const before = (await d.api('GET', '/jobs')).length;
    const evil = http.createServer((req, res) => {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end(`<!doctype html><form id=f method=POST enctype="text/plain" action="${d.url}/api/v1/jobs">
        <input type=hidden name='${job.slice(0, -1)}, "x": "' value='"}'></form>`);
    });
    await new Promise((r) => evil.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise((r) => { evil.closeAllConnections(); evil.close(r); }));
    const evilOrigin = `http://evil.example:${evil.address().port}`;
    const attacker = await launchBrowser(['--host-resolver-rules=MAP evil.example 127.0.0.1']);
    cleanups.push(() => attacker.close());
    const p = await (await attacker.newContext()).newPage();
    test.page = p;
    await p.goto(`${evilOrigin}/`);
    // (a) fetch without a preflight (no-cors, text/plain), and one asking to read.
    const fetched = await p.evaluate(async ({ url, body }) => {
      const out = [];
      try { await fetch(`${url}/api/v1/jobs`, { method: 'POST', mode: 'no-cors', headers: { 'Content-Type': 'text/plain' }, body }); out.push('sent'); } catch (e) { out.push(`blocked: ${e.message}`); }
      try { const r = await fetch(`${url}/api/v1/jobs`); out.push(`read ${r.status}`); } catch (e) { out.push(`read blocked: ${e.message}`); }
      return out;
    }, { url: d.url, body: job });
    if (fetched.some((o) => o.startsWith('read 2'))) throw new Error(`the page read the daemon's answer: ${fetched}`);
    // (b) the HTML form post, enctype=text/plain.
    const [answer] = await Promise.all([p.waitForNavigation(), p.evaluate(() => document.getElementById('f').submit())]);
    const status = answer?.status();
    if (status !== 403) throw new Error(`form post answered ${status}, want 403: ${await p.content()}`);
    // (c) DNS rebinding: the daemon's port under the attacker's name.
    const rebound = await p.goto(`http://evil.example:${daemon.port}/`);
    if (rebound.status() !== 421) throw new Error(`the UI under a foreign name answered ${rebound.status()}, want 421`);
    const read = await p.evaluate(async () => (await fetch('/api/v1/jobs')).status);
    if (read !== 421) throw new Error(`the API under a foreign name answered ${read}, want 421`);
    await sleep(500);
    const after = (await d.api('GET', '/jobs')).length;
    if (after !== before) throw new Error(`jobs went from ${before} to ${after}`);
    if (existsSync(marker)) throw new Error('the attacker\'s job ran');
    test.page = page;
  });

  await test(8, 'No uncaught errors or CSP violations in the pages', async () => {
    test.page = page;
    if (problems.length) throw new Error(problems.join('\n     '));
  });

  const failed = results.filter((r) => !r.ok).length;
  console.log(`\n${failed ? 'FAIL' : 'PASS'}: ${results.length - failed}/${results.length} passed in ${((Date.now() - t0) / 1000).toFixed(1)} s; screenshots in ${ARTIFACTS}`);
  return failed === 0;
}

// ------------------------------------------------------------ screenshots ---

async function screenshots(dir) {
  await mkdir(dir, { recursive: true });
  const dark = join(ARTIFACTS, 'dark');
  await mkdir(dark, { recursive: true });
  const wb = await startWandbServer();
  cleanups.push(wb.stop);
  const d = await startDaemon({ logDir: ARTIFACTS, label: 'daemon-shots', env: wb.env, trace: GPU_TRACE });
  cleanups.push(d.stop, () => cancelActive(d));
  await prepareDataset(d.home);
  await scanFixtures(d);
  // two runs synced to the (test) wandb server, so the Sync column shows states
  for (const r of ['plain001', 'stats001']) await d.api('POST', `/runs/${r}/sync`, {});

  const job = (spec) => d.api('POST', '/jobs', { jobs: [{ user: 'ada', project: 'vision', ...spec }] }).then((r) => r.ids[0]);
  await job({ name: 'prepare-shards', command: 'for s in 0 1 2 3; do echo "shard $s: 12500 images"; done', gpus: { count: 0 } });
  const train = await job({
    name: 'resnet50-baseline',
    command: 'echo "loading imagenet@v2 (1.28M images)"; i=0; while [ $i -lt 300 ]; do i=$((i+1)); echo "epoch 1 step $((i*50))/15000  loss $((2400 - i*5))e-3  lr 3e-4  12.3 it/s"; sleep 0.5; done; echo finished with',
    args: { lr: '3e-4', batch: '256' }, gpus: { count: 2, min_memory_mib: 40960, model: 'A100' }, inputs: ['mnist@v2'],
  });
  await job({ name: 'eval-checkpoint', user: 'grace', command: 'echo "evaluating ckpt-12"; echo "error: CUDA out of memory" >&2; exit 3', gpus: { count: 1 } });
  const cancelled = await job({ name: 'sweep-lr-1e-2', command: 'sleep 600', gpus: { count: 1 } });
  await until('the training job to run', async () => {
    const j = await d.api('GET', `/jobs/${train}`);
    if (!['queued', 'assigned', 'running'].includes(j.state)) throw new Error(`it is ${j.state}: ${j.reason}`);
    return j.state === 'running';
  }, 20_000);
  // Submitted last: a job no host can take waits (with its reason) without
  // holding a reservation in front of the others.
  await job({ name: 'vit-large', user: 'grace', project: 'nlp', command: 'python train_vit.py', gpus: { count: 4, model: 'H100' } });
  await job({ name: 'bert-finetune', user: 'grace', project: 'nlp', command: 'echo "fine-tuning bert-base on sst2"; sleep 600', gpus: { count: 1, min_memory_mib: 20480 } });
  await d.api('POST', `/jobs/${cancelled}/cancel`).catch(() => {});
  await sleep(2500); // a few log lines and agent samples

  const ui = await uiUrl(d, { fromDisk: FROM_DISK });
  cleanups.push(ui.close);
  const browser = await launchBrowser();
  cleanups.push(() => browser.close());
  const problems = [];
  const runs = await d.api('GET', '/runs').catch(() => null);

  for (const scheme of ['light', 'dark']) {
    const page = await newPage(browser, problems, { colorScheme: scheme }, d.token);
    const out = scheme === 'light' ? dir : dark;
    const shot = async (name, route, ready) => {
      await page.goto(`${ui.url}/${route}`);
      try {
        await ready();
      } catch (e) {
        console.log(`WARN ${name}: ${e.message.split('\n')[0]}`);
      }
      await sleep(300);
      await page.screenshot({ path: join(out, `${name}.png`) });
      console.log(`wrote ${join(out, `${name}.png`)}`);
    };
    await shot('gpus', '#/gpus', async () => { await page.locator('.gpu').nth(2).waitFor(); await sleep(4000); });
    await shot('queue', '#/queue', () => page.locator('table.jobs tbody tr').nth(4).waitFor());
    await shot('job-log', `#/queue/${train}`, () => until('log lines', async () => (await page.locator('pre.log').textContent()).split('\n').length > 5));
    await shot('datasets', '#/datasets/mnist', () => page.locator('table.diff').waitFor());
    await shot('runs', '#/runs', () => page.locator('table.runs tbody tr').first().waitFor());
    const plain = runs?.find((r) => r.id === 'plain001');
    const other = runs?.find((r) => r.id === 'killed01');
    await shot('run-chart', `#/runs/plain001${other ? `?compare=${other.id}` : ''}`, () => page.locator('.chart-card .uplot canvas').first().waitFor());
    if (!plain) console.log('WARN run-chart: the daemon does not serve /runs yet');
    await shot('usage', '#/usage?by=user', () => page.locator('.usage-body:not([aria-busy]) .usage-table, .usage-body .state-empty').first().waitFor());
    await page.context().close();
  }
  if (problems.length) console.log(`WARN page problems:\n  ${problems.join('\n  ')}`);
  return true;
}

// ------------------------------------------------------------------- main ---

let ok = false;
try {
  ok = SHOTS ? await screenshots(SHOTS) : await runTests();
} catch (e) {
  console.log(`FAIL set-up: ${e.stack ?? e.message}`);
} finally {
  await cleanup();
}
process.exit(ok ? 0 : 1);
