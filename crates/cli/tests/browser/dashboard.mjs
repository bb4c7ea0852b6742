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
//   BERTH_REPOS       a directory of repositories r0 and r1 (cluster test)
// Exits 0 when the test passed; otherwise prints why and exits 1.

import { chromium } from 'playwright-core';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import http from 'node:http';
import { readFile } from 'node:fs/promises';
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

/** Writes a file in a workspace through the API. */
async function putFile(workspace, path, body) {
  const response = await fetch(`${base}/v1/workspaces/${workspace}/files/content?path=${encodeURIComponent(path)}`, {
    method: 'PUT',
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/octet-stream' },
    body,
  });
  assert.ok(response.ok, `write ${path}: ${response.status} ${await response.text()}`);
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

/**
 * The controls and headings shown past the window's sides, out of reach
 * unless in a box that scrolls sideways (a table's, a diff's): what a
 * narrow window hides even when the page itself does not scroll.
 */
const cutOff = (page) => page.evaluate(() => {
  const scrolls = (el) => {
    for (let up = el.parentElement; up; up = up.parentElement) {
      if (up === document.body || up === document.documentElement) return false;
      const { overflowX } = getComputedStyle(up);
      if (overflowX === 'auto' || overflowX === 'scroll') return true;
    }
    return false;
  };
  return [...document.querySelectorAll('a[href], button, input, select, h1, h2, [role="tab"], dd')]
    .filter((el) => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden')
    .filter((el) => {
      const rect = el.getBoundingClientRect();
      // Wholly off to the left is hidden on purpose (the skip link).
      if (rect.right <= 0) return false;
      return (rect.right > window.innerWidth + 1 || rect.left < -1) && !scrolls(el);
    })
    .map((el) => `${el.tagName.toLowerCase()} "${el.textContent.trim().slice(0, 40)}"`);
});

/** Logs in through the page's own form. */
async function logIn(page) {
  await page.goto(`${base}/`);
  await page.getByLabel('Token').fill(token);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByRole('heading', { name: 'Workspaces' }).waitFor();
}

/** Every page, with `workspace`'s and the job `edit`'s, fits 375 px. */
async function fitsANarrowWindow(page, workspace) {
  // A change with a long line, for the workspace's diff.
  await fetch(`${base}/v1/workspaces/${workspace}/files/content?path=r0/wide.txt`, {
    method: 'PUT',
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/octet-stream' },
    body: `${'a long line that no phone shows whole '.repeat(8)}\n`,
  }).then((r) => assert.ok(r.ok, `write: ${r.status}`));
  await logIn(page);
  const { jobs } = await api('GET', '/v1/jobs');
  const runId = jobs.find((job) => job.name === 'edit').last_run.id;
  const ended = async () => {
    const run = await api('GET', `/v1/runs/${runId}`);
    return run.state === 'running' ? null : run;
  };
  let run;
  for (const started = Date.now(); !(run = await ended());) {
    assert.ok(Date.now() - started < TIMEOUT, 'the run ended');
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  const succeeded = run.tasks.find((task) => task.state === 'completed' && task.url.includes('withoutasinglebreak'));
  assert.ok(succeeded, `the long-named repository's task completed: ${JSON.stringify(run.tasks)}`);
  const pages = [
    ['#/workspaces', () => page.locator(`tr[data-id="${workspace}"]`).waitFor()],
    [`#/workspaces/${workspace}`, () => page.locator('.term-box .xterm-rows').waitFor()],
    ['#/jobs', () => page.locator('tr[data-job="edit"] .state').waitFor()],
    [`#/runs/${run.id}`, () => page.locator('tbody tr[data-task]').first().waitFor()],
    // A task's log and its patch, drawn side by side.
    [`#/runs/${run.id}/tasks/${succeeded.id}`, () => page.locator('.d2h-file-side-diff').first().waitFor()],
    ['#/cluster', () => page.locator('#cluster-state', { hasText: 'Not in a cluster' }).waitFor()],
  ];
  const fits = async (what) => {
    assert.equal(await overflowing(page), 0, `${what} is no wider than 375 px`);
    assert.deepEqual(await cutOff(page), [], `${what} shows everything within 375 px`);
  };
  for (const [hash, shown] of pages) {
    await page.goto(`${base}/${hash}`);
    await shown();
    await fits(hash);
  }
  // A workspace's changes, files and spec too.
  await page.goto(`${base}/#/workspaces/${workspace}`);
  for (const [tab, shown] of [
    ['Changes', () => page.locator('.d2h-file-side-diff').first().waitFor()],
    ['Files', () => page.locator('ul.files button', { hasText: 'r0/' }).waitFor()],
    ['Spec', () => page.locator('#panel pre').first().waitFor()],
  ]) {
    await page.getByRole('tab', { name: tab }).click();
    await shown();
    await fits(`the ${tab} tab`);
  }
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
    // Coloured as Python: its keywords and strings marked apart.
    const highlighted = async () => {
      await page.locator('.d2h-ins .hljs-keyword', { hasText: 'return' }).first().waitFor();
      await page.locator('.d2h-ins .hljs-string', { hasText: 'hello from the diff' }).first().waitFor();
    };
    await highlighted();
    assert.equal(await page.locator('.d2h-file-side-diff').count(), 2, 'side by side: two columns');
    // Switching to the unified view redraws the same lines, in one column.
    await page.getByLabel('Diff view', { exact: true }).selectOption('line-by-line');
    await page.locator('.d2h-ins', { hasText: 'hello from the diff' }).first().waitFor();
    await highlighted();
    assert.equal(await page.locator('.d2h-file-side-diff').count(), 0, 'unified: one column');
    await page.locator('.d2h-file-list-wrapper').waitFor();
  },

  async a_workspaces_labels_files_and_actions(page) {
    const workspace = env('BERTH_WORKSPACE');
    const made = await berth('up', env('BERTH_SPEC'), '--name', 'labelled', '--label', 'team=docs');
    const labelled = made.trim().split(/\s+/).pop();
    try {
      await logIn(page);
      // Filtered by label: only the labelled workspace stays.
      await page.locator(`tr[data-id="${workspace}"]`).waitFor();
      await page.locator(`tr[data-id="${labelled}"] td:nth-child(4)`, { hasText: 'team=docs' }).waitFor();
      await page.getByLabel('Filter by label').fill('team=docs');
      await page.getByLabel('Filter by label').press('Enter');
      await page.locator(`tr[data-id="${workspace}"]`).waitFor({ state: 'detached' });
      assert.equal(await page.locator('tbody tr[data-id]').count(), 1);
    } finally {
      await berth('rm', labelled).catch(() => {});
    }

    // Its files, browsed and viewed. A file named like markup (a workspace
    // names its files as it likes) shows as its name; a large one shows
    // its start, the rest not read.
    const trap = '<img src=x onerror=window.__owned=1>';
    await putFile(workspace, `r0/${trap}`, 'trap\n');
    await putFile(workspace, 'r0/big.txt', 'x'.repeat(3 << 20));
    await page.goto(`${base}/#/workspaces/${workspace}`);
    await page.getByRole('tab', { name: 'Files' }).click();
    await page.locator('ul.files button', { hasText: 'r0/' }).click();
    await page.locator('ul.files button').filter({ hasText: trap }).waitFor();
    assert.equal(await page.locator('ul.files img').count(), 0, 'no element made from a file name');
    await page.locator('ul.files button', { hasText: 'version.txt' }).click();
    await page.locator('pre.viewer', { hasText: 'repo 0' }).waitFor();
    await page.locator('ul.files button', { hasText: 'big.txt' }).click();
    await page.locator('pre.viewer', { hasText: `[only the first ${1 << 20} bytes are shown]` }).waitFor();
    assert.equal(await page.evaluate(() => window.__owned), undefined);

    // Reset: the changes go.
    const status = page.getByRole('status');
    const button = (name) => page.getByRole('button', { name, exact: true });
    await button('Reset').click();
    await status.filter({ hasText: 'Reset: done' }).waitFor();
    const { changes } = await api('GET', `/v1/workspaces/${workspace}/changes`);
    assert.deepEqual(changes.filter((c) => c.path.includes('big.txt')), [], 'reset dropped big.txt');
    // Snapshot: the page names the snapshot taken, which holds the
    // workspace as it was.
    await putFile(workspace, 'r0/kept.txt', 'kept\n');
    await button('Snapshot').click();
    const taken = status.filter({ hasText: /^Snapshot \S+ taken$/ });
    await taken.waitFor();
    const snapshot = (await taken.textContent()).split(' ')[1];
    const kept = () => fetch(`${base}/v1/workspaces/${workspace}/files/content?path=r0/kept.txt`, {
      headers: { Authorization: `Bearer ${token}` },
    }).then((r) => r.status);
    await api('POST', `/v1/workspaces/${workspace}/reset`, {});
    assert.equal(await kept(), 404, 'reset to the provisioned state');
    await api('POST', `/v1/workspaces/${workspace}/reset`, { to: snapshot });
    assert.equal(await kept(), 200, `reset to snapshot ${snapshot}`);
    // Stop and start, the state following.
    await button('Stop').click();
    await page.locator('#workspace-state', { hasText: 'stopped' }).waitFor();
    await button('Start').click();
    await page.locator('#workspace-state', { hasText: 'running' }).waitFor();
    // Fork opens the fork's page; removing it (once confirmed) leads back
    // to the list, without it.
    await button('Fork').click();
    await page.waitForURL((url) => url.hash.startsWith('#/workspaces/') && !url.hash.endsWith(workspace));
    const fork = decodeURIComponent(new URL(page.url()).hash.split('/').pop());
    await page.locator('#workspace-state', { hasText: 'running' }).waitFor();
    try {
      page.once('dialog', (dialog) => dialog.accept());
      await button('Remove').click();
      await page.waitForURL(/#\/workspaces$/);
      await page.locator(`tr[data-id="${workspace}"]`).waitFor();
      await page.locator(`tr[data-id="${fork}"]`).waitFor({ state: 'detached' });
    } finally {
      await berth('rm', fork).catch(() => {});
    }
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
    // A click held while the table is redrawn (the task's duration moves
    // on every second) still opens the task.
    const id = await running.getAttribute('data-task');
    const link = page.locator(`tr[data-task="${id}"] a`);
    const box = await link.boundingBox();
    const held = await page.locator(`tr[data-task="${id}"] td:nth-child(5)`).textContent();
    await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
    await page.mouse.down();
    await page.waitForFunction(([id, held]) => {
      const cell = document.querySelector(`tr[data-task="${id}"] td:nth-child(5)`);
      return cell && cell.textContent !== held;
    }, [id, held]);
    await page.mouse.up();
    await page.waitForURL(/\/tasks\//);
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
    // Once the table is drawn again with the filter.
    await page.getByText('1 task(s), page 1 of 1').waitFor();
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
    // The file downloaded is the task's patch.
    const [saved] = await Promise.all([page.waitForEvent('download'), download.click()]);
    assert.match(saved.suggestedFilename(), /^r0\.patch$/);
    const patch = await readFile(await saved.path(), 'utf8');
    assert.match(patch, /^\+\+\+ b\/version\.txt$/m);
    assert.match(patch, /^\+bumped$/m);
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

  async a_nodes_state_follows_its_load(page) {
    await logIn(page);
    await page.getByRole('link', { name: 'Cluster' }).click();
    await page.locator('body[data-live="on"]').waitFor();
    // The node's state and load as the page shows them, without a reload.
    const shows = (state, load) => page.waitForFunction(([state, load]) => {
      const row = document.querySelector('tr[data-node="worker"]');
      const cells = row ? [...row.cells].map((cell) => cell.textContent) : [];
      return cells[1] === state && cells[4] === load;
    }, [state, load]);
    await shows('idle', '0 of 2');
    // Jobs that hold one of its slots each until they are cancelled.
    const repos = env('BERTH_REPOS');
    const hold = (name, repository) => api('POST', '/v1/jobs', {
      name,
      runtime: 'local',
      repositories: [{ url: `${repos}/${repository}` }],
      steps: [{ name: 'hold', run: 'sleep 600' }],
    });
    await hold('hold-one', 'r0');
    await shows('busy', '1 of 2');
    const second = await hold('hold-two', 'r1');
    await shows('full', '2 of 2');
    await api('POST', `/v1/runs/${second.id}/cancel`);
    await shows('busy', '1 of 2');
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
    // While it runs, how long it has taken and how long it will take yet,
    // from the tasks that ended.
    await page.locator('#run-remaining', { hasText: /^about \d+(s|m \d+s|h \d+m)$/ }).waitFor();
    assert.match(await page.locator('#run-elapsed').textContent(), /^\d+(s|m \d+s)$/);
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
    // Names, labels and repositories too long for the window, with no
    // place to break them (the job's second repository's too).
    const made = await berth('up', env('BERTH_SPEC'),
      '--name', 'aworkspacewhosenamegoesonandonwithoutabreak',
      '--label', 'alabelwhosekeygoesonandon=andwhosevaluegoesonandontoo');
    const workspace = made.trim().split(/\s+/).pop();
    try {
      await fitsANarrowWindow(page, workspace);
    } finally {
      await berth('rm', workspace).catch(() => {});
    }
  },

  async every_control_is_labelled_and_reached_by_the_keyboard(page) {
    // Every control shown says what it is to a screen reader: a label, an
    // aria-label or its text.
    const unlabelled = () => page.evaluate(() => [...document.querySelectorAll('button, input, select, textarea, a[href], [role="tab"]')]
      .filter((el) => el.getClientRects().length > 0)
      .filter((el) => {
        if (el.getAttribute('aria-label') || el.getAttribute('aria-labelledby')) return false;
        if (['INPUT', 'SELECT', 'TEXTAREA'].includes(el.tagName)) return el.labels.length === 0;
        return el.textContent.trim() === '';
      })
      .map((el) => el.outerHTML.slice(0, 100)));
    /** Presses Tab until `target` has the focus; fails after `limit`. */
    const tabTo = async (target, limit = 40) => {
      for (let i = 0; i < limit; i += 1) {
        await page.keyboard.press('Tab');
        if (await target.evaluate((el) => el === document.activeElement)) return;
      }
      assert.fail(`Tab never reached ${target}`);
    };
    await page.goto(`${base}/`);
    await page.getByRole('heading', { name: 'Log in to berth' }).waitFor();
    assert.deepEqual(await unlabelled(), [], 'the login form');
    // Logged in with the keyboard alone: the token field has the focus.
    await page.keyboard.type(token);
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: 'Workspaces' }).waitFor();
    const workspace = env('BERTH_WORKSPACE');
    await page.locator(`tr[data-id="${workspace}"]`).waitFor();
    assert.deepEqual(await unlabelled(), [], 'the workspaces');

    // To the jobs, the run and a task, by Tab and Enter.
    await tabTo(page.getByRole('link', { name: 'Jobs' }));
    await page.keyboard.press('Enter');
    const lastRun = page.locator('tr[data-job="edit"] td:nth-child(2) a');
    await lastRun.waitFor();
    assert.deepEqual(await unlabelled(), [], 'the jobs');
    await tabTo(lastRun);
    await page.keyboard.press('Enter');
    await page.waitForURL(/#\/runs\/[^/]+$/);
    await page.locator('tbody tr[data-task]').first().waitFor();
    assert.deepEqual(await unlabelled(), [], 'the run');
    // Its filter, set from the keyboard.
    await tabTo(page.getByLabel('Repository', { exact: true }));
    await page.keyboard.type('r1');
    await page.getByText('1 task(s), page 1 of 1').waitFor();
    const task = page.locator('tbody tr[data-task] a');
    await tabTo(task);
    await page.keyboard.press('Enter');
    await page.waitForURL(/\/tasks\//);
    await page.locator('#task-log').waitFor();
    assert.deepEqual(await unlabelled(), [], 'the task');

    // A workspace's views, by the arrow keys once a tab has the focus.
    await page.goto(`${base}/#/workspaces/${workspace}`);
    await page.getByRole('tab', { name: 'Spec' }).focus();
    await page.keyboard.press('Enter');
    await page.getByRole('tab', { name: 'Spec', selected: true }).waitFor();
    assert.deepEqual(await unlabelled(), [], 'the workspace');
    await page.keyboard.press('ArrowRight');
    await page.getByRole('tab', { name: 'Terminal', selected: true }).waitFor();
    await page.keyboard.press('ArrowLeft');
    await page.getByRole('tab', { name: 'Spec', selected: true }).waitFor();
    await page.keyboard.press('ArrowLeft');
    await page.getByRole('tab', { name: 'Files', selected: true }).waitFor();
    await page.locator('ul.files button', { hasText: 'r0/' }).waitFor();
    assert.deepEqual(await unlabelled(), [], 'the files');
    await page.goto(`${base}/#/cluster`);
    await page.locator('#cluster-state').filter({ hasText: /./ }).waitFor();
    assert.deepEqual(await unlabelled(), [], 'the cluster');
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

  // The answer to the cancel is the run as it was just after the
  // cancellation was recorded, its task still running; the run's events
  // may tell the page that the task ended before that answer arrives. Here
  // the answer is held until they have: the page still shows the task
  // cancelled once the answer is in.
  async a_cancels_late_answer_does_not_bring_its_ended_task_back(page) {
    await logIn(page);
    await page.getByRole('link', { name: 'Jobs' }).click();
    await page.locator('tr[data-job="slow"] td:nth-child(2) a').click();
    await page.locator('tbody tr[data-state="running"]').waitFor({ timeout: TIMEOUT });
    await page.route('**/v1/runs/*/cancel', async (route) => {
      const answer = await route.fetch();
      // As the server answers when its runner has not yet stopped the
      // task (nearly always): the task running, and with it the run.
      const told = await answer.json();
      told.state = 'running';
      told.ended_at = null;
      told.tasks = told.tasks.map((task) => ({ ...task, state: 'running', ended_at: null }));
      await page.locator('tbody tr[data-state="cancelled"]').waitFor({ timeout: TIMEOUT });
      await route.fulfill({ response: answer, json: told });
    });
    await page.getByRole('button', { name: 'Cancel run' }).click();
    await page.locator('#status', { hasText: 'Cancel: done' }).waitFor({ timeout: TIMEOUT });
    // Whatever the answer made the page draw is drawn by the next frames.
    for (let i = 0; i < 2; i += 1) {
      await page.evaluate(() => new Promise((done) => requestAnimationFrame(() => done())));
    }
    assert.equal(await page.locator('tbody tr[data-state="running"]').count(), 0);
    await page.locator('tbody tr[data-state="cancelled"]').waitFor({ timeout: TIMEOUT });
    await page.locator('h1 .state', { hasText: 'cancelled' }).waitFor({ timeout: TIMEOUT });
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
// Every byte comes from the server: the page asks no other host for
// anything (no CDN, no font), and nothing it loads breaks its own
// Content-Security-Policy (which would leave it half drawn).
const served = new URL(base).hostname;
page.on('request', (request) => {
  const url = new URL(request.url());
  if (['http:', 'https:', 'ws:', 'wss:'].includes(url.protocol) && url.hostname !== served) {
    problems.push(`the page asked another host: ${request.url()}`);
  }
});
await context.addInitScript(() => {
  document.addEventListener('securitypolicyviolation', (event) => {
    console.error(`content security policy violated: ${event.violatedDirective} by ${event.blockedURI}`);
  });
});
page.on('console', (message) => {
  if (message.text().startsWith('content security policy violated')) problems.push(message.text());
});
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
