// Light/dark theme: follows the system unless the user picked one (kept in
// localStorage). CSS does the work through `html[data-theme]`; charts ask
// for the resolved colors and redraw on the `themechange` event.

const KEY = 'trainyard.theme';
const dark = matchMedia('(prefers-color-scheme: dark)');

/** The stored choice: `auto`, `light` or `dark`. */
export const choice = () => localStorage.getItem(KEY) || 'auto';

/** The theme in effect: `light` or `dark`. */
export const effective = () => {
  const c = choice();
  return c === 'auto' ? (dark.matches ? 'dark' : 'light') : c;
};

function apply() {
  document.documentElement.dataset.theme = effective();
  document.documentElement.dataset.themeChoice = choice();
  window.dispatchEvent(new Event('themechange'));
}

/** Store a choice (`auto` forgets it) and apply it. */
export function setChoice(c) {
  if (c === 'auto') localStorage.removeItem(KEY);
  else localStorage.setItem(KEY, c);
  apply();
}

/** Apply the stored choice and follow system changes while on `auto`. */
export function init() {
  apply();
  dark.addEventListener('change', () => { if (choice() === 'auto') apply(); });
}

/** A CSS custom property's value on the root (for canvas drawing). */
export const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
