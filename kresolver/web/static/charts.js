/* Small SVG charts for the kresolver dashboard (our own code: no third-party library).
 *
 * KCharts.line(container, series, opts): time series, right-aligned, newest at the right.
 * KCharts.bars(container, items, opts): vertical bars with value labels.
 * KCharts.hbars(container, items, opts): horizontal bars, one row per item.
 * Every drawn series carries data-points (how many points it has) so tests can read it.
 */
(function () {
  'use strict';
  const NS = 'http://www.w3.org/2000/svg';

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const key in attrs) node.setAttribute(key, attrs[key]);
    if (parent) parent.appendChild(node);
    return node;
  }

  function text(parent, x, y, value, attrs) {
    const node = el('text', Object.assign({ x: x, y: y }, attrs || {}), parent);
    node.textContent = value;
    return node;
  }

  /* The smallest 1-2-2.5-5 step at or above max, so axes read as round numbers. */
  function nice(max) {
    if (!(max > 0)) return 1;
    const power = Math.pow(10, Math.floor(Math.log10(max)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * power >= max) return m * power;
    return 10 * power;
  }

  function fmt(value) {
    if (value >= 1e6) return (value / 1e6).toFixed(1) + 'M';
    if (value >= 1e4) return (value / 1e3).toFixed(0) + 'k';
    if (value >= 1e3) return (value / 1e3).toFixed(1) + 'k';
    if (value >= 10 || value === 0) return Math.round(value).toString();
    return value.toFixed(1);
  }

  function canvas(container, height) {
    const width = Math.max(container.clientWidth, 200);
    container.textContent = '';
    const svg = el('svg', { viewBox: '0 0 ' + width + ' ' + height, height: height,
      preserveAspectRatio: 'none', role: 'img' }, container);
    return { svg: svg, width: width, height: height };
  }

  function line(container, series, opts) {
    opts = opts || {};
    const c = canvas(container, opts.height || 150);
    const pad = { l: 42, r: 10, t: 8, b: 18 };
    const capacity = opts.capacity || 120;
    let top = 0;
    for (const s of series) for (const v of s.values) top = Math.max(top, v);
    const max = opts.max || nice(top * 1.1);
    const w = c.width - pad.l - pad.r, h = c.height - pad.t - pad.b;
    const y = v => pad.t + h - (Math.min(v, max) / max) * h;
    const step = w / Math.max(capacity - 1, 1);
    for (const f of [0, 0.5, 1]) {
      const gy = y(max * f);
      el('line', { x1: pad.l, x2: c.width - pad.r, y1: gy, y2: gy, class: 'grid' }, c.svg);
      text(c.svg, pad.l - 6, gy + 3, fmt(max * f) + (opts.unit || ''),
        { class: 'axis', 'text-anchor': 'end' });
    }
    text(c.svg, pad.l, c.height - 4, '-' + (opts.span || capacity) + 's', { class: 'axis' });
    text(c.svg, c.width - pad.r, c.height - 4, 'now', { class: 'axis', 'text-anchor': 'end' });
    for (const s of series) {
      const values = s.values.slice(-capacity);
      const x0 = pad.l + (capacity - values.length) * step;
      const points = values.map((v, i) => [x0 + i * step, y(v)]);
      const d = points.map((p, i) => (i ? 'L' : 'M') + p[0].toFixed(1) + ' ' + p[1].toFixed(1));
      if (points.length && opts.area !== false && series.length === 1) {
        const last = points[points.length - 1];
        el('path', { d: d.join(' ') + ' L' + last[0].toFixed(1) + ' ' + y(0) + ' L' +
          points[0][0].toFixed(1) + ' ' + y(0) + ' Z', class: 'area', fill: s.color }, c.svg);
      }
      el('path', { d: d.join(' ') || 'M0 0', class: 'series', stroke: s.color,
        'data-name': s.name, 'data-points': points.length }, c.svg);
    }
    return c.svg;
  }

  function bars(container, items, opts) {
    opts = opts || {};
    const c = canvas(container, opts.height || 150);
    const pad = { l: 8, r: 8, t: 14, b: 18 };
    const w = c.width - pad.l - pad.r, h = c.height - pad.t - pad.b;
    let top = 0;
    for (const item of items) top = Math.max(top, item.value);
    const max = opts.max || nice(top);
    const slot = w / Math.max(items.length, 1);
    el('line', { x1: pad.l, x2: c.width - pad.r, y1: pad.t + h, y2: pad.t + h, class: 'grid' },
      c.svg);
    items.forEach((item, i) => {
      const bh = max > 0 ? (item.value / max) * h : 0;
      const x = pad.l + i * slot + slot * 0.15;
      el('rect', { x: x, y: pad.t + h - bh, width: slot * 0.7, height: bh, rx: 2,
        class: 'bar', fill: item.color || '#4fb3ff', 'data-value': item.value }, c.svg);
      text(c.svg, x + slot * 0.35, pad.t + h - bh - 3, item.text || fmt(item.value),
        { class: 'barlabel', 'text-anchor': 'middle' });
      text(c.svg, x + slot * 0.35, c.height - 4, item.label,
        { class: 'axis', 'text-anchor': 'middle' });
    });
    return c.svg;
  }

  function hbars(container, items, opts) {
    opts = opts || {};
    const row = 20;
    const c = canvas(container, Math.max(items.length * row + 6, 26));
    const label = opts.labelWidth || 130, right = 90;
    let top = 0;
    for (const item of items) top = Math.max(top, item.value);
    const max = nice(top);
    const w = c.width - label - right;
    items.forEach((item, i) => {
      const y = 3 + i * row;
      text(c.svg, 0, y + 13, item.label, { class: 'axis' });
      el('rect', { x: label, y: y + 3, height: row - 8, rx: 2, class: 'bar',
        width: max > 0 ? Math.max((item.value / max) * w, 1) : 1,
        fill: item.color || '#4fb3ff', 'data-value': item.value }, c.svg);
      text(c.svg, c.width - right + 6, y + 13, item.text || fmt(item.value),
        { class: 'barlabel' });
    });
    return c.svg;
  }

  window.KCharts = { line: line, bars: bars, hbars: hbars, fmt: fmt, nice: nice };
})();
