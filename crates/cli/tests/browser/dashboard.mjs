// One browser test of berth's dashboard, named by the first argument, in
// Debian's chromium driven headless by playwright-core, against the running
// `berth serve` the environment names:
//   BERTH_URL         the server's address (http://127.0.0.1:PORT)
//   BERTH_TOKEN       its token
//   BERTH_WORKSPACE   a running sandbox workspace's id
//   BERTH_SCREENSHOT  where to save the test's screenshot (PNG)
//   BERTH_CLI         the berth binary, BERTH_HOME its home and BERTH_SPEC
//                     a workspace spec, for the tests that use the CLI too
//   BERTH_KILL_PID    the process of a cluster node to kill (cluster test)
// Exits 0 when the test passed; otherwise prints why and exits 1.

import { chromium } from 'playwright-core';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import http from 'node:http';
import assert from 'node:assert/strict';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

const base = env('BERTH_URL');
const token = env('BERTH_TOKEN');
const screenshot = env('BERTH_SCREENSHOT');
/** How long any one wait may take. */
const TIMEOUT = 60_000;

/** The API, as any client calls it, to set things up and check outcomes. */
async function api(method, path, body) {
  const response = await fetch(`${base}${path}`, {
    method,
    headers: {
      Authorization: `Bearer ${token}`,
      ...(body === undefined ? {} : { 'Content-Type': 'application/json' }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/** Runs the berth CLI on the server's home; its standard output. */
async function berth(...args) {
  const { stdout } = await promisify(execFile)(env('BERTH_CLI'), args, { env: process.env });
  return stdout;
}

/** Counts, in the page, the events of each type its EventSources get. */
async function countEvents(page) {
  await page.addInitScript(() => {
    window.__events = {};
    const Original = window.EventSource;
    window.EventSource = class extends Original {
      addEventListener(type, listener, options) {
        super.addEventListener(type, (event) => {
          if (this.url.endsWith('/v1/events')) window.__events[type] = (window.__events[type] || 0) + 1;
          listener(event);
        }, options);
      }
    };
  });
}

/** Whether the page is wider than its window (it scrolls sideways). */
const overflowing = (page) => page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);

/** Logs in through the page's own form. */
async function logIn(page) {
  await page.goto(`${base}/`);
  await page.getByLabel('Token').fill(token);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByRole('heading', { name: 'Workspaces' }).waitFor();
}

const tests = {
  async login_with_the_token_and_a_wrong_token_refused(page) {
    await page.goto(`${base}/`);
    const form = page.getByRole('heading', { name: 'Log in to berth' });
    await form.waitFor();
    await page.getByLabel('Token').fill('not-the-token');
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.getByRole('alert').filter({ hasText: 'Wrong token.' }).waitFor();
    assert.equal(await page.getByRole('heading', { name: 'Workspaces' }).count(), 0);
    await page.getByLabel('Token').fill(token);
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.getByRole('heading', { name: 'Workspaces' }).waitFor();
    const workspace = env('BERTH_WORKSPACE');
    await page.locator(`tr[data-id="${workspace}"]`).waitFor();
    const cookies = await page.context().cookies();
    const session = cookies.find((c) => c.name === 'berth_session');
    assert.ok(session, 'the session cookie is set');
    assert.ok(session.httpOnly, 'the cookie is HttpOnly');
    assert.equal(session.sameSite, 'Strict');
    assert.notEqual(session.value, token, 'the cookie is not the token');
    // A reload keeps the session: the token is asked for once.
    await page.reload();
    await page.getByRole('heading', { name: 'Workspaces' }).waitFor();
  },

  async workspace_terminal_echoes_hello(page) {
    await logIn(page);
    const workspace = env('BERTH_WORKSPACE');
    await page.locator(`tr[data-id="${workspace}"] a`).click();
    await page.getByRole('tab', { name: 'Terminal' }).waitFor();
    const terminal = page.locator('.term-box .xterm-rows');
    await terminal.waitFor();
    await page.locator('.term-box').click();
    await page.keyboard.type('echo hel""lo\n');
    // The command line shows `hel""lo`; only the output is `hello` alone.
    await page.waitForFunction(
      () => [...document.querySelectorAll('.term-box .xterm-rows > div')]
        .some((row) => row.textContent.trim() === 'hello'),
      null,
      { timeout: TIMEOUT },
    );
    // The terminal follows its box: in a narrower window the program in
    // the workspace sees fewer columns.
    const sizes = () => page.evaluate(() => [...document.querySelectorAll('.term-box .xterm-rows > div')]
      .map((row) => row.textContent.trim().match(/^size (\d+) (\d+)$/))
      .filter(Boolean)
      .map((match) => Number(match[2])));
    const size = async () => {
      const before = (await sizes()).length;
      await page.keyboard.type('echo size $(stty size)\n');
      await page.waitForFunction(
        (count) => [...document.querySelectorAll('.term-box .xterm-rows > div')]
          .filter((row) => /^size \d+ \d+$/.test(row.textContent.trim())).length > count,
        before,
        { timeout: TIMEOUT },
      );
      return (await sizes()).pop();
    };
    const wide = await size();
    await page.setViewportSize({ width: 640, height: 800 });
    const narrow = await size();
    assert.ok(narrow < wide, `the terminal narrowed from ${wide} to ${narrow} columns`);
    await page.setViewportSize({ width: 1280, height: 800 });
  },

  async workspace_diff_shows_the_changed_lines(page) {
    const workspace = env('BERTH_WORKSPACE');
    await fetch(`${base}/v1/workspaces/${workspace}/files/content?path=r0/greeting.py`, {
      method: 'PUT',
      headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/octet-stream' },
      body: 'def greet():\n    return "hello from the diff"\n',
    }).then((r) => assert.ok(r.ok, `write: ${r.status}`));
    await logIn(page);
    await page.goto(`${base}/#/workspaces/${workspace}`);
    await page.getByRole('tab', { name: 'Changes' }).click();
    const diff = page.locator('.d2h-wrapper');
    await diff.waitFor({ timeout: TIMEOUT });
    await page.locator('.d2h-file-name', { hasText: 'r0/greeting.py' }).first().waitFor();
    await page.locator('.d2h-ins', { hasText: 'hello from the diff' }).first().waitFor();
    // Switching to the unified view redraws the same lines.
    await page.getByLabel('Diff view', { exact: true }).selectOption('line-by-line');
    await page.locator('.d2h-ins', { hasText: 'hello from the diff' }).first().waitFor();
    await page.locator('.d2h-file-list-wrapper').waitFor();
  },

  async a_cross_site_request_with_the_cookie_is_refused(page) {
    await logIn(page);
    const workspace = env('BERTH_WORKSPACE');
    // Another port of the same host: the same site to the browser, which
    // therefore sends the SameSite=Strict cookie along. Only the Origin
    // tells the server that this page is not its dashboard.
    const attacker = http.createServer((req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/html' });
      res.end(`<!doctype html><title>elsewhere</title><script>
        fetch(${JSON.stringify(`${base}/v1/workspaces/${workspace}/stop`)},
              { method: 'POST', credentials: 'include', mode: 'no-cors' })
          .finally(() => { document.title = 'sent'; });
      </script>`);
    });
    await new Promise((resolve) => attacker.listen(0, '127.0.0.1', resolve));
    try {
      const stop = page.waitForResponse((r) => r.url().endsWith(`/v1/workspaces/${workspace}/stop`), { timeout: TIMEOUT });
      await page.goto(`http://127.0.0.1:${attacker.address().port}/`);
      const response = await stop;
      // The browser holds the session cookie for the server's host, which
      // a page on another port of it shares.
      const cookies = await page.context().cookies(`http://127.0.0.1:${attacker.address().port}/`);
      assert.ok(cookies.some((c) => c.name === 'berth_session'), 'the cookie applies to the other page');
      assert.equal(response.status(), 403);
      await page.waitForFunction(() => document.title === 'sent');
    } finally {
      attacker.close();
    }
    const after = await api('GET', `/v1/workspaces/${workspace}`);
    assert.equal(after.state, 'running', 'the workspace was not stopped');
  },
  async start_a_run_and_see_it_live(page) {
    await logIn(page);
    await page.getByRole('link', { name: 'Jobs' }).click();
    await page.getByRole('button', { name: 'Run edit again' }).click();
    await page.waitForURL(/#\/runs\//);
    const runUrl = page.url();
    // The tasks change state in the open page: queued or running first,
    // then running with a log that grows, then ended.
    const running = page.locator('tbody tr[data-state="running"]').first();
    await running.waitFor({ timeout: TIMEOUT });
    await running.getByRole('link').click();
    const log = page.locator('#task-log');
    await log.filter({ hasText: 'working 2' }).waitFor({ timeout: TIMEOUT });
    const early = (await log.textContent()).length;
    await log.filter({ hasText: 'working 6' }).waitFor({ timeout: TIMEOUT });
    assert.ok((await log.textContent()).length > early, 'the log grew while the task ran');
    await page.locator('#task-log .step', { hasText: 'bump' }).first().waitFor();
    await page.locator('#task-exit').filter({ hasText: /^\d+$/ }).waitFor({ timeout: TIMEOUT });
    await page.goto(runUrl);
    await page.locator('#run-counts').filter({ hasText: '1 completed, 1 failed' }).waitFor({ timeout: TIMEOUT });
    assert.equal(await page.locator('tbody tr[data-state="running"]').count(), 0);
  },

  async a_failed_task_shows_its_exit_code_and_log_tail(page) {
    await logIn(page);
    await page.getByRole('link', { name: 'Jobs' }).click();
    await page.locator('tr[data-job="edit"] td:nth-child(2) a').click();
    await page.getByLabel('State', { exact: true }).selectOption('failed');
    const failed = page.locator('tbody tr[data-state="failed"]');
    await failed.waitFor({ timeout: TIMEOUT });
    assert.equal(await page.locator('tbody tr').count(), 1, 'only the failed task is listed');
    await failed.getByRole('link').click();
    await page.locator('#task-exit').filter({ hasText: '7' }).waitFor({ timeout: TIMEOUT });
    await page.locator('#task-failed-step').filter({ hasText: 'bump' }).waitFor();
    // The log's tail, stderr told apart.
    await page.locator('#task-log .stderr', { hasText: 'no luck' }).waitFor({ timeout: TIMEOUT });
    await page.locator('#task-log').filter({ hasText: 'working 8' }).waitFor();
  },

  async a_succeeded_task_shows_its_diff(page) {
    await logIn(page);
    await page.getByRole('link', { name: 'Jobs' }).click();
    await page.locator('tr[data-job="edit"] td:nth-child(2) a').click();
    await page.getByLabel('Repository', { exact: true }).fill('r0');
    const completed = page.locator('tbody tr[data-state="completed"]');
    await completed.waitFor({ timeout: TIMEOUT });
    await completed.getByRole('link').click();
    await page.locator('.d2h-file-name', { hasText: 'version.txt' }).first().waitFor({ timeout: TIMEOUT });
    await page.locator('.d2h-ins', { hasText: 'bumped' }).first().waitFor();
    // The file list counts the lines added and removed.
    await page.locator('.d2h-file-list .d2h-lines-added', { hasText: '+1' }).first().waitFor();
    const download = page.getByRole('link', { name: 'Download patch' });
    assert.match(await download.getAttribute('download'), /\.patch$/);
    await page.locator('.d2h-ins', { hasText: 'bumped' }).first().scrollIntoViewIfNeeded();
  },

  async a_workspace_made_from_the_cli_appears_live(page) {
    await countEvents(page);
    const lists = [];
    page.on('request', (request) => {
      if (new URL(request.url()).pathname === '/v1/workspaces') lists.push(request.url());
    });
    await logIn(page);
    await page.locator('body[data-live="on"]').waitFor();
    const before = await page.locator('tbody tr[data-id]').count();
    // From here on, each reading of the list is counted against the
    // changes pushed.
    await page.evaluate(() => { window.__events = {}; });
    lists.length = 0;
    const made = await berth('up', env('BERTH_SPEC'), '--name', 'made-from-the-cli');
    const id = made.trim().split(/\s+/).pop();
    try {
      // Without a reload: the row comes, then its state follows.
      const row = page.locator(`tr[data-id="${id}"]`);
      await row.waitFor({ timeout: TIMEOUT });
      await row.locator('.state', { hasText: 'running' }).waitFor({ timeout: TIMEOUT });
      assert.equal(await page.locator('tbody tr[data-id]').count(), before + 1);
      // Every reading of the list answered a change the server pushed:
      // the page does not ask again and again.
      const events = await page.evaluate(() => window.__events);
      assert.ok(events.workspaces >= 1, `a workspaces event came: ${JSON.stringify(events)}`);
      assert.ok(lists.length <= (events.ready || 0) + events.workspaces,
        `${lists.length} list requests for ${JSON.stringify(events)}`);
      // Removed from the CLI, it goes from the page too.
      await berth('rm', id);
      await row.waitFor({ state: 'detached', timeout: TIMEOUT });
    } finally {
      await berth('rm', id).catch(() => {});
    }
  },

  async the_cluster_page_lists_the_nodes_and_drops_a_killed_one(page) {
    await logIn(page);
    await page.getByRole('link', { name: 'Cluster' }).click();
    const kept = page.locator('tr[data-node="node-kept"]');
    const killed = page.locator('tr[data-node="node-killed"]');
    await kept.waitFor({ timeout: TIMEOUT });
    await killed.waitFor({ timeout: TIMEOUT });
    const cells = await kept.locator('td').allTextContents();
    assert.equal(cells[0], 'node-kept');
    assert.equal(cells[1], 'idle');
    assert.ok(cells[2].split(', ').includes('local'), `runtimes: ${cells[2]}`);
    assert.ok(['x86_64', 'aarch64'].includes(cells[3]), `architecture: ${cells[3]}`);
    assert.equal(cells[4], '0 of 3');
    assert.match(cells[5], /^\d+$/);
    assert.match(cells[6], /^\d+s ago$/);
    await page.locator('body[data-live="on"]').waitFor();
    process.kill(Number(env('BERTH_KILL_PID')), 'SIGKILL');
    // Gone once its record's TTL passed, without a reload.
    await killed.waitFor({ state: 'detached', timeout: TIMEOUT });
    assert.equal(await kept.count(), 1, 'the other node stays');
    await page.locator('#cluster-state', { hasText: '1 node(s) up.' }).waitFor();
  },

  async a_run_of_a_thousand_tasks_renders_quickly(page) {
    await logIn(page);
    const { jobs } = await api('GET', '/v1/jobs');
    const run = jobs.find((job) => job.name === 'many').last_run;
    const started = Date.now();
    await page.goto(`${base}/#/runs/${run.id}`);
    await page.locator('#run-counts', { hasText: /^1000: / }).waitFor();
    const rows = page.locator('tbody tr[data-task]');
    await page.waitForFunction(() => document.querySelectorAll('tbody tr[data-task]').length === 50);
    const elapsed = Date.now() - started;
    assert.ok(elapsed < 2000, `the first page of tasks took ${elapsed} ms`);
    console.log(`the first page of a thousand tasks drawn in ${elapsed} ms`);
    assert.equal(await overflowing(page), 0, 'the page is no wider than the window');
    // Paged: the next page holds the next fifty.
    await page.getByRole('button', { name: 'Next' }).click();
    await page.getByText('1000 task(s), page 2 of 20').waitFor();
    assert.equal(await rows.count(), 50);
    assert.match(await rows.first().locator('a').textContent(), /many-0050$/);
    // Searching finds one task among the thousand.
    await page.getByLabel('Repository', { exact: true }).fill('many-0999');
    await page.getByText('1 task(s), page 1 of 1').waitFor();
    assert.match(await rows.first().locator('a').textContent(), /many-0999$/);
  },

  async every_page_fits_a_narrow_window(page) {
    await page.setViewportSize({ width: 375, height: 740 });
    await logIn(page);
    const workspace = env('BERTH_WORKSPACE');
    const { jobs } = await api('GET', '/v1/jobs');
    const run = await api('GET', `/v1/runs/${jobs.find((job) => job.name === 'edit').last_run.id}`);
    const pages = [
      ['#/workspaces', () => page.locator(`tr[data-id="${workspace}"]`).waitFor()],
      [`#/workspaces/${workspace}`, () => page.locator('.term-box .xterm-rows').waitFor()],
      ['#/jobs', () => page.locator('tr[data-job="edit"]').waitFor()],
      [`#/runs/${run.id}`, () => page.locator('tbody tr[data-task]').first().waitFor()],
      [`#/runs/${run.id}/tasks/${run.tasks[0].id}`, () => page.locator('#task-log').waitFor()],
      ['#/cluster', () => page.locator('#cluster-state', { hasText: 'Not in a cluster' }).waitFor()],
    ];
    for (const [hash, shown] of pages) {
      await page.goto(`${base}/${hash}`);
      await shown();
      assert.equal(await overflowing(page), 0, `${hash} is no wider than 375 px`);
    }
    // A workspace's files and spec too.
    await page.goto(`${base}/#/workspaces/${workspace}`);
    for (const tab of ['Changes', 'Files', 'Spec']) {
      await page.getByRole('tab', { name: tab }).click();
      await page.locator('#panel > *').first().waitFor();
      assert.equal(await overflowing(page), 0, `the ${tab} tab is no wider than 375 px`);
    }
  },

  async cancel_a_run_and_its_tasks_end(page) {
    await logIn(page);
    await page.getByRole('link', { name: 'Jobs' }).click();
    await page.locator('tr[data-job="slow"] td:nth-child(2) a').click();
    await page.locator('tbody tr[data-state="running"]').waitFor({ timeout: TIMEOUT });
    await page.getByRole('button', { name: 'Cancel run' }).click();
    await page.locator('tbody tr[data-state="cancelled"]').waitFor({ timeout: TIMEOUT });
    await page.locator('h1 .state', { hasText: 'cancelled' }).waitFor({ timeout: TIMEOUT });
    assert.equal(await page.locator('tbody tr[data-state="running"]').count(), 0);
  },
};

const name = process.argv[2];
const test = tests[name];
if (!test) {
  console.error(`no browser test named ${name}; there are: ${Object.keys(tests).join(', ')}`);
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});
let failed = false;
const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
context.setDefaultTimeout(TIMEOUT);
const page = await context.newPage();
const problems = [];
page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
try {
  await test(page);
  assert.deepEqual(problems, [], 'the page raised no error');
  console.log(`${name}: passed`);
} catch (err) {
  failed = true;
  console.error(`${name}: FAILED\n${err.stack || err}`);
  if (problems.length) console.error(problems.join('\n'));
} finally {
  await page.screenshot({ path: screenshot, fullPage: false }).catch((err) => console.error(`no screenshot: ${err.message}`));
  await browser.close();
}
process.exit(failed ? 1 : 0);
