// Keys for the whole page: arrows move between units, [ and ] between layers
// (focus goes to the new layer's tab when it was on a tab, else to the unit grid,
// so the arrows go on moving units), Esc closes panels.
// The layer picker, the feature map and the sample strip handle their own arrows
// (and stop them here).
const TYPING = new Set(['INPUT', 'SELECT', 'TEXTAREA']);

export function createKeyboardView({
  columns = () => 1, afterMove = () => {}, afterLayerMove = () => {}, target = document,
} = {}) {
  return {
    bind(handlers) {
      target.addEventListener('keydown', (e) => {
        if (e.altKey || e.ctrlKey || e.metaKey) return;
        if (e.key === 'Escape') { handlers.closePanels(); return; }
        const t = e.target;
        if (t && (TYPING.has(t.tagName) || t.isContentEditable)) return;
        if (t && t.closest && t.closest('[data-own-arrows]')) return; // a strip that scrolls by arrows
        const step = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -columns(), ArrowDown: columns() }[e.key];
        if (step !== undefined) {
          e.preventDefault();
          handlers.moveUnit(step);
          afterMove(); // focus follows the keyboard to the chosen unit
        } else if (e.key === '[' || e.key === ']') {
          e.preventDefault();
          const onTab = !!(t && t.getAttribute && t.getAttribute('role') === 'tab');
          handlers.moveLayer(e.key === '[' ? -1 : 1);
          afterLayerMove(onTab); // focus: the new layer's tab, else the grid; never the body
        }
      });
    },
    render() {},
  };
}
