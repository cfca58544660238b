// Small timing and parsing helpers shared by pages.

/**
 * Rate-limit `fn` to one call per `ms`: the first call runs after at most
 * `ms`, calls in between collapse into it (so a burst of events becomes one
 * refetch, and a steady stream at most 1000/ms refetches a second).
 */
export function throttle(fn, ms) {
  let last = 0;
  let timer = null;
  const run = () => {
    timer = null;
    last = Date.now();
    fn();
  };
  const call = () => {
    if (timer) return;
    timer = setTimeout(run, Math.max(0, last + ms - Date.now()));
  };
  call.cancel = () => {
    clearTimeout(timer);
    timer = null;
  };
  return call;
}

/**
 * Split a command line into words like a POSIX shell would (quotes and
 * backslashes; no expansion). Throws on an unterminated quote.
 */
export function shellWords(line) {
  const words = [];
  let cur = '';
  let inWord = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (c === "'") {
      const j = line.indexOf("'", i + 1);
      if (j < 0) throw new Error('unterminated single quote');
      cur += line.slice(i + 1, j);
      i = j;
      inWord = true;
    } else if (c === '"') {
      let j = i + 1;
      for (; j < line.length && line[j] !== '"'; j++) {
        if (line[j] === '\\' && '"\\$`'.includes(line[j + 1])) j++;
        cur += line[j];
      }
      if (j >= line.length) throw new Error('unterminated double quote');
      i = j;
      inWord = true;
    } else if (c === '\\' && i + 1 < line.length) {
      cur += line[++i];
      inWord = true;
    } else if (/\s/.test(c)) {
      if (inWord) words.push(cur);
      cur = '';
      inWord = false;
    } else {
      cur += c;
      inWord = true;
    }
  }
  if (inWord) words.push(cur);
  return words;
}

/** `"lr=1e-3 epochs=10"` (spaces, commas or newlines) → `{lr: '1e-3', epochs: '10'}`. */
export function keyValues(text) {
  const out = {};
  for (const item of text.split(/[\s,]+/).filter(Boolean)) {
    const i = item.indexOf('=');
    if (i <= 0) throw new Error(`"${item}" is not KEY=VALUE`);
    out[item.slice(0, i)] = item.slice(i + 1);
  }
  return out;
}

/** `"90s"`, `"30m"`, `"2h"`, `"1d"` or plain seconds → seconds. */
export function parseDuration(text) {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)?\s*$/i.exec(text);
  if (!m) throw new Error('use a number of seconds or 90s, 30m, 2h, 1d');
  const mult = { s: 1, sec: 1, m: 60, min: 60, h: 3600, d: 86400 }[(m[2] ?? 's').toLowerCase()];
  return Math.round(Number(m[1]) * mult);
}
