/*
 * shared.js: the read-only page of a shared conversation (shared.html),
 * served at {prefix}/shared/<token>. It reads the conversation with
 * GET {prefix}/api/shared/<token>, which needs no sign-in (the link is the
 * permission), and shows its title and messages: sender names only, no
 * ids, nothing to write with. A link that has expired or was revoked
 * answers 404, and the page says so. It uses chatd.js for drawing only
 * (messages, links in them), never its connection.
 */
'use strict';

(function () {
  const C = window.Chatd;
  const $ = (id) => document.getElementById(id);

  const main = $('shared');
  const title = $('shared-title');
  const sub = $('shared-sub');
  const error = $('shared-error');
  const list = $('messages');

  // The token is the path's last part: {prefix}/shared/<token>.
  function tokenOf(path) {
    const m = /\/shared\/([^/]+)\/?$/.exec(path);
    if (!m) return '';
    try {
      return decodeURIComponent(m[1]);
    } catch (e) {
      return '';
    }
  }

  function fail(text) {
    title.textContent = 'This link does not work';
    sub.hidden = true;
    error.textContent = text;
    error.hidden = false;
    document.title = 'Link not available · chatd';
  }

  async function load() {
    const token = tokenOf(location.pathname);
    if (!token) {
      fail('This address holds no link to a conversation.');
      return;
    }
    let body;
    try {
      body = await C.api('../api/shared/' + encodeURIComponent(token), null);
    } catch (err) {
      if (err.status === 404) {
        fail('This link has expired, or its owner stopped sharing the conversation. ' +
          'Ask them for a new link.');
      } else {
        fail('The conversation could not be loaded: ' + err.message);
      }
      return;
    }
    const msgs = Array.isArray(body && body.messages) ? body.messages : [];
    title.textContent = (body && body.title) || C.UNTITLED;
    document.title = title.textContent + ' · chatd';
    const first = msgs.length ? new Date(msgs[0].timestamp) : null;
    const day = first && !isNaN(first)
      ? first.toLocaleDateString(undefined, { day: 'numeric', month: 'long', year: 'numeric' }) : '';
    sub.textContent = 'A read-only copy of a conversation: ' + msgs.length + ' message' +
      (msgs.length === 1 ? '' : 's') + (day ? ', from ' + day : '') + '.';
    list.replaceChildren(...msgs.map((m) => C.messageNode({ ev: m }, null)));
    if (!msgs.length) list.replaceChildren(C.el('li', { class: 'muted messages__empty' }, 'No messages.'));
  }

  load().finally(() => main.removeAttribute('aria-busy'));
})();
