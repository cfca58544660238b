// A parser for the server-sent events wire format (text/event-stream), fed
// decoded text in arbitrary chunks. We read the stream with fetch rather
// than EventSource because EventSource cannot send an Authorization header.
//
// Framing: lines end in \n, \r\n or \r; `field: value` lines accumulate an
// event; a blank line dispatches it; lines starting with ':' are comments
// (keep-alives). Only `event` and `data` matter here: the daemon sends no
// `id` or `retry`.

/**
 * Returns `push(text)`; every complete event calls `onEvent(name, data)`
 * where `name` defaults to "message" and `data` joins the data lines by \n.
 */
export function sseParser(onEvent) {
  let buf = '';
  let name = '';
  let data = [];

  function line(l) {
    if (l === '') {
      if (data.length) onEvent(name || 'message', data.join('\n'));
      name = '';
      data = [];
      return;
    }
    if (l.startsWith(':')) return;
    const c = l.indexOf(':');
    const field = c < 0 ? l : l.slice(0, c);
    let value = c < 0 ? '' : l.slice(c + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') name = value;
    else if (field === 'data') data.push(value);
  }

  return function push(text) {
    buf += text;
    for (;;) {
      const i = buf.search(/[\r\n]/);
      if (i < 0) return;
      // A '\r' at the very end may be the first half of "\r\n": wait.
      if (buf[i] === '\r' && i === buf.length - 1) return;
      const len = buf[i] === '\r' && buf[i + 1] === '\n' ? 2 : 1;
      const l = buf.slice(0, i);
      buf = buf.slice(i + len);
      line(l);
    }
  };
}
