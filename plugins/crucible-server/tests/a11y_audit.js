() => {
  /* Accessibility basics of the current page, as a list of problems (empty: none).
  Labels, accessible names, WCAG AA text contrast (4.5:1), no horizontal scroll. */
  const out = [];
  if (!document.documentElement.lang) out.push('no lang');
  if ([...document.querySelectorAll('h1')].filter((h) => h.offsetParent).length !== 1) out.push('h1 count');
  for (const e of document.querySelectorAll('input, select, textarea')) {
    if (e.type === 'hidden') continue;
    if (!(e.labels && e.labels.length) && !e.getAttribute('aria-label')) out.push('unlabelled ' + (e.id || e.name));
  }
  for (const e of document.querySelectorAll('button, a[href]'))
    if (!(e.textContent.trim() || e.getAttribute('aria-label'))) out.push('nameless ' + e.outerHTML.slice(0, 60));
  for (const e of document.querySelectorAll('[role=img]'))
    if (!e.getAttribute('aria-label') && !e.getAttribute('aria-labelledby')) out.push('img without label');
  const lum = (c) => { const [r, g, b] = c.match(/\d+(\.\d+)?/g).slice(0, 3).map(Number).map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; }); return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
  const bg = (e) => { for (; e; e = e.parentElement) { const c = getComputedStyle(e).backgroundColor; if (!c.endsWith(', 0)') && c !== 'transparent') return c; } return 'rgb(255, 255, 255)'; };
  for (const e of document.querySelectorAll('main p, main td, main th, main a, main label, button, .top a')) {
    if (!e.offsetParent || !e.textContent.trim()) continue;
    const a = lum(getComputedStyle(e).color), b = lum(bg(e));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < 4.5) out.push(`contrast ${ratio.toFixed(2)} ${e.tagName} ${e.textContent.trim().slice(0, 20)}`);
  }
  if (document.documentElement.scrollWidth > window.innerWidth + 1) out.push('horizontal scroll');
  return out;
}
