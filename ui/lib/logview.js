// A terminal-ish log viewer: appends decoded output to a <pre>, honours
// carriage returns (progress bars redraw their line), strips ANSI escapes,
// keeps following the end unless the user scrolled up, and trims the oldest
// output past a cap so week-long logs don't exhaust the tab.

import { h } from './dom.js';

// CSI sequences (colors, cursor moves) and OSC sequences (titles, links).
// eslint-disable-next-line no-control-regex
const ANSI = /\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]/g;
const CAP = 4 << 20; // characters kept in the view

export class LogView {
  constructor() {
    this.pre = h('pre', { class: 'log', tabindex: '0', 'aria-label': 'Job output', 'aria-live': 'off' });
    this.tail = document.createTextNode(''); // the current, unfinished line
    this.pre.append(this.tail);
    this.size = 0;
    this.pendingCR = false;
    this.onNewBelow = null; // called when output arrives while scrolled up
    this.pre.addEventListener('scroll', () => {
      if (this.atBottom()) this.onNewBelow?.(false);
    });
  }

  atBottom() {
    const p = this.pre;
    return p.scrollHeight - p.scrollTop - p.clientHeight < 24;
  }

  scrollToEnd() {
    this.pre.scrollTop = this.pre.scrollHeight;
  }

  clear() {
    this.pre.replaceChildren(this.tail);
    this.tail.data = '';
    this.size = 0;
    this.pendingCR = false;
  }

  /** Append decoded text. */
  write(text) {
    if (!text) return;
    const follow = this.atBottom();
    let done = '';
    let cur = this.tail.data;
    for (const part of text.replace(ANSI, '').split(/(\r\n|\n|\r)/)) {
      if (part === '') continue;
      if (this.pendingCR) {
        // "\r" then "\n" across chunks is one line end; "\r" then text
        // redraws the line (tqdm and friends).
        this.pendingCR = false;
        if (part === '\n') { done += `${cur}\n`; cur = ''; continue; }
        cur = '';
      }
      if (part === '\n' || part === '\r\n') { done += `${cur}\n`; cur = ''; }
      else if (part === '\r') this.pendingCR = true;
      else cur += part;
    }
    if (done) {
      this.pre.insertBefore(document.createTextNode(done), this.tail);
      this.size += done.length;
    }
    this.tail.data = cur;
    this.trim();
    if (follow) this.scrollToEnd();
    else this.onNewBelow?.(true);
  }

  trim() {
    let first = this.pre.firstChild;
    if (this.size <= CAP || first === this.tail) return;
    if (!first.classList?.contains('log-trimmed')) {
      this.pre.prepend(h('span', { class: 'log-trimmed' }, '… earlier output not shown in this view …\n'));
    }
    first = this.pre.firstChild.nextSibling;
    while (this.size > CAP && first && first !== this.tail) {
      const next = first.nextSibling;
      this.size -= first.data.length;
      first.remove();
      first = next;
    }
  }

  get empty() {
    return this.size === 0 && this.tail.data === '';
  }
}
