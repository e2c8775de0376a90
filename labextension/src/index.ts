/**
 * mlnb in JupyterLab: the project's pipeline in the left sidebar (a graph with each stage's state: up to date, stale and why,
 * failed with its cell, running with its seconds), run / run from here / cancel, the recent runs, the champion and challenger with
 * promote and rollback; and in a stage notebook's toolbar, its stage's state and a button to run it.
 * Everything comes from the server extension under /mlnb/ (mlnb/lab.py): the states are the ones `mlnb run` acts on.
 */
import { ILabShell, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { URLExt } from '@jupyterlab/coreutils';
import { DocumentWidget } from '@jupyterlab/docregistry';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ServerConnection } from '@jupyterlab/services';
import { LabIcon } from '@jupyterlab/ui-components';
import { Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

interface IStage {
  stage: string; state: string; why: string[]; needs: string[]; depth: number; path: string | null; executed: string | null;
  run_id: string | null; seconds: number | null; cell: number | null; error: string | null; last_run: string | null; from_run: string | null;
}
interface IJob { id: string; status: string; stage: string | null; from: string | null; seconds: number; output: string[] }
interface IState { project: string; settings: string; stages: IStage[]; ms: number; jobs: IJob[] }
interface IRun { id: string; status: string; started: string; seconds: number | null; error: string | null;
  stages: { [name: string]: { status: string; notebook: string | null; report: string | null } } }
interface IAlias { tag: string; previous: string | null }
interface IModels { aliases: { champion: IAlias | null; challenger: IAlias | null }; models: { tag: string; metrics: { [k: string]: number } }[] }

const ICON = new LabIcon({
  name: 'mlnb:pipeline',
  svgstr: '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><g class="jp-icon3" fill="#616161">' +
    '<circle cx="5" cy="5" r="3"/><circle cx="19" cy="5" r="3"/><circle cx="12" cy="19" r="3"/>' +
    '<path d="M6.5 7.5l4 9M17.5 7.5l-4 9" stroke="#616161" stroke-width="2"/></g></svg>'
});

/** A JSON answer of the server extension; its one-line `message` as the error when it refuses. */
async function api<T>(endpoint: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const r = await ServerConnection.makeRequest(URLExt.join(settings.baseUrl, 'mlnb', endpoint), init, settings);
  const text = await r.text();
  const data = text ? JSON.parse(text) : null;
  if (!r.ok) throw new Error((data && data.message) || r.statusText);
  return data as T;
}

/** A file of the project's workspace (relative to the served folder) as the server renders it: relative links in a report work. */
function filesUrl(path: string): string {
  return URLExt.join(ServerConnection.makeSettings().baseUrl, 'mlnb', 'files', ...path.split('/').map(encodeURIComponent));
}

function el(tag: string, attrs: { [k: string]: string } = {}, text = ''): HTMLElement {
  const e = document.createElement(tag);
  for (const k of Object.keys(attrs)) e.setAttribute(k, attrs[k]);
  if (text) e.textContent = text;
  return e;
}

function button(label: string, onClick: () => void, cls = ''): HTMLButtonElement {
  const b = el('button', cls ? { class: cls } : {}, label) as HTMLButtonElement;
  b.onclick = ev => { ev.stopPropagation(); onClick(); };
  return b;
}

const stateClass = (s: string) => 'mlnb-state-' + s.replace(/ /g, '-');

function describe(s: IStage): string {
  if (s.state === 'stale') return (s.why.length ? s.why.join(', ') + ' changed' : 'will run') + (s.last_run ? ` since run ${s.last_run}` : '');
  if (s.state === 'running') return `running for ${Math.round(s.seconds || 0)}s in run ${s.run_id}`;
  if (s.state === 'failed') return `run ${s.run_id}`;
  return s.from_run ? `outputs of run ${s.from_run}` : '';
}

/** Fetches a project's state; tells every view when it changed (a save, a job, a refresh). */
class Hub {
  readonly changed = new Signal<Hub, string>(this);             // something changed at this path: fetch again
  readonly fetched = new Signal<Hub, IState>(this);             // the sidebar fetched a project's state: show it
  poke(path: string) { this.changed.emit(path); }
}

/** The left sidebar: the project of the document in view. */
class PipelinePanel extends Widget {
  path = '';
  private busy = false;
  private again = false;                // a refresh asked for while one was on its way: its answer may predate a save
  private timer = 0;

  constructor(private app: JupyterFrontEnd, private hub: Hub) {
    super();
    this.id = 'mlnb-pipeline';
    this.addClass('mlnb-panel');
    this.title.icon = ICON;
    this.title.caption = 'mlnb pipeline';
    this.node.innerHTML = '<div class="mlnb-project">no project yet: open a notebook of an mlnb project</div>' +
      '<div class="mlnb-actions"></div><div class="mlnb-message"></div><svg class="mlnb-dag"></svg><div class="mlnb-stages"></div>' +
      '<div class="mlnb-jobs"></div><h3>Models</h3><div class="mlnb-models"></div><h3>Recent runs</h3><div class="mlnb-recent"></div>';
    hub.changed.connect(() => void this.refresh());
    this.schedule(200);
  }

  private q(sel: string): HTMLElement { return this.node.querySelector(sel) as HTMLElement; }
  message(text: string) { this.q('.mlnb-message').textContent = text; }

  setPath(path: string) {
    if (path === this.path) return;
    this.path = path;
    void this.refresh();
  }

  private schedule(ms: number) {
    window.clearTimeout(this.timer);
    this.timer = window.setTimeout(() => void this.refresh(), ms);
  }

  async refresh(): Promise<void> {
    if (this.busy) { this.again = true; return; }
    this.busy = true;
    this.again = false;
    let running = false;
    try {
      const q = URLExt.objectToQueryString({ path: this.path });
      const [st, runs, models] = await Promise.all([api<IState>('state' + q), api<IRun[]>('runs' + q), api<IModels>('models' + q)]);
      running = st.jobs.some(j => j.status === 'running') || st.stages.some(s => s.state === 'running');
      this.render(st, runs, models);
      this.hub.fetched.emit(st);
    } catch (e) {
      this.q('.mlnb-project').textContent = (e as Error).message;
    } finally {
      this.busy = false;
      this.schedule(this.again ? 0 : running ? 1000 : 15000);     // idle: a save, a click or a focus change refreshes sooner
    }
  }

  private async start(body: { stage?: string; from?: string }) {
    this.message('');
    try { await api<IJob>('jobs', { method: 'POST', body: JSON.stringify({ path: this.path, ...body }) }); }
    catch (e) { this.message((e as Error).message); }
    this.hub.poke(this.path);
  }

  private async cancel(job: IJob) {
    await api<IJob>('jobs/' + job.id, { method: 'DELETE' });
    this.hub.poke(this.path);
  }

  private async alias(what: 'promote' | 'rollback') {
    this.message('');
    try {
      const r = await api<{ champion: string }>(what, { method: 'POST', body: JSON.stringify({ path: this.path }) });
      this.message(`${what === 'promote' ? 'promoted' : 'rolled back'}: champion is ${r.champion}`);
    } catch (e) { this.message((e as Error).message); }
    this.hub.poke(this.path);
  }

  private open(path: string | null) {
    if (path) void this.app.commands.execute('docmanager:open', { path });
  }

  private render(st: IState, runs: IRun[], models: IModels) {
    const running = st.jobs.find(j => j.status === 'running');
    this.q('.mlnb-project').textContent = `${st.project} — ${st.settings} (states in ${st.ms} ms)`;
    const actions = this.q('.mlnb-actions');
    actions.replaceChildren(button('Run all', () => void this.start({}), 'mlnb-run-all'), button('Refresh', () => void this.refresh(), 'mlnb-refresh'));
    if (running) actions.append(button('Cancel', () => void this.cancel(running), 'mlnb-cancel'));
    actions.querySelectorAll('button.mlnb-run-all').forEach(b => ((b as HTMLButtonElement).disabled = !!running));
    this.drawDag(st.stages);
    const list = this.q('.mlnb-stages');
    list.replaceChildren(...st.stages.map(s => {
      const row = el('div', { class: `mlnb-stage-row ${stateClass(s.state)}`, 'data-stage': s.stage, 'data-state': s.state });
      const name = el('span', { class: 'mlnb-name', title: `open ${s.path}` }, s.stage);
      name.onclick = () => this.open(s.path);
      row.append(name, el('span', { class: 'mlnb-state' }, s.state), el('div', { class: 'mlnb-why' }, describe(s)));
      if (s.state === 'failed') row.append(el('div', { class: 'mlnb-error' }, `cell ${s.cell}: ${s.error}`));
      const run = button('run', () => void this.start({ stage: s.stage }), 'mlnb-run-stage');
      const from = button('run from here', () => void this.start({ from: s.stage }), 'mlnb-run-from');
      run.disabled = from.disabled = !!running;
      row.append(el('div'), run, from);
      const executed = s.executed;                                              // the executed copy, rendered by the server (it sits in the hidden workspace)
      if (executed) row.append(button('last run', () => void window.open(filesUrl(executed), '_blank'), 'mlnb-open-executed'));
      return row;
    }));
    const jobs = this.q('.mlnb-jobs');
    jobs.replaceChildren(...st.jobs.slice(-1).map(j => {
      const what = j.stage ? `stage ${j.stage}` : j.from ? `from ${j.from}` : 'all stages';
      const box = el('div', { class: `mlnb-job mlnb-job-${j.status}`, 'data-status': j.status }, `mlnb run (${what}): ${j.status}, ${Math.round(j.seconds)}s`);
      box.append(el('pre', {}, j.output.join('\n')));
      return box;
    }));
    this.renderModels(models);
    this.renderRuns(runs);
  }

  private renderModels(m: IModels) {
    const box = this.q('.mlnb-models');
    const t = el('table', { class: 'mlnb-models' });
    for (const a of ['champion', 'challenger'] as const) {
      const info = m.aliases[a];
      const tr = el('tr', { 'data-alias': a });
      tr.append(el('td', {}, a), el('td', { class: 'mlnb-tag' }, info ? info.tag : '—'));
      t.append(tr);
    }
    const promote = button('Promote challenger', () => void this.alias('promote'), 'mlnb-promote');
    promote.disabled = !m.aliases.challenger;
    const rollback = button('Roll back', () => void this.alias('rollback'), 'mlnb-rollback');
    rollback.disabled = !(m.aliases.champion && m.aliases.champion.previous);
    box.replaceChildren(t, promote, rollback);
  }

  private renderRuns(runs: IRun[]) {
    const t = el('table', { class: 'mlnb-runs' });
    for (const r of runs.slice(0, 8)) {
      const tr = el('tr', { 'data-run': r.id });
      tr.append(el('td', {}, r.id), el('td', { class: `mlnb-status-${r.status}` }, r.status), el('td', {}, r.seconds === null ? '' : `${r.seconds}s`));
      const links = el('td');
      for (const [name, s] of Object.entries(r.stages)) {
        if (s.notebook) links.append(el('a', { href: filesUrl(s.notebook), target: '_blank', title: `${name}: ${s.status}` }, name));
        if (s.report) links.append(el('a', { href: filesUrl(s.report), target: '_blank', class: 'mlnb-report' }, 'report'));
      }
      tr.append(links);
      t.append(tr);
    }
    this.q('.mlnb-recent').replaceChildren(runs.length ? t : el('div', {}, 'no runs yet'));
  }

  /** Stages in rows by depth, edges from each stage to those that need it. */
  private drawDag(stages: IStage[]) {
    const svg = this.q('.mlnb-dag');
    const W = 150, H = 30, GX = 14, GY = 22;
    const rows: { [d: number]: IStage[] } = {};
    stages.forEach(s => (rows[s.depth] = rows[s.depth] || []).push(s));
    const widest = Math.max(...Object.values(rows).map(r => r.length));
    const width = widest * (W + GX) + 50, pos: { [n: string]: [number, number] } = {};
    for (const [d, row] of Object.entries(rows)) {
      const left = (width - 50 - row.length * (W + GX)) / 2;
      row.forEach((s, i) => (pos[s.stage] = [left + i * (W + GX) + GX / 2, Number(d) * (H + GY) + 4]));
    }
    const height = (Math.max(...stages.map(s => s.depth)) + 1) * (H + GY);
    svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
    svg.setAttribute('height', String(Math.min(height, 60 * stages.length)));
    const ns = 'http://www.w3.org/2000/svg';
    const mk = (tag: string, a: { [k: string]: string }) => { const e = document.createElementNS(ns, tag); for (const k in a) e.setAttribute(k, a[k]); return e; };
    const defs = mk('defs', {});
    const marker = mk('marker', { id: 'mlnb-arrow', viewBox: '0 0 10 10', refX: '10', refY: '5', markerWidth: '6', markerHeight: '6', orient: 'auto' });
    marker.append(mk('path', { d: 'M0,0 L10,5 L0,10 z', fill: '#888' }));
    defs.append(marker);
    const parts: Element[] = [defs];
    const depth: { [n: string]: number } = {};
    stages.forEach(s => (depth[s.stage] = s.depth));
    for (const s of stages) for (const n of s.needs) {
      const [x1, y1] = pos[n], [x2, y2] = pos[s.stage];
      const d = depth[s.stage] - depth[n] > 1                                // skips a level: round the stages between, on the right
        ? `M${x1 + W},${y1 + H / 2} C${x1 + W + 40},${y1 + H / 2} ${x2 + W + 40},${y2 + H / 2} ${x2 + W},${y2 + H / 2}`
        : `M${x1 + W / 2},${y1 + H} C${x1 + W / 2},${y1 + H + GY / 2} ${x2 + W / 2},${y2 - GY / 2} ${x2 + W / 2},${y2}`;
      parts.push(mk('path', { class: 'mlnb-edge', 'data-from': n, 'data-to': s.stage, d }));
    }
    for (const s of stages) {
      const [x, y] = pos[s.stage];
      const g = mk('g', { class: `mlnb-node ${stateClass(s.state)}`, 'data-stage': s.stage, 'data-state': s.state, transform: `translate(${x},${y})` });
      const title = mk('title', {});
      title.textContent = `${s.stage}: ${s.state}${s.why.length ? ' (' + s.why.join(', ') + ')' : ''} — click to open ${s.path}`;
      const label = mk('text', { x: String(W / 2), y: String(H / 2 + 4), 'text-anchor': 'middle' });
      label.textContent = `${s.stage} · ${s.state}`;
      g.append(title, mk('rect', { width: String(W), height: String(H) }), label);
      g.addEventListener('click', () => this.open(s.path));
      parts.push(g);
    }
    svg.replaceChildren(...parts);
  }
}

/** In a stage notebook's toolbar: its stage's state, and a button that runs that stage. */
class StageStatus extends Widget {
  private stage: IStage | null = null;
  constructor(private panel: NotebookPanel, private hub: Hub) {
    super();
    this.addClass('mlnb-toolbar-state');
    hub.changed.connect(() => void this.refresh());
    hub.fetched.connect((_, st) => this.display(st));
    panel.context.ready.then(() => this.refresh());
    panel.context.fileChanged.connect(() => void this.refresh());
  }
  async refresh() {
    try { this.display(await api<IState>('state' + URLExt.objectToQueryString({ path: this.panel.context.path }))); }
    catch { this.node.replaceChildren(); this.stage = null; }              // not in an mlnb project
  }
  display(st: IState) {
    const path = this.panel.context.path;
    if (!st.stages.some(s => s.path === path) && this.stage) return;       // another project's state
    this.stage = st.stages.find(s => s.path === path) || null;
    if (!this.stage) { this.node.replaceChildren(); return; }
    const s = this.stage, busy = st.jobs.some(j => j.status === 'running');
    const text = `${s.stage}: ${s.state}` + (s.state === 'up to date' ? '' : s.state === 'failed' ? ` at cell ${s.cell}` : `: ${describe(s)}`);
    const run = el('button', { class: 'mlnb-run-this' }, 'Run stage') as HTMLButtonElement;
    run.disabled = busy;
    run.onclick = async () => {
      try { await api<IJob>('jobs', { method: 'POST', body: JSON.stringify({ path, stage: s.stage }) }); } catch (e) { console.warn(e); }
      this.hub.poke(path);
    };
    this.node.replaceChildren(el('span', { class: `mlnb-dot ${stateClass(s.state)}` }), el('span', { class: `mlnb-toolbar-text ${stateClass(s.state)}` }, text), run);
    this.node.setAttribute('data-state', s.state);
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'mlnb-lab:plugin',
  description: "mlnb's pipeline in the sidebar and stage notebooks' toolbars",
  autoStart: true,
  requires: [ILabShell, INotebookTracker],
  activate: (app: JupyterFrontEnd, shell: ILabShell, notebooks: INotebookTracker) => {
    const hub = new Hub();
    const panel = new PipelinePanel(app, hub);
    shell.add(panel, 'left', { rank: 650 });
    const follow = () => {
      const w = shell.currentWidget;
      if (w instanceof DocumentWidget) panel.setPath(w.context.path);
    };
    shell.currentChanged.connect(follow);
    follow();
    notebooks.widgetAdded.connect((_, nb: NotebookPanel) => {
      nb.toolbar.insertItem(10, 'mlnbStage', new StageStatus(nb, hub));
      nb.context.saveState.connect((_, state) => { if (state === 'completed') hub.poke(nb.context.path); });
    });
  }
};

export default plugin;
