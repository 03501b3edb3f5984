// Bringing an image: drop, paste, file picker, or a data-set sample.
import { $, h, img, rebuild, showStatus } from './dom.js';

export function createUploadView(root = document) {
  const zone = $('[data-testid="upload"]', root);
  const input = $('#file-input', root);
  const status = $('[data-testid="upload-status"]', root);
  const strip = $('[data-testid="samples"]', root);
  const stripStatus = $('[data-testid="samples-status"]', root);
  const more = $('[data-testid="more-samples"]', root);
  let handlers = null;

  function firstImage(items) {
    for (const it of items || []) {
      if (it.kind === 'file') {
        const f = it.getAsFile();
        if (f) return f;
      }
    }
    return null;
  }

  return {
    bind(h_) {
      handlers = h_;
      input.addEventListener('change', () => {
        const file = input.files && input.files[0];
        if (file) handlers.uploadFile(file);
        input.value = ''; // the same file again must fire again
      });
      zone.addEventListener('dragover', (e) => { e.preventDefault(); zone.classList.add('dragging'); });
      zone.addEventListener('dragleave', () => zone.classList.remove('dragging'));
      zone.addEventListener('drop', (e) => {
        e.preventDefault();
        zone.classList.remove('dragging');
        const file = (e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0]) || null;
        handlers.uploadFile(file);
      });
      zone.addEventListener('keydown', (e) => {
        if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); input.click(); }
      });
      document.addEventListener('paste', (e) => {
        const t = e.target;
        if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA')) return;
        const file = firstImage(e.clipboardData && e.clipboardData.items);
        if (file) { e.preventDefault(); handlers.uploadFile(file); }
      });
      more.addEventListener('click', () => handlers.moreSamples());
      // One Tab stop for the strip; arrows move between its images.
      strip.addEventListener('keydown', (e) => {
        const all = [...strip.querySelectorAll('.sample')];
        const i = all.indexOf(e.target.closest('.sample'));
        const j = { ArrowRight: i + 1, ArrowDown: i + 4, ArrowLeft: i - 1, ArrowUp: i - 4, Home: 0, End: all.length - 1 }[e.key];
        if (i < 0 || j === undefined) return;
        e.preventDefault();
        e.stopPropagation();
        const next = all[Math.min(all.length - 1, Math.max(0, j))];
        for (const b of all) b.tabIndex = b === next ? 0 : -1;
        next.focus();
      });
    },
    render(state) {
      const u = state.upload;
      status.classList.remove('error', 'loading');
      if (u.status === 'loading') {
        status.hidden = false; status.classList.add('loading');
        status.textContent = `Sending ${u.name || 'the image'}…`;
      } else if (u.status === 'error') {
        status.hidden = false; status.classList.add('error');
        status.textContent = `Could not use ${u.name || 'that file'}: ${u.error}`;
      } else if (u.status === 'ok' && state.imageInfo.status === 'ok') {
        const d = state.imageInfo.data;
        status.hidden = false;
        status.textContent = `Image ${d.image_id.slice(0, 12)} (${d.width}×${d.height})`;
      } else {
        status.hidden = true;
      }
      zone.setAttribute('aria-busy', String(u.status === 'loading'));

      const s = state.samples;
      showStatus(stripStatus, s, { loading: 'Loading data-set images…' });
      more.disabled = s.status !== 'ok';
      const samples = s.status === 'ok' ? s.data.samples : [];
      rebuild(strip, `${s.key}|${s.status}`, () => samples.map((sample, i) => h('button', {
        type: 'button', class: 'sample', dataset: { testid: 'sample', index: sample.image_index }, tabindex: i ? '-1' : '0',
        title: `${sample.label} (data-set image ${sample.image_index}): use it (arrow keys: the others)`,
        onclick: () => handlers.pickSample(sample),
      }, img(sample.url, sample.label))));
    },
  };
}
