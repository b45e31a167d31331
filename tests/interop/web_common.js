'use strict';
// web_common.js: what the browser tests of the web pages share (test_web.js,
// test_web_assistant.js; not a test itself: CMake runs only test_*.js):
//   mint(secret, sub, opts)  an HS256 token as chatd-token makes them
//   device(port, token, prefix)  a Node `ws` client acting as one more
//                            device of a user (every message kept; waitFor)
//   scope(browser)           a test's browser contexts and devices, closed at
//                            its end; its pages' uncaught exceptions and CSP
//                            refusals fail the test
//   assert, eq               checks that throw
//   connected, shown, send, waitSent, waitText, holdsMessages, texts, selectedSession,
//   seqsOf                   what the tests do and read on a page

const crypto = require('crypto');
const path = require('path');
const WebSocket = require(path.join(__dirname, 'node_modules', 'ws'));
const { T, withTimeout } = require('./chatd_process');

// ---- tokens --------------------------------------------------------------------

function b64url(data) {
  return Buffer.from(data).toString('base64url');
}

// opts: name, roles, exp (seconds), secret (another one than `secret`).
function mint(secret, sub, opts) {
  opts = opts || {};
  const now = Math.floor(Date.now() / 1000);
  const claims = { sub, name: opts.name || sub, iat: now, exp: opts.exp || now + 3600 };
  if (opts.roles) claims.roles = opts.roles;
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' })) + '.' +
    b64url(JSON.stringify(claims));
  const sig = crypto.createHmac('sha256', opts.secret || secret).update(head).digest('base64url');
  return head + '.' + sig;
}

// ---- checks --------------------------------------------------------------------

function assert(cond, msg) {
  if (!cond) throw new Error('assertion failed: ' + msg);
}

function eq(a, b, msg) {
  const ja = JSON.stringify(a);
  const jb = JSON.stringify(b);
  if (ja !== jb) throw new Error(`assertion failed: ${msg}: got ${ja}, expected ${jb}`);
}

// ---- devices -------------------------------------------------------------------

/*
 * A `ws` client acting as one more device of a user. Keeps every message it
 * receives; waitFor(pred) resolves with the first one matching, already
 * received or to come.
 */
function device(port, token, prefix) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}${prefix || ''}/ws`, {
      headers: { Authorization: 'Bearer ' + token }, handshakeTimeout: T,
    });
    const c = { ws, log: [], waiters: [], closed: null };
    ws.on('message', (data) => {
      const m = JSON.parse(data.toString());
      c.log.push(m);
      for (const w of c.waiters.slice()) {
        if (w.pred(m)) {
          c.waiters.splice(c.waiters.indexOf(w), 1);
          w.resolve(m);
        }
      }
    });
    c.closedP = new Promise((res) => ws.on('close', (code) => {
      c.closed = code;
      res(code);
    }));
    ws.on('error', (e) => {
      if (ws.readyState !== WebSocket.OPEN) reject(e);
    });
    c.waitFor = (pred, what, ms) => {
      const m = c.log.find(pred);
      if (m) return Promise.resolve(m);
      return withTimeout(new Promise((res) => c.waiters.push({ pred, resolve: res })), ms || T,
        'device message: ' + what);
    };
    c.send = (msg) => ws.send(JSON.stringify(msg));
    // Send a message and wait for its ack (an error fails).
    c.request = async (msg) => {
      msg.id = msg.id || 'n' + crypto.randomBytes(8).toString('hex');
      c.send(msg);
      const r = await c.waitFor((m) => (m.type === 'ack' || m.type === 'error') && m.id === msg.id,
        `answer to ${msg.type}`);
      if (r.type === 'error') throw new Error(`${msg.type} failed: ${JSON.stringify(r)}`);
      return r;
    };
    c.close = () => {
      if (c.closed === null) ws.close(1000);
      return withTimeout(c.closedP, T, 'device close');
    };
    c.waitFor((m) => m.type === 'connection_status', 'connection_status').then(() => resolve(c), reject);
  });
}

// ---- the browser ----------------------------------------------------------------

/*
 * A test's scope in `browser`: the browser contexts and devices it opens,
 * closed at its end, and the problems its pages reported (uncaught
 * exceptions, CSP refusals), which fail the test. Each page keeps the URLs
 * of its sockets (page.sockets) and the messages it sent (page.sent) and
 * received (page.received) on them.
 */
function scope(browser) {
  const s = { contexts: [], devices: [], problems: [] };
  // opts: viewport, context (more options of the browser context), setup
  // (async, given the page before it loads url).
  s.page = async (url, opts) => {
    const ctx = await browser.newContext(Object.assign(
      { viewport: (opts && opts.viewport) || { width: 1100, height: 760 } }, opts && opts.context));
    s.contexts.push(ctx);
    const page = await ctx.newPage();
    page.setDefaultTimeout(T);
    const label = url ? url.replace(/#.*/, '') : 'page';
    page.on('pageerror', (e) => s.problems.push(`${label}: uncaught ${e.stack || e}`));
    page.on('console', (m) => {
      if (/Content.Security.Policy|Refused to/i.test(m.text())) {
        s.problems.push(`${label}: ${m.text()}`);
      }
    });
    page.sockets = [];
    page.sent = [];
    page.received = [];
    const parse = (payload) => {
      try {
        return JSON.parse(payload);
      } catch (e) {
        return { raw: String(payload) };
      }
    };
    page.on('websocket', (ws) => {
      page.sockets.push(ws.url());
      ws.on('framesent', (f) => page.sent.push(parse(f.payload)));
      ws.on('framereceived', (f) => page.received.push(parse(f.payload)));
    });
    if (opts && opts.setup) await opts.setup(page);
    if (url) page.response = await page.goto(url);
    return page;
  };
  s.device = async (...args) => {
    const d = await device(...args);
    s.devices.push(d);
    return d;
  };
  s.close = async () => {
    for (const d of s.devices) await d.close().catch(() => {});
    // A page's route handler may still be fetching for it: once its page
    // closes, that answer is wanted by nobody, so Playwright is told to
    // drop the handlers' errors rather than throw them out of the test.
    for (const c of s.contexts) {
      for (const p of c.pages()) await p.unrouteAll({ behavior: 'ignoreErrors' }).catch(() => {});
      await c.close().catch(() => {});
    }
    assert(s.problems.length === 0, 'page problems:\n  ' + s.problems.join('\n  '));
  };
  return s;
}

async function connected(page) {
  await page.waitForSelector('#conn-state[data-state="open"]');
}

// The messages a page shows, in page order.
function shown(page) {
  return page.$$eval('#messages .msg', (els) => els.map((e) => ({
    seq: e.dataset.seq ? Number(e.dataset.seq) : null,
    state: e.dataset.state,
    text: e.querySelector('.msg__body').textContent,
    own: e.classList.contains('msg--own'),
    admin: e.classList.contains('msg--admin'),
    ai: e.classList.contains('msg--ai'),
    partial: e.dataset.partial === 'true',
  })));
}

async function send(page, text) {
  await page.fill('#composer-input', text);
  await page.press('#composer-input', 'Enter');
}

async function waitSent(page, seq, text, timeout) {
  const sel = `#messages .msg[data-seq="${seq}"][data-state="sent"]`;
  await page.waitForSelector(sel, { timeout: timeout || T });
  if (text !== undefined) {
    const got = await page.textContent(sel + ' .msg__body');
    eq(got, text, `message ${seq} text`);
  }
}

// Wait until the page shows a stored message with this text; resolves
// with its seq (session events take seqs too, so tests of the support
// workflow find messages by text).
async function waitText(page, text, timeout) {
  const h = await page.waitForFunction((t) => {
    for (const li of document.querySelectorAll('#messages .msg[data-state="sent"]')) {
      if (li.querySelector('.msg__body').textContent === t) return Number(li.dataset.seq);
    }
    return 0;
  }, text, { timeout: timeout || T });
  return h.jsonValue();
}

// The [name, fn] tests to run: those whose names match CHATD_WEB_ONLY
// (a regular expression) when it is set, else all of them.
function pick(tests) {
  const only = process.env.CHATD_WEB_ONLY ? new RegExp(process.env.CHATD_WEB_ONLY) : null;
  return tests.filter(([name]) => !only || only.test(name));
}

// Until the page shows at least n stored messages (then compare them
// whole: one too many is a duplicate).
async function holdsMessages(page, n, timeout) {
  await page.waitForFunction((k) => document.querySelectorAll('#messages .msg[data-state="sent"]').length >= k,
    n, { timeout: timeout || T });
}

// The texts of the stored messages a page shows, in page order.
async function texts(page) {
  return (await shown(page)).filter((m) => m.state === 'sent').map((m) => m.text);
}

async function selectedSession(page) {
  return page.getAttribute('#session-list button[aria-current="true"]', 'data-session-id');
}

function seqsOf(list) {
  return list.map((m) => m.seq);
}

module.exports = {
  mint, assert, eq, device, scope, connected, shown, send, waitSent, waitText, holdsMessages, texts, selectedSession,
  seqsOf, pick,
};
