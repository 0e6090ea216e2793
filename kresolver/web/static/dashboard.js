/* kresolver dashboard: follows the /stats event stream and redraws the charts.
 *
 * Each event is a snapshot of cumulative counters; rates are differences between two
 * snapshots divided by the time between them.  window.kres is the page's small API:
 * kres.updates counts the snapshots seen, kres.fetch() adds the API token that the
 * operator typed (kept for this tab only) so snippets such as the firewall can change things.
 */
(function () {
  'use strict';
  const CAPACITY = 120;
  const COLORS = ['#4fb3ff', '#5fd38d', '#f0b35a', '#ff6b6b', '#b48ead', '#88c0d0', '#ebcb8b'];
  const RCODES = [
    ['noerror', 'answer.noerror', '#5fd38d'], ['nodata', 'answer.nodata', '#88c0d0'],
    ['nxdomain', 'answer.nxdomain', '#f0b35a'], ['servfail', 'answer.servfail', '#ff6b6b'],
    ['other', 'answer.other', '#b48ead'],
  ];
  const LATENCY = [['1ms', '≤1'], ['10ms', '≤10'], ['50ms', '≤50'], ['100ms', '≤100'],
    ['250ms', '≤250'], ['500ms', '≤500'], ['1000ms', '≤1s'], ['1500ms', '≤1.5s'],
    ['slow', 'slow']];

  const history = { qps: [], hit: [], rcode: {}, policy: {}, interval: 1 };
  let previous = null;

  const tokenInput = document.getElementById('token');
  tokenInput.value = sessionStorage.getItem('kresolver-token') || '';
  tokenInput.addEventListener('change', () => {
    sessionStorage.setItem('kresolver-token', tokenInput.value);
  });

  const kres = window.kres = {
    updates: 0,
    last: null,
    fetch: function (url, options) {
      options = Object.assign({}, options || {});
      options.headers = Object.assign({}, options.headers || {});
      const token = tokenInput.value;
      if (token) options.headers.Authorization = 'Bearer ' + token;
      return fetch(url, options);
    },
    listeners: [],
    onUpdate: function (callback) { this.listeners.push(callback); },
  };

  /* Counters of refused queries: policy counts every verdict as policy.<action> (DAF
     rules are policy rules too); only the actions that keep an answer from a client are
     blocks. */
  const BLOCKING = ['deny_msg', 'drop', 'refuse', 'tc', 'no_answer'];
  function isBlock(key) {
    return key.startsWith('policy.') && BLOCKING.includes(key.slice('policy.'.length));
  }
  function blockLabel(key) { return key.slice('policy.'.length).replace('deny_msg', 'deny'); }

  function push(list, value) {
    list.push(value);
    if (list.length > CAPACITY) list.shift();
  }

  function pct(part, whole) {
    return whole > 0 ? (100 * part / whole).toFixed(1) + '%' : '-';
  }

  function setText(id, value) { document.getElementById(id).textContent = value; }

  function legend(id, entries) {
    const box = document.getElementById(id);
    box.textContent = '';
    for (const [name, color, value] of entries) {
      const item = document.createElement('span');
      const swatch = document.createElement('i');
      swatch.style.background = color;
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(name + ' ' + value));
      box.appendChild(item);
    }
  }

  function record(snapshot) {
    const m = snapshot.metrics;
    if (!previous) return;
    const p = previous.metrics;
    const dt = Math.max(snapshot.time - previous.time, 0.001);
    history.interval = 0.8 * history.interval + 0.2 * dt;
    const rate = key => Math.max(((m[key] || 0) - (p[key] || 0)) / dt, 0);
    const total = rate('answer.total');
    push(history.qps, total);
    const last = history.hit.length ? history.hit[history.hit.length - 1] : 0;
    push(history.hit, total > 0 ? 100 * rate('answer.cached') / total : last);
    for (const [name, key] of RCODES) {
      push(history.rcode[name] = history.rcode[name] || [], rate(key));
    }
    for (const key of Object.keys(m)) {
      if (isBlock(key)) {
        const series = history.policy[key] = history.policy[key] || [];
        push(series, rate(key));
      }
    }
  }

  function draw(snapshot) {
    const m = snapshot.metrics;
    const total = m['answer.total'] || 0;
    const qps = history.qps.length ? history.qps[history.qps.length - 1] : 0;
    setText('kpi-qps', KCharts.fmt(qps));
    setText('kpi-total', KCharts.fmt(total));
    setText('kpi-hit', pct(m['answer.cached'] || 0, total));
    setText('kpi-servfail', pct(m['answer.servfail'] || 0, total));
    const policyKeys = Object.keys(m).filter(isBlock);
    setText('kpi-blocked', KCharts.fmt(policyKeys.reduce((sum, key) => sum + (m[key] || 0), 0)));

    const span = Math.round(CAPACITY * history.interval);
    KCharts.line(document.getElementById('chart-qps'),
      [{ name: 'answers/s', color: '#4fb3ff', values: history.qps }],
      { capacity: CAPACITY, height: 170, span: span });
    KCharts.line(document.getElementById('chart-rcode'),
      RCODES.map(([name, , color]) => ({ name: name, color: color,
        values: history.rcode[name] || [] })), { capacity: CAPACITY, span: span });
    legend('legend-rcode', RCODES.map(([name, key, color]) =>
      [name, color, KCharts.fmt(m[key] || 0)]));
    KCharts.line(document.getElementById('chart-hit'),
      [{ name: 'hit %', color: '#5fd38d', values: history.hit }],
      { capacity: CAPACITY, max: 100, unit: '%', span: span });

    const buckets = LATENCY.map(([key]) => m['answer.' + key] || 0);
    const answered = buckets.reduce((a, b) => a + b, 0);
    KCharts.bars(document.getElementById('chart-latency'), LATENCY.map(([, label], i) => ({
      label: (label + (i < 8 ? 'ms' : '')).replace('sms', 's'),
      value: answered ? 100 * buckets[i] / answered : 0,
      text: answered ? (100 * buckets[i] / answered).toFixed(0) + '%' : '0',
      color: i < 3 ? '#5fd38d' : i < 6 ? '#f0b35a' : '#ff6b6b',
    })), { max: 100 });

    const policy = Object.keys(history.policy).sort().slice(0, COLORS.length);
    KCharts.line(document.getElementById('chart-policy'), policy.map((key, i) => ({
      name: key, color: COLORS[i], values: history.policy[key] })),
      { capacity: CAPACITY, span: span });
    document.getElementById('empty-policy').hidden = policy.length > 0;
    legend('legend-policy', policy.map((key, i) =>
      [blockLabel(key), COLORS[i], KCharts.fmt(m[key] || 0)]));

    const body = document.querySelector('#table-names tbody');
    body.textContent = '';
    const names = snapshot.frequent || [];
    const most = names.length ? names[0].count : 1;
    for (const entry of names) {
      const row = body.insertRow();
      row.insertCell().textContent = entry.name;
      row.insertCell().textContent = entry.type;
      const count = row.insertCell();
      count.textContent = entry.count;
      count.className = 'num';
      const meter = document.createElement('div');
      meter.className = 'meter';
      meter.style.width = Math.max(2, 80 * entry.count / most) + 'px';
      row.insertCell().appendChild(meter);
    }
    document.getElementById('empty-names').hidden = names.length > 0;

    const upstreams = snapshot.upstreams || [];
    KCharts.hbars(document.getElementById('chart-upstreams'), upstreams.map(row => ({
      label: row.address, value: row.median,
      text: KCharts.fmt(row.median) + ' ms ×' + row.count,
      color: row.median < 50 ? '#5fd38d' : row.median < 250 ? '#f0b35a' : '#ff6b6b',
    })));
    document.getElementById('empty-upstreams').hidden = upstreams.length > 0;
  }

  function connect() {
    const source = new EventSource('/stats');
    const status = document.getElementById('status');
    source.onopen = () => { status.textContent = 'live'; status.className = 'status up'; };
    source.onerror = () => { status.textContent = 'reconnecting'; status.className = 'status down'; };
    source.onmessage = event => {
      const snapshot = JSON.parse(event.data);
      record(snapshot);
      previous = snapshot;
      kres.updates += 1;
      kres.last = snapshot;
      draw(snapshot);
      for (const callback of kres.listeners) {
        try { callback(snapshot); } catch (error) { console.error(error); }
      }
    };
  }

  connect();
})();
