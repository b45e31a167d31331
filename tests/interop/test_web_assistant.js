'use strict';
// The assistant on the web pages, in a real browser: Debian's Chromium driven
// by playwright-core, against chatd (CHATD_BIN) talking to the fake model
// provider (tests/fake_provider.py) in slow mode, so that an answer streams
// for several seconds. The page shows the answer as it streams, with the
// Stop button; a page reloaded mid-answer ends with the same text as a device
// that stayed connected and as the stored message; Stop leaves a partial
// answer, marked so, and the provider's request aborted; a support page that
// joins mid-answer gets it and may stop it; chatd restarted mid-answer leaves
// the partial answer in place of the stream; a person from support joining
// shows the takeover banner. The pieces' placement by offset (a piece
// at offset 0 replaces, one below the end is trimmed) is checked with pieces
// put into the page's socket, under a chatd whose models have no provider.
// Prints one line per test and "N passed, N failed"; exits 1 on any failure.
// Every chatd and the fake provider must exit 0 on SIGTERM, and no page may
// throw or hit a Content-Security-Policy refusal.

const crypto = require('crypto');
const fs = require('fs');
const net = require('net');
const os = require('os');
const path = require('path');
const { spawn } = require('child_process');
const { chromium } = require(path.join(__dirname, 'node_modules', 'playwright-core'));
const { SLOW, T, withTimeout, spawnChatd, waitAccepting, stopChatd, Runner } = require('./chatd_process');
const W = require('./web_common');
const { assert, eq, connected, shown, send, waitSent, selectedSession } = W;

const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const PYTHON = '/usr/bin/python3';
const FAKE = path.join(__dirname, '..', 'fake_provider.py');
const SECRET = 'web-assistant-' + crypto.randomBytes(24).toString('hex');
const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'chatd-web-asst-'));
// The pause before each piece of a slow answer: an answer of the messages
// below (about 25 pieces of 4 bytes) streams for 5 to 8 seconds.
const SLOW_MS = SLOW ? 400 : 250;
// The provider's key: chatd sends no Authorization header without one, and
// the fake refuses a request without it (401).
const FAKE_KEY = 'fake-key-' + crypto.randomBytes(8).toString('hex');

function mint(sub, opts) {
  return W.mint(SECRET, sub, opts);
}

let browser = null;

function scope() {
  return W.scope(browser);
}

// ---- the fake provider ---------------------------------------------------------------

// tests/fake_provider.py on a free port, expecting FAKE_KEY; resolves once
// it printed "listening PORT", with f = {proc, port, exit, exited}.
function startFake() {
  return new Promise((resolve, reject) => {
    const proc = spawn(PYTHON, [FAKE, '--port', '0', '--key', FAKE_KEY], { stdio: ['ignore', 'pipe', 'pipe'] });
    const f = { proc, port: null, out: '', err: '', exit: null };
    f.exited = new Promise((res) => proc.on('exit', (code, signal) => {
      f.exit = { code, signal };
      res(f.exit);
    }));
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error('fake provider did not start:\n' + f.err));
    }, T);
    proc.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (c) => {
      f.err += c;
    });
    proc.stdout.setEncoding('utf8');
    proc.stdout.on('data', (c) => {
      f.out += c;
      const m = /listening (\d+)/.exec(f.out);
      if (m && f.port === null) {
        f.port = Number(m[1]);
        clearTimeout(timer);
        resolve(f);
      }
    });
    f.exited.then((e) => {
      if (f.port === null) {
        clearTimeout(timer);
        reject(new Error(`fake provider exited at start (${e.code}/${e.signal}):\n${f.err}`));
      }
    });
  });
}

async function fakeCall(f, method, p, body) {
  const res = await fetch(`http://127.0.0.1:${f.port}${p}`, {
    method, headers: body ? { 'Content-Type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const out = await res.json();
  if (!res.ok) throw new Error(`fake provider ${method} ${p}: ${res.status} ${JSON.stringify(out)}`);
  return out;
}

// The fake's answer to a last user message (answer_for in fake_provider.py).
function answerFor(text) {
  return 'Answer to: \u00ab' + text + '\u00bb';
}

async function stopFake(f) {
  if (f.exit === null) f.proc.kill('SIGTERM');
  const e = await withTimeout(f.exited, T, 'fake provider exit').catch((err) => {
    f.proc.kill('SIGKILL');
    throw err;
  });
  if (e.code !== 0) throw new Error(`fake provider exit ${e.code}/${e.signal}:\n${f.err.slice(-4000)}`);
}

// ---- chatd ------------------------------------------------------------------------------

// chatd with this test's secret, on opts.port (0: any free one), with a new
// database unless opts.db.
async function startChatd(extraArgs, opts) {
  opts = opts || {};
  const d = await spawnChatd(['--listen', `127.0.0.1:${opts.port || 0}`, '--jwt-secret', SECRET,
    '--db', opts.db || path.join(TMP, `chatd-${Date.now()}-${Math.random()}.db`),
    '--workers', '2', ...(extraArgs || [])]);
  await waitAccepting(d);
  return d;
}

// A port nobody listens on now, for a chatd that must come back on the same one.
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function storedMessages(d, token, sid) {
  const res = await fetch(`http://127.0.0.1:${d.port}/api/sessions/${sid}/messages?after_seq=0`,
    { headers: { Authorization: 'Bearer ' + token } });
  eq(res.status, 200, 'history status');
  return (await res.json()).messages;
}

// ---- helpers --------------------------------------------------------------------------------

// The text of streamed pieces placed by byte offset, as a client must:
// offset 0 replaces, a piece starting below the end is trimmed.
function placePiece(held, offset, delta) {
  const piece = Buffer.from(delta, 'utf8');
  if (!piece.length) return held;
  if (offset === 0) return piece;
  assert(offset <= held.length, `a gap: piece at ${offset}, ${held.length} bytes held`);
  return Buffer.concat([held, piece.subarray(held.length - offset)]);
}

function streamedText(log, sid) {
  const texts = new Map();
  for (const m of log) {
    if (m.type !== 'ai_response' || m.session_id !== sid || m.done !== false) continue;
    texts.set(m.stream_id, placePiece(texts.get(m.stream_id) || Buffer.alloc(0), m.offset, m.delta));
  }
  return new Map(Array.from(texts, ([k, v]) => [k, v.toString('utf8')]));
}

const STREAMING = '#messages .msg[data-state="streaming"]';
const ANSWER = '#messages .msg.msg--ai[data-state="sent"]';

// The text of the page's one streaming answer ('' when none is shown).
function streamingText(page) {
  return page.$$eval(STREAMING + ' .msg__body', (els) => {
    if (els.length > 1) throw new Error(els.length + ' streaming answers shown');
    return els.length ? els[0].textContent : '';
  });
}

// Wait until the page shows a streaming answer with at least `min` characters.
async function waitStreaming(page, min) {
  await page.waitForFunction(([sel, n]) => {
    const b = document.querySelector(sel + ' .msg__body');
    return b && b.textContent.length >= n;
  }, [STREAMING, min || 1]);
  return streamingText(page);
}

// Record every text the streaming answer shows from now on (in window.seen).
function recordStreaming(page) {
  return page.evaluate((sel) => {
    window.seen = [];
    const note = () => {
      const b = document.querySelector(sel + ' .msg__body');
      if (b && window.seen[window.seen.length - 1] !== b.textContent) window.seen.push(b.textContent);
    };
    new MutationObserver(note).observe(document.getElementById('messages'),
      { childList: true, subtree: true, characterData: true });
    note();
  }, STREAMING);
}

// Server messages of the assistant that the page received (for failures).
function assistantFrames(page) {
  return page.received.filter((m) => ['loading', 'ai_response', 'error', 'ack'].includes(m.type))
    .map((m) => JSON.stringify(m)).join('\n  ');
}

// ---- tests: chatd with the fake provider ------------------------------------------------------

async function testReloadMidAnswer(d, fake) {
  const s = scope();
  try {
    await fakeCall(fake, 'POST', '/_fake/mode', { mode: `slow=${SLOW_MS}` });
    const base = `http://127.0.0.1:${d.port}`;
    const tok = mint('ada', { name: 'Ada' });
    const phone = await s.device(d.port, tok);
    const page = await s.page(`${base}/#token=${tok}`);
    await connected(page);
    // The model offered by chatd is in the picker.
    await page.waitForSelector('#model-field:not([hidden])');
    eq(await page.$$eval('#model-select option', (o) => o.map((x) => x.value + '=' + x.textContent)),
      ['=Default', 'fake=Fake'], 'model options');

    const question = 'Tell me how an answer streams, piece by piece, please';
    const expected = answerFor(question);
    await send(page, question);
    await waitSent(page, 1, question);
    const sid = await selectedSession(page);

    // Streaming: the text grows, the assistant's line and Stop are shown.
    await page.waitForSelector('#assistant-bar:not([hidden])');
    assert(/answering/i.test(await page.textContent('#assistant-state')), 'assistant state line');
    const first = await waitStreaming(page, 8);
    assert(await page.isVisible('#stop'), 'Stop not shown while the answer streams');
    assert(expected.startsWith(first), `streamed text ${JSON.stringify(first)} is not a prefix`);
    assert(first.length < expected.length / 2, 'the answer was nearly done before the reload: ' + first);

    // Reloaded mid-answer: everything so far comes again, then the rest.
    await page.reload();
    await connected(page);
    await recordStreaming(page);
    const again = await waitStreaming(page, 1);
    assert(expected.startsWith(again), `streamed text after the reload ${JSON.stringify(again)}`);
    assert(await page.isVisible('#stop'), 'Stop not shown after the reload');
    eq(await selectedSession(page), sid, 'session after the reload');

    // The stored answer replaces the stream.
    const final = await phone.waitFor((m) => m.type === 'ai_response' && m.session_id === sid && m.done === true,
      'final answer', 4 * T);
    await page.waitForSelector(ANSWER);
    const list = await shown(page);
    eq(list.map((m) => [m.seq, m.state, m.ai, m.text]),
      [[1, 'sent', false, question], [final.seq, 'sent', true, final.content]], 'page after the answer');
    eq(final.content, expected, 'the final answer');
    eq(final.seq, 2, 'seq of the answer');
    eq(final.sender && final.sender.type, 'ai', 'sender type');
    eq(final.metadata && final.metadata.partial, false, 'metadata.partial');
    eq(list.filter((m) => m.partial).length, 0, 'partial marks');
    // The device that stayed placed the same bytes from the pieces.
    eq(streamedText(phone.log, sid).get(final.stream_id), final.content, 'pieces on the other device');
    // The stored message is the same.
    const stored = (await storedMessages(d, tok, sid)).find((m) => m.seq === final.seq);
    eq(stored && stored.content, final.content, 'stored answer');
    eq(stored.type, 'ai_response', 'stored type');
    // Never a repeated or lost byte: every text shown was a prefix of the answer.
    const seen = await page.evaluate(() => window.seen);
    assert(seen.length >= 2, 'too few texts recorded: ' + JSON.stringify(seen));
    for (const t of seen) assert(final.content.startsWith(t), 'shown while streaming: ' + JSON.stringify(t));
    await page.waitForSelector('#assistant-bar', { state: 'hidden' });
    eq(await page.$$eval(STREAMING, (e) => e.length), 0, 'streaming answers left');
  } finally {
    await s.close();
  }
}

async function testStopButton(d, fake) {
  const s = scope();
  try {
    await fakeCall(fake, 'POST', '/_fake/mode', { mode: `slow=${SLOW_MS}` });
    await fakeCall(fake, 'POST', '/_fake/reset');
    const base = `http://127.0.0.1:${d.port}`;
    const tok = mint('bea', { name: 'Bea' });
    const page = await s.page(`${base}/#token=${tok}`);
    await connected(page);
    const question = 'Write me a long story that I will stop halfway';
    const expected = answerFor(question);
    await send(page, question);
    await waitSent(page, 1, question);
    const sid = await selectedSession(page);
    await waitStreaming(page, 8);
    await page.click('#stop');
    // The partial answer replaces the stream, marked partial.
    await page.waitForSelector(ANSWER + '[data-partial="true"]', { timeout: 2 * T });
    const answer = (await shown(page)).find((m) => m.ai);
    assert(answer.text.length >= 8 && expected.startsWith(answer.text) && answer.text.length < expected.length,
      `partial answer ${JSON.stringify(answer.text)}`);
    assert(/partial/i.test(await page.textContent(ANSWER + ' .msg__partial')), 'partial mark text');
    assert(await page.isVisible(ANSWER + ' .msg__partial'), 'partial mark hidden');
    await page.waitForSelector('#assistant-bar', { state: 'hidden' });
    const stop = page.sent.find((m) => m.type === 'stop_generation');
    eq(stop && stop.session_id, sid, 'stop_generation sent for the session');
    const ack = page.received.find((m) => m.type === 'ack' && m.id === stop.id);
    assert(ack && ack.stopped === true, 'stop acknowledged with stopped:true: ' + JSON.stringify(ack));
    // Stored as shown, marked partial.
    const stored = (await storedMessages(d, tok, sid)).find((m) => m.type === 'ai_response');
    eq(stored && stored.content, answer.text, 'stored partial answer');
    eq(stored.metadata && stored.metadata.partial, true, 'stored metadata.partial');
    // The provider saw its request given up.
    const deadline = Date.now() + T;
    let stats;
    for (;;) {
      stats = await fakeCall(fake, 'GET', '/_fake/stats');
      if ((stats.aborted >= 1 && stats.active === 0) || Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert(stats.aborted >= 1 && stats.active === 0, 'provider stats after Stop: ' +
      JSON.stringify({ requests: stats.requests, active: stats.active, aborted: stats.aborted }));
  } finally {
    await s.close();
  }
}

// Stopped before its first piece: nothing is stored, the ack ends it.
async function testStopBeforeFirstPiece(d, fake) {
  const s = scope();
  try {
    await fakeCall(fake, 'POST', '/_fake/mode', { mode: 'hang' });
    await fakeCall(fake, 'POST', '/_fake/reset');
    const tok = mint('gus', { name: 'Gus' });
    const page = await s.page(`http://127.0.0.1:${d.port}/#token=${tok}`);
    await connected(page);
    await send(page, 'no answer will come');
    await waitSent(page, 1, 'no answer will come');
    await page.waitForSelector('#assistant-bar:not([hidden])');
    assert(/thinking/i.test(await page.textContent('#assistant-state')), 'state before the first piece');
    // The request must have reached the (hanging) provider before the stop,
    // or the stop only takes an answer off chatd's queue: on a busy machine
    // the click can come first.
    for (let i = 0; (await fakeCall(fake, 'GET', '/_fake/stats')).requests < 1; i++) {
      assert(i < 200, 'the provider never got the request');
      await new Promise((r) => setTimeout(r, 50));
    }
    await page.click('#stop');
    await page.waitForSelector('#assistant-bar', { state: 'hidden' });
    const stop = page.sent.find((m) => m.type === 'stop_generation');
    const ack = page.received.find((m) => m.type === 'ack' && stop && m.id === stop.id);
    assert(ack && ack.stopped === true, 'stop ack: ' + JSON.stringify(ack));
    eq((await shown(page)).map((m) => [m.seq, m.ai]), [[1, false]], 'messages after the stop');
    const stats = await fakeCall(fake, 'GET', '/_fake/stats');
    eq(stats.requests, 1, 'provider requests');
  } finally {
    await s.close();
  }
}

// A joined admin's page shows the answer streaming (everything so far first)
// and stops it; the user's device gets the partial answer.
async function testAdminJoinsMidAnswer(d, fake) {
  const s = scope();
  try {
    await fakeCall(fake, 'POST', '/_fake/mode', { mode: `slow=${SLOW_MS}` });
    const base = `http://127.0.0.1:${d.port}`;
    const tok = mint('hal', { name: 'Hal' });
    const phone = await s.device(d.port, tok);
    // Long enough (about 35 pieces) to be still streaming once the support
    // page is open and joined, even in a sanitizer build.
    const question = 'A question that support will watch being answered, long enough to take a while ' +
      'to stream, so that the support page joins while it is still on its way';
    const expected = answerFor(question);
    const sid = (await phone.request({ type: 'user_message', content: question })).session_id;
    await phone.waitFor((m) => m.type === 'ai_response' && m.session_id === sid && m.done === false &&
      m.offset >= 8, 'a few pieces');
    const admin = await s.page(`${base}/admin#token=${mint('ida', { name: 'Ida', roles: ['admin'] })}`);
    await connected(admin);
    await admin.click(`#admin-sessions button[data-session-id="${sid}"]`);
    await waitSent(admin, 1, question);
    await admin.click('#join');
    await admin.waitForSelector('#leave:not([hidden])');
    const first = await waitStreaming(admin, 8);
    assert(expected.startsWith(first), 'admin page stream: ' + JSON.stringify(first));
    await admin.waitForSelector('#assistant-bar:not([hidden])');
    await admin.click('#stop');
    await admin.waitForSelector(ANSWER + '[data-partial="true"]', { timeout: 2 * T });
    const final = await phone.waitFor((m) => m.type === 'ai_response' && m.session_id === sid && m.done === true,
      'partial answer on the device');
    eq(final.metadata && final.metadata.partial, true, 'partial on the device');
    const answer = (await shown(admin)).find((m) => m.ai);
    eq(answer.text, final.content, 'admin page answer');
    assert(final.content.length < expected.length && expected.startsWith(final.content),
      'partial answer ' + JSON.stringify(final.content));
    await admin.waitForSelector('#assistant-bar', { state: 'hidden' });
  } finally {
    await s.close();
  }
}

async function testTakeoverBanner(d, fake) {
  const s = scope();
  try {
    await fakeCall(fake, 'POST', '/_fake/mode', { mode: 'normal' });
    const base = `http://127.0.0.1:${d.port}`;
    const tok = mint('cid', { name: 'Cid' });
    const page = await s.page(`${base}/#token=${tok}`);
    await connected(page);
    await send(page, 'hello there');
    await waitSent(page, 1, 'hello there');
    await page.waitForSelector(ANSWER);
    const sid = await selectedSession(page);
    assert(await page.isHidden('#takeover'), 'takeover banner before anyone joined');

    const admin = await s.device(d.port, mint('sam', { name: 'Sam', roles: ['admin'] }));
    await admin.request({ type: 'admin_join', session_id: sid });
    await page.waitForSelector('#takeover:not([hidden])');
    const text = await page.textContent('#takeover');
    assert(/a person from support has taken over/i.test(text) && /Sam/.test(text), 'banner: ' + text);
    await admin.request({ type: 'admin_leave', session_id: sid });
    await page.waitForSelector('#takeover', { state: 'hidden' });
  } finally {
    await s.close();
  }
}

// chatd stops mid-answer: it stores what streamed as a partial answer, and
// the page, back on the new chatd, shows that in place of the stream.
async function testRestartMidAnswer(fake, modelArgs) {
  const s = scope();
  const port = await freePort();
  const db = path.join(TMP, 'restart.db');
  let d = await startChatd(modelArgs, { port, db });
  try {
    await fakeCall(fake, 'POST', '/_fake/mode', { mode: `slow=${SLOW_MS}` });
    const tok = mint('ivy', { name: 'Ivy' });
    const page = await s.page(`http://127.0.0.1:${port}/#token=${tok}`);
    await connected(page);
    const question = 'An answer that a restart of the server will cut somewhere in its middle';
    const expected = answerFor(question);
    await send(page, question);
    await waitSent(page, 1, question);
    const sid = await selectedSession(page);
    await waitStreaming(page, 8);
    await stopChatd(d);
    await page.waitForSelector('#conn-state[data-state="waiting"]');
    d = await startChatd(modelArgs, { port, db });
    await page.waitForSelector(ANSWER + '[data-partial="true"]', { timeout: 30000 + T });
    const list = await shown(page);
    eq(list.map((m) => [m.seq, m.state, m.ai, m.partial]),
      [[1, 'sent', false, false], [2, 'sent', true, true]], 'page after the restart');
    const stored = (await storedMessages(d, tok, sid)).find((m) => m.seq === 2);
    eq(list[1].text, stored.content, 'partial answer shown and stored');
    assert(stored.content.length >= 8 && expected.startsWith(stored.content) &&
      stored.content.length < expected.length, 'stored partial answer ' + JSON.stringify(stored.content));
    assert(/restart/.test(await page.textContent(ANSWER + ' .msg__partial')), 'partial mark after a restart');
    await page.waitForSelector('#assistant-bar', { state: 'hidden' });
  } finally {
    await s.close().finally(() => stopChatd(d));
  }
}

// ---- tests: pieces put into the page's socket (models without a provider) --------------------

/*
 * The page's socket goes through the browser's route: everything passes,
 * inject(msg) adds a server message, and answer(pred, reply) answers the
 * page's messages matching pred with reply(msg) instead of passing them on.
 * r.sent: what the page sent (a routed socket's frames do not reach
 * page.sent).
 */
async function routeSocket(page) {
  const r = { route: null, answers: [], sent: [] };
  await page.routeWebSocket(/\/ws(\?|$)/, (ws) => {
    const server = ws.connectToServer();
    r.route = ws;
    ws.onMessage((m) => {
      let msg = null;
      try {
        msg = JSON.parse(m);
      } catch (e) {
        msg = null;
      }
      if (msg) r.sent.push(msg);
      const a = msg && r.answers.find((x) => x.pred(msg));
      if (a) ws.send(JSON.stringify(a.reply(msg)));
      else server.send(m);
    });
    server.onMessage((m) => ws.send(m));
  });
  r.inject = (msg) => {
    assert(r.route, 'no socket routed yet');
    r.route.send(JSON.stringify(msg));
  };
  r.answer = (pred, reply) => r.answers.push({ pred, reply });
  return r;
}

async function expectStreaming(page, text, what) {
  await page.waitForFunction(([sel, t]) => {
    const els = document.querySelectorAll(sel + ' .msg__body');
    return els.length === 1 && els[0].textContent === t;
  }, [STREAMING, text], { timeout: T }).catch(async () => {
    throw new Error(`${what}: the page shows ${JSON.stringify(await streamingText(page))}, ` +
      `expected ${JSON.stringify(text)}`);
  });
}

async function testPiecesPlacedByOffset(d) {
  const s = scope();
  try {
    const base = `http://127.0.0.1:${d.port}`;
    const tok = mint('dot', { name: 'Dot' });
    const page = await s.page();
    const sock = await routeSocket(page);
    page.response = await page.goto(`${base}/#token=${tok}`);
    await connected(page);
    await send(page, 'a question');
    await waitSent(page, 1, 'a question');
    const sid = await selectedSession(page);
    const stream = 'st_00112233445566aa';
    const piece = (offset, delta) => sock.inject({ type: 'ai_response', session_id: sid, stream_id: stream,
      offset, delta, done: false });

    sock.inject({ type: 'loading', session_id: sid });
    await page.waitForSelector('#assistant-bar:not([hidden])');
    assert(await page.isVisible('#stop'), 'Stop hidden while answering');
    assert(/answering/i.test(await page.textContent('#assistant-state')), 'assistant state');
    await page.waitForSelector('#session-list .badge--answering');
    piece(0, 'Hel');
    await expectStreaming(page, 'Hel', 'first piece');
    piece(3, 'lo «wö'); // 8 bytes: « and ö are two each
    await expectStreaming(page, 'Hello «wö', 'second piece');
    piece(3, 'lo «wörld'); // starts 8 bytes before the end: trimmed
    await expectStreaming(page, 'Hello «wörld', 'overlapping piece');
    piece(6, '«wö'); // held already
    piece(100, 'XXX'); // a gap: not placed
    piece(14, '»'); // appended
    await expectStreaming(page, 'Hello «wörld»', 'piece after a duplicate and a gap');
    piece(0, 'Hello «wörld»!'); // offset 0: replaces (a device brought level)
    await expectStreaming(page, 'Hello «wörld»!', 'piece at offset 0');
    piece(0, 'Hi'); // offset 0 replaces even a shorter text
    await expectStreaming(page, 'Hi', 'shorter piece at offset 0');
    piece(2, ' there');
    await expectStreaming(page, 'Hi there', 'piece after the replacement');
    // Another conversation and back: the stream is drawn again whole.
    await page.click('#new-conversation');
    await page.click(`#session-list button[data-session-id="${sid}"]`);
    await expectStreaming(page, 'Hi there', 'after switching conversations');
    piece(8, '!');
    await expectStreaming(page, 'Hi there!', 'piece after switching');

    // Stop: the page asks; chatd's ack is made here (stopped: true), then the
    // stored partial answer replaces the stream.
    sock.answer((m) => m.type === 'stop_generation', (m) => ({
      type: 'ack', id: m.id, session_id: m.session_id, timestamp: new Date().toISOString(), stopped: true,
    }));
    await page.click('#stop');
    await page.waitForSelector('#assistant-bar[data-state="stopping"]');
    assert(await page.isDisabled('#stop'), 'Stop enabled while stopping');
    const stop = sock.sent.find((m) => m.type === 'stop_generation');
    eq(stop && stop.session_id, sid, 'stop_generation session');
    sock.inject({ type: 'ai_response', session_id: sid, seq: 2, stream_id: stream, done: true,
      sender: { type: 'ai', id: 'm1', name: 'Fast' }, content: 'Hi there!', timestamp: new Date().toISOString(),
      metadata: { model: 'm1', input_tokens: 3, output_tokens: 4, partial: true, stop_reason: 'stopped' } });
    await page.waitForSelector(ANSWER + '[data-seq="2"][data-partial="true"]');
    eq((await shown(page)).map((m) => [m.seq, m.state, m.text, m.partial]),
      [[1, 'sent', 'a question', false], [2, 'sent', 'Hi there!', true]], 'after the stored answer');
    assert(/Partial answer/.test(await page.textContent(ANSWER + ' .msg__partial')), 'partial mark');
    assert(/Fast/.test(await page.textContent(ANSWER + ' .msg__from')), 'sender of the stored answer');
    await page.waitForSelector('#assistant-bar', { state: 'hidden' });
    await page.waitForSelector('#session-list .badge--answering', { state: 'detached' });
  } finally {
    await s.close();
  }
}

async function testErrorsShown(d) {
  const s = scope();
  try {
    const base = `http://127.0.0.1:${d.port}`;
    const tok = mint('eli', { name: 'Eli' });
    const page = await s.page();
    const sock = await routeSocket(page);
    page.response = await page.goto(`${base}/#token=${tok}`);
    await connected(page);
    await send(page, 'will it fail?');
    await waitSent(page, 1, 'will it fail?');
    const sid = await selectedSession(page);

    // A timeout, recoverable, after a piece: the answering state ends, the
    // error says to try again; the partial answer's stored event follows.
    sock.inject({ type: 'loading', session_id: sid });
    sock.inject({ type: 'ai_response', session_id: sid, stream_id: 'st_0000000000000001', offset: 0,
      delta: 'Partly', done: false });
    await expectStreaming(page, 'Partly', 'piece before the timeout');
    sock.inject({ type: 'error', code: 'assistant_timeout', message: 'the assistant did not answer in time',
      recoverable: true, retry_after: 3000, session_id: sid, stream_id: 'st_0000000000000001' });
    const timeout = '#messages .sysline[data-code="assistant_timeout"]';
    await page.waitForSelector(timeout);
    const t1 = await page.textContent(timeout);
    assert(/too long/i.test(t1) && /try again in 3 s/i.test(t1), 'timeout line: ' + t1);
    await page.waitForSelector('#assistant-bar', { state: 'hidden' });
    eq(await streamingText(page), 'Partly', 'the streamed text waits for its stored event');
    assert(/Interrupted/.test(await page.textContent(STREAMING + ' .msg__state')), 'interrupted answer mark');

    // A provider error, not recoverable, before any piece: no "try again".
    sock.inject({ type: 'loading', session_id: sid });
    await page.waitForSelector('#assistant-bar:not([hidden])');
    sock.inject({ type: 'error', code: 'assistant_error', message: 'the model provider failed',
      recoverable: false, session_id: sid });
    const failed = '#messages .sysline[data-code="assistant_error"]';
    await page.waitForSelector(failed);
    const t2 = await page.textContent(failed);
    assert(/could not answer: the model provider failed/.test(t2) && !/try again\b/i.test(t2.replace(/Trying again/, '')),
      'error line: ' + t2);
    await page.waitForSelector('#assistant-bar', { state: 'hidden' });

    // The per-user budget refuses to start one: it ends the answering state.
    sock.inject({ type: 'loading', session_id: sid });
    await page.waitForSelector('#assistant-bar:not([hidden])');
    sock.inject({ type: 'error', code: 'rate_limited', message: 'assistant budget used up', recoverable: true,
      retry_after: 20000, session_id: sid });
    const limited = '#messages .sysline[data-code="rate_limited"]';
    await page.waitForSelector(limited);
    assert(/try again in 20 s/i.test(await page.textContent(limited)), 'rate limit line');
    await page.waitForSelector('#assistant-bar', { state: 'hidden' });
    eq(await page.$$eval('.notice[data-code="rate_limited"]', (n) => n.length), 0,
      'the assistant refusal also shown as a sending rate limit');
  } finally {
    await s.close();
  }
}

async function testAdminPageStreams(d) {
  const s = scope();
  try {
    const base = `http://127.0.0.1:${d.port}`;
    const tok = mint('fay', { name: 'Fay' });
    const phone = await s.device(d.port, tok);
    const sid = (await phone.request({ type: 'user_message', content: 'help me' })).session_id;
    const admin = await s.page();
    const sock = await routeSocket(admin);
    admin.response = await admin.goto(`${base}/admin#token=${mint('sid', { name: 'Sid', roles: ['admin'] })}`);
    await connected(admin);
    await admin.click(`#admin-sessions button[data-session-id="${sid}"]`);
    await waitSent(admin, 1, 'help me');
    // Not joined: pieces of the session are not for this page.
    assert(await admin.isHidden('#assistant-bar'), 'assistant line before joining');
    await admin.click('#join');
    await admin.waitForSelector('#leave:not([hidden])');
    const stream = 'st_00000000000000ad';
    sock.inject({ type: 'ai_response', session_id: sid, stream_id: stream, offset: 0, delta: 'So far', done: false });
    await expectStreaming(admin, 'So far', 'admin: snapshot');
    sock.inject({ type: 'ai_response', session_id: sid, stream_id: stream, offset: 3, delta: 'far, so good',
      done: false });
    await expectStreaming(admin, 'So far, so good', 'admin: trimmed piece');
    await admin.waitForSelector('#assistant-bar:not([hidden])');
    assert(await admin.isVisible('#stop'), 'Stop hidden for a joined admin');
    sock.answer((m) => m.type === 'stop_generation', (m) => ({
      type: 'ack', id: m.id, session_id: m.session_id, timestamp: new Date().toISOString(), stopped: true,
    }));
    await admin.click('#stop');
    const stop = sock.sent.find((m) => m.type === 'stop_generation');
    eq(stop && stop.session_id, sid, 'admin stop_generation session');
    // The next seq after what the page holds (the join is a stored event).
    const next = 1 + await admin.$$eval('#messages [data-seq]', (e) => Math.max(...e.map((x) => Number(x.dataset.seq))));
    sock.inject({ type: 'ai_response', session_id: sid, seq: next, stream_id: stream, done: true,
      sender: { type: 'ai', id: 'm1', name: 'Fast' }, content: 'So far, so good', timestamp: new Date().toISOString(),
      metadata: { model: 'm1', input_tokens: 2, output_tokens: 4, partial: true, stop_reason: 'stopped' } });
    await admin.waitForSelector(ANSWER + `[data-seq="${next}"][data-partial="true"]`);
    await admin.waitForSelector('#assistant-bar', { state: 'hidden' });
    eq(await admin.$$eval(STREAMING, (e) => e.length), 0, 'admin: streams left');
    // Leaving forgets an answer in progress.
    sock.inject({ type: 'loading', session_id: sid });
    await admin.waitForSelector('#assistant-bar:not([hidden])');
    await admin.click('#leave');
    await admin.waitForSelector('#join:not([hidden])');
    assert(await admin.isHidden('#assistant-bar'), 'assistant line after leaving');
  } finally {
    await s.close();
  }
}

// ---- runner -----------------------------------------------------------------------------------

async function main() {
  const run = new Runner(4 * T + 45000);

  try {
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  } catch (e) {
    console.log(`FAIL launch chromium (${CHROMIUM}): ${e.stack || e}`);
    console.log('0 passed, 1 failed');
    process.exit(1);
  }

  let fake = null;
  try {
    fake = await startFake();
  } catch (e) {
    console.log(`FAIL start the fake provider: ${e.stack || e}`);
  }

  const groups = [
    [['--models', 'm1:Fast'], [
      ['stream_pieces_placed_by_offset', testPiecesPlacedByOffset],
      ['assistant_errors_shown', testErrorsShown],
      ['admin_page_streams_and_stops', testAdminPageStreams],
    ]],
  ];
  if (fake) {
    const keyFile = path.join(TMP, 'fake.key');
    fs.writeFileSync(keyFile, FAKE_KEY + '\n', { mode: 0o600 });
    groups.push([['--model', `fake=openai:http://127.0.0.1:${fake.port}/v1,name=Fake,key-file=${keyFile}`], [
      ['reload_mid_answer_same_text_as_other_device', (d) => testReloadMidAnswer(d, fake)],
      ['stop_button_partial_answer_provider_aborted', (d) => testStopButton(d, fake)],
      ['stop_before_first_piece_ends_answering', (d) => testStopBeforeFirstPiece(d, fake)],
      ['admin_page_joins_mid_answer_and_stops', (d) => testAdminJoinsMidAnswer(d, fake)],
      ['admin_join_shows_takeover_banner', (d) => testTakeoverBanner(d, fake)],
    ]]);
  } else {
    run.failed += 7;
  }
  await run.runGroups(groups, startChatd, (args) => args[0]);
  if (fake) {
    await run.test('restart_mid_answer_partial_answer_replaces_stream',
      () => testRestartMidAnswer(fake, groups[1][0]));
  }
  if (fake) await run.test('fake_provider_exit_0', () => stopFake(fake));

  await browser.close().catch(() => {});
  fs.rmSync(TMP, { recursive: true, force: true });
  run.finish();
}

main().catch((e) => {
  console.log('FAIL runner: ' + (e && e.stack ? e.stack : e));
  console.log('0 passed, 1 failed');
  process.exit(1);
});
