'use strict';
// The support workflow on the web pages (issue 13), in a real browser:
// Debian's Chromium driven by playwright-core, against chatd (CHATD_BIN).
// One test per item of the pages' list: sending in order (a refused message
// does not hold up the next ones; rate limiting keeps the order with one
// notice), the byte counter, links, "(support)" not doubled, the state
// rebuilt from stored session events on reload (help asked, support
// joined, "Seen"), the support page re-joining after a reload and
// resolving help, two devices agreeing on help state and titles, the
// triage list, renaming, share links and the read-only shared page in a
// fresh browser context, the refused 11th device explained, the device
// count kept live, the 390-pixel layout, keyboard use, and axe-core with no
// serious or critical violation on the chat, support and shared pages.
// Screenshots of each page at desktop (1280x800) and phone (390x844) width
// go to docs/screenshots/. Prints one line per test and "N passed, N
// failed"; exits 1 on any failure. Every chatd must exit 0 on SIGTERM, and
// no page may throw or hit a Content-Security-Policy refusal.

const crypto = require('crypto');
const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require(path.join(__dirname, 'node_modules', 'playwright-core'));
const { SLOW, T, spawnChatd, waitAccepting, Runner } = require('./chatd_process');
const W = require('./web_common');
const { assert, eq, connected, shown, send, waitText, texts, selectedSession } = W;

const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const SECRET = 'web-support-' + crypto.randomBytes(24).toString('hex');
const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'chatd-web-support-'));
const SHOTS = path.join(__dirname, '..', '..', 'docs', 'screenshots');
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };

function mint(sub, opts) {
  return W.mint(SECRET, sub, opts);
}

// axe-core's script, evaluated in the page (an evaluation is not a script
// element, so the pages' Content-Security-Policy does not stop it).
let AXE = null;
function axeSource() {
  if (AXE === null) {
    const file = path.join(__dirname, 'node_modules', 'axe-core', 'axe.min.js');
    if (!fs.existsSync(file)) throw new Error('axe-core is missing: run npm install in tests/interop');
    AXE = fs.readFileSync(file, 'utf8');
  }
  return AXE;
}

let browser = null;

function scope() {
  return W.scope(browser);
}

async function startChatd(extraArgs) {
  const d = await spawnChatd(['--listen', '127.0.0.1:0', '--jwt-secret', SECRET,
    '--db', path.join(TMP, `chatd-${Date.now()}-${Math.random()}.db`), '--workers', '2',
    ...(extraArgs || [])]);
  await waitAccepting(d);
  d.base = `http://127.0.0.1:${d.port}`;
  return d;
}

// ---- what the tests read on a page ---------------------------------------------------

// Wait until a line of the conversation matches re (a RegExp source).
async function waitLine(page, re, timeout) {
  await page.waitForFunction((src) => Array.from(document.querySelectorAll('#messages .sysline'))
    .some((l) => new RegExp(src).test(l.textContent)), re.source, { timeout: timeout || T });
}

async function lines(page) {
  return page.$$eval('#messages .sysline', (ls) => ls.map((l) => ({
    text: l.textContent, event: l.dataset.event || null, seq: l.dataset.seq ? Number(l.dataset.seq) : null,
  })));
}

async function api(d, pathname, tok, opts) {
  opts = opts || {};
  const res = await fetch(d.base + pathname, {
    method: opts.method || 'GET',
    headers: Object.assign({ Authorization: 'Bearer ' + tok },
      opts.body ? { 'Content-Type': 'application/json' } : {}),
    body: opts.body ? JSON.stringify(opts.body) : undefined,
  });
  const text = await res.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch (e) {
    body = text;
  }
  return { status: res.status, body };
}

// Counts, in the page, the most notices of `code` shown at one time.
async function watchNotices(page, code) {
  await page.evaluate((c) => {
    window.noticeMax = 0;
    const count = () => {
      const n = document.querySelectorAll('#notices .notice[data-code="' + c + '"]').length;
      window.noticeMax = Math.max(window.noticeMax, n);
    };
    new MutationObserver(count).observe(document.getElementById('notices'), { childList: true, subtree: true });
    count();
  }, code);
}

function overlap(a, b) {
  return a && b && a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height;
}

// axe-core's serious and critical violations on the page as it is now.
async function axeViolations(page) {
  await page.evaluate(axeSource());
  const found = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({
      id: v.id, impact: v.impact, help: v.help,
      nodes: v.nodes.slice(0, 5).map((n) => n.target.join(' ') + ': ' + n.failureSummary.replace(/\s+/g, ' ')),
    }));
  });
  return found.filter((v) => v.impact === 'serious' || v.impact === 'critical');
}

async function noSeriousViolations(page, what) {
  const bad = await axeViolations(page);
  assert(bad.length === 0, `axe-core on ${what}:\n` + JSON.stringify(bad, null, 1));
}

async function shot(page, name) {
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.mouse.move(0, 0); // no hover
  await page.evaluate(() => document.activeElement && document.activeElement.blur());
  await page.screenshot({ path: path.join(SHOTS, name + '.png'), animations: 'disabled', caret: 'hide' });
}

// A user's page signed in with tok, connected; opts.viewport.
async function userPage(s, d, tok, opts) {
  const page = await s.page(`${d.base}/#token=${tok}`, opts);
  await connected(page);
  return page;
}

async function adminPage(s, d, tok, opts) {
  const page = await s.page(`${d.base}/admin#token=${tok}`, opts);
  await connected(page);
  return page;
}

// A new conversation on the page, its first message `text`; its id.
async function newConversation(page, text) {
  await page.click('#new-conversation');
  await send(page, text);
  await waitText(page, text);
  return selectedSession(page);
}

// On the support page: open session sid from the list, and join it.
async function openAndJoin(admin, sid) {
  await admin.click('#refresh-sessions');
  await admin.click(`#admin-sessions button[data-session-id="${sid}"]`);
  await admin.click('#join');
  await admin.waitForSelector('#leave:not([hidden])');
}

// ---- sending -------------------------------------------------------------------------

// The first message of a new conversation refused (content_too_large) and
// five after it: the five are delivered, in order, at once; the refused one
// offers no Retry. The page is made to believe in a larger limit than the
// server's (connection_status rewritten on its way), so that the server
// is the one refusing, as after a restart with a lower limit.
async function testRefusedThenFive(d) {
  const s = scope();
  try {
    const tok = mint('rosa', { name: 'Rosa' });
    const ctx = await browser.newContext({ viewport: DESKTOP });
    s.contexts.push(ctx);
    const page = await ctx.newPage();
    page.setDefaultTimeout(T);
    page.on('pageerror', (e) => s.problems.push('uncaught ' + (e.stack || e)));
    await page.routeWebSocket(/\/ws\?/, (ws) => {
      const server = ws.connectToServer();
      server.onMessage((m) => {
        let out = m;
        try {
          const j = JSON.parse(m);
          if (j.type === 'connection_status') {
            j.max_content_bytes = 100000;
            out = JSON.stringify(j);
          }
        } catch (e) {
          out = m;
        }
        ws.send(out);
      });
    });
    await page.goto(`${d.base}/#token=${tok}`);
    await connected(page);
    const big = 'x'.repeat(300); // chatd runs with --max-content-bytes 200
    await send(page, big);
    const five = ['one', 'two', 'three', 'four', 'five'];
    for (const t of five) await send(page, t);
    // Not held up until some timeout: they go as fast as chatd acks.
    const t0 = Date.now();
    await waitText(page, 'five');
    const bound = SLOW ? 20000 : 5000;
    assert(Date.now() - t0 < bound, 'the five waited ' + (Date.now() - t0) + ' ms');
    eq(await texts(page), five, 'delivered in order');
    eq((await shown(page)).filter((m) => m.state === 'sent').map((m) => m.seq), [1, 2, 3, 4, 5], 'seqs');
    const failed = await page.$$eval('#messages .msg[data-state="failed"]', (ls) => ls.map((l) => ({
      text: l.querySelector('.msg__body').textContent,
      state: l.querySelector('.msg__state').textContent,
      actions: Array.from(l.querySelectorAll('.msg__actions button'), (b) => b.textContent),
    })));
    eq(failed.length, 1, 'failed messages');
    eq(failed[0].text, big, 'the refused one');
    assert(/too long/i.test(failed[0].state), 'its state: ' + failed[0].state);
    assert(!failed[0].actions.includes('Retry'), 'Retry offered for content_too_large: ' + failed[0].actions);
    assert(failed[0].actions.includes('Discard'), 'no Discard: ' + failed[0].actions);
    // Stored once each, in order, on the server too.
    const sid = await selectedSession(page);
    const stored = await api(d, `/api/sessions/${sid}/messages?after_seq=0`, tok);
    eq(stored.body.messages.filter((m) => m.type === 'user_message').map((m) => m.content), five, 'stored');
    // Discard takes it away; focus goes back to the message box.
    await page.click('#messages .msg[data-state="failed"] .msg__actions button:text("Discard")');
    eq(await page.$$eval('#messages .msg[data-state="failed"]', (l) => l.length), 0, 'after Discard');
    eq(await page.evaluate(() => document.activeElement.id), 'composer-input', 'focus after Discard');
  } finally {
    await s.close();
  }
}

// The byte counter: it shows near the limit (max_content_bytes of
// connection_status, the protocol's 64 KiB when chatd does not say), says
// "too long" over it, Send is disabled and Enter sends nothing; it counts
// UTF-8 bytes, not characters.
async function testByteCounter(d) {
  const s = scope();
  try {
    const page = await userPage(s, d, mint('bea', { name: 'Bea' }));
    const status = page.received.find((m) => m.type === 'connection_status');
    const limit = Number(await page.getAttribute('#composer-status', 'data-limit'));
    eq(limit, status.max_content_bytes || 65536, 'the limit the page knows');
    const fmt = (n) => n.toLocaleString('en');
    assert(await page.isHidden('#composer-status'), 'counter shown for an empty box');
    const near = Math.floor(limit * 0.4); // 'é' is 2 bytes
    await page.fill('#composer-input', 'é'.repeat(near));
    await page.waitForSelector('#composer-status[data-kind="near"]');
    eq(await page.textContent('#composer-status'), `${fmt(2 * near)} of ${fmt(limit)} bytes`, 'counter near the limit');
    assert(await page.isEnabled('#send'), 'Send disabled under the limit');
    const over = Math.floor(limit / 2) + 1;
    await page.fill('#composer-input', 'é'.repeat(over));
    await page.waitForSelector('#composer-status[data-kind="over"]');
    const says = await page.textContent('#composer-status');
    assert(says.startsWith(`Too long to send: ${fmt(2 * over)} of ${fmt(limit)} bytes`), 'counter over the limit: ' + says);
    assert(await page.isDisabled('#send'), 'Send enabled over the limit');
    eq(await page.getAttribute('#composer-input', 'aria-invalid'), 'true', 'aria-invalid');
    eq(await page.textContent('#composer-alert'), `The message is too long to send: at most ${fmt(limit)} bytes.`,
      'announced once');
    await page.press('#composer-input', 'Enter');
    eq(await page.$$eval('#messages .msg', (l) => l.length), 0, 'a message went out over the limit');
    eq(await page.inputValue('#composer-input'), 'é'.repeat(over), 'the text stays');
    const exact = 'é'.repeat(Math.floor(limit / 2)); // the limit exactly: accepted
    await page.fill('#composer-input', exact);
    await page.press('#composer-input', 'Enter');
    await waitText(page, exact);
    eq(await page.evaluate(() => document.activeElement.id), 'composer-input', 'focus after sending');
    assert(await page.isHidden('#composer-status'), 'counter left after sending');
  } finally {
    await s.close();
  }
}

// Links: http and https only, rel=noopener, built as elements (markup in
// a message stays text).
async function testLinks(d) {
  const s = scope();
  try {
    const page = await userPage(s, d, mint('lin', { name: 'Lin' }));
    const text = 'See https://example.com/a?b=1&c=2. Or (http://example.org/x) <b>bold</b> ' +
      'javascript:alert(1) ftp://example.net/f';
    await send(page, text);
    await waitText(page, text);
    const links = await page.$$eval('#messages .msg__body a', (as) => as.map((a) => ({
      href: a.getAttribute('href'), text: a.textContent, rel: a.rel, target: a.target,
    })));
    eq(links.map((l) => l.href), ['https://example.com/a?b=1&c=2', 'http://example.org/x'], 'links');
    eq(links.map((l) => l.text), ['https://example.com/a?b=1&c=2', 'http://example.org/x'], 'link texts');
    assert(links.every((l) => /noopener/.test(l.rel) && l.target === '_blank'), 'rel/target: ' + JSON.stringify(links));
    eq(await page.$$eval('#messages .msg__body b', (b) => b.length), 0, 'markup from a message made an element');
    // A link is reached by keyboard like any control.
    await page.focus('#messages .msg__body a');
    eq(await page.evaluate(() => document.activeElement.tagName), 'A', 'link focusable');
  } finally {
    await s.close();
  }
}

// "(support)" is not added to a name that says it already.
async function testSupportNameOnce(d) {
  const s = scope();
  try {
    const user = await userPage(s, d, mint('ugo', { name: 'Ugo' }));
    const sid = await newConversation(user, 'hello support');
    const admin = await adminPage(s, d, mint('sam2', { name: 'Sam (Support)', roles: ['admin'] }));
    await openAndJoin(admin, sid);
    await send(admin, 'Hi Ugo');
    await waitText(user, 'Hi Ugo');
    const from = await user.$$eval('#messages .msg--admin .msg__from', (f) => f.map((x) => x.textContent));
    eq(from, ['Sam (Support)'], 'support name on the user page');
    await waitLine(user, /^Sam \(Support\) joined the conversation/);
    const all = (await lines(user)).map((l) => l.text).join(' | ');
    assert(!/support\)\s*\(support|\(Support\) from support/i.test(all), 'doubled: ' + all);
  } finally {
    await s.close();
  }
}

// Rate limiting: messages typed faster than the limit all arrive, in the
// order typed, with one notice at a time, and that notice clear of the
// message box.
async function testRateLimitOrder(d) {
  // chatd runs with --rate-limit 30: a burst of 30, then one every 2 s.
  const s = scope();
  try {
    const tok = mint('rita', { name: 'Rita' });
    const page = await userPage(s, d, tok);
    await watchNotices(page, 'rate_limited');
    const n = 34;
    const want = Array.from({ length: n }, (_, i) => 'burst ' + (i + 1));
    for (const t of want) await send(page, t);
    await page.waitForSelector('#notices .notice[data-code="rate_limited"]', { timeout: T });
    const noticeBox = await page.locator('#notices .notice[data-code="rate_limited"]').boundingBox();
    const composerBox = await page.locator('#composer').boundingBox();
    assert(!overlap(noticeBox, composerBox), 'the notice covers the message box');
    await waitText(page, 'burst ' + n, 60000);
    eq(await texts(page), want, 'order on the page');
    eq(await page.evaluate(() => window.noticeMax), 1, 'rate-limit notices at one time');
    const sid = await selectedSession(page);
    const stored = await api(d, `/api/sessions/${sid}/messages?after_seq=0&limit=100`, tok);
    eq(stored.body.messages.map((m) => m.content), want, 'stored order');
  } finally {
    await s.close();
  }
}

// ---- state from stored events ---------------------------------------------------------

// Reload keeps the joined, help and seen state: on the user's page the
// help request, support joining, the badge, subtitle and "Seen"; on the
// support page the joined session (joined again by itself) and "Seen".
// Resolving puts the user's button back to "Ask for a person", live and
// after a reload.
async function testReloadKeepsState(d) {
  const s = scope();
  try {
    const tok = mint('ann', { name: 'Ann Lee' });
    const user = await userPage(s, d, tok);
    const sid = await newConversation(user, 'My invoice is wrong');
    eq(await user.textContent('#help'), 'Ask for a person', 'help button at first');
    await user.click('#help');
    await waitLine(user, /^You asked for a person from support/);
    eq(await user.textContent('#help'), 'Help requested', 'help button once asked');
    assert(await user.isDisabled('#help'), 'help button enabled while asked');

    const admin = await adminPage(s, d, mint('sam', { name: 'Sam', roles: ['admin'] }));
    await openAndJoin(admin, sid);
    await waitLine(user, /^Sam from support joined the conversation/);
    await user.waitForSelector(`#session-list button[data-session-id="${sid}"][data-support="true"]`);
    // Support has the conversation on screen at its end: the user's
    // message is "Seen".
    await user.waitForSelector('#messages .msg--own[data-seen="true"]');
    eq(await user.textContent('#messages .msg--own[data-seen="true"] .msg__state'), 'Seen', 'own message state');
    await send(admin, 'Hello Ann, let me check.');
    await waitText(user, 'Hello Ann, let me check.');
    // The user's page shows it at its end: support's reply is "Seen" there.
    await admin.waitForSelector('#messages .msg--own[data-seen="true"]');

    // Reload both.
    await user.reload();
    await connected(user);
    await waitText(user, 'Hello Ann, let me check.');
    await waitLine(user, /^You asked for a person from support/);
    await waitLine(user, /^Sam from support joined the conversation/);
    await user.waitForSelector(`#session-list button[data-session-id="${sid}"][data-support="true"][data-help="true"]`);
    const badges = await user.textContent(`#session-list button[data-session-id="${sid}"] .session__badges`);
    assert(/Support here/.test(badges) && /Help requested/.test(badges), 'badges after reload: ' + badges);
    await user.waitForFunction(() => /Sam from support is here/.test(document.getElementById('conv-sub').textContent));
    eq(await user.textContent('#help'), 'Help requested', 'help button after reload');
    await user.waitForSelector('#messages .msg--own[data-seen="true"]');
    assert(await user.isVisible('#takeover'), 'takeover banner after reload');

    const sentBefore = admin.sent.length;
    await admin.reload();
    await connected(admin);
    await admin.waitForSelector('#leave:not([hidden])');
    assert(admin.sent.slice(sentBefore).some((m) => m.type === 'admin_join' && m.session_id === sid),
      'the support page did not join again by itself');
    assert(await admin.isEnabled('#composer-input'), 'reply box disabled after reload');
    await waitText(admin, 'Hello Ann, let me check.');
    await admin.waitForSelector('#messages .msg--own[data-seen="true"]');
    await admin.waitForSelector('#joined-list button');

    // Resolve: live on the user's page, and after its reload.
    await admin.waitForSelector('#resolve:not([hidden])');
    await admin.click('#resolve');
    await admin.waitForSelector('#resolve', { state: 'hidden' });
    await user.waitForFunction(() => document.getElementById('help').textContent === 'Ask for a person');
    assert(await user.isEnabled('#help'), 'help button disabled after resolve');
    await waitLine(user, /marked your help request as resolved/);
    await user.reload();
    await connected(user);
    await waitLine(user, /marked your help request as resolved/);
    await user.waitForFunction(() => document.getElementById('help').textContent === 'Ask for a person' &&
      !document.getElementById('help').disabled);
    // The support page's reload closed its connection (chatd stored
    // admin_leave) and joined again (admin_join): shown as they happened.
    const events = (await lines(user)).filter((l) => l.event).map((l) => l.event);
    eq(events, ['help_request', 'admin_join', 'admin_leave', 'admin_join', 'help_resolved'],
      'session events shown after reload');
  } finally {
    await s.close();
  }
}

// Two devices of one user agree on the help state and on titles; a title
// is the same before and after opening a session, on the user's pages and
// on the support page, and renaming reaches all of them.
async function testTwoDevicesAgree(d) {
  const s = scope();
  try {
    const tok = mint('dev', { name: 'Dev Patel' });
    const a = await userPage(s, d, tok);
    const first = 'Where is my parcel? It was due on Monday and nothing came, not even a note';
    const sid = await newConversation(a, first);
    await newConversation(a, 'Second question');
    const b = await userPage(s, d, tok);
    const row = `#session-list button[data-session-id="${sid}"] .session__title`;
    await b.waitForSelector(row);
    await a.waitForFunction((sel) => document.querySelector(sel) && !/Untitled/.test(document.querySelector(sel).textContent), row);
    const listed = await b.textContent(row);
    const listedA = await a.textContent(row);
    eq(listedA, listed, 'list titles on the two devices');
    const apiTitle = (await api(d, `/api/sessions/${sid}`, tok)).body.title;
    eq(listed, apiTitle, 'the list shows the API title');
    assert(listed.length <= 61 && first.startsWith(listed.replace(/…$/, '')), 'title: ' + listed);
    await b.click(`#session-list button[data-session-id="${sid}"]`);
    await waitText(b, first);
    eq(await b.textContent('#conv-title'), listed, 'title once opened');
    eq(await b.textContent(row), listed, 'list title once opened');

    // Help asked on A shows on B, live.
    await a.click(`#session-list button[data-session-id="${sid}"]`);
    await a.click('#help');
    await waitLine(b, /^You asked for a person from support/);
    await b.waitForFunction(() => document.getElementById('help').textContent === 'Help requested');
    await b.waitForSelector(`#session-list button[data-session-id="${sid}"][data-help="true"]`);

    // The support page shows the same title, before and after opening.
    const admin = await adminPage(s, d, mint('sue', { name: 'Sue', roles: ['admin'] }));
    const arow = `#admin-sessions button[data-session-id="${sid}"] .session__topic`;
    await admin.waitForSelector(arow);
    eq(await admin.textContent(arow), listed, 'title on the support list');
    await admin.click(`#admin-sessions button[data-session-id="${sid}"]`);
    await waitText(admin, first);
    eq(await admin.textContent('#conv-title'), listed, 'title on the support page once opened');

    // Resolved by support: both devices back to "Ask for a person".
    await admin.click('#resolve');
    for (const p of [a, b]) {
      await p.waitForFunction(() => document.getElementById('help').textContent === 'Ask for a person');
    }

    // Renamed on A: A at once, B live (session_renamed), support after
    // reading the list again, and B after a reload too.
    await a.click('#rename');
    eq(await a.evaluate(() => document.activeElement.id), 'rename-input', 'focus in the rename box');
    await a.fill('#rename-input', 'Parcel missing');
    await a.press('#rename-input', 'Enter');
    await a.waitForFunction(() => document.getElementById('conv-title').textContent === 'Parcel missing');
    // The list is drawn again on the same change, possibly a frame later.
    await a.waitForFunction((sel) => document.querySelector(sel).textContent === 'Parcel missing', row,
                            { timeout: 5000 })
      .catch(() => {});
    eq(await a.textContent(row), 'Parcel missing', 'renamed in the list');
    // The title may come first by session_renamed; the form closes with
    // the PATCH's answer, and focus goes back to Rename.
    await a.waitForSelector('#rename-form', { state: 'hidden' });
    eq(await a.evaluate(() => document.activeElement.id), 'rename', 'focus back on Rename');
    await b.waitForFunction(() => document.getElementById('conv-title').textContent === 'Parcel missing');
    await b.waitForFunction((sel) => document.querySelector(sel).textContent === 'Parcel missing', row);
    eq(await b.$$eval('#notices .notice', (n) => n.length), 0, 'a notice for the rename');
    await b.reload();
    await connected(b);
    await b.waitForFunction((sel) => document.querySelector(sel) &&
      document.querySelector(sel).textContent === 'Parcel missing', row);
    await admin.click('#refresh-sessions');
    await admin.waitForFunction((sel) => document.querySelector(sel) &&
      document.querySelector(sel).textContent === 'Parcel missing', arow);
    // Escape leaves the title as it was.
    await a.click('#rename');
    await a.fill('#rename-input', 'Not this');
    await a.press('#rename-input', 'Escape');
    eq(await a.textContent('#conv-title'), 'Parcel missing', 'title after Escape');
  } finally {
    await s.close();
  }
}

// The triage list: the user's name (not the id), the title telling two
// sessions of one user apart, a preview, the waiting time; help first.
async function testTriageList(d) {
  const s = scope();
  try {
    const tok = mint('u_7651', { name: 'Mia Chen' });
    const user = await userPage(s, d, tok);
    const s1 = await newConversation(user, 'Cannot log in on my phone');
    const s2 = await newConversation(user, 'Refund for order 1234');
    await send(user, 'It has been two weeks.');
    await waitText(user, 'It has been two weeks.');
    await user.click(`#session-list button[data-session-id="${s1}"]`);
    await user.click('#help');
    await waitLine(user, /^You asked for a person/);

    const admin = await adminPage(s, d, mint('tia', { name: 'Tia', roles: ['admin'] }));
    await admin.waitForSelector(`#admin-sessions button[data-session-id="${s2}"]`);
    await admin.click('#refresh-sessions');
    await admin.waitForSelector(`#admin-sessions button[data-session-id="${s1}"][data-help="true"]`);
    const rows = await admin.$$eval('#admin-sessions button.session', (bs) => bs.map((b) => ({
      id: b.dataset.sessionId,
      name: b.querySelector('.session__title').textContent,
      topic: b.querySelector('.session__topic').textContent,
      preview: b.querySelector('.session__preview').textContent,
      badges: b.querySelector('.session__badges').textContent,
    })));
    const mine = rows.filter((r) => r.id === s1 || r.id === s2);
    eq(mine.map((r) => r.id), [s1, s2], 'help first, then the other');
    eq(rows[0].id, s1, 'the help request tops the list');
    for (const r of mine) {
      eq(r.name, 'Mia Chen', 'the display name, not the user id');
      assert(!/s_|u_7651/.test(r.name + r.topic), 'ids in the row: ' + JSON.stringify(r));
      assert(/Waiting/.test(r.badges), 'no waiting time: ' + JSON.stringify(r));
    }
    eq(mine.map((r) => r.topic), ['Cannot log in on my phone', 'Refund for order 1234'], 'titles');
    eq(mine[1].preview, 'Mia Chen: It has been two weeks.', 'preview of the last message');
    assert(/Help requested|Asking for help/.test(mine[0].badges), 'help badge: ' + mine[0].badges);
    // Answered: no longer waiting.
    await openAndJoin(admin, s2);
    await send(admin, 'Looking into it now.');
    await waitText(admin, 'Looking into it now.');
    await admin.click('#refresh-sessions');
    await admin.waitForFunction((id) => {
      const b = document.querySelector(`#admin-sessions button[data-session-id="${id}"]`);
      return b && !/Waiting/.test(b.textContent) && /Looking into it now/.test(b.textContent);
    }, s2);
  } finally {
    await s.close();
  }
}

// ---- share links -------------------------------------------------------------------------

async function testShareLink(d) {
  const s = scope();
  try {
    const tok = mint('sol', { name: 'Sol' });
    const user = await userPage(s, d, tok);
    await newConversation(user, 'Notes for https://example.com/wiki');
    await send(user, 'second note');
    await waitText(user, 'second note');
    await user.click('#share');
    await user.waitForSelector('#share-dialog[open]');
    await user.click('#share-create');
    await user.waitForSelector('#share-result:not([hidden])');
    const url = await user.inputValue('#share-url');
    assert(url.startsWith(d.base + '/shared/'), 'share URL: ' + url);
    eq(await user.evaluate(() => document.activeElement.id), 'share-url', 'focus on the link');

    // A fresh browser context: no token, no socket, read only.
    const ctx = await browser.newContext({ viewport: DESKTOP });
    s.contexts.push(ctx);
    const viewer = await ctx.newPage();
    viewer.setDefaultTimeout(T);
    viewer.on('pageerror', (e) => s.problems.push('shared page: uncaught ' + (e.stack || e)));
    const sockets = [];
    viewer.on('websocket', (ws) => sockets.push(ws.url()));
    await viewer.goto(url);
    await viewer.waitForFunction(() => document.querySelectorAll('#messages .msg').length === 2);
    eq(await viewer.textContent('#shared-title'), 'Notes for https://example.com/wiki', 'shared title');
    eq(await viewer.$$eval('#messages .msg__body', (b) => b.map((x) => x.textContent)),
      ['Notes for https://example.com/wiki', 'second note'], 'shared messages');
    eq(await viewer.$$eval('#messages .msg__from', (b) => b.map((x) => x.textContent)), ['Sol', 'Sol'], 'names');
    eq(await viewer.$$eval('textarea, input, form', (x) => x.length), 0, 'something to write with');
    eq(await viewer.getAttribute('#messages a', 'rel'), 'noopener noreferrer', 'link on the shared page');
    eq(sockets.length, 0, 'the shared page opened a socket');
    eq(await viewer.evaluate(() => sessionStorage.length + localStorage.length), 0, 'storage used');

    // Revoked: the link stops working.
    await user.click('#share-revoke');
    await user.waitForFunction(() => /stopped working/.test(document.getElementById('share-status').textContent));
    await user.click('#share-close');
    await user.waitForFunction(() => !document.getElementById('share-dialog').open);
    eq(await user.evaluate(() => document.activeElement.id), 'share', 'focus back on Share');
    await viewer.reload();
    await viewer.waitForSelector('#shared-error:not([hidden])');
    assert(/expired|stopped sharing/.test(await viewer.textContent('#shared-error')), 'revoked link message');
    eq(await viewer.$$eval('#messages .msg', (m) => m.length), 0, 'messages after revoking');
  } finally {
    await s.close();
  }
}

// ---- devices --------------------------------------------------------------------------------

// The 11th device is told why it is not connected, and cannot send.
async function testEleventhDevice(d) {
  const s = scope();
  try {
    const tok = mint('ela', { name: 'Ela' });
    const devices = [];
    for (let i = 0; i < 10; i++) devices.push(await s.device(d.port, tok));
    const page = await s.page(`${d.base}/#token=${tok}`);
    // Refused, the page still retries with backoff and says
    // "Reconnecting…" meanwhile: the state and its line are read at once.
    const line = await page.waitForFunction(() => {
      const e = document.getElementById('conn-state');
      return e.dataset.state === 'limit' && e.textContent;
    });
    eq(await line.jsonValue(), 'Not connected: 10 devices connected, limit 10', 'state line');
    await page.waitForSelector('#notices .notice[data-code="device_limit"]');
    const notice = await page.textContent('#notices .notice[data-code="device_limit"]');
    assert(/10 devices connected, and the limit is 10/.test(notice), 'notice: ' + notice);
    assert(await page.isDisabled('#send'), 'Send enabled while refused');
    await page.fill('#composer-input', 'am I connected?');
    await page.press('#composer-input', 'Enter');
    eq(await page.inputValue('#composer-input'), 'am I connected?', 'text kept while refused');
    // The long state line fits a phone: cut, not wider than the screen.
    await page.setViewportSize(PHONE);
    await noHorizontalScroll(page, 'the refused page on a phone');
    const rows = await rowsOf(page, '.topbar');
    assert(rows <= 2, 'top bar of the refused page in ' + rows + ' rows');
    await page.setViewportSize(DESKTOP);
    // One device goes: the page connects (by Reconnect now, or its own
    // retry when that comes first), and the notice goes.
    await devices[0].close();
    const deadline = Date.now() + T;
    while ((await page.getAttribute('#conn-state', 'data-state')) !== 'open') {
      assert(Date.now() < deadline, 'not connected after a device left');
      await page.click('#conn-retry', { timeout: 500 }).catch(() => {});
      await page.waitForTimeout(100);
    }
    await page.waitForSelector('#notices .notice[data-code="device_limit"]', { state: 'detached' });
    assert(await page.isEnabled('#send'), 'Send disabled once connected');
    await page.waitForFunction(() => /10 devices/.test(document.getElementById('who').textContent));
  } finally {
    await s.close();
  }
}

// "1 device" follows the user's devices as they come and go: the page asks
// api/devices every 10 s while it is seen, and at once when it is shown
// again. The first change waits for the timer; the second is found at
// once when the page is shown again (a visibilitychange while visible),
// well before the timer's next turn.
async function testDeviceCountLive(d) {
  const s = scope();
  try {
    const tok = mint('dan', { name: 'Dan' });
    const page = await userPage(s, d, tok);
    await page.waitForFunction(() => /· 1 device$/.test(document.getElementById('who').textContent));
    const phone = await s.device(d.port, tok);
    await page.waitForFunction(() => /· 2 devices$/.test(document.getElementById('who').textContent));
    await phone.close();
    // The server counts the phone gone once its close is handled: ask the
    // API as the page does until it says so, then show the page again.
    const deadline = Date.now() + T;
    for (;;) {
      const n = await page.evaluate(async (t) => {
        const r = await fetch('api/devices', { headers: { Authorization: 'Bearer ' + t } });
        return (await r.json()).devices;
      }, tok);
      if (n === 1) break;
      if (Date.now() > deadline) throw new Error('api/devices still counts ' + n + ' devices');
      await new Promise((r) => setTimeout(r, 50));
    }
    const shownAt = Date.now();
    await page.evaluate(() => document.dispatchEvent(new Event('visibilitychange')));
    await page.waitForFunction(() => /· 1 device$/.test(document.getElementById('who').textContent),
                               null, { timeout: 5000 });
    assert(Date.now() - shownAt < 5000, 'the count waited for the timer, not the page shown again');
  } finally {
    await s.close();
  }
}

// ---- layout, keyboard, accessibility --------------------------------------------------------

// How many rows the visible boxes inside `sel` form (boxes whose vertical
// middles lie within another's height share its row).
async function rowsOf(page, sel) {
  return page.$eval(sel, (root) => {
    const boxes = [];
    for (const e of root.querySelectorAll('*')) {
      if (e.children.length && !/^(BUTTON|SELECT|H2|P|SPAN|TIME|A)$/.test(e.tagName)) continue;
      const r = e.getBoundingClientRect();
      if (!r.width || !r.height || getComputedStyle(e).visibility === 'hidden') continue;
      if (e.closest('.visually-hidden')) continue;
      boxes.push(r);
    }
    const rows = [];
    for (const r of boxes.sort((a, b) => a.top - b.top)) {
      const mid = r.top + r.height / 2;
      if (!rows.some((x) => mid >= x.top && mid <= x.bottom)) rows.push({ top: r.top, bottom: r.bottom });
    }
    return rows.length;
  });
}

async function noHorizontalScroll(page, what) {
  const m = await page.evaluate(() => {
    const wide = [];
    for (const e of document.querySelectorAll('body *')) {
      const r = e.getBoundingClientRect();
      if (!r.width || r.right <= window.innerWidth + 1) continue;
      // Inside a box that scrolls or cuts on its own (a list of chips) it
      // cannot widen the page.
      let p = e.parentElement;
      let clipped = false;
      while (p && p !== document.body) {
        const o = getComputedStyle(p).overflowX;
        if (o !== 'visible') {
          clipped = true;
          break;
        }
        p = p.parentElement;
      }
      if (!clipped) wide.push(e.tagName + '#' + e.id + '.' + e.className + ' ' + Math.round(r.right));
    }
    return { scroll: document.documentElement.scrollWidth, width: window.innerWidth, wide };
  });
  assert(m.scroll <= m.width, `${what}: page ${m.scroll} px wide in ${m.width}`);
  assert(m.wide.length === 0, `${what}: boxes past the right edge: ${m.wide.slice(0, 5).join(', ')}`);
}

async function testPhoneLayout(d) {
  const s = scope();
  try {
    const tok = mint('pia', { name: 'Pia Fernández-Oliveira' });
    const wide = await userPage(s, d, tok);
    const sid = await newConversation(wide, 'A conversation with a rather long first line to see how the title fits');
    const admin = await adminPage(s, d, mint('sam3', { name: 'Sam (Support)', roles: ['admin'] }));
    await openAndJoin(admin, sid);
    await wide.click('#help');
    await waitLine(wide, /asked for a person/);

    const phone = await userPage(s, d, tok, { viewport: PHONE });
    await phone.click(`#session-list button[data-session-id="${sid}"]`);
    await waitLine(phone, /joined the conversation/);
    await noHorizontalScroll(phone, 'chat page');
    const head = await rowsOf(phone, '.conversation__head');
    assert(head <= 2, 'chat page: conversation head in ' + head + ' rows');
    const top = await rowsOf(phone, '.topbar');
    assert(top <= 2, 'chat page: top bar in ' + top + ' rows');
    const headBox = await phone.locator('.conversation__head').boundingBox();
    assert(headBox.height <= 100, 'chat page: conversation head ' + headBox.height + ' px high');

    const aphone = await adminPage(s, d, mint('sam3', { name: 'Sam (Support)', roles: ['admin'] }), { viewport: PHONE });
    await aphone.click(`#admin-sessions button[data-session-id="${sid}"]`);
    await waitText(aphone, 'A conversation with a rather long first line to see how the title fits');
    await noHorizontalScroll(aphone, 'support page');
    const ahead = await rowsOf(aphone, '.conversation__head');
    assert(ahead <= 2, 'support page: conversation head in ' + ahead + ' rows');
    const atop = await rowsOf(aphone, '.topbar');
    assert(atop <= 2, 'support page: top bar in ' + atop + ' rows');
    // The list views too.
    await phone.click('#back');
    await noHorizontalScroll(phone, 'chat page list');
    await aphone.click('#back');
    await noHorizontalScroll(aphone, 'support page list');
  } finally {
    await s.close();
  }
}

// A click on the support list is not lost when the list is drawn again
// between the press and the release of the button, as when a click on a
// row follows a click on Refresh and the refreshed list comes in between:
// the rows are updated in place, not replaced.
async function testListClickSurvivesRedraw(d) {
  const s = scope();
  try {
    const other = await userPage(s, d, mint('oli', { name: 'Oli' }));
    await newConversation(other, 'Listed below');
    const user = await userPage(s, d, mint('una', { name: 'Una' }));
    const sid = await newConversation(user, 'The conversation support clicks');
    const admin = await adminPage(s, d, mint('sol', { name: 'Sol', roles: ['admin'] }));
    const row = `#admin-sessions button[data-session-id="${sid}"]`;
    await admin.waitForSelector(row);
    await admin.waitForFunction(() => /updated/.test(document.getElementById('sessions-status').textContent));
    const box = await admin.locator(row).boundingBox();
    await admin.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
    await admin.mouse.down();
    // Refresh, as a second pointer would; the list is drawn again when
    // its answer comes.
    await admin.evaluate(() => document.getElementById('refresh-sessions').click());
    await admin.waitForFunction(() => /updated/.test(document.getElementById('sessions-status').textContent));
    const still = await admin.locator(row).boundingBox();
    eq([still.x, still.y], [box.x, box.y], 'the row stays where it was pressed');
    await admin.mouse.up();
    await admin.waitForSelector(`${row}[aria-current="true"]`);
    await admin.waitForSelector('#join:not([hidden])');
    eq(await admin.textContent('#conv-title'), 'The conversation support clicks', 'the conversation opened');
  } finally {
    await s.close();
  }
}

// Every control is reached with Tab, and a new message is announced
// (a polite live region holds the messages).
async function testKeyboard(d) {
  const s = scope();
  try {
    const page = await userPage(s, d, mint('kim', { name: 'Kim' }));
    await newConversation(page, 'typed with the keyboard only');
    eq(await page.evaluate(() => document.activeElement.id), 'composer-input', 'focus after sending');
    eq(await page.getAttribute('#messages', 'aria-live'), 'polite', 'messages live region');
    eq(await page.getAttribute('#messages', 'aria-relevant'), 'additions', 'messages announced as added');
    await page.focus('body');
    const reached = new Set();
    for (let i = 0; i < 40; i++) {
      await page.keyboard.press('Tab');
      const id = await page.evaluate(() => {
        const a = document.activeElement;
        return a ? a.id || (a.classList.contains('session') ? 'session' : a.tagName) : '';
      });
      reached.add(id);
    }
    for (const id of ['new-conversation', 'session', 'rename', 'share', 'help', 'composer-input', 'sign-out']) {
      assert(reached.has(id), `${id} not reached with Tab: ` + Array.from(reached).join(' '));
    }
    // The share dialog by keyboard: it opens on Enter, Escape closes it
    // and focus returns.
    await page.focus('#share');
    await page.keyboard.press('Enter');
    await page.waitForSelector('#share-dialog[open]');
    eq(await page.evaluate(() => document.activeElement.id), 'share-create', 'focus in the dialog');
    await page.keyboard.press('Escape');
    await page.waitForFunction(() => !document.getElementById('share-dialog').open);
    eq(await page.evaluate(() => document.activeElement.id), 'share', 'focus after the dialog');
  } finally {
    await s.close();
  }
}

// axe-core finds no serious or critical violation on the chat page, the
// support page and the shared page, at both widths, with content on them.
async function testAxe(d) {
  const s = scope();
  try {
    const tok = mint('axel', { name: 'Axel' });
    const user = await userPage(s, d, tok);
    const sid = await newConversation(user, 'Checking https://example.com for access');
    await user.click('#help');
    await waitLine(user, /asked for a person/);
    const admin = await adminPage(s, d, mint('ada', { name: 'Ada', roles: ['admin'] }));
    await openAndJoin(admin, sid);
    await send(admin, 'Hi Axel, Ada from support.');
    await waitText(user, 'Hi Axel, Ada from support.');
    await noSeriousViolations(user, 'the chat page');
    await noSeriousViolations(admin, 'the support page');
    // The dark scheme's colours too.
    for (const [p, what] of [[user, 'the chat page'], [admin, 'the support page']]) {
      await p.emulateMedia({ colorScheme: 'dark' });
      await noSeriousViolations(p, what + ' in the dark scheme');
      await p.emulateMedia({ colorScheme: 'light' });
    }
    const limit = Number(await user.getAttribute('#composer-status', 'data-limit'));
    await user.fill('#composer-input', 'x'.repeat(Math.ceil(limit * 0.8)));
    await user.waitForSelector('#composer-status[data-kind="near"]');
    await noSeriousViolations(user, 'the chat page with the byte counter');
    await user.fill('#composer-input', '');
    await user.click('#share');
    await user.click('#share-create');
    await user.waitForSelector('#share-result:not([hidden])');
    await noSeriousViolations(user, 'the share dialog');
    const url = await user.inputValue('#share-url');
    await user.click('#share-close');
    const viewer = await s.page(url);
    await viewer.waitForSelector('#messages .msg');
    await noSeriousViolations(viewer, 'the shared page');
    await viewer.setViewportSize(PHONE);
    await noSeriousViolations(viewer, 'the shared page at phone width');
    await user.setViewportSize(PHONE);
    await noSeriousViolations(user, 'the chat page at phone width');
    await admin.setViewportSize(PHONE);
    await noSeriousViolations(admin, 'the support page at phone width');
    // The sign-in form too.
    const signin = await s.page(`${d.base}/`);
    await signin.waitForSelector('#signin:not([hidden])');
    await noSeriousViolations(signin, 'the sign-in form');
  } finally {
    await s.close();
  }
}

// ---- screenshots ------------------------------------------------------------------------------

/*
 * Pages whose clock shows the same time on every run, so that the
 * screenshots change only when the pages do: the page's clock is fixed,
 * and every time chatd sends it (over the socket and the API) is moved by
 * the same amount, to just before it. Timezone and locale are fixed too.
 */
const STILL_AT = Date.parse('2026-03-12T09:41:00.000Z');
function stillOpts(t0, viewport) {
  const ISO = /"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z)"/g;
  const shift = (text) => String(text).replace(ISO, (m, iso) =>
    JSON.stringify(new Date(STILL_AT + (Date.parse(iso) - t0)).toISOString()));
  return {
    viewport,
    context: { timezoneId: 'UTC', locale: 'en-US' },
    setup: async (page) => {
      await page.clock.setFixedTime(STILL_AT + 50000);
      await page.routeWebSocket(/\/ws\?/, (ws) => {
        const server = ws.connectToServer();
        server.onMessage((m) => ws.send(shift(m)));
      });
      await page.route(/\/api\//, async (route) => {
        const res = await route.fetch();
        await route.fulfill({ response: res, body: shift(await res.text()) });
      });
    },
  };
}

// Each page at desktop and phone width, with a day's support work on it,
// into docs/screenshots/.
async function testScreenshots(d) {
  const s = scope();
  const t0 = Date.now();
  const still = (viewport) => stillOpts(t0, viewport);
  try {
    const tok = mint('ann.lee', { name: 'Ann Lee' });
    const user = await userPage(s, d, tok, still(DESKTOP));
    await newConversation(user, 'Which plan includes priority support?');
    const sid = await newConversation(user, 'My March invoice was charged twice');
    await send(user, 'The second charge is on the card statement from 4 March, order 88231.');
    await waitText(user, 'The second charge is on the card statement from 4 March, order 88231.');
    await user.click('#help');
    await waitLine(user, /asked for a person/);
    const other = await userPage(s, d, mint('omar', { name: 'Omar Haddad' }), still(DESKTOP));
    await newConversation(other, 'How do I export my chat history?');
    const admin = await adminPage(s, d, mint('sam', { name: 'Sam', roles: ['admin'] }), still(DESKTOP));
    await openAndJoin(admin, sid);
    await send(admin, 'Hello Ann, I can see both charges. The second one is refunded today; ' +
      'the details are at https://example.com/help/refunds');
    await waitText(user, 'Hello Ann, I can see both charges. The second one is refunded today; ' +
      'the details are at https://example.com/help/refunds');
    await send(user, 'Thank you, that was quick!');
    await waitText(admin, 'Thank you, that was quick!');
    await user.waitForSelector('#messages .msg--own[data-seen="true"]');
    await admin.click('#refresh-sessions');
    await admin.waitForSelector(`#admin-sessions button[data-session-id="${sid}"]`);
    await admin.evaluate(() => document.activeElement.blur());
    await user.evaluate(() => document.activeElement.blur());
    await shot(user, 'chat-desktop');
    await shot(admin, 'admin-desktop');

    await user.click('#share');
    await user.click('#share-create');
    await user.waitForSelector('#share-result:not([hidden])');
    const url = await user.inputValue('#share-url');
    await user.click('#share-close');
    const viewer = await s.page(url, still(DESKTOP));
    await viewer.waitForSelector('#messages .msg');
    await shot(viewer, 'shared-desktop');
    await viewer.setViewportSize(PHONE);
    await shot(viewer, 'shared-phone');

    const phone = await userPage(s, d, tok, still(PHONE));
    await phone.click(`#session-list button[data-session-id="${sid}"]`);
    await waitText(phone, 'Thank you, that was quick!');
    await phone.evaluate(() => document.activeElement.blur());
    await shot(phone, 'chat-phone');
    await admin.setViewportSize(PHONE);
    await admin.evaluate(() => document.activeElement.blur());
    await shot(admin, 'admin-phone');
    for (const n of ['chat', 'admin', 'shared']) {
      for (const w of ['desktop', 'phone']) {
        const f = path.join(SHOTS, `${n}-${w}.png`);
        assert(fs.existsSync(f) && fs.statSync(f).size > 1000, 'screenshot ' + f);
      }
    }
  } finally {
    await s.close();
  }
}

// ---- runner -----------------------------------------------------------------------------------

async function main() {
  const run = new Runner(4 * T + 60000);
  try {
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  } catch (e) {
    console.log(`FAIL launch chromium (${CHROMIUM}): ${e.stack || e}`);
    console.log('0 passed, 1 failed');
    process.exit(1);
  }
  const pick = W.pick; /* CHATD_WEB_ONLY=REGEX: only the tests it matches */
  const groups = [
    [['--max-content-bytes', '200'], pick([
      ['refused_first_message_then_five_delivered_in_order', testRefusedThenFive],
    ])],
    [[], pick([
      ['byte_counter_before_sending', testByteCounter],
      ['links_http_https_only_noopener', testLinks],
      ['support_name_not_doubled', testSupportNameOnce],
      ['reload_keeps_joined_help_and_seen_state', testReloadKeepsState],
      ['two_devices_agree_on_help_state_and_titles', testTwoDevicesAgree],
      ['admin_triage_list', testTriageList],
      ['share_link_read_only_then_revoked', testShareLink],
      ['eleventh_device_explains_itself', testEleventhDevice],
      ['device_count_live', testDeviceCountLive],
      ['phone_layout_390_no_scroll_header_two_rows', testPhoneLayout],
      ['keyboard_and_live_region', testKeyboard],
      ['axe_no_serious_or_critical_violation', testAxe],
    ])],
    // A chatd of their own: the support list shows this scene alone.
    [[], pick([
      ['screenshots_desktop_and_phone', testScreenshots],
    ])],
    // A chatd of their own: the two rows are the only ones listed.
    [[], pick([
      ['support_list_click_survives_redraw', testListClickSurvivesRedraw],
    ])],
    [['--rate-limit', '30'], pick([
      ['rate_limited_one_notice_order_kept', testRateLimitOrder],
    ])],
  ].filter(([, tests]) => tests.length);
  await run.runGroups(groups, startChatd, (args) => args.join(' ') || 'defaults');
  await browser.close().catch(() => {});
  fs.rmSync(TMP, { recursive: true, force: true });
  run.finish();
}

main().catch((e) => {
  console.log('FAIL runner: ' + (e && e.stack ? e.stack : e));
  console.log('0 passed, 1 failed');
  process.exit(1);
});
