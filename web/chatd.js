/*
 * chatd.js: the shared client of the chatd web pages (chat.html, admin.html,
 * and shared.html, which uses only its drawing helpers).
 *
 * One copy of what both pages need to talk to chatd (see docs/protocol.md):
 *  - the token: taken from #token= on load, kept in sessionStorage
 *    ("chatd.token"), removed from the address bar; the sign-in form;
 *  - Chatd.Client: the WebSocket connection, reconnect with exponential
 *    backoff and jitter, the outbox of messages waiting for their ack (resent
 *    with the same id after a reconnect, so the server drops duplicates);
 *  - Chatd.Timeline: the stored events of one session placed by seq,
 *    duplicates dropped (replayed events may come after later live ones);
 *  - Chatd.OrderedList: a DOM list kept in key order (events, system lines,
 *    pending messages);
 *  - Chatd.ConversationPane: the pane both pages show one conversation in
 *    (history loading, the message list, "load earlier", typing line,
 *    the assistant's answers while they stream);
 *  - Chatd.StreamText, Chatd.answers, Chatd.AssistantBar: the assistant's
 *    answers placed by byte offset as they stream, its state per
 *    conversation (answering, stopping) and the line with the Stop button;
 *  - Chatd.SendQueue: a conversation's messages sent strictly in order,
 *    one at a time; a refused one does not hold up the next;
 *  - Chatd.support: a conversation's help and support state, from the API
 *    and the stored session events (help_request, help_resolved,
 *    admin_join, admin_leave), and the lines those events show as;
 *  - lists drawn again in place (keyedChildren, patchChildren): a row that
 *    did not change stays the same element, so a click pressed on it
 *    before a redraw still lands when released after it;
 *  - small DOM (links in messages), formatting and notice helpers (one
 *    notice per condition).
 *
 * Plain browser JavaScript, no build step. The page is served under a strict
 * Content-Security-Policy: no inline script or style, so nothing here sets
 * style attributes; looks are classes in chatd.css.
 */
'use strict';

(function (global) {
  const TOKEN_KEY = 'chatd.token';
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 30000;
  /* A connection that lived this long resets the backoff; one that the
   * server closes sooner keeps backing off, so a refusal loop stays slow. */
  const STABLE_MS = 10000;
  const MAX_AUTO_RETRIES = 8;
  const SENT_TYPES_KEPT = 256;
  const WHO_REFRESH_MS = 10000;

  // ---- storage and tokens ---------------------------------------------------

  function storageGet(store, key) {
    try {
      return store.getItem(key);
    } catch (e) {
      return null;
    }
  }

  function storageSet(store, key, value) {
    try {
      if (value === null || value === undefined) store.removeItem(key);
      else store.setItem(key, value);
    } catch (e) {
      /* storage disabled: the page still works for this load */
    }
  }

  // A token from what a person pasted: a bare JWT, or a whole page URL
  // with #token=... (what `chatd --dev` prints). null when it is neither.
  function parseTokenInput(text) {
    let t = String(text || '').trim();
    const m = /[#?&]token=([^&#\s]+)/.exec(t);
    if (m) {
      try {
        t = decodeURIComponent(m[1]);
      } catch (e) {
        return null;
      }
    }
    t = t.replace(/^Bearer\s+/i, '');
    return /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(t) ? t : null;
  }

  // Take #token= from the address (then drop it from the address bar and
  // history entry), else the token this tab already holds.
  function takeToken() {
    const hash = location.hash.replace(/^#/, '');
    if (hash) {
      const params = new URLSearchParams(hash);
      if (params.has('token')) {
        const tok = parseTokenInput(params.get('token'));
        params.delete('token');
        const rest = params.toString();
        history.replaceState(history.state, '',
          location.pathname + location.search + (rest ? '#' + rest : ''));
        if (tok) storageSet(sessionStorage, TOKEN_KEY, tok);
      }
    }
    return storageGet(sessionStorage, TOKEN_KEY);
  }

  function saveToken(token) {
    storageSet(sessionStorage, TOKEN_KEY, token);
  }

  // The claims of a JWT, unverified (the server verifies): for display and
  // early checks only. null when the token cannot be read.
  function decodeClaims(token) {
    try {
      const part = String(token).split('.')[1];
      const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
      const bin = atob(b64 + '==='.slice((b64.length + 3) % 4));
      const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
      const claims = JSON.parse(new TextDecoder().decode(bytes));
      return claims && typeof claims === 'object' ? claims : null;
    } catch (e) {
      return null;
    }
  }

  function isExpired(claims) {
    return !!claims && typeof claims.exp === 'number' && claims.exp * 1000 <= Date.now();
  }

  // A client message id: unique, 1..64 bytes: 'w', the Unix second (8 hex
  // digits), 64 random bits (16 hex digits). The server indexes ids per
  // session and sender; ids that grow with time go to the end of that
  // index instead of onto a random page of it. crypto.getRandomValues
  // works on plain http too (randomUUID needs a secure context).
  function newId() {
    const b = new Uint8Array(8);
    crypto.getRandomValues(b);
    const secs = Math.floor(Date.now() / 1000).toString(16).padStart(8, '0').slice(-8);
    return 'w' + secs + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  }

  // ---- HTTP API -------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message, retryAfter) {
      super(message);
      this.status = status;
      this.code = code;
      this.retryAfter = retryAfter;
    }
  }

  // Call an API path relative to the page (so a --prefix works), with the
  // token as a bearer header (none when token is null). opts: method
  // (default GET), body (sent as JSON). Resolves with the JSON body (null
  // for an answer without one, such as 204); rejects with an ApiError
  // carrying the error body's code and message.
  async function api(path, token, opts) {
    opts = opts || {};
    const headers = {};
    if (token) headers.Authorization = 'Bearer ' + token;
    const init = { method: opts.method || 'GET', headers, cache: 'no-store' };
    if (opts.body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(opts.body);
    }
    let res;
    try {
      res = await fetch(new URL(path, location.href), init);
    } catch (e) {
      throw new ApiError(0, 'network', 'The server cannot be reached.');
    }
    let body = null;
    if (res.status !== 204) {
      try {
        body = await res.json();
      } catch (e) {
        body = null;
      }
    }
    if (!res.ok) {
      const err = (body && body.error) || {};
      const e = typeof err === 'string' ? { message: err } : err;
      throw new ApiError(res.status, e.code || 'http_' + res.status,
        e.message || res.statusText || 'request failed', e.retry_after);
    }
    return body;
  }

  // ---- the connection -------------------------------------------------------

  class ChatdError extends Error {
    constructor(msg) {
      super(msg.message || msg.code || 'error');
      this.code = msg.code;
      this.retryAfter = msg.retry_after;
      this.frame = msg;
    }
  }

  /*
   * Client: one WebSocket to {page base}/ws and everything around it.
   *
   * States (emitted as 'state' with {state, ...}):
   *   connecting  socket opening
   *   preparing   connection_status received; the page's onConnected
   *               (resumes, admin re-joins) runs before the outbox is resent
   *   open        ready
   *   waiting     closed; a reconnect is scheduled ({delay, retryAt})
   *   auth        the token was refused or expired: a new one is needed
   *   evicted     closed because the user opened more devices than allowed
   *               (evict-oldest); reconnecting would evict another device,
   *               so only reconnectNow() does
   *   stopped     stop() was called
   * Events: 'status' (connection_status), 'event' (any chat event),
   * 'notification', 'error' (errors not answering an outbox message; the
   * handler's second argument is the type of the message sent with send()
   * that it answers, undefined when it answers none of them), 'ack',
   * 'auth' ({reason}), 'state'.
   */
  class Client {
    constructor(opts) {
      this.token = opts.token;
      this.onConnected = opts.onConnected || null;
      this.handlers = new Map();
      this.ws = null;
      this.gen = 0;
      this.state = 'idle';
      this.status = null;
      this.attempt = 0;
      this.timer = null;
      this.openedAt = 0;
      this.everConnected = false;
      this.stopped = false;
      /* id -> {msg, resolve, reject, onRetry, tries, sentGen, timer, prelude} */
      this.outbox = new Map();
      /* id -> type of the last messages sent without an ack (send()), so
       * that an error answering one of them is told from one about a
       * session as a whole (the assistant's) */
      this.sentTypes = new Map();
      this._wake = this._wake.bind(this);
      global.addEventListener('online', this._wake);
      document.addEventListener('visibilitychange', () => {
        if (document.visibilityState === 'visible') this._wake();
      });
    }

    on(type, fn) {
      if (!this.handlers.has(type)) this.handlers.set(type, []);
      this.handlers.get(type).push(fn);
      return this;
    }

    emit(type, data, extra) {
      for (const fn of this.handlers.get(type) || []) {
        try {
          fn(data, extra);
        } catch (e) {
          console.error('chatd: ' + type + ' handler failed', e);
        }
      }
    }

    _setState(state, extra) {
      this.state = state;
      this.emit('state', Object.assign({ state }, extra || {}));
    }

    get isOpen() {
      return this.state === 'open';
    }

    start() {
      this.stopped = false;
      this._connect();
    }

    // Close for good (sign-out). Messages still waiting are dropped.
    stop() {
      this.stopped = true;
      clearTimeout(this.timer);
      this.timer = null;
      this.gen++;
      if (this.ws) {
        try {
          this.ws.close(1000, 'signed out');
        } catch (e) {
          /* already closing */
        }
        this.ws = null;
      }
      for (const o of this.outbox.values()) {
        clearTimeout(o.timer);
        o.reject(new ChatdError({ code: 'stopped', message: 'signed out' }));
      }
      this.outbox.clear();
      global.removeEventListener('online', this._wake);
      this._setState('stopped');
    }

    // A new token (after 'auth', or a refreshed one): reconnect with it.
    setToken(token) {
      this.token = token;
      this.reconnectNow();
    }

    reconnectNow() {
      if (this.stopped) return;
      this.attempt = 0;
      this._connect();
    }

    _wake() {
      if (this.state === 'waiting') this._connect();
    }

    _connect() {
      clearTimeout(this.timer);
      this.timer = null;
      if (this.ws) {
        const old = this.ws;
        this.ws = null;
        try {
          old.close(1000, 'reconnecting');
        } catch (e) {
          /* ignore */
        }
      }
      const gen = ++this.gen;
      const u = new URL('ws', location.href);
      u.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
      u.hash = '';
      u.searchParams.set('token', this.token);
      let ws;
      try {
        ws = new WebSocket(u.href);
      } catch (e) {
        this._scheduleRetry({ reason: String(e.message || e) });
        return;
      }
      this.ws = ws;
      let opened = false;
      this._setState('connecting', { attempt: this.attempt });
      ws.onopen = () => {
        opened = true;
        this.openedAt = Date.now();
      };
      ws.onmessage = (e) => {
        if (gen === this.gen) this._onFrame(e.data, gen);
      };
      ws.onclose = (e) => {
        if (gen !== this.gen) return;
        this.ws = null;
        this._onClose(e, opened);
      };
    }

    _onClose(e, opened) {
      if (this.stopped) return;
      const code = e.code;
      const reason = e.reason || '';
      if (opened && Date.now() - this.openedAt >= STABLE_MS) this.attempt = 0;
      if (code === 1008 && /token/i.test(reason)) {
        this._authFailed(reason);
      } else if (code === 1008 && /device limit|evict/i.test(reason)) {
        this._setState('evicted', { code, reason });
      } else if (!opened) {
        this._probe();
      } else {
        this._scheduleRetry({ code, reason });
      }
    }

    /* The upgrade was refused or the server is unreachable; a browser does
     * not say which (it cannot read the refusal's status). The HTTP API
     * authenticates the same way, so ask it: GET api/devices answers a
     * 401 for a bad token, and otherwise says how many devices the user
     * has connected and the limit, so a refusal at the device limit can
     * be told apart (the retry then says so: {limit: {devices, max}}).
     * Anything else means try again later. A server without api/devices
     * (404) is asked api/sessions instead, for the token alone. */
    _probe() {
      const gen = this.gen;
      this._setState('waiting', { delay: null });
      const stale = () => gen !== this.gen || this.stopped;
      const failed = (err) => {
        if (stale()) return;
        if (err.status === 401) this._authFailed(err.message);
        else this._scheduleRetry({ reason: err.status ? err.message : '' });
      };
      api('api/devices', this.token).then((body) => {
        if (stale()) return;
        const devices = body ? Number(body.devices) : NaN;
        const max = body ? Number(body.max_devices) : NaN;
        if (devices >= 0 && max > 0 && devices >= max) {
          this._scheduleRetry({ limit: { devices, max, policy: body.device_policy || '' } });
        } else {
          this._scheduleRetry({});
        }
      }, (err) => {
        if (stale()) return;
        if (err.status !== 404) {
          failed(err);
          return;
        }
        api('api/sessions?limit=1', this.token).then(() => {
          if (!stale()) this._scheduleRetry({});
        }, failed);
      });
    }

    _authFailed(reason) {
      this._setState('auth', { reason });
      this.emit('auth', { reason });
    }

    _scheduleRetry(info) {
      clearTimeout(this.timer);
      const exp = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * Math.pow(2, this.attempt));
      const delay = Math.round(exp / 2 + Math.random() * (exp / 2));
      this.attempt = Math.min(this.attempt + 1, 16);
      const retryAt = Date.now() + delay;
      this._setState('waiting', Object.assign({ delay, retryAt }, info));
      this.timer = setTimeout(() => this._connect(), delay);
    }

    _onFrame(data, gen) {
      let msg;
      try {
        msg = JSON.parse(data);
      } catch (e) {
        console.warn('chatd: a frame that is not JSON', e);
        return;
      }
      if (!msg || typeof msg !== 'object') return;
      switch (msg.type) {
        case 'connection_status': {
          this.status = msg;
          const reconnect = this.everConnected;
          this.everConnected = true;
          this._setState('preparing');
          this.emit('status', msg);
          let prelude;
          try {
            prelude = this.onConnected ? this.onConnected(msg, reconnect) : null;
          } catch (e) {
            console.error('chatd: onConnected failed', e);
          }
          Promise.resolve(prelude).catch(() => {}).then(() => {
            if (gen !== this.gen || this.state !== 'preparing') return;
            this._setState('open');
            this._flush();
          });
          break;
        }
        case 'ack': {
          const o = msg.id ? this.outbox.get(msg.id) : null;
          if (o) {
            this.outbox.delete(msg.id);
            clearTimeout(o.timer);
            o.resolve(msg);
          }
          this.emit('ack', msg);
          break;
        }
        case 'error': {
          const o = msg.id ? this.outbox.get(msg.id) : null;
          if (o) this._outboxError(o, msg);
          else this.emit('error', msg, msg.id ? this.sentTypes.get(msg.id) : undefined);
          break;
        }
        case 'notification':
          // About one session (its answer ended with nothing to show, it
          // was renamed): the page's event handler, not a notice for the
          // person.
          if ((msg.code === 'assistant_done' || msg.code === 'session_renamed') && msg.session_id) {
            this.emit('event', msg);
          } else {
            this.emit('notification', msg);
          }
          break;
        default:
          this.emit('event', msg);
      }
    }

    /* rate_limited and unavailable say when to try again: the message is
     * resent then, with its id, a few times. Other errors are final. */
    _outboxError(o, err) {
      const id = o.msg.id;
      const again = (err.code === 'rate_limited' || err.code === 'unavailable') &&
        o.tries < MAX_AUTO_RETRIES;
      if (!again) {
        this.outbox.delete(id);
        o.reject(new ChatdError(err));
        return;
      }
      const delay = Math.max(250, Number(err.retry_after) || 1000);
      o.tries++;
      o.sentGen = 0;
      if (o.onRetry) {
        try {
          o.onRetry(err, delay);
        } catch (e) {
          console.error(e);
        }
      }
      o.timer = setTimeout(() => {
        o.timer = null;
        if (this.state === 'open' && this.outbox.get(id) === o) this._sendEntry(o);
      }, delay);
    }

    _sendEntry(o) {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
      this.ws.send(JSON.stringify(o.msg));
      o.sentGen = this.gen;
      if (o.onSent) o.onSent();
    }

    // Resend, in the order they were made, the messages not yet sent on
    // this connection (the server acknowledges a duplicate id again with
    // the original seq, without storing or delivering it twice).
    _flush() {
      for (const o of this.outbox.values()) {
        if (o.sentGen !== this.gen && !o.timer) this._sendEntry(o);
      }
    }

    /*
     * Send a message that the server acknowledges (user_message,
     * admin_message, help_request, model_select, admin_join, admin_leave).
     * msg.id is set when missing. Resolves with the ack; rejects with a
     * ChatdError (code, message). Kept until answered, across reconnects.
     * opts.onRetry(err, delayMs): a rate limit or outage is being waited out.
     * opts.prelude: may be sent while the connection is 'preparing'.
     */
    request(msg, opts) {
      opts = opts || {};
      if (!msg.id) msg.id = newId();
      const limit = this.status && this.status.max_message_bytes;
      if (limit && new TextEncoder().encode(JSON.stringify(msg)).length > limit) {
        return Promise.reject(new ChatdError({
          code: 'content_too_large',
          message: 'This message is larger than the server accepts (' + limit + ' bytes).',
        }));
      }
      return new Promise((resolve, reject) => {
        const o = {
          msg, resolve, reject, onRetry: opts.onRetry, onSent: opts.onSent,
          tries: 0, sentGen: 0, timer: null,
        };
        this.outbox.set(msg.id, o);
        if (this.state === 'open' || (opts.prelude && this.state === 'preparing')) {
          this._sendEntry(o);
        }
      });
    }

    // Forget a message still waiting (the person discarded it).
    cancel(id) {
      const o = this.outbox.get(id);
      if (!o) return;
      clearTimeout(o.timer);
      this.outbox.delete(id);
    }

    // Send a message that is not acknowledged (typing_indicator, read,
    // resume). Dropped when not connected: these only make sense live.
    send(msg) {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
      if (this.state !== 'open' && this.state !== 'preparing') return false;
      if (!msg.id) msg.id = newId();
      this.ws.send(JSON.stringify(msg));
      this.sentTypes.set(msg.id, msg.type);
      if (this.sentTypes.size > SENT_TYPES_KEPT) {
        this.sentTypes.delete(this.sentTypes.keys().next().value);
      }
      return true;
    }

    // Ask for every event of a session after afterSeq (the answer is the
    // events, then 'resumed').
    resume(sessionId, afterSeq) {
      return this.send({ type: 'resume', session_id: sessionId, after_seq: afterSeq });
    }
  }

  // ---- sending in order --------------------------------------------------------

  /* Errors that no retry can turn into a success: the message itself is
   * refused. A message failed with one of these offers Discard, no Retry. */
  const FINAL_ERRORS = new Set(['content_too_large', 'invalid_field', 'forbidden',
    'session_not_found', 'bad_json', 'unknown_type']);

  function canRetry(code) {
    return !FINAL_ERRORS.has(code);
  }

  /*
   * SendQueue: the chat messages of one conversation, sent strictly in the
   * order they were written: one at a time, the next only once the one
   * before it is acknowledged or refused. A refused message does not hold
   * up the ones after it; a message waiting out a rate limit or an outage
   * (Client.request retries it) does, so nothing overtakes it.
   *
   * hooks:
   *   client()            the Client now
   *   build(p, q)         the message to send for p ({type, id, content, ...})
   *   sending(p)          p is about to be sent (p.state is 'pending')
   *   retrying(p, err, ms) the server asked to wait; p.state is 'retrying'
   *   sent(p)             a retried p went out again
   *   acked(p, ack, q)    stored
   *   failed(p, err)      refused for good (p.state 'failed', p.error,
   *                       p.code, p.retryable)
   * `sid` is the session the queue sends to: null for a new conversation
   * until the first message's ack names it (set by the page in acked).
   */
  class SendQueue {
    constructor(hooks, sid) {
      this.hooks = hooks;
      this.sid = sid || null;
      this.items = []; /* waiting, in order; items[0] may be in flight */
      this.inFlight = null;
    }

    get size() {
      return this.items.length;
    }

    push(p) {
      p.state = 'pending';
      p.error = null;
      this.items.push(p);
      this.pump();
    }

    // p (failed) goes again, after the messages already waiting.
    retry(p) {
      if (this.items.includes(p)) return;
      this.push(p);
    }

    // Forget p (discarded): waiting, in flight, or failed.
    remove(p) {
      const i = this.items.indexOf(p);
      if (i < 0) return;
      this.items.splice(i, 1);
      if (this.inFlight === p) {
        this.inFlight = null;
        const c = this.hooks.client();
        if (c) c.cancel(p.id);
        this.pump();
      }
    }

    // Everything still waiting is dropped (sign-out).
    clear() {
      this.items = [];
      this.inFlight = null;
    }

    pump() {
      if (this.inFlight || !this.items.length) return;
      const c = this.hooks.client();
      if (!c) return;
      const p = this.items[0];
      this.inFlight = p;
      p.state = 'pending';
      p.error = null;
      this.hooks.sending(p);
      c.request(this.hooks.build(p, this), {
        onRetry: (err, delay) => {
          p.state = 'retrying';
          p.note = retryNote(err, delay);
          this.hooks.retrying(p, err, delay);
        },
        onSent: () => {
          if (p.state !== 'retrying') return;
          p.state = 'pending';
          this.hooks.sent(p);
        },
      }).then((ack) => {
        if (this.inFlight !== p) return; /* discarded meanwhile */
        this.items.shift();
        this.inFlight = null;
        this.hooks.acked(p, ack, this);
        this.pump();
      }, (err) => {
        if (err.code === 'stopped' || this.inFlight !== p) return;
        this.items.shift();
        this.inFlight = null;
        p.state = 'failed';
        p.code = err.code;
        p.error = errorText(err);
        p.retryable = canRetry(err.code);
        this.hooks.failed(p, err);
        this.pump();
      });
    }
  }

  // What a refused message says, by the error's code.
  function errorText(err) {
    switch (err.code) {
      case 'content_too_large':
        return 'too long for the server (' + (err.message || 'content too large') + ')';
      case 'session_not_found':
        return 'this conversation no longer exists';
      case 'forbidden':
        return 'not allowed here (' + (err.message || 'forbidden') + ')';
      case 'rate_limited':
        return 'sending too fast; try again in a moment';
      default:
        return err.message || err.code || 'error';
    }
  }

  const utf8 = new TextEncoder();

  // The bytes of text in UTF-8 (what max_content_bytes counts).
  function byteLength(text) {
    return utf8.encode(String(text || '')).length;
  }

  /* The largest message content the server takes: max_content_bytes from
   * connection_status, the protocol's default (64 KiB) when not said. */
  const DEFAULT_CONTENT_BYTES = 65536;
  function contentLimit(status) {
    const n = status && Number(status.max_content_bytes);
    return n > 0 ? n : DEFAULT_CONTENT_BYTES;
  }

  // ---- typing ---------------------------------------------------------------

  /*
   * TypingSender: tells a session that this person is typing. update() on
   * every edit of the message box: "typing: true" once when text appears,
   * "typing: false" after idleMs without an edit, when the box is emptied,
   * and on stop() (message sent, session changed, connection lost).
   */
  class TypingSender {
    constructor(getClient, idleMs) {
      this.getClient = getClient;
      this.idleMs = idleMs || 3000;
      this.sid = null;
      this.timer = null;
    }

    update(sessionId, hasText) {
      if (!sessionId || !hasText) {
        this.stop();
        return;
      }
      if (this.sid !== sessionId) {
        this.stop();
        const c = this.getClient();
        if (!c || !c.send({ type: 'typing_indicator', session_id: sessionId, typing: true })) return;
        this.sid = sessionId;
      }
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.stop(), this.idleMs);
    }

    stop() {
      clearTimeout(this.timer);
      this.timer = null;
      if (!this.sid) return;
      const c = this.getClient();
      if (c) c.send({ type: 'typing_indicator', session_id: this.sid, typing: false });
      this.sid = null;
    }
  }

  // "Ann is typing…", "Ann and Bob are typing…" from labels; '' for none.
  function typingText(labels) {
    if (!labels.length) return '';
    const verb = labels.length > 1 || labels[0].startsWith('You') ? ' are typing…' : ' is typing…';
    if (labels.length === 1) return labels[0] + verb;
    return labels.slice(0, -1).join(', ') + ' and ' + labels[labels.length - 1] + verb;
  }

  // ---- ordering -------------------------------------------------------------

  function isSeq(v) {
    return Number.isSafeInteger(v) && v > 0;
  }

  /*
   * Timeline: the stored events of one session by seq. Live events arrive
   * in seq order, but events replayed by resume fill gaps and may arrive
   * after later ones: add() places each by seq and drops one already held.
   * `from` is the after_seq the held history starts from (null until history
   * was loaded); `high` the highest seq such that every event from `from`+1
   * to it is held: the after_seq to resume from.
   */
  class Timeline {
    constructor() {
      this.events = new Map();
      this.seqs = [];
      this.from = null;
      this.high = 0;
    }

    has(seq) {
      return this.events.has(seq);
    }

    get(seq) {
      return this.events.get(seq);
    }

    get last() {
      return this.seqs.length ? this.seqs[this.seqs.length - 1] : 0;
    }

    get first() {
      return this.seqs.length ? this.seqs[0] : 0;
    }

    get size() {
      return this.seqs.length;
    }

    get loaded() {
      return this.from !== null;
    }

    // Returns true when ev is new (and now held), false for a duplicate or
    // an event without a seq.
    add(ev) {
      if (!ev || !isSeq(ev.seq) || this.events.has(ev.seq)) return false;
      this.events.set(ev.seq, ev);
      const s = this.seqs;
      if (!s.length || s[s.length - 1] < ev.seq) {
        s.push(ev.seq);
      } else {
        let lo = 0;
        let hi = s.length;
        while (lo < hi) {
          const mid = (lo + hi) >> 1;
          if (s[mid] < ev.seq) lo = mid + 1;
          else hi = mid;
        }
        s.splice(lo, 0, ev.seq);
      }
      this._advance();
      return true;
    }

    // History after `from` is now held (an API read of it completed).
    markLoaded(from) {
      if (this.from === null || from < this.from) {
        this.from = from;
        this.high = from;
      }
      this._advance();
    }

    _advance() {
      if (this.from === null) return;
      while (this.events.has(this.high + 1)) this.high++;
    }

    // Events in seq order.
    list() {
      return this.seqs.map((q) => this.events.get(q));
    }
  }

  // Load a session's stored events after `after` through the HTTP API, page
  // by page, into tl; marks tl loaded from `after`. Returns the answer's
  // last_seq. Events that arrive live meanwhile are kept: tl drops the
  // copies.
  async function loadHistory(token, sessionId, after, tl) {
    const LIMIT = 1000;
    let from = after;
    let lastSeq = 0;
    for (;;) {
      const body = await api('api/sessions/' + encodeURIComponent(sessionId) +
        '/messages?after_seq=' + from + '&limit=' + LIMIT, token);
      const msgs = Array.isArray(body.messages) ? body.messages : [];
      for (const m of msgs) tl.add(m);
      lastSeq = Number(body.last_seq) || 0;
      const got = msgs.length ? msgs[msgs.length - 1].seq : from;
      if (msgs.length < LIMIT || got >= lastSeq) break;
      from = got;
    }
    tl.markLoaded(after);
    return lastSeq;
  }

  // Load the `count` events before the held history (seq from-count+1 ..
  // from): seqs have no gaps, so one read of `count` events covers them.
  async function loadEarlier(token, sessionId, tl, count) {
    if (!tl.loaded || tl.from <= 0) return;
    const after = Math.max(0, tl.from - count);
    const body = await api('api/sessions/' + encodeURIComponent(sessionId) +
      '/messages?after_seq=' + after + '&limit=' + Math.min(1000, tl.from - after), token);
    for (const m of Array.isArray(body.messages) ? body.messages : []) tl.add(m);
    tl.markLoaded(after);
  }

  /*
   * OrderedList: children of a container kept sorted by a key [major, minor]
   * (numbers; Infinity allowed). Events use [seq, 0], system lines [seq of the
   * event before them, n], pending messages [Infinity, n].
   */
  class OrderedList {
    constructor(container) {
      this.el = container;
      this.keys = [];
      this.nodes = new Map();
    }

    static cmp(a, b) {
      if (a[0] !== b[0]) return a[0] < b[0] ? -1 : 1;
      if (a[1] !== b[1]) return a[1] < b[1] ? -1 : 1;
      return 0;
    }

    _index(key) {
      let lo = 0;
      let hi = this.keys.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (OrderedList.cmp(this.keys[mid], key) < 0) lo = mid + 1;
        else hi = mid;
      }
      return lo;
    }

    has(key) {
      return this.nodes.has(key.join(':'));
    }

    put(key, node) {
      const k = key.join(':');
      const old = this.nodes.get(k);
      if (old) {
        if (old !== node) this.el.replaceChild(node, old);
        this.nodes.set(k, node);
        return;
      }
      const i = this._index(key);
      const next = i < this.keys.length ? this.nodes.get(this.keys[i].join(':')) : null;
      this.el.insertBefore(node, next);
      this.keys.splice(i, 0, key);
      this.nodes.set(k, node);
    }

    remove(key) {
      const k = key.join(':');
      const node = this.nodes.get(k);
      if (!node) return;
      node.remove();
      this.nodes.delete(k);
      const i = this._index(key);
      if (i < this.keys.length && OrderedList.cmp(this.keys[i], key) === 0) this.keys.splice(i, 1);
    }

    clear() {
      this.keys = [];
      this.nodes.clear();
      this.el.replaceChildren();
    }
  }

  // ---- DOM helpers ----------------------------------------------------------

  // el('li', {class: 'x', 'aria-label': 'y', dataset: {seq: 3}}, child, ...)
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'dataset') Object.assign(node.dataset, v);
      else if (k === 'text') node.textContent = v;
      else if (k === 'style') throw new Error('no inline styles (CSP)');
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : String(c));
    }
    return node;
  }

  // Makes `list`'s children the elements of `ids`, in that order. items
  // maps an id to its element; item(id, old) returns the element for id,
  // made anew when old is undefined, else old brought up to date. An
  // element is kept from one drawing to the next and moved only when its
  // place changes, so a press on it survives a redraw; an element inside
  // the list that had the focus has it again after a move.
  function keyedChildren(list, items, ids, item) {
    const focused = list.contains(document.activeElement) ? document.activeElement : null;
    const keep = new Set(ids);
    for (const [id, node] of items) {
      if (!keep.has(id)) {
        node.remove();
        items.delete(id);
      }
    }
    let prev = null;
    for (const id of keep) {
      const node = item(id, items.get(id));
      items.set(id, node);
      const next = prev ? prev.nextSibling : list.firstChild;
      if (node !== next) list.insertBefore(node, next);
      prev = node;
    }
    if (focused && focused.isConnected && document.activeElement !== focused) focused.focus();
  }

  // Makes node's children look like `children` (nodes or strings; null
  // skipped) while keeping every existing node that can stay: a text is
  // rewritten in place, an element with the same tag and attributes is
  // kept and its own children patched, anything else is replaced. A press
  // of the pointer lands on an element; when that element is gone by the
  // release, the browser sends no click, so a redraw under a pointer must
  // leave what did not change where it was. Only markup is compared: a
  // listener on a new node is not carried to the old one kept in its
  // place, so rows listen on their own element (made once), not on parts.
  function patchChildren(node, children) {
    const want = [];
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      want.push(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    for (let i = 0; i < want.length; i++) {
      const old = node.childNodes[i];
      const w = want[i];
      if (!old) {
        node.append(w);
      } else if (old.nodeType === Node.TEXT_NODE && w.nodeType === Node.TEXT_NODE) {
        if (old.data !== w.data) old.data = w.data;
      } else if (old.nodeType === Node.ELEMENT_NODE && old.cloneNode(false).isEqualNode(w.cloneNode(false))) {
        patchChildren(old, Array.from(w.childNodes));
      } else {
        old.replaceWith(w);
      }
    }
    while (node.childNodes.length > want.length) node.lastChild.remove();
  }

  function pad2(n) {
    return String(n).padStart(2, '0');
  }

  // "14:05" today, "26 Nov 14:05" another day (local time).
  function formatTime(iso) {
    const d = new Date(iso);
    if (isNaN(d)) return '';
    const hm = pad2(d.getHours()) + ':' + pad2(d.getMinutes());
    const now = new Date();
    if (d.toDateString() === now.toDateString()) return hm;
    const opts = { day: 'numeric', month: 'short' };
    if (d.getFullYear() !== now.getFullYear()) opts.year = 'numeric';
    return d.toLocaleDateString(undefined, opts) + ' ' + hm;
  }

  function formatFull(iso) {
    const d = new Date(iso);
    return isNaN(d) ? '' : d.toLocaleString();
  }

  // Who sent an event, as the reader of `me` (connection_status) sees it.
  function senderLabel(sender, me) {
    if (!sender) return '';
    const name = sender.name || sender.id || '';
    if (sender.type === 'ai') return name ? 'Assistant (' + name + ')' : 'Assistant';
    if (sender.type === 'system') return 'System';
    if (me && sender.id === me.user_id && sender.type === me.selfType) return 'You';
    if (sender.type === 'admin') return supportName(name, ' (support)');
    return name;
  }

  // A support person's name with `suffix` (" (support)", " from
  // support"), unless the name already says support ("Sam (Support)").
  function supportName(name, suffix) {
    return /\bsupport\b/i.test(name) ? name : name + suffix;
  }

  /*
   * Text with its web addresses as links: appends to `parent` text nodes
   * and <a> elements, built with DOM calls (never markup from the text).
   * Only http and https addresses become links, opened in a new tab with
   * rel="noopener noreferrer"; punctuation that ends a sentence stays out
   * of the link.
   */
  const URL_RE = /\bhttps?:\/\/[^\s<>"']+/gi;
  function appendLinked(parent, text) {
    const t = String(text || '');
    let at = 0;
    URL_RE.lastIndex = 0;
    for (let m = URL_RE.exec(t); m; m = URL_RE.exec(t)) {
      let href = m[0];
      // Trailing punctuation, and a closing bracket with no opening one.
      for (;;) {
        const last = href[href.length - 1];
        if (/[.,;:!?]/.test(last)) href = href.slice(0, -1);
        else if (last === ')' && (href.split('(').length < href.split(')').length)) href = href.slice(0, -1);
        else break;
      }
      let url = null;
      try {
        url = new URL(href);
      } catch (e) {
        url = null;
      }
      if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:') || !url.host) continue;
      if (m.index > at) parent.append(t.slice(at, m.index));
      parent.append(el('a', { href: url.href, rel: 'noopener noreferrer', target: '_blank', class: 'msg__link' }, href));
      at = m.index + href.length;
      URL_RE.lastIndex = at;
    }
    if (at < t.length) parent.append(t.slice(at));
    return parent;
  }

  /*
   * One message as an <li>: an event ({ev}), a pending message ({pending}),
   * or a streaming answer ({stream}: sender, content, timestamp,
   * stream_id, ended). data-state: sent, pending, retrying, failed,
   * streaming.
   * An answer that was cut short (metadata.partial) is marked so, with
   * data-partial="true". actions: [{label, onClick}] shown under a message
   * that failed.
   */
  function messageNode(item, me) {
    const ev = item.ev || item.pending || item.stream;
    const sender = ev.sender || { type: me ? me.selfType : 'user', id: me && me.user_id };
    const own = !!me && sender.id === me.user_id && sender.type === me.selfType;
    const state = item.ev ? 'sent' : item.stream ? 'streaming' : item.pending.state;
    const cls = ['msg', 'msg--' + (sender.type || 'user')];
    if (own) cls.push('msg--own');
    if (state !== 'sent') cls.push('msg--' + state);
    const meta = el('div', { class: 'msg__meta' },
      el('span', { class: 'msg__from' }, senderLabel(sender, me)));
    if (ev.timestamp) {
      meta.append(' ', el('time', { datetime: ev.timestamp, title: formatFull(ev.timestamp) },
        formatTime(ev.timestamp)));
    }
    let stateText = '';
    if (state === 'sent' && own) stateText = item.seen ? 'Seen' : 'Sent';
    else if (state === 'pending') stateText = 'Sending…';
    else if (state === 'retrying') stateText = item.pending.note || 'Waiting to retry…';
    else if (state === 'failed') stateText = 'Not sent: ' + (item.pending.error || 'error');
    else if (state === 'streaming') stateText = item.stream.ended ? 'Interrupted' : 'Writing…';
    if (state === 'streaming' && item.stream.ended) cls.push('msg--interrupted');
    if (stateText) meta.append(' ', el('span', { class: 'msg__state' }, stateText));
    const partial = !!item.ev && !!ev.metadata && ev.metadata.partial === true;
    if (partial) {
      cls.push('msg--partial');
      meta.append(' ', el('span', {
        class: 'msg__partial',
        title: ev.metadata.stop_reason ? 'Ended: ' + ev.metadata.stop_reason : null,
      }, partialText(ev.metadata.stop_reason)));
    }
    const li = el('li', {
      class: cls.join(' '),
      dataset: { state },
    }, meta, appendLinked(el('div', { class: 'msg__body' }), ev.content || ''));
    if (item.ev) li.dataset.seq = String(ev.seq);
    if (item.ev && own) li.dataset.seen = item.seen ? 'true' : 'false';
    if (ev.id) li.dataset.id = ev.id;
    if (ev.stream_id) li.dataset.streamId = ev.stream_id;
    if (partial) li.dataset.partial = 'true';
    if (state === 'failed' && item.actions) {
      const bar = el('div', { class: 'msg__actions' });
      for (const a of item.actions) {
        const b = el('button', { type: 'button', class: 'btn btn--small' }, a.label);
        b.addEventListener('click', a.onClick);
        bar.append(b);
      }
      li.append(bar);
    }
    return li;
  }

  // The mark of an answer cut short, from its metadata.stop_reason.
  function partialText(reason) {
    const r = String(reason || '');
    if (/stop|cancel|abort/i.test(r)) return 'Partial answer: stopped';
    if (/time/i.test(r)) return 'Partial answer: timed out';
    if (/error|fail/i.test(r)) return 'Partial answer: interrupted by an error';
    if (/restart|shutdown/i.test(r)) return 'Partial answer: interrupted by a restart';
    if (/long|length|max/i.test(r)) return 'Partial answer: too long';
    return 'Partial answer';
  }

  // A line about the conversation (joined, left, help asked, an error);
  // `code` (an error code) goes to data-code.
  function systemNode(text, kind, code) {
    const dataset = { state: 'system' };
    if (code) dataset.code = code;
    return el('li', { class: 'sysline' + (kind ? ' sysline--' + kind : ''), dataset },
      el('span', {}, text));
  }

  // ---- session events: help requests and support joining -----------------------

  const SESSION_EVENTS = new Set(['help_request', 'help_resolved', 'admin_join', 'admin_leave']);

  function isSessionEvent(ev) {
    return !!ev && SESSION_EVENTS.has(ev.type);
  }

  /*
   * The support state of a conversation: whether help is asked for and not
   * resolved (help), and which support people have joined (admins: id ->
   * name). It is a base, as of a seq, read from GET api/sessions/{id}
   * (fromDetails: help and who is joined) or from the session list
   * (fromListed: help only), with the stored session events held after
   * that seq applied on top in seq order (a help_request opens help, a
   * help_resolved closes it, an admin_join adds that admin until their
   * admin_leave). The state is built again from base and events whenever
   * either changes, so events and reads may arrive in any order. `known`:
   * some base has been read.
   */
  const support = {
    make() {
      return {
        help: false, admins: new Map(), known: false,
        base: { help: false, admins: new Map(), seq: 0, details: false },
      };
    },

    // d: the answer of GET api/sessions/{id}; tl: the events held. Returns
    // whether the state changed.
    fromDetails(st, d, tl) {
      const at = Number(d && d.last_seq) || 0;
      if (!d || (st.base.details && at < st.base.seq)) return false;
      const admins = new Map();
      for (const a of Array.isArray(d.admins) ? d.admins : []) {
        if (a && a.id) admins.set(a.id, a.name || a.id);
      }
      st.base = { help: !!d.help, admins, seq: at, details: true };
      st.known = true;
      return support.rebuild(st, tl);
    },

    // A session list entry: help_requested as of its last_seq. The list
    // does not say who is joined: the new base keeps who is joined as the
    // events held say now (the events after `at`, applied again on top,
    // leave each admin as their last event says).
    fromListed(st, info, tl) {
      const at = Number(info && info.last_seq) || 0;
      if (!info || typeof info.help_requested !== 'boolean' || (st.known && at < st.base.seq)) return false;
      support.rebuild(st, tl);
      st.base = { help: info.help_requested, admins: new Map(st.admins), seq: at, details: st.base.details };
      st.known = true;
      return support.rebuild(st, tl);
    },

    // A stored session event, already added to tl. An event that chatd
    // did not number (an older server) is applied to the state as it is.
    // Returns whether the state changed.
    apply(st, ev, tl) {
      if (!isSessionEvent(ev)) return false;
      if (Number.isSafeInteger(ev.seq) && tl) return support.rebuild(st, tl);
      return applyEvent(st, ev);
    },

    // The state from the base and the events of tl after it.
    rebuild(st, tl) {
      const was = st.help + '|' + Array.from(st.admins.keys()).join(',');
      st.help = st.base.help;
      st.admins = new Map(st.base.admins);
      if (tl) {
        for (const q of tl.seqs) {
          if (q <= st.base.seq) continue;
          const ev = tl.get(q);
          if (isSessionEvent(ev)) applyEvent(st, ev);
        }
      }
      return was !== st.help + '|' + Array.from(st.admins.keys()).join(',');
    },
  };

  function applyEvent(st, ev) {
    const s = ev.sender || {};
    switch (ev.type) {
      case 'help_request':
        if (st.help) return false;
        st.help = true;
        return true;
      case 'help_resolved':
        if (!st.help) return false;
        st.help = false;
        return true;
      case 'admin_join':
        if (!s.id || st.admins.has(s.id)) return false;
        st.admins.set(s.id, s.name || s.id);
        return true;
      default:
        return !!s.id && st.admins.delete(s.id);
    }
  }

  /* Whether a session event says nothing new given the ones held before it
   * in tl: a join by an admin whose last join or leave held was a join (a
   * page joining again after chatd restarted), a leave after a leave, a
   * help request while the last help event was a request. Such events are
   * not shown. */
  function quietEvent(tl, ev) {
    if (!isSessionEvent(ev)) return false;
    const help = ev.type === 'help_request' || ev.type === 'help_resolved';
    const who = ev.sender && ev.sender.id;
    const seqs = tl.seqs;
    for (let i = seqs.length - 1; i >= 0; i--) {
      if (seqs[i] >= ev.seq) continue;
      const e = tl.get(seqs[i]);
      if (!isSessionEvent(e)) continue;
      if (help) {
        if (e.type === 'help_request' || e.type === 'help_resolved') return e.type === ev.type;
      } else if (e.type === 'admin_join' || e.type === 'admin_leave') {
        if (e.sender && e.sender.id === who) return e.type === ev.type;
      }
    }
    return false;
  }

  /*
   * What a session event says to the reader `me` ({user_id, selfType}):
   * the user's page speaks of "you" and of support by name; the support
   * page of the user by name and of itself as "you".
   */
  function sessionEventText(ev, me) {
    const s = ev.sender || {};
    const name = s.name || s.id || (s.type === 'admin' ? 'Support' : 'The user');
    const own = !!me && s.id === me.user_id && s.type === me.selfType;
    const onSupport = !!me && me.selfType === 'admin';
    switch (ev.type) {
      case 'help_request':
        if (own || (!onSupport && s.type === 'user')) return 'You asked for a person from support.';
        return name + ' asked for a person from support.';
      case 'help_resolved':
        if (own) return 'You marked the help request as resolved.';
        if (onSupport) return supportName(name, ' (support)') + ' marked the help request as resolved.';
        return supportName(name, ' from support') + ' marked your help request as resolved.';
      case 'admin_join':
        if (own) return 'You joined the conversation.';
        return supportName(name, onSupport ? ' (support)' : ' from support') + ' joined the conversation.';
      default:
        if (own) return 'You left the conversation.';
        return supportName(name, onSupport ? ' (support)' : ' from support') + ' left the conversation.';
    }
  }

  const EVENT_KIND = { help_request: 'help', help_resolved: 'resolved', admin_join: 'join', admin_leave: 'leave' };

  // A stored session event as a line of the conversation (data-seq,
  // data-event: its type).
  function sessionEventNode(ev, me) {
    const li = systemNode(sessionEventText(ev, me), EVENT_KIND[ev.type]);
    if (Number.isSafeInteger(ev.seq)) li.dataset.seq = String(ev.seq);
    li.dataset.event = ev.type;
    if (ev.timestamp) {
      li.append(' ', el('time', { datetime: ev.timestamp, title: formatFull(ev.timestamp) },
        formatTime(ev.timestamp)));
    }
    return li;
  }

  // ---- titles -------------------------------------------------------------------

  /* A conversation's title as chatd makes it until it is renamed: the
   * first line of the first user message without the white space around
   * it, cut at a word boundary to at most 60 characters, nothing added
   * where it is cut (a first word longer than that is cut inside it).
   * Used only until the API's title is known (a conversation this page
   * has just started). */
  function titleFrom(content) {
    const line = (/^[ \t\v\f\r\n]*([^\r\n]*)/.exec(String(content || ''))[1]).replace(/[ \t\v\f]+$/, '');
    const chars = Array.from(line);
    if (chars.length <= 60) return line;
    const isSpace = (c) => c === ' ' || c === '\t' || c === '\v' || c === '\f';
    let cut = 60;
    if (!isSpace(chars[60])) {
      let end = 0;
      for (let k = 1; k < 60; k++) if (isSpace(chars[k]) && !isSpace(chars[k - 1])) end = k;
      if (end > 0) cut = end;
    }
    return chars.slice(0, cut).join('').replace(/[ \t\v\f]+$/, '');
  }

  const UNTITLED = 'Untitled conversation';

  // ---- notices --------------------------------------------------------------

  // A short message in the page's #notices region (aria-live), removed after
  // `timeout` ms (0: stays until dismissed). One notice per condition: a
  // notice with the code of one already shown (opts.code, or opts.key when
  // one code covers several conditions) takes its place instead of adding
  // another.
  function notify(text, opts) {
    opts = opts || {};
    const box = document.getElementById('notices');
    if (!box) return null;
    const kind = opts.kind || 'info';
    const key = opts.key || opts.code || '';
    const timeout = opts.timeout === undefined ? 8000 : opts.timeout;
    const same = key ? Array.from(box.children).find((x) => x.dataset.key === key) : null;
    if (same && !opts.action) {
      // The same condition again: the notice says what is true now, and
      // stays for its time from now.
      const t = same.querySelector('.notice__text');
      if (t.textContent !== text) t.textContent = text;
      same.className = 'notice notice--' + kind;
      clearTimeout(same._timer);
      same._timer = timeout ? setTimeout(() => same.remove(), timeout) : null;
      return same;
    }
    if (same) {
      clearTimeout(same._timer);
      same.remove();
    }
    const close = el('button', { type: 'button', class: 'notice__close', 'aria-label': 'Dismiss this notice' }, '×');
    const n = el('div', { class: 'notice notice--' + kind, role: kind === 'error' ? 'alert' : 'status' },
      el('span', { class: 'notice__text' }, text));
    if (opts.code) n.dataset.code = opts.code;
    if (key) n.dataset.key = key;
    if (opts.action) {
      const b = el('button', { type: 'button', class: 'btn btn--small' }, opts.action.label);
      b.addEventListener('click', () => {
        n.remove();
        opts.action.onClick();
      });
      n.append(b);
    }
    n.append(close);
    close.addEventListener('click', () => n.remove());
    box.append(n);
    while (box.children.length > 4) box.firstElementChild.remove();
    if (timeout) n._timer = setTimeout(() => n.remove(), timeout);
    return n;
  }

  // Remove the notice of a condition that is over.
  function unnotify(key) {
    const box = document.getElementById('notices');
    if (!box) return;
    for (const n of Array.from(box.children)) {
      if (n.dataset.key === key) {
        clearTimeout(n._timer);
        n.remove();
      }
    }
  }

  // Notices for what the server says outside of any one message.
  function describeError(msg) {
    let text = msg.message || msg.code || 'error';
    if (msg.code === 'rate_limited' && msg.retry_after) {
      text = 'You are sending too fast. Try again in ' + Math.ceil(msg.retry_after / 1000) + ' s.';
    }
    return text;
  }

  // What a message waiting out a rate limit or an outage says (the onRetry
  // of Client.request).
  function retryNote(err, delay) {
    return (err.code === 'rate_limited' ? 'Sending too fast' : 'Server busy') +
      ', retrying in ' + Math.ceil(delay / 1000) + ' s';
  }

  // ---- the assistant's answers ----------------------------------------------

  const utf8Encoder = new TextEncoder();
  const utf8Decoder = new TextDecoder();

  /*
   * StreamText: the text of one answer while it streams. Each piece comes
   * with its byte offset (UTF-8) in the answer, and place() puts it there:
   * a piece at offset 0 replaces the text held (a device that connects or
   * resumes mid-answer gets everything so far that way), a piece starting
   * before the end is trimmed to what is new, so no byte is repeated, and a
   * piece past the end (a gap) is not placed. Returns what changed:
   *   {kind: 'replace'}         the text is now the piece
   *   {kind: 'append', added}   `added` (a string) was added at the end
   *   {kind: 'none'}            nothing new
   *   {kind: 'gap'}             not placed: bytes before it are missing
   * `gen` counts the replacements (a view that shows gen's text can follow
   * by appending `added`).
   */
  class StreamText {
    constructor() {
      this.text = '';
      this.bytes = 0;
      this.gen = 0;
    }

    place(offset, delta) {
      const piece = typeof delta === 'string' ? delta : '';
      const off = Number.isSafeInteger(offset) && offset >= 0 ? offset : this.bytes;
      if (!piece) return { kind: 'none' };
      const enc = utf8Encoder.encode(piece);
      if (off === 0) {
        this.text = piece;
        this.bytes = enc.length;
        this.gen++;
        return { kind: 'replace' };
      }
      if (off > this.bytes) return { kind: 'gap' };
      const skip = this.bytes - off;
      if (skip >= enc.length) return { kind: 'none' };
      const added = skip ? utf8Decoder.decode(enc.subarray(skip)) : piece;
      this.text += added;
      this.bytes += enc.length - skip;
      return { kind: 'append', added };
    }
  }

  /*
   * The assistant's state in one conversation X, kept on X by these
   * functions from the events (both pages use them):
   *   X.streams     Map: stream id -> st, the answers streaming; st is
   *                 {id, key, sender, text (StreamText), timestamp, stale,
   *                 ended (failed: its stored event is on its way)} plus
   *                 what the pane keeps to draw it
   *   X.answering   from `loading` (or a first piece) until the final
   *                 ai_response, an error for the session, or a stop that
   *                 found nothing running
   *   X.answerFrom  the last seq held when it started: a stored answer at
   *                 or below it (a replayed older one) does not end it
   *   X.stopping    a stop_generation was sent and the answer has not ended
   *   X.answerStale the connection was lost while answering: cleared by a
   *                 piece or `loading`, or ended by `resumed` (the server
   *                 sends a device what streams before `resumed`)
   */
  const answers = {
    init(X) {
      X.streams = new Map();
      X.answering = false;
      X.stopping = false;
      X.answerStale = false;
      X.answerFrom = 0;
    },

    // `loading`: an answer starts.
    loading(X) {
      X.answering = true;
      X.stopping = false;
      X.answerStale = false;
      X.answerFrom = X.tl.last;
    },

    // An ai_response with done:false. newKey() gives a new stream its list
    // key; sender is shown until the final event names the model. Returns
    // {st, change} (change as StreamText.place says).
    piece(X, ev, newKey, sender) {
      if (!X.answering) X.answerFrom = X.tl.last;
      X.answering = true;
      X.answerStale = false;
      let st = X.streams.get(ev.stream_id);
      if (!st) {
        st = {
          id: ev.stream_id, key: newKey(), sender: ev.sender || sender || { type: 'ai', id: '', name: '' },
          text: new StreamText(), timestamp: ev.timestamp || new Date().toISOString(), stale: false,
          ended: false,
        };
        X.streams.set(ev.stream_id, st);
      }
      st.stale = false;
      st.ended = false;
      return { st, change: st.text.place(ev.offset, ev.delta) };
    },

    // A stored ai_response (with seq), live or replayed: its stream, if
    // held, is replaced by it (returned; null when none), and the answer
    // being waited for has ended unless another one streams or it is an
    // older answer.
    final(X, ev) {
      const st = ev.stream_id ? X.streams.get(ev.stream_id) : null;
      if (st) X.streams.delete(ev.stream_id);
      const older = !st && Number.isSafeInteger(ev.seq) && ev.seq <= X.answerFrom;
      let other = false;
      for (const o of X.streams.values()) if (!o.stale) other = true;
      if (!older && !other) {
        X.answering = false;
        X.stopping = false;
        X.answerStale = false;
      }
      return st || null;
    },

    // The answer failed or was never started (an error for the session), or
    // a stop found nothing running. Streams with no text go; one with text
    // stays, marked ended, until its stored event (which follows) replaces
    // it. Returns those removed.
    ended(X) {
      X.answering = false;
      X.stopping = false;
      X.answerStale = false;
      const gone = [];
      for (const st of X.streams.values()) {
        if (!st.text.bytes) gone.push(st);
        else st.ended = true;
      }
      for (const st of gone) X.streams.delete(st.id);
      return gone;
    },

    // The connection was lost: what is held may be out of date.
    stale(X) {
      X.answerStale = X.answering;
      for (const st of X.streams.values()) st.stale = true;
    },

    // `resumed` for X: streams that did not come again have ended while
    // this page was away (their final events come with the replay).
    // Returns those removed.
    resumed(X) {
      if (X.answerStale) {
        X.answering = false;
        X.stopping = false;
        X.answerStale = false;
      }
      const gone = Array.from(X.streams.values()).filter((st) => st.stale);
      for (const st of gone) X.streams.delete(st.id);
      return gone;
    },

    // Nothing of X arrives any more (an admin left it): forget its answers.
    clear(X) {
      const gone = Array.from(X.streams.values());
      answers.init(X);
      return gone;
    },

    // Whether any answer of X has text on screen.
    hasText(X) {
      for (const st of X.streams.values()) if (st.text.bytes) return true;
      return false;
    },
  };

  // What an error about the assistant in one session says (assistant_error,
  // assistant_timeout; rate_limited and unavailable when an answer could
  // not start), with "try again" when it is worth trying again; to support
  // staff (forSupport) it speaks of the user.
  function assistantErrorText(msg, forSupport) {
    let text;
    switch (msg.code) {
      case 'assistant_timeout':
        text = 'The assistant took too long to answer.';
        break;
      case 'rate_limited':
        text = 'The assistant cannot answer now: ' + (forSupport ? 'the user has' : 'you have') +
          ' asked it a lot in a short time.';
        break;
      case 'unavailable':
        text = 'The assistant is too busy to answer now.';
        break;
      default:
        text = 'The assistant could not answer' + (msg.message ? ': ' + msg.message : '') + '.';
        text = text.replace(/\.\.$/, '.');
    }
    if (msg.recoverable === false) return text + ' Trying again will not help.';
    const who = forSupport ? ' The user may try again' : ' Please try again';
    const wait = Number(msg.retry_after);
    if (wait > 0) return text + who + ' in ' + Math.ceil(wait / 1000) + ' s.';
    return text + who + '.';
  }

  /*
   * AssistantBar: the line under the messages saying that the assistant is
   * answering (#assistant-bar, #assistant-state), with the Stop button
   * (#stop) that calls onStop().
   */
  class AssistantBar {
    constructor(onStop) {
      const $ = (id) => document.getElementById(id);
      this.bar = $('assistant-bar');
      this.state = $('assistant-state');
      this.stop = $('stop');
      this.stop.addEventListener('click', () => onStop());
    }

    // Show X's state (null: none); canStop: this reader may stop it.
    render(X, canStop) {
      const on = !!X && !!X.answering;
      this.bar.hidden = !on;
      if (!on) {
        this.bar.removeAttribute('data-state');
        return;
      }
      let text;
      if (X.stopping) text = 'Stopping the answer…';
      else if (answers.hasText(X)) text = 'The assistant is answering…';
      else text = 'The assistant is answering: thinking…';
      if (this.state.textContent !== text) this.state.textContent = text;
      this.bar.dataset.state = X.stopping ? 'stopping' : 'answering';
      this.stop.hidden = !canStop;
      this.stop.disabled = !!X.stopping;
      this.stop.textContent = X.stopping ? 'Stopping…' : 'Stop';
    }
  }

  // ---- the conversation pane --------------------------------------------------

  const HISTORY_PAGE = 200; /* events read on opening, and per "load earlier" */
  const TYPING_SHOW_MS = 8000;

  /*
   * ConversationPane: what both pages show one conversation in:
   * #message-scroll (holding #load-earlier, #conv-empty and the #messages
   * list, kept in .list as an OrderedList) and the #typing line. The page
   * keeps its conversations, each an object X with
   *   id, tl (Timeline), loading (promise or null), loadError (text or null),
   *   system ([{key, text, kind, code}]), pending (Map: client id -> message
   *   being sent), typing (Map: sender key -> {label, timer}), and
   *   optionally the assistant's answers (see `answers`: X.streams),
   * and gives the pane hooks:
   *   current()         the conversation shown, or null
   *   token()           the page's token now (another one after a sign-out)
   *   me()              the reader, as messageNode takes it
   *   render()          redraw the conversation shown (the page's own, which
   *                     clears .list, draws its header and calls show())
   *   renderTyping()    redraw the typing line (the page's own, which calls
   *                     showTyping())
   *   putPending(X, p)  draw a pending message (its actions are the page's)
   * The "load earlier messages" button is handled here, and so are the
   * streaming answers (putStream, streamChanged, removeStream).
   */
  class ConversationPane {
    constructor(hooks) {
      const $ = (id) => document.getElementById(id);
      this.hooks = hooks;
      this.scroll = $('message-scroll');
      this.earlier = $('load-earlier');
      this.empty = $('conv-empty');
      this.typing = $('typing');
      this.list = new OrderedList($('messages'));
      this.earlier.addEventListener('click', () => this._loadEarlier());
    }

    shows(X) {
      const cur = this.hooks.current();
      return !!cur && cur.id === X.id;
    }

    atBottom() {
      const s = this.scroll;
      return s.scrollHeight - s.scrollTop - s.clientHeight < 48;
    }

    scrollToEnd() {
      this.scroll.scrollTop = this.scroll.scrollHeight;
    }

    // Read the last HISTORY_PAGE events of X (up to lastSeq, the last the
    // page knows of) unless they are held or on their way, then call
    // onLoaded(the answer's last_seq). A failure is kept in X.loadError and
    // shown. Answers read with a token the page no longer has are dropped.
    loadHistory(X, lastSeq, onLoaded) {
      if (X.tl.loaded || X.loading) return;
      const after = Math.max(0, (lastSeq || 0) - HISTORY_PAGE);
      const t = this.hooks.token();
      X.loadError = null;
      this.scroll.setAttribute('aria-busy', 'true');
      X.loading = loadHistory(t, X.id, after, X.tl).then((last) => {
        if (t !== this.hooks.token()) return;
        X.loading = null;
        onLoaded(last);
      }, (err) => {
        if (t !== this.hooks.token()) return;
        X.loading = null;
        X.loadError = err.message;
        if (this.shows(X)) this.hooks.render();
      }).finally(() => this.scroll.removeAttribute('aria-busy'));
    }

    // Fill the cleared list with X: events, system lines, streams and
    // pending messages; "load earlier" when older events exist; the empty
    // line when there is nothing to show or the history failed. Then the
    // typing line, and the view at its end.
    show(X) {
      for (const ev of X.tl.list()) {
        const node = this.eventNode(X, ev);
        if (node) this.list.put([ev.seq, 0], node);
      }
      for (const s of X.system) this.list.put(s.key, systemNode(s.text, s.kind, s.code));
      if (X.streams) for (const st of X.streams.values()) this.putStream(X, st);
      for (const p of X.pending.values()) this.hooks.putPending(X, p);
      this.earlier.hidden = !(X.tl.loaded && X.tl.from > 0);
      const nothing = !X.tl.size && !X.pending.size && !(X.streams && X.streams.size);
      this.empty.hidden = !nothing && !X.loadError;
      if (X.loadError) {
        this.empty.textContent = 'The messages could not be loaded: ' + X.loadError;
      } else if (X.loading || !X.tl.loaded) {
        this.empty.textContent = 'Loading messages…';
      } else {
        this.empty.textContent = 'No messages yet.';
      }
      this.hooks.renderTyping();
      this.scrollToEnd();
    }

    // The node of a stored event of X: a message (marked seen when the
    // hook `seen(X, ev)` says so), a line for a session event, or null for
    // a session event that says nothing new (see quietEvent).
    eventNode(X, ev) {
      const me = this.hooks.me();
      if (isSessionEvent(ev)) return quietEvent(X.tl, ev) ? null : sessionEventNode(ev, me);
      const seen = this.hooks.seen ? this.hooks.seen(X, ev) : false;
      return messageNode({ ev, seen }, me);
    }

    // A stored event of X arrived (X is shown): add it, the view following
    // it when at the end, or when `follow`.
    addEvent(X, ev, follow) {
      const node = this.eventNode(X, ev);
      if (node) this.add([ev.seq, 0], node, follow);
      if (isSessionEvent(ev)) this.redrawNextOfKind(X, ev);
    }

    // A session event may arrive after a later one of its kind (a resume
    // fills a gap behind a live event): whether that later one says
    // anything new depends on it (see quietEvent), so it is drawn again.
    redrawNextOfKind(X, ev) {
      const help = ev.type === 'help_request' || ev.type === 'help_resolved';
      const who = ev.sender && ev.sender.id;
      for (const seq of X.tl.seqs) {
        if (seq <= ev.seq) continue;
        const e = X.tl.get(seq);
        if (!isSessionEvent(e)) continue;
        const eHelp = e.type === 'help_request' || e.type === 'help_resolved';
        if (eHelp !== help || (!help && !(e.sender && e.sender.id === who))) continue;
        const node = this.eventNode(X, e);
        if (node) this.list.put([seq, 0], node);
        else this.list.remove([seq, 0]);
        return;
      }
    }

    // Read markers of X moved: draw again X's own messages whose "Seen"
    // changed (X is shown).
    refreshSeen(X) {
      if (!this.shows(X) || !this.hooks.seen) return;
      for (const li of this.list.el.querySelectorAll('.msg[data-seen]')) {
        const ev = X.tl.get(Number(li.dataset.seq));
        if (!ev) continue;
        const seen = this.hooks.seen(X, ev) ? 'true' : 'false';
        if (li.dataset.seen !== seen) this.list.put([ev.seq, 0], this.eventNode(X, ev));
      }
    }

    // Add a node to the list of the conversation shown. The view follows it
    // when it was at the end already, or when `follow`.
    add(key, node, follow) {
      const stick = this.atBottom();
      this.list.put(key, node);
      this.empty.hidden = true;
      if (stick || follow) this.scrollToEnd();
    }

    // Draw the streaming answer st of X (shown) whole.
    putStream(X, st) {
      const me = this.hooks.me();
      const node = messageNode({ stream: { sender: st.sender, content: st.text.text,
        timestamp: st.timestamp, stream_id: st.id, ended: !!st.ended } }, me);
      st.node = node;
      st.body = node.querySelector('.msg__body');
      st.shownGen = st.text.gen;
      st.shownLength = st.text.text.length;
      this.list.put(st.key, node);
    }

    // st of X changed as `change` (StreamText.place) says: when X is shown,
    // add the new text to its node (or draw it again after a replacement),
    // the view following it when it was at the end.
    streamChanged(X, st, change) {
      if (!this.shows(X) || change.kind === 'none' || change.kind === 'gap') return;
      const stick = this.atBottom();
      const follows = change.kind === 'append' && st.node && st.node.isConnected &&
        st.shownGen === st.text.gen && st.shownLength + change.added.length === st.text.text.length;
      if (follows) {
        st.body.append(change.added);
        st.shownLength = st.text.text.length;
      } else {
        this.putStream(X, st);
      }
      this.empty.hidden = true;
      if (stick) this.scrollToEnd();
    }

    // Draw the streams of X again (their state changed).
    redrawStreams(X) {
      if (!this.shows(X) || !X.streams) return;
      for (const st of X.streams.values()) this.putStream(X, st);
    }

    // st of X is gone (ended, or replaced by its stored answer).
    removeStream(X, st) {
      if (this.shows(X)) this.list.remove(st.key);
      st.node = null;
      st.body = null;
    }

    // A typing_indicator event of X, shown under `label` until its sender
    // says false, or for TYPING_SHOW_MS: a device that vanished never says
    // false.
    typingEvent(X, ev, label) {
      const k = ev.sender.type + ':' + ev.sender.id;
      const old = X.typing.get(k);
      if (old) clearTimeout(old.timer);
      if (ev.typing) {
        const timer = setTimeout(() => {
          X.typing.delete(k);
          if (this.shows(X)) this.hooks.renderTyping();
        }, TYPING_SHOW_MS);
        X.typing.set(k, { label, timer });
      } else {
        X.typing.delete(k);
      }
      if (this.shows(X)) this.hooks.renderTyping();
    }

    // A message from `sender` arrived in X: it no longer types.
    typingDone(X, sender) {
      if (!sender || !X.typing.size) return;
      const k = sender.type + ':' + sender.id;
      const t = X.typing.get(k);
      if (!t) return;
      clearTimeout(t.timer);
      X.typing.delete(k);
      if (this.shows(X)) this.hooks.renderTyping();
    }

    // The typing line of X (null: none), `extra` after it when given.
    showTyping(X, extra) {
      let text = X ? typingText(Array.from(X.typing.values(), (t) => t.label)) : '';
      if (X && extra) text = (text ? text + ' ' : '') + extra;
      if (this.typing.textContent !== text) this.typing.textContent = text;
    }

    _loadEarlier() {
      const X = this.hooks.current();
      if (!X) return;
      this.earlier.disabled = true;
      const before = this.scroll.scrollHeight - this.scroll.scrollTop;
      loadEarlier(this.hooks.token(), X.id, X.tl, HISTORY_PAGE).then(() => {
        if (!this.shows(X)) return;
        this.hooks.render();
        this.scroll.scrollTop = this.scroll.scrollHeight - before;
      }, (err) => notify('Earlier messages could not be loaded: ' + err.message, { kind: 'error' }))
        .finally(() => {
          this.earlier.disabled = false;
        });
    }
  }

  // Enter in a message box submits its form; Shift+Enter adds a line, and
  // so does Enter with Alt, Ctrl or Meta or while an input method composes.
  function submitOnEnter(input, form) {
    input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && !e.altKey && !e.ctrlKey && !e.metaKey) {
        e.preventDefault();
        form.requestSubmit();
      }
    });
  }

  // ---- page frame: sign-in, status line, sign-out ----------------------------

  /*
   * The Client a page's start() makes: chat events go to onEvent, errors
   * that answer none of the page's messages go to onError(msg, sentType)
   * when given, and become notices unless it returns true; the state is
   * kept on <body data-conn>, and onOffline() runs whenever the connection
   * is neither open nor preparing.
   */
  function pageClient(token, onConnected, onEvent, onOffline, onError) {
    const client = new Client({ token, onConnected });
    client.on('event', onEvent);
    client.on('error', (msg, sentType) => {
      // A refused read marker or typing line is nothing the person can act
      // on: no notice.
      if (sentType === 'read' || sentType === 'typing_indicator') {
        console.warn('chatd: ' + sentType + ' refused: ' + (msg.code || '') + ' ' + (msg.message || ''));
        return;
      }
      if (onError && onError(msg, sentType)) return;
      notify(describeError(msg), { kind: 'error', code: msg.code });
    });
    client.on('state', (s) => {
      document.body.dataset.conn = s.state;
      if (s.state !== 'open' && s.state !== 'preparing') onOffline();
    });
    return client;
  }

  /*
   * Shared page start. The page has #signin (form #signin-form, input
   * #token-input, #signin-message), #app, #conn-state, #conn-retry, #who and
   * #sign-out. page.start(token, claims) returns a started Client or null;
   * page.stop() tears the page down on sign-out.
   */
  function bootPage(page) {
    const $ = (id) => document.getElementById(id);
    const signin = $('signin');
    const app = $('app');
    const form = $('signin-form');
    const input = $('token-input');
    const message = $('signin-message');
    const stateEl = $('conn-state');
    const retryBtn = $('conn-retry');
    const who = $('who');
    const signOut = $('sign-out');
    const live = $('conn-live');
    let client = null;
    let countdown = null;
    let shutdownNotice = null;
    /* The device count in the top bar: chatd pushes no message when
     * another device of the user connects or leaves, so the page asks
     * api/devices every WHO_REFRESH_MS while it is seen, and whenever it
     * is shown again. refreshWho belongs to the signed-in client. */
    let refreshWho = null;
    let whoTimer = null;
    document.addEventListener('visibilitychange', () => {
      if (refreshWho && !document.hidden) refreshWho();
    });

    function showSignin(text) {
      clearInterval(whoTimer);
      whoTimer = null;
      refreshWho = null;
      if (client) {
        client.stop();
        client = null;
      }
      page.stop();
      app.hidden = true;
      signOut.hidden = true;
      who.textContent = '';
      setState('Signed out', 'off');
      signin.hidden = false;
      message.textContent = text || '';
      message.hidden = !text;
      input.value = '';
      input.focus();
    }

    // The visible state line counts down each second; the live region
    // (#conn-live) only speaks when the state itself changes.
    function setState(text, kind) {
      stateEl.textContent = text;
      if (stateEl.dataset.state !== kind && live) live.textContent = text;
      stateEl.dataset.state = kind;
    }

    function onState(s) {
      clearInterval(countdown);
      countdown = null;
      retryBtn.hidden = true;
      switch (s.state) {
        case 'connecting':
          setState(s.attempt ? 'Reconnecting…' : 'Connecting…', 'connecting');
          break;
        case 'preparing':
        case 'open':
          setState('Connected', 'open');
          if (shutdownNotice) shutdownNotice.remove();
          shutdownNotice = null;
          unnotify('device_limit');
          break;
        case 'waiting': {
          retryBtn.hidden = false;
          if (s.limit) {
            // Refused at the device limit: a browser cannot read the 429,
            // the probe (api/devices) found the user at the limit.
            const n = s.limit.devices;
            const text = n + ' device' + (n === 1 ? '' : 's') + ' connected, limit ' + s.limit.max;
            setState('Not connected: ' + text, 'limit');
            notify('This device is not connected: you have ' + n + ' device' + (n === 1 ? '' : 's') +
              ' connected, and the limit is ' + s.limit.max + '. Close chatd on another device; ' +
              'this page then connects by itself, or choose Reconnect now.',
            { kind: 'error', code: 'device_limit', timeout: 0 });
            break;
          }
          if (!s.retryAt) {
            setState('Offline', 'waiting');
            break;
          }
          const tick = () => {
            const left = Math.max(0, Math.ceil((s.retryAt - Date.now()) / 1000));
            setState('Offline, reconnecting in ' + left + ' s', 'waiting');
          };
          tick();
          countdown = setInterval(tick, 1000);
          break;
        }
        case 'evicted':
          retryBtn.hidden = false;
          setState('Disconnected: too many devices', 'off');
          break;
        case 'auth':
          break;
        default:
          setState('Disconnected', 'off');
      }
    }

    function begin(token) {
      const claims = decodeClaims(token);
      if (isExpired(claims)) {
        saveToken(null);
        showSignin('This token has expired. Paste a new one.');
        return;
      }
      saveToken(token);
      signin.hidden = true;
      app.hidden = false;
      signOut.hidden = false;
      who.textContent = claims ? (claims.name || claims.sub || '') : '';
      client = page.start(token, claims);
      if (!client) {
        setState('Not connected', 'off');
        return;
      }
      client.on('state', onState);
      let status = null;
      const showWho = (count, max) => {
        const devices = count === 1 ? '1 device' : count + ' devices';
        who.textContent = status.name + (status.name !== status.user_id ? ' (' + status.user_id + ')' : '') +
          ' · ' + devices;
        who.title = 'Signed in as ' + status.user_id + '; ' + devices + ' connected (of ' + max + ' allowed)';
        who.dataset.devices = String(count);
      };
      client.on('status', (st) => {
        status = st;
        showWho(st.devices, st.max_devices);
      });
      const mine = client;
      const refresh = () => {
        if (!status || document.hidden || client !== mine || !mine.isOpen) return;
        api('api/devices', token).then((body) => {
          if (client !== mine || !status || !body || !Number.isSafeInteger(body.devices) || body.devices < 1) return;
          showWho(body.devices, Number.isSafeInteger(body.max_devices) ? body.max_devices : status.max_devices);
        }, () => {});
      };
      refreshWho = refresh;
      clearInterval(whoTimer);
      whoTimer = setInterval(refresh, WHO_REFRESH_MS);
      client.on('auth', (a) => {
        saveToken(null);
        showSignin('The server refused this token' + (a.reason ? ' (' + a.reason + ')' : '') +
          '. Paste a new one to continue.');
      });
      client.on('notification', (n) => {
        if (n.code === 'shutdown') {
          // Stays until the page is connected again.
          if (shutdownNotice) shutdownNotice.remove();
          shutdownNotice = notify('The server is restarting. This page reconnects by itself.',
            { code: n.code, timeout: 0 });
        } else if (n.code === 'devices') {
          // One of the user's devices connected or left: the count is live.
          if (status && Number.isSafeInteger(n.devices)) {
            showWho(n.devices, Number.isSafeInteger(n.max_devices) ? n.max_devices : status.max_devices);
          }
        } else {
          notify(n.message || n.code, { kind: 'warn', code: n.code, timeout: 15000 });
        }
      });
      client.start();
    }

    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const tok = parseTokenInput(input.value);
      if (!tok) {
        message.textContent = 'That does not look like a token (three parts separated by dots).';
        message.hidden = false;
        input.focus();
        return;
      }
      begin(tok);
    });
    retryBtn.addEventListener('click', () => client && client.reconnectNow());
    signOut.addEventListener('click', () => {
      saveToken(null);
      showSignin('');
    });

    const token = takeToken();
    if (token) begin(token);
    else showSignin('');
  }

  global.Chatd = {
    Client,
    ChatdError,
    ApiError,
    Timeline,
    OrderedList,
    ConversationPane,
    TypingSender,
    typingText,
    api,
    loadHistory,
    loadEarlier,
    takeToken,
    saveToken,
    parseTokenInput,
    decodeClaims,
    isExpired,
    newId,
    el,
    keyedChildren,
    patchChildren,
    formatTime,
    formatFull,
    senderLabel,
    messageNode,
    systemNode,
    StreamText,
    answers,
    assistantErrorText,
    AssistantBar,
    notify,
    unnotify,
    SendQueue,
    canRetry,
    errorText,
    byteLength,
    contentLimit,
    support,
    isSessionEvent,
    quietEvent,
    sessionEventNode,
    sessionEventText,
    titleFrom,
    UNTITLED,
    appendLinked,
    supportName,
    describeError,
    retryNote,
    submitOnEnter,
    pageClient,
    bootPage,
  };
})(window);
