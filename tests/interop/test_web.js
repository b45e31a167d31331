'use strict';
// The web pages (web/) in a real browser: Debian's Chromium driven by
// playwright-core, against chatd itself (CHATD_BIN), which serves the pages.
// Users on the pages talk to each other and to Node `ws` clients acting as
// the same user's other devices; chatd is restarted under a page to check that
// it reconnects and resumes. Prints one line per test and "N passed, N failed";
// exits 1 on any failure. Every chatd must exit 0 on SIGTERM with no sanitizer
// report, and no page may throw or hit a Content-Security-Policy refusal.

const crypto = require('crypto');
const fs = require('fs');
const net = require('net');
const os = require('os');
const path = require('path');
const { chromium } = require(path.join(__dirname, 'node_modules', 'playwright-core'));
const { SLOW, T, spawnChatd, waitAccepting, stopChatd, Runner } = require('./chatd_process');
const W = require('./web_common');
const { assert, eq, device, connected, shown, send, waitSent, waitText, holdsMessages, texts, selectedSession, seqsOf } = W;

const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const SECRET = 'web-test-' + crypto.randomBytes(24).toString('hex');
const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'chatd-web-'));

// An HS256 JWT of this test's secret (opts.secret: another one).
function mint(sub, opts) {
  return W.mint(SECRET, sub, opts);
}

let browser = null;

// A test's scope in the browser (see web_common.js).
function scope() {
  return W.scope(browser);
}

// ---- chatd process -------------------------------------------------------------------

// chatd with this test's secret, two workers, a new database unless opts.db,
// on opts.port (0: any free one), accepting connections.
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
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// ---- tests: one chatd --------------------------------------------------------------------

const world = {};

async function testTokenFromHash(d) {
  const s = scope();
  try {
    const base = `http://127.0.0.1:${d.port}`;
    const tok = mint('ann', { name: 'Ann' });
    const page = await s.page(`${base}/#token=${tok}`);
    await connected(page);
    assert(page.response.headers()['content-security-policy'], 'the page has no CSP header');
    eq(page.url(), base + '/', 'the token is still in the address');
    eq(await page.evaluate(() => sessionStorage.getItem('chatd.token')), tok, 'stored token');
    const who = await page.textContent('#who');
    assert(/Ann/.test(who) && /1 device/.test(who), `who line: ${who}`);
    // The stylesheet and both scripts loaded under the page's CSP.
    eq(await page.evaluate(() => getComputedStyle(document.body).display), 'grid', 'body layout');
    assert(await page.isHidden('#signin'), 'sign-in form shown with a token');
    eq(await page.getAttribute('#messages', 'aria-live'), 'polite', 'new messages announced');
    assert(await page.isHidden('#model-field'), 'model selector shown with no models offered');
  } finally {
    await s.close();
  }
}

async function testSignInForm(d) {
  const s = scope();
  try {
    const base = `http://127.0.0.1:${d.port}`;
    // A token signed with another secret: refused, the form asks for a new one.
    const bad = mint('ann', { secret: 'another-secret-of-at-least-32-bytes!!' });
    const page = await s.page(`${base}/#token=${bad}`);
    await page.waitForSelector('#signin:not([hidden])');
    const msg = await page.textContent('#signin-message');
    assert(/refused/i.test(msg), `sign-in message after a bad token: ${msg}`);
    eq(await page.evaluate(() => sessionStorage.getItem('chatd.token')), null, 'bad token kept');
    assert(await page.isHidden('#app'), 'the app is shown without a token');
    eq(await page.evaluate(() => document.activeElement.id), 'token-input', 'focus on the token field');

    await page.fill('#token-input', 'not a token');
    await page.press('#token-input', 'Enter');
    assert(/does not look like a token/.test(await page.textContent('#signin-message')),
      'garbage accepted');
    // Pasting the whole page URL that --dev prints works.
    await page.fill('#token-input', `${base}/#token=${mint('ann', { name: 'Ann' })}`);
    await page.click('#signin-form button[type="submit"]');
    await connected(page);
    assert(await page.isVisible('#app'), 'app hidden after signing in');
    // Sign out: back to the form, token forgotten, socket closed.
    await page.click('#sign-out');
    await page.waitForSelector('#signin:not([hidden])');
    eq(await page.evaluate(() => sessionStorage.getItem('chatd.token')), null, 'token after sign-out');
    eq(await page.getAttribute('#conn-state', 'data-state'), 'off', 'state after sign-out');
  } finally {
    await s.close();
  }
}

async function testSendPendingSentOtherDevice(d) {
  const s = scope();
  try {
    world.ann = await sendPendingSentOtherDevice(d, s);
  } catch (e) {
    await s.close().catch(() => {});
    throw e;
  }
}

async function sendPendingSentOtherDevice(d, s) {
  const base = `http://127.0.0.1:${d.port}`;
  const tok = mint('ann', { name: 'Ann' });
  const phone = await s.device(d.port, tok);
  const page = await s.page(`${base}/#token=${tok}`);
  await connected(page);
  // Record every message element as it is inserted: the first state of the
  // message must be pending, without a seq.
  await page.evaluate(() => {
    window.inserted = [];
    new MutationObserver((muts) => {
      for (const m of muts) {
        for (const n of m.addedNodes) {
          if (n.classList && n.classList.contains('msg')) {
            window.inserted.push({ state: n.dataset.state, seq: n.dataset.seq || null });
          }
        }
      }
    }).observe(document.getElementById('messages'), { childList: true });
  });
  // Shift+Enter is a new line, Enter sends.
  await page.click('#composer-input');
  await page.keyboard.type('Hello from the browser');
  await page.keyboard.press('Shift+Enter');
  await page.keyboard.type('second line');
  await page.keyboard.press('Enter');
  const text = 'Hello from the browser\nsecond line';
  await waitSent(page, 1, text);
  eq(await page.inputValue('#composer-input'), '', 'composer after sending');
  const inserted = await page.evaluate(() => window.inserted);
  eq(inserted[0], { state: 'pending', seq: null }, 'first state of a sent message');
  eq(inserted[inserted.length - 1], { state: 'sent', seq: '1' }, 'last state');

  // The other device got it, in the session the page now shows.
  const got = await phone.waitFor((m) => m.type === 'user_message' && m.content === text, 'page message');
  eq(got.seq, 1, 'seq on the other device');
  const sid = await selectedSession(page);
  eq(got.session_id, sid, 'session on the other device');
  assert(/^w[0-9a-f]{24}$/.test(got.id), `message id ${got.id}`);

  // The page tells the other devices it has shown seq 1.
  await phone.waitFor((m) => m.type === 'read' && m.session_id === sid && m.seq === 1, 'read 1');

  // A message from the other device appears live, and is marked read.
  const ack = await phone.request({ type: 'user_message', session_id: sid, content: 'from my phone' });
  eq(ack.seq, 2, 'phone message seq');
  await waitSent(page, 2, 'from my phone');
  await phone.waitFor((m) => m.type === 'read' && m.session_id === sid && m.seq === 2, 'read 2');

  // Typing, both ways.
  await page.fill('#composer-input', 'typing something');
  await phone.waitFor((m) => m.type === 'typing_indicator' && m.typing === true && m.session_id === sid,
    'typing true');
  await page.press('#composer-input', 'Enter');
  await phone.waitFor((m) => m.type === 'typing_indicator' && m.typing === false && m.session_id === sid,
    'typing false');
  await waitSent(page, 3, 'typing something');
  phone.send({ type: 'typing_indicator', session_id: sid, typing: true });
  await page.waitForFunction(() => /another device/.test(document.getElementById('typing').textContent));
  phone.send({ type: 'typing_indicator', session_id: sid, typing: false });
  await page.waitForFunction(() => document.getElementById('typing').textContent === '');

  const list = await shown(page);
  eq(seqsOf(list), [1, 2, 3], 'seqs shown');
  assert(list.every((m) => m.own && m.state === 'sent'), 'all three are own and sent');
  return { tok, sid, page, scope: s };
}

async function testReloadShowsHistory() {
  assert(world.ann, 'needs message_pending_then_sent_other_device');
  const { page, sid } = world.ann;
  await page.reload();
  await connected(page);
  eq(page.url().includes('token'), false, 'token back in the address');
  await waitSent(page, 3);
  eq(await selectedSession(page), sid, 'session selected after reload');
  const list = await shown(page);
  eq(list.map((m) => [m.seq, m.text]),
    [[1, 'Hello from the browser\nsecond line'], [2, 'from my phone'], [3, 'typing something']],
    'history after reload');
  eq(await page.$$eval('#session-list button.session', (b) => b.length), 1, 'sessions listed');
}

// A conversation held only partly: a live event (seq 4) arrives before the
// history (1..3) is loaded; the history must go before it, each once.
async function testPlacedBySeq(d) {
  assert(world.ann, 'needs message_pending_then_sent_other_device');
  const { page, sid, tok } = world.ann;
  const base = `http://127.0.0.1:${d.port}`;
  // Started on another device while this tab shows another site.
  await page.goto('about:blank');
  const phone = await world.ann.scope.device(d.port, tok);
  const first = await phone.request({ type: 'user_message', content: 'c1' });
  const cid = first.session_id;
  for (const c of ['c2', 'c3']) await phone.request({ type: 'user_message', session_id: cid, content: c });
  await page.goto(base + '/');
  await connected(page);
  eq(await selectedSession(page), sid, 'the tab keeps its session');
  const row = `#session-list button[data-session-id="${cid}"]`;
  await page.waitForSelector(row);
  await phone.request({ type: 'user_message', session_id: cid, content: 'c4' });
  await page.waitForSelector(`${row}[data-unread="1"]`);
  await page.click(row);
  await waitSent(page, 1, 'c1');
  eq((await shown(page)).map((m) => [m.seq, m.text]), [[1, 'c1'], [2, 'c2'], [3, 'c3'], [4, 'c4']],
    'history placed before the live event');
  await page.waitForSelector(`${row}[data-unread="0"]`);
  await page.click(`#session-list button[data-session-id="${sid}"]`);
  await waitSent(page, 3);
}

async function testSecondPageLive(d) {
  assert(world.ann, 'needs message_pending_then_sent_other_device');
  const { page, sid, tok } = world.ann;
  const s = world.ann.scope;
  const base = `http://127.0.0.1:${d.port}`;
  try {
    const second = await s.page(`${base}/#token=${tok}`);
    await connected(second);
    await second.click(`#session-list button[data-session-id="${sid}"]`);
    await waitSent(second, 3);
    await send(page, 'seen on the second page');
    await waitSent(second, 4, 'seen on the second page');
    await send(second, 'and back');
    await waitSent(page, 5, 'and back');
    for (const p of [page, second]) {
      const list = await shown(p);
      eq(seqsOf(list), [1, 2, 3, 4, 5], 'seqs on each page');
    }
    // The new conversation action: a second session, listed first on both.
    await second.click('#new-conversation');
    await send(second, 'another topic');
    await waitSent(second, 1, 'another topic');
    const sid2 = await selectedSession(second);
    assert(sid2 && sid2 !== sid, 'new conversation has a new session');
    await page.waitForSelector(`#session-list li:first-child button[data-session-id="${sid2}"]`);
    eq(await page.$$eval('#session-list button.session', (b) => b.length), 3, 'sessions on the first page');
    eq(await selectedSession(page), sid, 'first page stays on its session');
  } finally {
    await s.close();
  }
}

async function testAdminFlow(d) {
  const s = scope();
  try {
    const base = `http://127.0.0.1:${d.port}`;
    const user = await s.page(`${base}/#token=${mint('bob', { name: 'Bob' })}`);
    await connected(user);
    await send(user, 'I need a hand with my invoice');
    await waitSent(user, 1);
    const sid = await selectedSession(user);

    const admin = await s.page(`${base}/admin#token=${mint('sam', { name: 'Sam', roles: ['admin'] })}`);
    await connected(admin);
    eq(admin.url(), base + '/admin', 'token still in the admin page address');
    const btn = `button[data-session-id="${sid}"]`;
    const row = `#admin-sessions ${btn}`;
    await admin.waitForSelector(row);
    await admin.click('#refresh-online');
    await admin.waitForFunction(() => /bob/.test(document.getElementById('online-list').textContent));

    // Help request: highlighted live, with a notice.
    await user.click('#help');
    await user.waitForFunction(() => /asked for a person/.test(document.getElementById('messages').textContent));
    await admin.waitForSelector(`#admin-sessions li.is-help-live ${btn}`);
    await admin.waitForSelector('.notice[data-code="help_request"]');
    // Filter "needs help only": this session, not Ann's.
    await admin.check('#help-only');
    await admin.waitForFunction(() => /needing help/.test(document.getElementById('sessions-status').textContent));
    const helpIds = await admin.$$eval('#admin-sessions button.session', (b) => b.map((x) => x.dataset.sessionId));
    eq(helpIds, [sid], 'sessions needing help');
    await admin.uncheck('#help-only');
    await admin.waitForFunction(() => !/needing help/.test(document.getElementById('sessions-status').textContent) &&
      /session/.test(document.getElementById('sessions-status').textContent));

    // Open: history, read only until joined.
    await admin.click(row);
    await waitSent(admin, 1, 'I need a hand with my invoice');
    assert(await admin.isDisabled('#composer-input'), 'composer enabled before joining');
    await admin.click('#join');
    await admin.waitForSelector('#leave:not([hidden])');
    assert(await admin.isEnabled('#composer-input'), 'composer disabled after joining');
    await user.waitForFunction(() => /Sam from support joined/.test(document.getElementById('messages').textContent));
    await admin.waitForSelector(`#admin-sessions li:not(.is-help-live) ${btn}`);

    // Replies both ways, live; typing shown to support. The help request
    // and the join are stored events with their own seqs (2 and 3).
    await send(admin, 'Hello Bob, Sam from support here.');
    const replySeq = await waitText(admin, 'Hello Bob, Sam from support here.');
    eq(await waitText(user, 'Hello Bob, Sam from support here.'), replySeq, 'the reply\'s seq on both pages');
    const fromSupport = (await shown(user)).find((m) => m.seq === replySeq);
    assert(fromSupport.admin && !fromSupport.own, 'support reply not shown as support');
    await user.fill('#composer-input', 'Thanks');
    await admin.waitForFunction(() => /Bob is typing/.test(document.getElementById('typing').textContent));
    await user.press('#composer-input', 'Enter');
    await waitText(admin, 'Thanks');
    await admin.waitForFunction(() => document.getElementById('typing').textContent === '');

    // A second conversation joined at the same time: its news is counted
    // while support looks at the first one.
    await user.click('#new-conversation');
    await send(user, 'and another question');
    await waitSent(user, 1, 'and another question');
    const sid2 = await selectedSession(user);
    await admin.click('#refresh-sessions');
    await admin.click(`#admin-sessions button[data-session-id="${sid2}"]`);
    await waitText(admin, 'and another question');
    await admin.click('#join');
    await admin.waitForSelector('#leave:not([hidden])');
    eq(await admin.$$eval('#joined-list button', (b) => b.length), 2, 'joined sessions');
    await admin.click('#joined-list li:first-child button');
    await waitText(admin, 'Thanks');
    await send(user, 'still there?');
    await admin.waitForFunction(() => /1/.test(document.querySelector('#joined-list li:last-child .badge') ?
      document.querySelector('#joined-list li:last-child .badge').textContent : ''));
    await admin.click('#joined-list li:last-child button');
    await waitText(admin, 'still there?');

    await admin.click('#joined-list li:first-child button');
    await admin.click('#leave');
    await admin.waitForSelector('#join:not([hidden])');
    await user.click(`#session-list button[data-session-id="${sid}"]`);
    await user.waitForFunction(() => /Sam from support left/.test(document.getElementById('messages').textContent));
    const want = ['I need a hand with my invoice', 'Hello Bob, Sam from support here.', 'Thanks'];
    eq(await texts(user), want, 'messages on the user page');
    eq(await texts(admin), want, 'messages on the support page');
    eq(seqsOf(await shown(user)), seqsOf(await shown(admin)), 'the same seqs on both pages');
    // The stored session events, the same on both pages.
    const events = (p) => p.$$eval('#messages .sysline[data-event]', (ls) => ls.map((l) => l.dataset.event));
    eq(await events(user), ['help_request', 'admin_join', 'admin_leave'], 'events on the user page');
    eq(await events(admin), ['help_request', 'admin_join', 'admin_leave'], 'events on the support page');
    eq(await admin.$$eval('#joined-list button', (b) => b.length), 1, 'joined sessions after leaving one');
  } finally {
    await s.close();
  }
}

async function testAdminRefusesUser(d) {
  const s = scope();
  try {
    const base = `http://127.0.0.1:${d.port}`;
    const page = await s.page(`${base}/admin#token=${mint('ann', { name: 'Ann' })}`);
    await page.waitForSelector('#not-admin:not([hidden])');
    const text = await page.textContent('#not-admin');
    assert(/support staff/.test(text) && /admin role/.test(text) && /ann/.test(text),
      `not-admin message: ${text}`);
    assert(await page.isHidden('#app'), 'admin app shown to a user');
    eq(page.sockets.length, 0, 'a user token opened a socket on the admin page');
    // "Use another token" leads to the sign-in form.
    await page.click('#not-admin-switch');
    await page.waitForSelector('#signin:not([hidden])');
  } finally {
    await s.close();
  }
}

async function testExpiredTokenAsksForNew(d) {
  const s = scope();
  try {
    const base = `http://127.0.0.1:${d.port}`;
    const ttl = SLOW ? 12 : 4;
    const tok = mint('eve', { exp: Math.floor(Date.now() / 1000) + ttl });
    const page = await s.page(`${base}/#token=${tok}`);
    await connected(page);
    // chatd closes with 1008 "token expired" within a second of exp.
    await page.waitForSelector('#signin:not([hidden])', { timeout: ttl * 1000 + T });
    const msg = await page.textContent('#signin-message');
    assert(/expired/.test(msg), `message after expiry: ${msg}`);
    eq(page.sockets.length, 1, 'the page reconnected with an expired token');
  } finally {
    await s.close();
  }
}

// ---- test: chatd restarts under the pages ---------------------------------------------------

async function testRestartResume() {
  const s = scope();
  const port = await freePort();
  const db = path.join(TMP, 'restart.db');
  const base = `http://127.0.0.1:${port}`;
  const tok = mint('rex', { name: 'Rex' });
  let d = await startChatd([], { port, db });
  try {
    const user = await s.page(`${base}/#token=${tok}`);
    await connected(user);
    await send(user, 'before the restart');
    await waitSent(user, 1);
    const sid = await selectedSession(user);
    const admin = await s.page(`${base}/admin#token=${mint('sue', { name: 'Sue', roles: ['admin'] })}`);
    await connected(admin);
    await admin.click(`#admin-sessions button[data-session-id="${sid}"]`);
    await admin.click('#join');
    await admin.waitForSelector('#leave:not([hidden])');
    await user.waitForFunction(() => /Sue from support joined/.test(document.getElementById('messages').textContent));

    // Down: the page says so and waits to reconnect.
    await stopChatd(d);
    await user.waitForSelector('.notice[data-code="shutdown"]');
    await user.waitForSelector('#conn-state[data-state="waiting"]');

    // What the user's page held when chatd went down: it resumes after it.
    const heldBefore = Math.max(...user.received.filter((m) => m.session_id === sid && Number.isSafeInteger(m.seq))
      .map((m) => m.seq));

    // Up again, but refusing browsers (their Origin is not allowed): another
    // device of the user writes while the pages cannot connect.
    d = await startChatd(['--allowed-origins', 'http://elsewhere.invalid'], { port, db });
    const phone = await device(port, tok);
    const gap1 = (await phone.request({ type: 'user_message', session_id: sid, content: 'gap one' })).seq;
    const gap2 = (await phone.request({ type: 'user_message', session_id: sid, content: 'gap two' })).seq;
    eq(gap2, gap1 + 1, 'gap seqs');
    assert(gap1 > heldBefore, `gap seq ${gap1} not after ${heldBefore}`);
    await phone.close();
    // Written while disconnected: Send is disabled, Enter sends nothing,
    // and the text stays in the box, saying why.
    await send(user, 'written while offline');
    assert(await user.isDisabled('#send'), 'Send enabled while offline');
    eq(await user.inputValue('#composer-input'), 'written while offline', 'the box after Enter offline');
    eq(await user.getAttribute('#composer-status', 'data-kind'), 'offline', 'the line under the box');
    eq(await user.$$eval('#messages .msg[data-state="pending"]', (m) => m.length), 0, 'sent while offline');
    assert((await user.getAttribute('#conn-state', 'data-state')) !== 'open', 'page connected through the refusal');
    await stopChatd(d);

    // Up for everyone: both pages reconnect by themselves and resume after
    // what they held; the text kept in the box is sent then, once.
    const sentBefore = user.sent.length;
    d = await startChatd([], { port, db });
    const backoff = 30000 + T; // the reconnect delay is capped at 30 s
    await user.waitForSelector('#send:not([disabled])', { timeout: backoff });
    await user.press('#composer-input', 'Enter');
    await waitText(user, 'written while offline', backoff);
    const resumes = user.sent.slice(sentBefore).filter((m) => m.type === 'resume' && m.session_id === sid);
    assert(resumes.length >= 1 && resumes[0].after_seq === heldBefore,
      `resume sent (after ${heldBefore}): ` + JSON.stringify(resumes));
    // The new message's ack may come before the resume's replay of the
    // gap (a client orders by seq, not by arrival): compare once the page
    // holds as many stored messages as expected.
    const expect = ['before the restart', 'gap one', 'gap two', 'written while offline'];
    await holdsMessages(user, expect.length);
    eq(await texts(user), expect, 'user page after the restart');
    await waitText(admin, 'written while offline', backoff);
    await holdsMessages(admin, expect.length);
    eq(await texts(admin), expect, 'admin page after the restart');

    // Live again on both, with the same seqs; the admin's rejoin after the
    // restart shows once.
    const phone2 = await s.device(port, tok);
    const last = (await phone2.request({ type: 'user_message', session_id: sid, content: 'after the restart' })).seq;
    eq(await waitText(user, 'after the restart'), last, 'seq on the user page');
    eq(await waitText(admin, 'after the restart'), last, 'seq on the admin page');
    eq(seqsOf(await shown(user)), seqsOf(await shown(admin)), 'the same seqs on both pages');
    // A join shows unless the one before it was a join too (a stale join
    // that the restart left without its leave). The admin page's rejoin may
    // be stored after the message above: compare until the page has it.
    let joins, wantJoins, stored;
    for (let tries = 0; ; tries++) {
      joins = await user.$$eval('#messages .sysline', (els) =>
        els.filter((e) => /Sue from support joined/.test(e.textContent)).length);
      stored = await (await fetch(`${base}/api/sessions/${sid}/messages?after_seq=0`,
        { headers: { Authorization: 'Bearer ' + tok } })).json();
      let lastKind = null;
      wantJoins = 0;
      for (const m of stored.messages) {
        if (m.type !== 'admin_join' && m.type !== 'admin_leave') continue;
        if (m.type === 'admin_join' && lastKind !== 'admin_join') wantJoins++;
        lastKind = m.type;
      }
      if (joins === wantJoins || tries >= 50) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    eq(joins, wantJoins, '"joined" lines on the user page');
    // Stored once each, whatever was resent.
    eq(stored.messages.filter((m) => m.type === 'user_message').map((m) => m.content),
      [...expect, 'after the restart'], 'stored messages');
  } finally {
    await s.close().finally(() => stopChatd(d));
  }
}

// ---- tests: chatd under a prefix, with small limits ------------------------------------------------

async function testPrefix(d) {
  const s = scope();
  try {
    const base = `http://127.0.0.1:${d.port}/chat`;
    const page = await s.page(`${base}/#token=${mint('pat', { name: 'Pat' })}`);
    await connected(page);
    eq(page.url(), base + '/', 'address after taking the token');
    eq(await page.evaluate(() => getComputedStyle(document.body).display), 'grid', 'stylesheet under the prefix');
    await send(page, 'under a prefix');
    await waitSent(page, 1, 'under a prefix');
    await page.reload();
    await waitSent(page, 1, 'under a prefix');
    assert(page.sockets.length === 2 &&
      page.sockets.every((u) => u.startsWith(`ws://127.0.0.1:${d.port}/chat/ws?token=`)),
      'socket URLs: ' + page.sockets.join(' '));
    const sid = await selectedSession(page);
    // chatd offers models here: the selector is shown and sets the session's.
    await page.waitForSelector('#model-field:not([hidden])');
    eq(await page.$$eval('#model-select option', (o) => o.map((x) => x.value + '=' + x.textContent)),
      ['=Default', 'm1=Fast', 'm2=Smart'], 'model options');
    await page.selectOption('#model-select', 'm2');
    await page.waitForFunction(() => /Model set to Smart/.test(document.getElementById('notices').textContent));
    const admin = await s.page(`${base}/admin#token=${mint('sal', { roles: ['admin'] })}`);
    await connected(admin);
    await admin.click(`#admin-sessions button[data-session-id="${sid}"]`);
    await admin.waitForFunction(() => /model m2/.test(document.getElementById('conv-sub').textContent));
  } finally {
    await s.close();
  }
}

async function testRateLimited(d) {
  // chatd runs with --rate-limit 12: a burst of 12, then one every 5 s.
  const s = scope();
  try {
    const page = await s.page(`http://127.0.0.1:${d.port}/chat/#token=${mint('rita')}`);
    await connected(page);
    const n = 13;
    for (let i = 1; i <= n; i++) await send(page, 'burst ' + i);
    await page.waitForSelector('.notice[data-code="rate_limited"]');
    await page.waitForSelector('#messages .msg[data-state="retrying"]');
    const note = await page.textContent('#messages .msg[data-state="retrying"] .msg__state');
    assert(/retrying in \d+ s/.test(note), `retrying note: ${note}`);
    // Sent by itself once the limit allows, with the next seq.
    await waitSent(page, n, 'burst ' + n);
    const list = await shown(page);
    eq(list.map((m) => [m.seq, m.state]), Array.from({ length: n }, (_, i) => [i + 1, 'sent']),
      'all sent, once each, in order');
  } finally {
    await s.close();
  }
}

async function testConnectionLimitNotice(d) {
  // chatd runs with --max-devices 2.
  const s = scope();
  try {
    const tok = mint('dee');
    const page = await s.page(`http://127.0.0.1:${d.port}/chat/#token=${tok}`);
    await connected(page);
    await s.device(d.port, tok, '/chat');
    const refused = await device(d.port, tok, '/chat').then(() => null, (e) => e);
    assert(refused && /429/.test(refused.message), 'third device not refused: ' + refused);
    await page.waitForSelector('.notice[data-code="connection_limit"]');
    eq(await page.getAttribute('#conn-state', 'data-state'), 'open', 'the page stays connected');
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

  const pick = W.pick; /* CHATD_WEB_ONLY=REGEX: only the tests it matches */
  const groups = [
    [[], pick([
      ['chat_page_takes_token_from_hash', testTokenFromHash],
      ['sign_in_form_bad_token_sign_out', testSignInForm],
      ['message_pending_then_sent_other_device', testSendPendingSentOtherDevice],
      ['reload_shows_history', testReloadShowsHistory],
      ['history_and_live_placed_by_seq', testPlacedBySeq],
      ['second_page_live_and_new_conversation', testSecondPageLive],
      ['admin_help_join_reply_leave', testAdminFlow],
      ['admin_page_refuses_user_token', testAdminRefusesUser],
      ['expired_token_asks_for_new_one', testExpiredTokenAsksForNew],
    ])],
    [['--prefix', '/chat', '--rate-limit', '12', '--max-devices', '2', '--models', 'm1:Fast,m2:Smart'], pick([
      ['prefix_pages_api_and_ws', testPrefix],
      ['rate_limited_message_retried', testRateLimited],
      ['connection_limit_notice', testConnectionLimitNotice],
    ])],
  ].filter(([, tests]) => tests.length);
  await run.runGroups(groups, startChatd, (args) => `${args.slice(0, 2).join(' ')} ...`);
  for (const [name, fn] of pick([['restart_reconnect_resume_no_gap_no_duplicate', testRestartResume]])) {
    await run.test(name, fn);
  }

  await browser.close().catch(() => {});
  fs.rmSync(TMP, { recursive: true, force: true });
  run.finish();
}

main().catch((e) => {
  console.log('FAIL runner: ' + (e && e.stack ? e.stack : e));
  console.log('0 passed, 1 failed');
  process.exit(1);
});
