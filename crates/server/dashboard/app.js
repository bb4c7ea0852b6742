// The dashboard: a page per hash route (#/workspaces, #/workspaces/ID, …),
// each drawn from the API and kept live while it is shown. Every text that
// comes from the server (names, labels, paths, logs) is set as text, never
// as HTML: a workspace controls much of it.

import { ApiError, del, get, getBytes, login, logout, onListChange, post, socketUrl, whenUnauthorized } from './api.js';
import { Terminal } from './vendor/xterm/xterm.mjs';
import { FitAddon } from './vendor/xterm-addon-fit/addon-fit.mjs';

const main = document.getElementById('main');
const status = document.getElementById('status');

/** An element with attributes (on* are listeners) and children. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else el.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function say(message) {
  status.textContent = message;
}

/** How long ago a time in milliseconds since the epoch was, in words. */
export function age(ms) {
  const seconds = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (seconds < 60) return `${seconds}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h`;
  return `${Math.floor(seconds / 86400)}d`;
}

/** A duration in seconds, in words. */
export function duration(seconds) {
  if (seconds === undefined || seconds === null) return '';
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

function stateBadge(state) {
  return h('span', { class: `state state-${state}` }, state);
}

function labelsText(labels) {
  return Object.entries(labels || {}).map(([k, v]) => `${k}=${v}`).join(', ');
}

/**
 * Sets `body`'s rows to `rows` (`tr` elements, each with a unique
 * `data-key`), keeping each row already shown and redrawing only its cells
 * that changed: a list redrawn as it changes must not swallow a click on
 * a link or button in it, which a row replaced between the press and the
 * release would. `empty` is shown when there is no row.
 */
function setRows(body, rows, empty) {
  const shown = new Map([...body.children].filter((row) => row.dataset.key).map((row) => [row.dataset.key, row]));
  const kept = rows.map((fresh) => {
    const row = shown.get(fresh.dataset.key);
    if (!row) return fresh;
    for (const { name, value } of fresh.attributes) row.setAttribute(name, value);
    [...fresh.cells].forEach((cell, i) => {
      if (row.cells[i].outerHTML !== cell.outerHTML) row.cells[i].replaceWith(cell);
    });
    return row;
  });
  if (kept.length === 0) kept.push(empty);
  // Rows in place stay put; only those out of place move.
  let at = body.firstChild;
  for (const row of kept) {
    if (row === at) at = at.nextSibling;
    else body.insertBefore(row, at);
  }
  while (at) {
    const next = at.nextSibling;
    at.remove();
    at = next;
  }
}

/**
 * Runs an action from a button, telling the user how it went: what the
 * action returns when it is a sentence, else that it is done.
 */
async function act(button, what, action) {
  button.disabled = true;
  say(`${what}…`);
  try {
    const told = await action();
    say(typeof told === 'string' ? told : `${what}: done`);
  } catch (err) {
    say(`${what} failed: ${err.message}`);
  } finally {
    button.disabled = false;
  }
}

// ---- Pages ------------------------------------------------------------

/** What the page shown now must stop (timers, streams, sockets). */
let cleanups = [];
function onLeave(cleanup) {
  cleanups.push(cleanup);
}

/**
 * Calls `refresh` now and whenever the server says that one of `lists`
 * changed, while the page is shown: nothing is asked for again unless it
 * changed.
 */
function live(lists, refresh) {
  onLeave(onListChange(lists, async () => {
    try {
      await refresh();
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 401)) say(err.message);
    }
  }));
}

const pages = [];
function page(pattern, render) {
  pages.push({ pattern, render });
}

async function route() {
  for (const cleanup of cleanups.splice(0)) cleanup();
  const path = location.hash.replace(/^#/, '') || '/workspaces';
  for (const { pattern, render } of pages) {
    const match = path.match(pattern);
    if (match) {
      main.replaceChildren();
      for (const link of document.querySelectorAll('header nav a')) {
        const current = path.startsWith(link.getAttribute('href').slice(1));
        if (current) link.setAttribute('aria-current', 'page');
        else link.removeAttribute('aria-current');
      }
      try {
        await render(...match.slice(1).map(decodeURIComponent));
      } catch (err) {
        if (!(err instanceof ApiError && err.status === 401)) {
          main.append(h('p', { class: 'error', role: 'alert' }, err.message));
        }
      }
      return;
    }
  }
  main.replaceChildren(h('h1', {}, 'Not found'), h('p', {}, `No page at ${path}.`));
}

// Workspaces ------------------------------------------------------------

page(/^\/workspaces$/, async () => {
  const filter = h('input', {
    id: 'label-filter',
    type: 'search',
    placeholder: 'key=value,…',
    'aria-describedby': 'label-help',
  });
  const body = h('tbody');
  const table = h(
    'table',
    { class: 'list', 'aria-label': 'Workspaces' },
    h('thead', {}, h('tr', {}, ['Name', 'State', 'Runtime', 'Labels', 'Node', 'Age'].map((t) => h('th', { scope: 'col' }, t)))),
    body,
  );
  main.append(
    h('h1', {}, 'Workspaces'),
    h('div', { class: 'filters' },
      h('label', { for: 'label-filter' }, 'Filter by label'),
      filter,
      h('span', { id: 'label-help', class: 'muted' }, 'Only workspaces with all these labels.')),
    h('div', { class: 'table-wrap' }, table),
  );
  let query = '';
  const refresh = async () => {
    const { workspaces } = await get(`/v1/workspaces${query ? `?label=${encodeURIComponent(query)}` : ''}`);
    setRows(body,
      workspaces.slice().reverse().map((w) => h('tr', { 'data-id': w.id, 'data-key': w.id },
        h('td', {}, h('a', { href: `#/workspaces/${encodeURIComponent(w.id)}` }, w.name || w.id)),
        h('td', {}, stateBadge(w.state)),
        h('td', {}, w.runtime),
        h('td', {}, labelsText(w.labels)),
        h('td', {}, w.node || 'this host'),
        h('td', {}, age(w.created_at)),
      )),
      h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'No workspaces.')));
  };
  filter.addEventListener('change', () => {
    query = filter.value.trim();
    refresh().catch((err) => say(err.message));
  });
  live(['workspaces'], refresh);
});

page(/^\/workspaces\/([^/]+)$/, async (id) => {
  const ref = `/v1/workspaces/${encodeURIComponent(id)}`;
  const workspace = await get(ref);
  const title = h('h1', {}, 'Workspace ', h('span', { class: 'mono' }, workspace.name || workspace.id));
  const summary = h('dl', { class: 'facts' });
  const drawSummary = (w) => {
    summary.replaceChildren(
      h('dt', {}, 'State'), h('dd', { id: 'workspace-state' }, stateBadge(w.state)),
      h('dt', {}, 'Id'), h('dd', { class: 'mono' }, w.id),
      h('dt', {}, 'Runtime'), h('dd', {}, w.runtime),
      h('dt', {}, 'Labels'), h('dd', {}, labelsText(w.labels) || '—'),
      h('dt', {}, 'Age'), h('dd', {}, age(w.created_at)),
      w.error ? [h('dt', {}, 'Error'), h('dd', { class: 'error' }, w.error)] : [],
    );
  };
  drawSummary(workspace);

  const actions = h('div', { class: 'actions', role: 'group', 'aria-label': 'Workspace actions' });
  const button = (label, what, action) => {
    const b = h('button', { type: 'button' }, label);
    b.addEventListener('click', () => act(b, what, action));
    actions.append(b);
  };
  button('Reset', 'Reset', () => post(`${ref}/reset`, {}));
  button('Snapshot', 'Snapshot', async () => {
    const snapshot = await post(`${ref}/snapshots`);
    return `Snapshot ${snapshot.id} taken`;
  });
  button('Fork', 'Fork', async () => {
    const { workspaces } = await post(`${ref}/fork`, {});
    location.hash = `#/workspaces/${encodeURIComponent(workspaces[0].id)}`;
  });
  button('Start', 'Start', () => post(`${ref}/start`));
  button('Stop', 'Stop', () => post(`${ref}/stop`));
  button('Remove', 'Remove', async () => {
    if (!confirm(`Remove workspace ${workspace.name || workspace.id}?`)) return 'Not removed';
    await del(ref);
    location.hash = '#/workspaces';
  });

  const tabs = [
    ['terminal', 'Terminal', () => terminalPanel(ref)],
    ['changes', 'Changes', () => changesPanel(ref)],
    ['files', 'Files', () => filesPanel(ref)],
    ['spec', 'Spec', () => specPanel(ref, workspace)],
  ];
  const panel = h('section', { id: 'panel', role: 'tabpanel' });
  const tabList = h('div', { role: 'tablist', 'aria-label': 'Workspace views' });
  let panelCleanups = [];
  const show = (key) => {
    for (const cleanup of panelCleanups.splice(0)) cleanup();
    for (const tab of tabList.children) {
      const selected = tab.dataset.key === key;
      tab.setAttribute('aria-selected', String(selected));
      tab.tabIndex = selected ? 0 : -1;
    }
    panel.replaceChildren();
    panel.setAttribute('aria-labelledby', `tab-${key}`);
    const [, , draw] = tabs.find(([k]) => k === key);
    const drawn = draw();
    Promise.resolve(drawn).then((node) => {
      if (node && node.cleanup) panelCleanups.push(node.cleanup);
      if (node) panel.append(node);
    }, (err) => panel.append(h('p', { class: 'error', role: 'alert' }, err.message)));
  };
  for (const [key, label] of tabs) {
    const tab = h('button', { type: 'button', role: 'tab', id: `tab-${key}`, 'aria-controls': 'panel', 'data-key': key }, label);
    tab.addEventListener('click', () => show(key));
    tab.addEventListener('keydown', (event) => {
      const keys = tabs.map(([k]) => k);
      const index = keys.indexOf(key);
      const next = { ArrowRight: index + 1, ArrowLeft: index - 1 }[event.key];
      if (next === undefined) return;
      const target = keys[(next + keys.length) % keys.length];
      show(target);
      document.getElementById(`tab-${target}`).focus();
    });
    tabList.append(tab);
  }
  main.append(title, summary, actions, tabList, panel);
  onLeave(() => panelCleanups.splice(0).forEach((cleanup) => cleanup()));
  show(workspace.state === 'running' ? 'terminal' : 'spec');
  live(['workspaces'], async () => drawSummary(await get(ref)));
});

/** A terminal in the workspace over the API's terminal WebSocket. */
function terminalPanel(ref) {
  const box = h('div', { class: 'term-box', 'aria-label': 'Terminal' });
  const wrap = h('div', {}, box);
  const term = new Terminal({ cursorBlink: true, convertEol: false, fontSize: 14 });
  const fit = new FitAddon();
  term.loadAddon(fit);
  // Opened once the box is in the page, so that it can be measured; not
  // at all if the panel was left (and the terminal disposed) before then.
  let left = false;
  requestAnimationFrame(() => {
    if (left) return;
    term.open(box);
    fit.fit();
    const socket = new WebSocket(socketUrl(`${ref}/terminal?rows=${term.rows}&cols=${term.cols}`));
    socket.binaryType = 'arraybuffer';
    const encoder = new TextEncoder();
    socket.addEventListener('message', (event) => {
      if (typeof event.data === 'string') {
        const message = JSON.parse(event.data);
        if (message.type === 'exit') term.write(`\r\n[exited ${message.code ?? ''}]\r\n`);
        else if (message.error) term.write(`\r\n[${message.error.message}]\r\n`);
      } else {
        term.write(new Uint8Array(event.data));
      }
    });
    socket.addEventListener('close', () => term.write('\r\n[disconnected]\r\n'));
    term.onData((data) => {
      if (socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(data));
    });
    term.onResize(({ rows, cols }) => {
      if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: 'resize', rows, cols }));
    });
    const resized = new ResizeObserver(() => fit.fit());
    resized.observe(box);
    wrap.cleanup = () => {
      resized.disconnect();
      socket.close();
      term.dispose();
    };
    // Typed into at once when nothing else has the focus; a tab chosen
    // from the keyboard keeps it, for the arrow keys.
    if (document.activeElement === document.body) term.focus();
  });
  wrap.cleanup = () => {
    left = true;
    term.dispose();
  };
  return wrap;
}

/** A unified diff drawn by diff2html, side by side or unified. */
export function diffView(patch, { downloadName } = {}) {
  const target = h('div', { class: 'diff' });
  const format = h('select', { id: 'diff-format' },
    h('option', { value: 'side-by-side' }, 'Side by side'),
    h('option', { value: 'line-by-line' }, 'Unified'));
  const draw = () => {
    target.replaceChildren();
    if (!patch.trim()) {
      target.append(h('p', { class: 'muted' }, 'No changes.'));
      return;
    }
    const ui = new window.Diff2HtmlUI(target, patch, {
      drawFileList: true,
      fileListToggle: false,
      outputFormat: format.value,
      matching: 'lines',
      highlight: true,
      synchronisedScroll: true,
    });
    ui.draw();
    ui.highlightCode();
  };
  format.addEventListener('change', draw);
  const download = h('a', {
    href: URL.createObjectURL(new Blob([patch], { type: 'text/x-diff' })),
    download: downloadName || 'changes.patch',
  }, 'Download patch');
  const view = h('div', {},
    h('div', { class: 'filters' }, h('label', { for: 'diff-format' }, 'Diff view'), format, download),
    target);
  draw();
  return view;
}

async function changesPanel(ref) {
  const [{ changes }, patch] = await Promise.all([get(`${ref}/changes`), get(`${ref}/diff`)]);
  return h('div', {},
    h('h2', {}, `Changes (${changes.length})`),
    h('ul', { class: 'changes' }, changes.map((c) => h('li', {}, h('span', { class: `change change-${c.kind}` }, c.kind), ' ', h('span', { class: 'mono' }, c.path)))),
    h('h2', {}, 'Diff'),
    diffView(patch, { downloadName: `${ref.split('/').pop()}.patch` }));
}

/** How much of a file the viewer shows. */
const VIEWED_BYTES = 1 << 20;

async function filesPanel(ref) {
  const listing = h('ul', { class: 'files', 'aria-label': 'Files' });
  const viewer = h('pre', { class: 'viewer', tabindex: 0, 'aria-label': 'File content' });
  const where = h('p', { class: 'mono' });
  const open = async (dir) => {
    const { entries } = await get(`${ref}/files${dir ? `?path=${encodeURIComponent(dir)}` : ''}`);
    where.textContent = `/${dir}`;
    const items = [];
    if (dir) {
      const up = dir.split('/').slice(0, -1).join('/');
      items.push(h('li', {}, h('button', { type: 'button', class: 'link', onclick: () => open(up).catch((err) => say(err.message)) }, '..')));
    }
    entries.sort((a, b) => (a.kind === 'dir') === (b.kind === 'dir') ? a.path.localeCompare(b.path) : a.kind === 'dir' ? -1 : 1);
    for (const entry of entries) {
      const name = entry.path.split('/').pop();
      const isDir = entry.kind === 'dir';
      items.push(h('li', {}, h('button', {
        type: 'button',
        class: 'link',
        onclick: () => (isDir ? open(entry.path) : view(entry.path)).catch((err) => say(err.message)),
      }, isDir ? `${name}/` : name), isDir ? '' : h('span', { class: 'muted' }, ` ${entry.size} B`)));
    }
    listing.replaceChildren(...items);
  };
  const view = async (path) => {
    viewer.textContent = '';
    const { bytes, more } = await getBytes(`${ref}/files/content?path=${encodeURIComponent(path)}`, VIEWED_BYTES);
    viewer.textContent = new TextDecoder('utf-8', { fatal: false }).decode(bytes);
    if (more) viewer.append(h('span', { class: 'muted' }, `\n[only the first ${VIEWED_BYTES} bytes are shown]`));
  };
  await open('');
  return h('div', { class: 'split' }, h('div', {}, where, listing), viewer);
}

async function specPanel(ref, workspace) {
  const info = await get(`${ref}/info`).catch((err) => ({ unavailable: err.message }));
  return h('div', {},
    h('h2', {}, 'Spec'),
    h('pre', { class: 'viewer' }, JSON.stringify(workspace.spec, null, 2)),
    h('h2', {}, 'Isolation in force'),
    h('pre', { class: 'viewer' }, JSON.stringify(workspace.runtime_info ?? {}, null, 2)),
    h('h2', {}, 'Agent'),
    h('pre', { class: 'viewer' }, JSON.stringify(info, null, 2)));
}

// Jobs, runs and tasks ---------------------------------------------------

/** A task's or a run's state, in the order the progress bar shows them. */
const TASK_STATES = ['completed', 'failed', 'errored', 'timed_out', 'cancelled', 'running', 'queued'];
const STATE_COLOURS = {
  completed: '#2da44e', failed: '#cf222e', errored: '#a40e26', timed_out: '#bc4c00',
  cancelled: '#8c959f', running: '#0969da', queued: '#d0d7de',
};

function counts(tasks) {
  const by = Object.fromEntries(TASK_STATES.map((s) => [s, 0]));
  for (const task of tasks) by[task.state] = (by[task.state] || 0) + 1;
  return by;
}

function countsText(by) {
  return TASK_STATES.filter((s) => by[s]).map((s) => `${by[s]} ${s.replace('_', ' ')}`).join(', ');
}

function progressBar(by, total) {
  const bar = h('div', { class: 'progress', role: 'img', 'aria-label': countsText(by) || 'no tasks' });
  for (const state of TASK_STATES) {
    if (!by[state]) continue;
    const part = h('span', { title: `${by[state]} ${state}` });
    part.style.width = `${(100 * by[state]) / total}%`;
    part.style.background = STATE_COLOURS[state];
    bar.append(part);
  }
  return bar;
}

/** The repository a task works on: its URL's path (or a path as given). */
function repository(task) {
  let path;
  try {
    path = new URL(task.url).pathname;
  } catch {
    // Not a URL: `host:owner/name` (scp-like) or a local path.
    path = task.url.replace(/^[^/:]+:/, '');
  }
  return path.replace(/\.git$/, '').replace(/^\/+|\/+$/g, '') || task.url;
}

function taskDuration(task) {
  if (!task.started_at) return null;
  return ((task.ended_at || Date.now()) - task.started_at) / 1000;
}

page(/^\/jobs$/, async () => {
  const body = h('tbody');
  main.append(
    h('h1', {}, 'Jobs'),
    h('div', { class: 'table-wrap' }, h('table', { class: 'list', 'aria-label': 'Jobs' },
      h('thead', {}, h('tr', {}, ['Job', 'Last run', 'Tasks', 'Schedule', ''].map((t) => h('th', { scope: 'col' }, t)))),
      body)),
  );
  live(['jobs'], async () => {
    const { jobs } = await get('/v1/jobs');
    const details = await Promise.all(jobs.map((job) => (job.last_run
      ? get(`/v1/runs/${encodeURIComponent(job.last_run.id)}`).catch(() => null)
      : null)));
    setRows(body, jobs.map((job, i) => {
      const run = details[i];
      const again = h('button', { type: 'button', 'aria-label': `Run ${job.name} again` }, 'Run again');
      again.addEventListener('click', () => act(again, `Run ${job.name}`, async () => {
        const started = await post(`/v1/jobs/${encodeURIComponent(job.name)}/runs`);
        location.hash = `#/runs/${encodeURIComponent(started.id)}`;
      }));
      return h('tr', { 'data-job': job.name, 'data-key': job.name },
        h('td', {}, job.name),
        h('td', {}, job.last_run
          ? [stateBadge(job.last_run.state), ' ', h('a', { href: `#/runs/${encodeURIComponent(job.last_run.id)}` }, age(job.last_run.created_at), ' ago')]
          : h('span', { class: 'muted' }, 'never run')),
        h('td', {}, run ? countsText(counts(run.tasks)) : ''),
        h('td', { class: 'mono' }, job.schedule || '—'),
        h('td', {}, again));
    }), h('tr', {}, h('td', { colspan: 5, class: 'muted' }, 'No jobs: start one with `berth job run`.')));
  });
});

/** How many task rows a page of the run's table holds. */
const PAGE_SIZE = 50;

page(/^\/runs\/([^/]+)$/, async (runId) => {
  const ref = `/v1/runs/${encodeURIComponent(runId)}`;
  let run = null;
  const tasks = new Map();
  /** The run's events, followed while it runs. */
  let source = null;
  const heading = h('h1', {}, 'Run ', h('span', { class: 'mono' }, runId));
  const facts = h('dl', { class: 'facts' });
  const bar = h('div');
  const actions = h('div', { class: 'actions', role: 'group', 'aria-label': 'Run actions' });
  const stateFilter = h('select', { id: 'state-filter' },
    h('option', { value: '' }, 'All states'),
    TASK_STATES.map((s) => h('option', { value: s }, s.replace('_', ' '))));
  const search = h('input', { id: 'repo-search', type: 'search', placeholder: 'owner/repository' });
  const body = h('tbody');
  const pageInfo = h('span', { class: 'muted', 'aria-live': 'polite' });
  const prev = h('button', { type: 'button' }, 'Previous');
  const next = h('button', { type: 'button' }, 'Next');
  let pageIndex = 0;

  const button = (label, what, action) => {
    const b = h('button', { type: 'button' }, label);
    b.addEventListener('click', () => act(b, what, action));
    actions.append(b);
  };
  // An action's answer is the run as it was when the action was done:
  // the run's events may have told of later changes before it arrives (a
  // task cancelled by its runner), so the page follows them again from a
  // fresh snapshot instead of drawing the answer.
  button('Cancel run', 'Cancel', async () => { await post(`${ref}/cancel`); follow(); });
  button('Retry failed', 'Retry', async () => { await post(`${ref}/retry`); follow(); });
  button('Publish…', 'Publish', async () => {
    const branch = prompt('Publish the completed tasks\' changes as branch:', `berth/${run ? run.job : 'run'}`);
    if (!branch) return 'Not published';
    const { published } = await post(`${ref}/publish`, { branch });
    return `Published ${published.length} change(s) as ${branch}`;
  });
  actions.append(h('a', { href: `${ref}/patch`, download: `${runId}.patch` }, 'Download all patches'));

  const apply = (details) => {
    run = { ...details };
    delete run.tasks;
    for (const task of details.tasks) tasks.set(task.id, task);
    draw();
  };

  let drawing = false;
  const draw = () => {
    if (drawing) return;
    drawing = true;
    requestAnimationFrame(() => {
      drawing = false;
      drawNow();
    });
  };
  const drawNow = () => {
    if (!run) return;
    const all = [...tasks.values()].sort((a, b) => a.position - b.position);
    const by = counts(all);
    heading.replaceChildren('Run of ', h('span', { class: 'mono' }, run.job), ' ', stateBadge(run.state));
    const ended = all.filter((t) => t.ended_at && t.started_at);
    const left = all.length - ended.length;
    const elapsed = ((run.ended_at || Date.now()) - run.created_at) / 1000;
    let estimate = '—';
    if (run.state === 'running' && ended.length > 0) {
      const mean = ended.reduce((sum, t) => sum + taskDuration(t), 0) / ended.length;
      estimate = `about ${duration((mean * left) / Math.max(1, run.concurrency || 1))}`;
    } else if (run.state !== 'running') {
      estimate = 'done';
    }
    facts.replaceChildren(
      h('dt', {}, 'Tasks'), h('dd', { id: 'run-counts' }, `${all.length}: ${countsText(by)}`),
      h('dt', {}, 'Elapsed'), h('dd', { id: 'run-elapsed' }, duration(elapsed)),
      h('dt', {}, 'Remaining'), h('dd', { id: 'run-remaining' }, estimate),
      h('dt', {}, 'Trigger'), h('dd', {}, run.trigger),
    );
    bar.replaceChildren(progressBar(by, Math.max(1, all.length)));
    const wanted = stateFilter.value;
    const needle = search.value.trim().toLowerCase();
    const shown = all.filter((t) => (!wanted || t.state === wanted) && (!needle || t.url.toLowerCase().includes(needle)));
    const pages = Math.max(1, Math.ceil(shown.length / PAGE_SIZE));
    pageIndex = Math.min(pageIndex, pages - 1);
    const slice = shown.slice(pageIndex * PAGE_SIZE, (pageIndex + 1) * PAGE_SIZE);
    setRows(body, slice.map((t) => h('tr', { 'data-task': t.id, 'data-state': t.state, 'data-key': t.id },
      h('td', {}, h('a', { href: `#/runs/${encodeURIComponent(run.id)}/tasks/${encodeURIComponent(t.id)}` }, repository(t))),
      h('td', {}, stateBadge(t.state)),
      h('td', {}, t.exit_code ?? ''),
      h('td', {}, t.failed_step || ''),
      h('td', {}, duration(taskDuration(t))),
      h('td', {}, t.patch_size ? `${t.patch_size} B` : ''))),
    h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'No task matches.')));
    pageInfo.textContent = `${shown.length} task(s), page ${pageIndex + 1} of ${pages}`;
    prev.disabled = pageIndex === 0;
    next.disabled = pageIndex >= pages - 1;
  };
  stateFilter.addEventListener('change', () => { pageIndex = 0; draw(); });
  search.addEventListener('input', () => { pageIndex = 0; draw(); });
  prev.addEventListener('click', () => { pageIndex -= 1; draw(); });
  next.addEventListener('click', () => { pageIndex += 1; draw(); });

  main.append(heading, facts, bar, actions,
    h('div', { class: 'filters' },
      h('label', { for: 'state-filter' }, 'State'), stateFilter,
      h('label', { for: 'repo-search' }, 'Repository'), search),
    h('div', { class: 'table-wrap' }, h('table', { class: 'list', 'aria-label': 'Tasks' },
      h('thead', {}, h('tr', {}, ['Repository', 'State', 'Exit', 'Failing step', 'Duration', 'Patch'].map((t) => h('th', { scope: 'col' }, t)))),
      body)),
    h('div', { class: 'filters' }, prev, next, pageInfo));

  apply(await get(ref));
  // Live: the run's events, from a snapshot, until it has ended (then
  // again after an action, which may start it anew).
  function follow() {
    if (source) source.close();
    const events = new EventSource(`${ref}/events`, { withCredentials: true });
    const onEvent = (event) => {
      const data = JSON.parse(event.data);
      if (data.type === 'snapshot') apply({ ...data.run, tasks: data.tasks });
      else if (data.type === 'task') { tasks.set(data.task.id, data.task); draw(); }
      else if (data.type === 'run') { run = data.run; draw(); }
      if (run && run.state !== 'running') events.close();
    };
    for (const type of ['message', 'snapshot', 'task', 'run']) events.addEventListener(type, onEvent);
    source = events;
  }
  follow();
  const ticking = setInterval(draw, 1000);
  onLeave(() => {
    source.close();
    clearInterval(ticking);
  });
});

page(/^\/runs\/([^/]+)\/tasks\/([^/]+)$/, async (runId, taskId) => {
  const ref = `/v1/runs/${encodeURIComponent(runId)}/tasks/${encodeURIComponent(taskId)}`;
  const facts = h('dl', { class: 'facts' });
  const heading = h('h1', {});
  const drawTask = (task) => {
    heading.replaceChildren('Task ', h('span', { class: 'mono' }, repository(task)), ' ', stateBadge(task.state));
    facts.replaceChildren(
      h('dt', {}, 'Repository'), h('dd', { class: 'mono' }, task.url),
      h('dt', {}, 'Exit code'), h('dd', { id: 'task-exit' }, task.exit_code ?? '—'),
      h('dt', {}, 'Failing step'), h('dd', { id: 'task-failed-step' }, task.failed_step || '—'),
      h('dt', {}, 'Attempts'), h('dd', {}, task.attempts),
      h('dt', {}, 'Duration'), h('dd', {}, duration(taskDuration(task)) || '—'),
      task.error ? [h('dt', {}, 'Error'), h('dd', { class: 'error' }, task.error)] : [],
      task.workspace ? [h('dt', {}, 'Workspace'), h('dd', {}, h('a', { href: `#/workspaces/${encodeURIComponent(task.workspace)}` }, task.workspace))] : [],
    );
  };
  let task = await get(ref);
  drawTask(task);
  const actions = h('div', { class: 'actions', role: 'group', 'aria-label': 'Task actions' });
  const cancel = h('button', { type: 'button' }, 'Cancel task');
  cancel.addEventListener('click', () => act(cancel, 'Cancel', () => post(`${ref}/cancel`)));
  const retry = h('button', { type: 'button' }, 'Retry task');
  retry.addEventListener('click', () => act(retry, 'Retry', () => post(`${ref}/retry`)));
  actions.append(cancel, retry, h('a', { href: `#/runs/${encodeURIComponent(runId)}` }, 'Back to the run'));

  const log = h('pre', { class: 'log', id: 'task-log', tabindex: 0, 'aria-label': 'Log', 'aria-live': 'off' });
  const patchBox = h('div');
  main.append(heading, facts, actions, h('h2', {}, 'Log'), log, h('h2', {}, 'Patch'), patchBox);

  const showPatch = async () => {
    const patch = await get(`${ref}/patch`);
    patchBox.replaceChildren(diffView(typeof patch === 'string' ? patch : '', {
      downloadName: `${repository(task).replace('/', '-')}.patch`,
    }));
  };

  // The log, followed from the last entry seen, reopened after a drop.
  let last = 0;
  let ended = false;
  let source = null;
  let retryTimer = null;
  const append = (entry) => {
    if (entry.seq <= last) return;
    last = entry.seq;
    const following = log.scrollTop + log.clientHeight >= log.scrollHeight - 24;
    switch (entry.type) {
      case 'step_start': log.append(h('span', { class: 'step' }, `▶ step ${entry.step}: ${entry.name}`), '\n'); break;
      case 'stdout': log.append(entry.text); break;
      case 'stderr': log.append(h('span', { class: 'stderr' }, entry.text)); break;
      case 'step_end': log.append(h('span', { class: entry.exit_code === 0 ? 'muted' : 'stderr' }, `■ step ${entry.step} exited with ${entry.exit_code}`), '\n'); break;
      case 'note': log.append(h('span', { class: 'muted' }, `[${entry.text}]`), '\n'); break;
      case 'truncated': log.append(h('span', { class: 'muted' }, `[${entry.dropped_bytes} bytes dropped]`), '\n'); break;
      default: break;
    }
    if (following) log.scrollTop = log.scrollHeight;
  };
  const finish = async () => {
    ended = true;
    if (source) source.close();
    task = await get(ref);
    drawTask(task);
    await showPatch();
  };
  const open = () => {
    source = new EventSource(`${ref}/log?after=${last}`, { withCredentials: true });
    const onEntry = (event) => {
      const data = JSON.parse(event.data);
      if (data.type === 'end') finish().catch((err) => say(err.message));
      else if (data.error) say(data.error.message);
      else append(data);
    };
    for (const type of ['message', 'step_start', 'stdout', 'stderr', 'step_end', 'note', 'truncated', 'end']) {
      source.addEventListener(type, onEntry);
    }
    source.addEventListener('error', () => {
      source.close();
      if (!ended) retryTimer = setTimeout(open, 1000);
    });
  };
  open();
  if (task.state !== 'queued' && task.state !== 'running') await showPatch();
  // The task's state as it changes, from its run's events.
  const runEvents = new EventSource(`/v1/runs/${encodeURIComponent(runId)}/events`, { withCredentials: true });
  const changed = (update) => {
    if (ended || !update || update.id !== task.id) return;
    task = { ...task, ...update };
    drawTask(task);
  };
  // The stream ends with its run; closed then, lest it be opened again.
  const runEnded = (run) => { if (run.state !== 'running') runEvents.close(); };
  runEvents.addEventListener('snapshot', (event) => {
    const data = JSON.parse(event.data);
    changed(data.tasks.find((t) => t.id === task.id));
    runEnded(data.run);
  });
  runEvents.addEventListener('task', (event) => changed(JSON.parse(event.data).task));
  runEvents.addEventListener('run', (event) => runEnded(JSON.parse(event.data).run));
  onLeave(() => {
    ended = true;
    clearTimeout(retryTimer);
    runEvents.close();
    if (source) source.close();
  });
});

/** What a node is doing, from its load. */
function nodeState(node) {
  if (node.running === 0) return 'idle';
  return node.running >= node.slots ? 'full' : 'busy';
}

page(/^\/cluster$/, async () => {
  const state = h('p', { id: 'cluster-state' });
  const body = h('tbody');
  const table = h('table', { class: 'list', 'aria-label': 'Nodes' },
    h('thead', {}, h('tr', {}, ['Node', 'State', 'Runtimes', 'Architecture', 'Load', 'Cache keys', 'Last heartbeat'].map((t) => h('th', { scope: 'col' }, t)))),
    body);
  const wrap = h('div', { class: 'table-wrap' }, table);
  wrap.hidden = true;
  main.append(h('h1', {}, 'Cluster'), state, wrap);
  let nodes = [];
  const draw = () => {
    setRows(body, nodes.map((node) => h('tr', { 'data-node': node.name, 'data-state': nodeState(node), 'data-key': node.name },
      h('td', { class: 'mono' }, node.name),
      h('td', {}, stateBadge(nodeState(node))),
      h('td', {}, node.runtimes.join(', ')),
      h('td', {}, node.arch),
      h('td', {}, `${node.running} of ${node.slots}`),
      h('td', {}, node.cache_keys.length),
      h('td', {}, `${age(node.heartbeat_at)} ago`))),
    h('tr', {}, h('td', { colspan: 7, class: 'muted' }, 'No node is up.')));
  };
  live(['nodes'], async () => {
    const list = await get('/v1/nodes');
    if (!list.clustered) {
      state.textContent = 'Not in a cluster: this server runs job tasks itself. Serve with `berth serve --nats nats://HOST:PORT` to run them on the nodes (`berth node`) of a NATS cluster.';
      wrap.hidden = true;
      return;
    }
    nodes = list.nodes;
    state.textContent = `${nodes.length} node(s) up.`;
    wrap.hidden = false;
    draw();
  });
  // The heartbeats' ages move on between changes.
  const ticking = setInterval(draw, 1000);
  onLeave(() => clearInterval(ticking));
});

// ---- Login --------------------------------------------------------------

const loginSection = document.getElementById('login');
const loginForm = document.getElementById('login-form');
const loginError = document.getElementById('login-error');
const logoutButton = document.getElementById('logout');

function askForToken() {
  for (const cleanup of cleanups.splice(0)) cleanup();
  main.hidden = true;
  logoutButton.hidden = true;
  loginSection.hidden = false;
  document.getElementById('token').focus();
}

whenUnauthorized(askForToken);

loginForm.addEventListener('submit', async (event) => {
  event.preventDefault();
  loginError.textContent = '';
  const token = document.getElementById('token');
  try {
    await login(token.value.trim());
    token.value = '';
    loginSection.hidden = true;
    main.hidden = false;
    logoutButton.hidden = false;
    route();
  } catch (err) {
    loginError.textContent = err.status === 401 ? 'Wrong token.' : err.message;
  }
});

logoutButton.addEventListener('click', async () => {
  await logout().catch(() => {});
  askForToken();
});

window.addEventListener('hashchange', route);
logoutButton.hidden = false;
route();
