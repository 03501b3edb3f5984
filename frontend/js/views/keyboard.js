// Keys for the whole page: arrows move between units, [ and ] between layers, Esc closes panels.
const TYPING = new Set(['INPUT', 'SELECT', 'TEXTAREA']);

export function createKeyboardView({ columns = () => 1, afterMove = () => {}, target = document } = {}) {
  return {
    bind(handlers) {
      target.addEventListener('keydown', (e) => {
        if (e.altKey || e.ctrlKey || e.metaKey) return;
        if (e.key === 'Escape') { handlers.closePanels(); return; }
        const t = e.target;
        if (t && (TYPING.has(t.tagName) || t.isContentEditable)) return;
        const step = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -columns(), ArrowDown: columns() }[e.key];
        if (step !== undefined) {
          if (t && t.getAttribute && t.getAttribute('role') === 'tab' && (e.key === 'ArrowLeft' || e.key === 'ArrowRight')) {
            e.preventDefault();
            handlers.moveLayer(step);
            return;
          }
          e.preventDefault();
          handlers.moveUnit(step);
          afterMove(); // focus follows the keyboard to the chosen unit
        } else if (e.key === '[') { e.preventDefault(); handlers.moveLayer(-1); }
        else if (e.key === ']') { e.preventDefault(); handlers.moveLayer(1); }
      });
    },
    render() {},
  };
}
