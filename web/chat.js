/*
 * chat.js: the chat page (chat.html). The user's conversations in a side
 * list, the selected one's messages (history over the HTTP API, then live
 * events over the shared Chatd.Client), the composer with its byte
 * counter, typing indicators, read markers both ways ("Seen" once support
 * has read a message), "ask for a person", renaming and sharing a
 * conversation, the model selector, and the assistant: its answers shown
 * as they stream, the line saying that it is answering with the Stop
 * button, its errors, and the banner while a person from support has taken
 * the conversation over.
 *
 * Each conversation is an object S (see newSession) keyed by session id.
 * Its help and support state (S.state) comes from the API and from the
 * stored session events, so a reload or another device shows the same.
 * Messages go out through one Chatd.SendQueue per conversation, strictly
 * in order. The conversation being written before it exists ("new
 * conversation") is the draft: its queue sends the first message without
 * session_id, and the ack of that message names the session for the rest,
 * so that one conversation is not split in two.
 */
'use strict';

(function () {
  const C = window.Chatd;
  const $ = (id) => document.getElementById(id);

  const TYPING_IDLE_MS = 3000;
  const LIST_REFRESH_MS = 60000;
  const DETAILS_AT_START = 10;
  const READ_KEY = 'chatd.read.';
  const SELECTED_KEY = 'chatd.selected';
  const narrow = window.matchMedia('(max-width: 760px)');

  const ui = {
    body: document.body,
    list: $('session-list'),
    listEmpty: $('sessions-empty'),
    listError: $('sessions-error'),
    newConv: $('new-conversation'),
    back: $('back'),
    title: $('conv-title'),
    sub: $('conv-sub'),
    rename: $('rename'),
    renameForm: $('rename-form'),
    renameInput: $('rename-input'),
    renameCancel: $('rename-cancel'),
    help: $('help'),
    share: $('share'),
    takeover: $('takeover'),
    modelField: $('model-field'),
    model: $('model-select'),
    composer: $('composer'),
    input: $('composer-input'),
    send: $('send'),
    status: $('composer-status'),
    alert: $('composer-alert'),
    shareDialog: $('share-dialog'),
    shareResult: $('share-result'),
    shareUrl: $('share-url'),
    shareCopy: $('share-copy'),
    shareExpires: $('share-expires'),
    shareStatus: $('share-status'),
    shareCreate: $('share-create'),
    shareRevoke: $('share-revoke'),
  };

  let token = null;
  let client = null;
  let me = null; /* {user_id, name, selfType: 'user', models} */
  let sessions = new Map();
  let selected = null; /* a session id, or null: the draft */
  let draft = null;
  const pane = new C.ConversationPane({
    current, token: () => token, me: () => me, render: renderConversation, renderTyping,
    putPending, seen,
  });
  const bar = new C.AssistantBar(() => stopAnswer(current()));
  let listItems = new Map(); /* session id -> <li> */
  let counter = 0; /* minor keys of system lines, pending and streams */
  let firstList = true;
  let unseen = 0; /* messages from others that arrived while hidden */
  let readStore = {};
  let readSaveTimer = null;
  let listTimer = null;
  let refreshTimer = null;
  let listSoon = null;
  let online = false;
  let tooLong = false;

  // The hooks of every conversation's SendQueue.
  const queueHooks = {
    client: () => client,
    build: (p, q) => {
      const msg = { type: 'user_message', id: p.id, content: p.content };
      if (q.sid) msg.session_id = q.sid;
      return msg;
    },
    sending: (p) => refreshPending(p),
    sent: (p) => refreshPending(p),
    retrying: (p, err) => {
      refreshPending(p);
      if (err.code === 'rate_limited') {
        C.notify(C.describeError(err), { kind: 'warn', code: err.code });
      }
    },
    acked: (p, ack, q) => onAck(q, p, ack),
    failed: (p) => refreshPending(p),
  };

  function newDraft() {
    return { pending: new Map(), queue: new C.SendQueue(queueHooks, null), model: '' };
  }

  function newSession(id, info) {
    const S = {
      id,
      info: Object.assign({ id, title: '', owner: me ? me.user_id : '', created_at: '', updated_at: '',
        last_seq: 0, help_requested: false, model: null }, info || {}),
      tl: new C.Timeline(),
      loading: null,
      loadError: null,
      system: [], /* {key, text, kind, code} */
      pending: new Map(), /* client id -> message being sent */
      queue: new C.SendQueue(queueHooks, id),
      typing: new Map(), /* sender key -> {label, timer} */
      state: C.support.make(), /* help asked, support people joined */
      reads: new Map(), /* reader id (support) -> highest seq read */
      read: null, /* highest seq read on any of this user's devices, as known here */
      sentRead: 0,
      details: null, /* a GET api/sessions/{id} on its way */
    };
    C.answers.init(S); /* streams, answering, stopping, ... */
    return S;
  }

  function ensureSession(id, info) {
    let S = sessions.get(id);
    if (!S) {
      S = newSession(id, info);
      S.read = readStore[id] !== undefined ? readStore[id] : 0;
      sessions.set(id, S);
    }
    return S;
  }

  // ---- read markers (this user's, kept per user in localStorage) ----------------

  function loadReadStore() {
    readStore = {};
    try {
      const raw = localStorage.getItem(READ_KEY + me.user_id);
      if (raw) readStore = JSON.parse(raw) || {};
    } catch (e) {
      readStore = {};
    }
  }

  function setRead(S, seq) {
    if (S.read !== null && seq <= S.read) return false;
    S.read = seq;
    readStore[S.id] = seq;
    clearTimeout(readSaveTimer);
    readSaveTimer = setTimeout(() => {
      try {
        localStorage.setItem(READ_KEY + me.user_id, JSON.stringify(readStore));
      } catch (e) {
        /* storage full or off: markers live for this page only */
      }
    }, 300);
    scheduleList();
    return true;
  }

  function unreadCount(S) {
    const last = Math.max(S.info.last_seq || 0, S.tl.last);
    return S.read === null ? 0 : Math.max(0, last - S.read);
  }

  // Tell the other devices and support how far this one has shown the
  // conversation: when it is on screen, the page visible and the view at
  // its end.
  function markReadIfSeen() {
    const S = current();
    if (!S || !S.tl.last || document.visibilityState !== 'visible' || !pane.atBottom()) return;
    const seq = S.tl.last;
    setRead(S, seq);
    if (seq > S.sentRead && client && client.send({ type: 'read', session_id: S.id, seq })) {
      S.sentRead = seq;
    }
  }

  // Support's read markers: an own message is "Seen" once someone other
  // than this user has read up to it.
  function readBy(S, readerId, seq) {
    if (!readerId || readerId === me.user_id || !Number.isSafeInteger(seq)) return false;
    const old = S.reads.get(readerId) || 0;
    if (seq <= old) return false;
    S.reads.set(readerId, seq);
    return true;
  }

  function seenUpTo(S) {
    let n = 0;
    for (const v of S.reads.values()) n = Math.max(n, v);
    return n;
  }

  function seen(S, ev) {
    return !!ev.sender && ev.sender.type === 'user' && ev.sender.id === me.user_id && ev.seq <= seenUpTo(S);
  }

  // ---- the side list ------------------------------------------------------------

  function current() {
    return selected ? sessions.get(selected) || null : null;
  }

  function scheduleList() {
    if (listTimer) return;
    listTimer = setTimeout(() => {
      listTimer = null;
      renderList();
    }, 0);
  }

  function snippet(text, n) {
    const t = String(text || '').replace(/\s+/g, ' ').trim();
    return t.length > n ? t.slice(0, n - 1) + '…' : t;
  }

  // The title the API gives (the same on every device and on the support
  // page); for a conversation just started here, the same rule applied to
  // its first message until the API is read again.
  function sessionTitle(S) {
    if (S.info.title) return S.info.title;
    for (const ev of S.tl.list()) {
      if (ev.type === 'user_message') return C.titleFrom(ev.content) || C.UNTITLED;
    }
    return C.UNTITLED;
  }

  function renderList() {
    const order = Array.from(sessions.values()).sort((a, b) =>
      (b.info.updated_at || '').localeCompare(a.info.updated_at || '') || (a.id < b.id ? 1 : -1));
    C.keyedChildren(ui.list, listItems, order.map((S) => S.id), (id, li) => listItem(sessions.get(id), li));
    ui.listEmpty.hidden = sessions.size > 0;
  }

  // The list's row for S: li (its row from the last drawing) brought up to
  // date, or a new row.
  function listItem(S, li) {
    if (!li) {
      const btn = C.el('button', { type: 'button', class: 'session', dataset: { sessionId: S.id } });
      btn.addEventListener('click', () => select(S.id, true));
      li = C.el('li', { class: 'session-list__item' }, btn);
    }
    const btn = li.firstChild;
    const unread = unreadCount(S);
    let last = null;
    for (let i = S.tl.seqs.length - 1; i >= 0 && !last; i--) {
      const ev = S.tl.get(S.tl.seqs[i]);
      if (!C.isSessionEvent(ev)) last = ev;
    }
    const preview = last
      ? C.senderLabel(last.sender, me) + ': ' + snippet(last.content, 80)
      : (S.info.last_seq || 0) + ' event' + (S.info.last_seq === 1 ? '' : 's');
    const badges = C.el('span', { class: 'session__badges' });
    if (unread) badges.append(C.el('span', { class: 'badge badge--unread' }, unread + ' new'));
    if (S.state.help) badges.append(C.el('span', { class: 'badge badge--help' }, 'Help requested'));
    if (S.state.admins.size) badges.append(C.el('span', { class: 'badge badge--support' }, 'Support here'));
    if (S.answering) badges.append(C.el('span', { class: 'badge badge--answering' }, 'Answering…'));
    C.patchChildren(btn, [
      C.el('span', { class: 'session__title' }, sessionTitle(S)),
      C.el('time', { class: 'session__time', datetime: S.info.updated_at || '' },
        S.info.updated_at ? C.formatTime(S.info.updated_at) : ''),
      C.el('span', { class: 'session__preview' }, preview),
      badges]);
    if (selected === S.id) btn.setAttribute('aria-current', 'true');
    else btn.removeAttribute('aria-current');
    li.classList.toggle('is-unread', unread > 0);
    btn.dataset.unread = String(unread);
    btn.dataset.help = S.state.help ? 'true' : 'false';
    btn.dataset.support = S.state.admins.size ? 'true' : 'false';
    return li;
  }

  async function loadSessions() {
    const t = token;
    let body;
    try {
      body = await C.api('api/sessions', t);
    } catch (err) {
      if (t !== token) return;
      ui.listError.textContent = 'The conversations could not be loaded: ' + err.message;
      ui.listError.hidden = false;
      return;
    }
    if (t !== token) return;
    ui.listError.hidden = true;
    for (const s of body.sessions || []) {
      const known = sessions.has(s.id);
      const S = ensureSession(s.id, s);
      if (known) {
        const lastSeq = Math.max(S.info.last_seq || 0, s.last_seq || 0);
        const updated = (S.info.updated_at || '') > (s.updated_at || '') ? S.info.updated_at : s.updated_at;
        Object.assign(S.info, s, { last_seq: lastSeq, updated_at: updated });
        if (typeof s.title !== 'string') S.info.title = '';
      }
      C.support.fromListed(S.state, s, S.tl);
      // A conversation never read on this browser starts as read: the
      // badge counts what arrives from now on (or what other devices have
      // not yet marked read).
      if (S.read === 0 && readStore[s.id] === undefined) S.read = s.last_seq || 0;
    }
    renderList();
    if (firstList) {
      firstList = false;
      // Who from support is in the newest conversations (the list does not
      // say): their details, for the badges.
      for (const b of Array.from(ui.list.querySelectorAll('button.session')).slice(0, DETAILS_AT_START)) {
        loadDetails(sessions.get(b.dataset.sessionId));
      }
      let pick = null;
      try {
        pick = sessionStorage.getItem(SELECTED_KEY);
      } catch (e) {
        pick = null;
      }
      if (!pick || !sessions.has(pick)) {
        const newest = ui.list.querySelector('button.session');
        pick = newest ? newest.dataset.sessionId : null;
      }
      select(pick, false);
      if (narrow.matches && sessions.size) ui.body.dataset.view = 'list';
    } else if (current()) {
      renderHeader();
    }
  }

  // One conversation's details: its help and support state as of its
  // last_seq, support's read markers, its title.
  function loadDetails(S) {
    if (S.details) return;
    const t = token;
    S.details = C.api('api/sessions/' + encodeURIComponent(S.id), t).then((d) => {
      if (t !== token || !d) return;
      if (typeof d.title === 'string') S.info.title = d.title;
      // What arrived after the details' last_seq counts on top.
      C.support.fromDetails(S.state, d, S.tl);
      for (const [reader, seq] of Object.entries(d.read || {})) readBy(S, reader, Number(seq));
      if (selected === S.id) {
        renderHeader();
        pane.refreshSeen(S);
      }
      scheduleList();
    }, () => {
      /* an older server, or the conversation is gone: the events still count */
    }).finally(() => {
      S.details = null;
    });
  }

  // The conversation of a live event; one not known here yet (started on
  // another device) is made, and the list read again soon for its title.
  function liveSession(ev) {
    if (!sessions.has(ev.session_id)) {
      clearTimeout(listSoon);
      listSoon = setTimeout(loadSessions, 300);
    }
    return ensureSession(ev.session_id, {
      created_at: ev.timestamp, updated_at: ev.timestamp, last_seq: ev.seq || 0,
    });
  }

  // ---- the conversation -----------------------------------------------------------

  function select(id, byUser) {
    stopTyping();
    closeRename(false);
    if (id !== null && !sessions.has(id)) id = null;
    selected = id;
    try {
      if (id) sessionStorage.setItem(SELECTED_KEY, id);
      else sessionStorage.removeItem(SELECTED_KEY);
    } catch (e) {
      /* no storage */
    }
    ui.body.dataset.view = 'conversation';
    renderConversation();
    renderList();
    const S = current();
    if (S) {
      ensureHistory(S);
      loadDetails(S);
    }
    if (byUser) ui.input.focus();
  }

  function ensureHistory(S) {
    pane.loadHistory(S, S.info.last_seq, (lastSeq) => {
      S.info.last_seq = Math.max(S.info.last_seq || 0, lastSeq);
      // The events read count for the state (those after its base);
      // whatever was written between the read and now (if the socket was
      // down meanwhile) comes back with resume; live events are
      // deduplicated.
      C.support.rebuild(S.state, S.tl);
      if (client) client.resume(S.id, S.tl.high);
      if (selected === S.id) {
        renderConversation();
        pane.scrollToEnd();
        markReadIfSeen();
      }
      scheduleList();
    });
  }

  function renderHeader() {
    const S = current();
    if (!S) {
      ui.title.textContent = 'New conversation';
      ui.sub.textContent = 'Your first message starts it.';
    } else {
      ui.title.textContent = sessionTitle(S);
      const parts = [];
      if (S.info.created_at) parts.push('Started ' + C.formatTime(S.info.created_at));
      if (S.state.help) parts.push('support has been asked to help');
      if (S.state.admins.size) {
        const names = Array.from(S.state.admins.values()).map((n) => C.supportName(n, ' from support'));
        parts.push(names.join(', ') + (names.length > 1 ? ' are here' : ' is here'));
      }
      ui.sub.textContent = parts.join(' · ');
    }
    ui.title.title = ui.title.textContent;
    ui.rename.hidden = !S;
    ui.share.hidden = !S;
    const asked = !!S && S.state.help;
    ui.help.disabled = !S || asked || !online;
    ui.help.textContent = asked ? 'Help requested' : 'Ask for a person';
    ui.help.dataset.state = asked ? 'asked' : 'idle';
    renderTakeover();
    renderModel();
  }

  // While a person from support has joined, the assistant does not answer:
  // the banner says who took the conversation over.
  function renderTakeover() {
    const S = current();
    const names = S ? Array.from(S.state.admins.values()) : [];
    ui.takeover.hidden = names.length === 0;
    if (!names.length) return;
    const text = 'A person from support has taken over this conversation (' + names.join(', ') +
      '). The assistant will not answer until they leave.';
    if (ui.takeover.textContent !== text) ui.takeover.textContent = text;
  }

  function renderAssistant() {
    bar.render(current(), true);
  }

  function renderModel() {
    const models = (me && me.models) || [];
    ui.modelField.hidden = models.length === 0;
    if (!models.length) return;
    const S = current();
    const value = S ? S.info.model || '' : draft.model;
    const opts = [C.el('option', { value: '', disabled: !!value }, 'Default')];
    for (const m of models) opts.push(C.el('option', { value: m.id }, m.name || m.id));
    ui.model.replaceChildren(...opts);
    ui.model.value = value;
  }

  function renderConversation() {
    const S = current();
    pane.list.clear();
    renderHeader();
    renderAssistant();
    if (!S) {
      for (const p of draft.pending.values()) putPending(null, p);
      pane.earlier.hidden = true;
      pane.empty.hidden = draft.pending.size > 0;
      pane.empty.textContent = 'Write a message to start a conversation.';
      renderTyping();
      return;
    }
    pane.show(S);
  }

  // The conversation (S, or null: the draft) a message being sent belongs to.
  function ownerOf(p) {
    if (draft.pending.has(p.id)) return null;
    for (const S of sessions.values()) if (S.pending.has(p.id)) return S;
    return undefined; /* discarded */
  }

  function putPending(S, p) {
    const actions = [];
    if (p.retryable) actions.push({ label: 'Retry', onClick: () => retry(p) });
    if (p.code === 'content_too_large') actions.push({ label: 'Edit', onClick: () => edit(p) });
    actions.push({ label: 'Discard', onClick: () => discard(p) });
    pane.list.put(p.key, C.messageNode({ pending: p, actions }, me));
  }

  function refreshPending(p) {
    const S = ownerOf(p);
    if (S === undefined) return;
    const shown = S ? selected === S.id : selected === null;
    if (shown) putPending(S, p);
  }

  // A stored event arrived (live, replayed, or built from an ack).
  function addEvent(S, ev, live) {
    if (ev.id && S.pending.has(ev.id)) {
      const p = S.pending.get(ev.id);
      S.pending.delete(ev.id);
      if (selected === S.id) pane.list.remove(p.key);
    }
    if (ev.type === 'ai_response') {
      // The stored answer takes the place of its stream.
      const st = C.answers.final(S, ev);
      if (st) pane.removeStream(S, st);
      if (selected === S.id) renderAssistant();
      scheduleList();
    }
    if (!S.tl.add(ev)) return;
    S.info.last_seq = Math.max(S.info.last_seq || 0, ev.seq);
    if (ev.timestamp && ev.timestamp > (S.info.updated_at || '')) S.info.updated_at = ev.timestamp;
    const changed = C.support.apply(S.state, ev, S.tl);
    const fromOther = !(ev.sender && ev.sender.id === me.user_id && ev.sender.type === 'user');
    if (selected === S.id) {
      pane.addEvent(S, ev, !fromOther);
      if (changed || ev.seq === 1) renderHeader();
      markReadIfSeen();
    }
    if (live && fromOther && !C.isSessionEvent(ev) && document.visibilityState !== 'visible') {
      unseen++;
      document.title = '(' + unseen + ') chatd';
    }
    if (!C.isSessionEvent(ev)) pane.typingDone(S, ev.sender);
    scheduleList();
  }

  function addSystem(S, text, kind, code) {
    const s = { key: [S.tl.last, ++counter], text, kind, code };
    S.system.push(s);
    if (selected === S.id) pane.add(s.key, C.systemNode(text, kind, code), false);
  }

  // A session event from a server that does not number them: it changes
  // the state and shows as a line of this page only.
  function unnumberedEvent(S, ev) {
    if (!C.support.apply(S.state, ev)) return;
    addSystem(S, C.sessionEventText(ev, me), ev.type === 'help_request' ? 'help' : 'join');
    if (selected === S.id) renderHeader();
    scheduleList();
  }

  // ---- sending --------------------------------------------------------------------

  function sendMessage(text) {
    const S = current();
    const p = {
      id: C.newId(),
      content: text,
      state: 'pending',
      key: [Infinity, ++counter],
      timestamp: new Date().toISOString(),
      sender: { type: 'user', id: me.user_id, name: me.name },
    };
    (S ? S.pending : draft.pending).set(p.id, p);
    putPending(S, p);
    pane.empty.hidden = true;
    (S ? S.queue : draft.queue).push(p);
    pane.scrollToEnd();
  }

  function queueOf(p) {
    const S = ownerOf(p);
    if (S === undefined) return null;
    return S ? S.queue : draft.queue;
  }

  function retry(p) {
    const q = queueOf(p);
    if (!q) return;
    q.retry(p);
    refreshPending(p);
  }

  function discard(p) {
    const q = queueOf(p);
    if (q) q.remove(p);
    const S = ownerOf(p);
    if (S) S.pending.delete(p.id);
    else if (S === null) draft.pending.delete(p.id);
    pane.list.remove(p.key);
    ui.input.focus();
  }

  // A message too long to send: back into the message box (after what is
  // there already) to shorten it.
  function edit(p) {
    discard(p);
    const before = ui.input.value.replace(/\s+$/, '');
    ui.input.value = before ? before + '\n' + p.content : p.content;
    updateComposer();
    ui.input.focus();
  }

  function onAck(q, p, ack) {
    if (!ack.session_id) return;
    let S = q.sid ? sessions.get(q.sid) : null;
    if (!q.sid) {
      // The first message of the draft: the conversation now exists, and
      // the draft's queue sends the rest to it.
      q.sid = ack.session_id;
      S = ensureSession(ack.session_id, {
        created_at: ack.timestamp, updated_at: ack.timestamp, last_seq: ack.seq,
      });
      S.queue = q;
      if (!S.tl.loaded) S.tl.markLoaded(0);
      const showing = selected === null;
      for (const [id, x] of draft.pending) S.pending.set(id, x);
      const model = draft.model;
      draft = newDraft();
      if (showing) select(S.id, false);
      if (model) chooseModel(S, model);
      // The title the API gives it, the same everywhere.
      setTimeout(loadSessions, 200);
    }
    if (!S) return;
    const held = S.pending.get(p.id);
    S.pending.delete(p.id);
    if (held && selected === S.id) pane.list.remove(held.key);
    addEvent(S, {
      type: 'user_message', session_id: S.id, seq: ack.seq, id: p.id,
      sender: p.sender, content: p.content, timestamp: ack.timestamp,
    }, false);
    setRead(S, Math.max(S.read || 0, ack.seq));
  }
  function chooseModel(S, modelId) {
    client.request({ type: 'model_select', session_id: S.id, model_id: modelId }).then((ack) => {
      S.info.model = ack.model_id || modelId;
      if (selected === S.id) renderModel();
      const m = me.models.find((x) => x.id === S.info.model);
      C.notify('Model set to ' + (m ? m.name || m.id : S.info.model) + '.', { timeout: 4000 });
    }, (err) => {
      if (err.code === 'stopped') return;
      C.notify('The model could not be changed: ' + err.message, { kind: 'error' });
      if (selected === S.id) renderModel();
    });
  }

  // ---- typing ------------------------------------------------------------------

  const typingOut = new C.TypingSender(() => client, TYPING_IDLE_MS);

  function stopTyping() {
    typingOut.stop();
  }

  function onTyping(ev) {
    const S = sessions.get(ev.session_id);
    if (!S || !ev.sender) return;
    const label = ev.sender.id === me.user_id && ev.sender.type === 'user'
      ? 'You (on another device)' : C.senderLabel(ev.sender, me);
    pane.typingEvent(S, ev, label);
  }

  function renderTyping() {
    pane.showTyping(current());
  }

  // ---- the assistant's answers ------------------------------------------------------

  // How a streaming answer of S is labelled until its stored event names
  // the model: the session's model when this page knows it.
  function answerSender(S) {
    const id = S.info.model || '';
    const m = id && me.models.find((x) => x.id === id);
    return { type: 'ai', id, name: m ? m.name || m.id : '' };
  }

  // ai_response with done:false: a piece of the answer, placed by offset.
  function onPiece(ev) {
    if (typeof ev.stream_id !== 'string' || !ev.stream_id) return;
    const S = ensureSession(ev.session_id);
    const was = S.answering;
    const { st, change } = C.answers.piece(S, ev, () => [Number.MAX_SAFE_INTEGER, ++counter],
      answerSender(S));
    if (change.kind === 'gap' && !st.gapAsked && client && S.tl.loaded) {
      // Cannot happen by the protocol; a resume brings everything so far.
      st.gapAsked = true;
      client.resume(S.id, S.tl.high);
    }
    pane.streamChanged(S, st, change);
    if (selected === S.id) renderAssistant();
    if (!was) scheduleList();
  }

  function onLoading(ev) {
    const S = ensureSession(ev.session_id);
    C.answers.loading(S);
    if (selected === S.id) renderAssistant();
    scheduleList();
  }

  // Streams gone without their stored answer (an error, a stop that found
  // nothing, a reconnect that did not bring them back).
  function dropStreams(S, gone) {
    for (const st of gone) pane.removeStream(S, st);
    if (selected === S.id) renderAssistant();
    scheduleList();
  }

  // The answer of S has ended without its stored event (yet): streams with
  // no text go, those with text are shown interrupted until it comes.
  function endAnswer(S) {
    dropStreams(S, C.answers.ended(S));
    pane.redrawStreams(S);
  }

  // An error about a session as a whole, not answering one of this page's
  // messages (those with an ack are answered through the outbox, the others
  // are named by sentType): the assistant failed, or could not start an
  // answer (the user's assistant budget, or too many answers at once).
  function onError(msg, sentType) {
    const assistant = msg.code === 'assistant_error' || msg.code === 'assistant_timeout';
    const refused = msg.code === 'rate_limited' || msg.code === 'unavailable';
    if (sentType || !msg.session_id || !(assistant || refused)) return false;
    const S = sessions.get(msg.session_id);
    if (!S) return false;
    const text = C.assistantErrorText(msg);
    endAnswer(S);
    addSystem(S, text, 'error', msg.code);
    if (selected !== S.id) C.notify(sessionTitle(S) + ': ' + text, { kind: 'error', code: msg.code });
    return true;
  }

  function stopAnswer(S) {
    if (!S || !S.answering || S.stopping || !client) return;
    S.stopping = true;
    renderAssistant();
    client.request({ type: 'stop_generation', session_id: S.id }).then((ack) => {
      if (!S.stopping) return; /* the answer ended meanwhile */
      // stopped:false, nothing was running; stopped with nothing streamed:
      // no stored answer follows.
      if (ack.stopped === false || !C.answers.hasText(S)) endAnswer(S);
    }, (err) => {
      S.stopping = false;
      if (err.code !== 'stopped') C.notify('The answer could not be stopped: ' + err.message, { kind: 'error' });
      if (selected === S.id) renderAssistant();
    });
  }

  // ---- events from the server --------------------------------------------------------
  function onEvent(ev) {
    switch (ev.type) {
      case 'notification': {
        const S = sessions.get(ev.session_id);
        if (!S) return;
        if (ev.code === 'session_renamed') {
          // Renamed on this or another device: the title chatd now gives.
          if (typeof ev.title === 'string') S.info.title = ev.title;
          if (selected === S.id) renderHeader();
          scheduleList();
          return;
        }
        // assistant_done: the answer ended with nothing stored.
        endAnswer(S);
        return;
      }
      case 'user_message':
      case 'admin_message':
      case 'ai_response':
        if (!ev.session_id) return;
        if (ev.type === 'ai_response' && ev.done === false) {
          onPiece(ev);
          return;
        }
        addEvent(liveSession(ev), ev, true);
        break;
      case 'typing_indicator':
        onTyping(ev);
        break;
      case 'read': {
        const S = sessions.get(ev.session_id);
        if (!S || !Number.isSafeInteger(ev.seq)) break;
        const s = ev.sender;
        if (!s || (s.id === me.user_id && s.type === 'user')) {
          setRead(S, ev.seq); /* another device of this user */
        } else if (readBy(S, s.id, ev.seq) && selected === S.id) {
          pane.refreshSeen(S);
        }
        break;
      }
      case 'help_request':
      case 'help_resolved':
      case 'admin_join':
      case 'admin_leave': {
        if (!ev.session_id || !ev.sender) return;
        const S = liveSession(ev);
        if (Number.isSafeInteger(ev.seq)) addEvent(S, ev, true);
        else unnumberedEvent(S, ev);
        break;
      }
      case 'loading':
        if (ev.session_id) onLoading(ev);
        break;
      case 'resumed': {
        const S = sessions.get(ev.session_id);
        if (!S) return;
        if (Number.isSafeInteger(ev.last_seq)) S.info.last_seq = Math.max(S.info.last_seq || 0, ev.last_seq);
        dropStreams(S, C.answers.resumed(S));
        break;
      }
      default:
        break; /* anything newer: not for this page */
    }
  }

  function onConnected(status, reconnect) {
    me = { user_id: status.user_id, name: status.name, selfType: 'user',
      models: Array.isArray(status.models) ? status.models : [] };
    renderModel();
    // Every event after the last one held, for each conversation held. An
    // answer that streamed comes again (from offset 0) before `resumed`.
    for (const S of sessions.values()) {
      if (reconnect) C.answers.stale(S);
      if (S.tl.loaded) client.resume(S.id, S.tl.high);
      else if (reconnect) dropStreams(S, C.answers.resumed(S));
      S.sentRead = 0;
    }
    if (reconnect) {
      loadSessions();
      const S = current();
      if (S) loadDetails(S);
    }
    markReadIfSeen();
    updateComposer();
  }

  // ---- the message box ------------------------------------------------------------

  // The text a send would send: leading blank lines and trailing space off.
  function composed() {
    return ui.input.value.replace(/^\s*\n/, '').replace(/\s+$/, '');
  }

  /* Send is enabled while connected and the text fits max_content_bytes;
   * the line under the box says why not, and counts the bytes once the
   * text nears the limit. Crossing the limit is announced once. */
  function updateComposer() {
    const limit = C.contentLimit(client && client.status);
    const bytes = C.byteLength(composed());
    const over = bytes > limit;
    ui.send.disabled = !online || over;
    ui.input.setAttribute('aria-invalid', over ? 'true' : 'false');
    let text = '';
    let kind = '';
    if (!online) {
      text = 'Not connected: what you write stays here until the connection is back.';
      kind = 'offline';
    } else if (over) {
      text = 'Too long to send: ' + bytes.toLocaleString('en') + ' of ' + limit.toLocaleString('en') +
        ' bytes. Shorten the message.';
      kind = 'over';
    } else if (bytes >= limit * 0.75) {
      text = bytes.toLocaleString('en') + ' of ' + limit.toLocaleString('en') + ' bytes';
      kind = 'near';
    }
    ui.status.hidden = !text;
    if (ui.status.textContent !== text) ui.status.textContent = text;
    ui.status.dataset.kind = kind;
    ui.status.dataset.bytes = String(bytes);
    ui.status.dataset.limit = String(limit);
    if (over !== tooLong) {
      tooLong = over;
      ui.alert.textContent = over ? 'The message is too long to send: at most ' +
        limit.toLocaleString('en') + ' bytes.' : '';
    }
    const S = current();
    ui.help.disabled = !S || S.state.help || !online;
  }

  function onConnState(s) {
    const now = s.state === 'open' || s.state === 'preparing';
    if (now === online) return;
    online = now;
    updateComposer();
  }

  // ---- renaming and sharing ---------------------------------------------------------

  function openRename() {
    const S = current();
    if (!S) return;
    ui.renameInput.value = sessionTitle(S) === C.UNTITLED && !S.info.title ? '' : sessionTitle(S);
    ui.renameForm.hidden = false;
    ui.title.parentElement.hidden = true;
    ui.renameInput.focus();
    ui.renameInput.select();
  }

  function closeRename(focus) {
    if (ui.renameForm.hidden) return;
    ui.renameForm.hidden = true;
    ui.title.parentElement.hidden = false;
    if (focus) ui.rename.focus();
  }

  async function saveRename() {
    const S = current();
    const title = ui.renameInput.value.trim();
    if (!S) return;
    if (!title || C.byteLength(title) > 100 || /[\u0000-\u001f\u007f]/.test(title)) {
      C.notify('A title has 1 to 100 bytes and no control characters.', { kind: 'error', code: 'rename' });
      ui.renameInput.focus();
      return;
    }
    try {
      const body = await C.api('api/sessions/' + encodeURIComponent(S.id), token,
        { method: 'PATCH', body: { title } });
      S.info.title = body && typeof body.title === 'string' ? body.title : title;
    } catch (err) {
      C.notify('The conversation could not be renamed: ' + err.message, { kind: 'error', code: 'rename' });
      ui.renameInput.focus();
      return;
    }
    closeRename(true);
    if (selected === S.id) renderHeader();
    scheduleList();
  }

  function openShare() {
    const S = current();
    if (!S) return;
    ui.shareResult.hidden = true;
    ui.shareStatus.textContent = '';
    ui.shareDialog.dataset.sessionId = S.id;
    ui.shareDialog.showModal();
    ui.shareCreate.focus();
  }

  async function createShare() {
    const id = ui.shareDialog.dataset.sessionId;
    ui.shareCreate.disabled = true;
    ui.shareStatus.textContent = 'Creating a link…';
    try {
      const body = await C.api('api/sessions/' + encodeURIComponent(id) + '/share', token,
        { method: 'POST', body: {} });
      const url = new URL(body.url, location.href).href;
      ui.shareUrl.value = url;
      ui.shareExpires.textContent = body.expires ? 'It works until ' + C.formatFull(body.expires) + '.' : '';
      ui.shareResult.hidden = false;
      ui.shareStatus.textContent = 'Link created. Copy it and send it to whoever should read this conversation.';
      ui.shareUrl.focus();
      ui.shareUrl.select();
    } catch (err) {
      ui.shareStatus.textContent = 'No link could be created: ' + err.message;
    } finally {
      ui.shareCreate.disabled = false;
    }
  }

  async function revokeShare() {
    const id = ui.shareDialog.dataset.sessionId;
    ui.shareRevoke.disabled = true;
    try {
      await C.api('api/sessions/' + encodeURIComponent(id) + '/share', token, { method: 'DELETE' });
      ui.shareResult.hidden = true;
      ui.shareUrl.value = '';
      ui.shareStatus.textContent = 'Sharing stopped: every link to this conversation has stopped working.';
    } catch (err) {
      ui.shareStatus.textContent = 'Sharing could not be stopped: ' + err.message;
    } finally {
      ui.shareRevoke.disabled = false;
      ui.shareRevoke.focus();
    }
  }

  async function copyShare() {
    ui.shareUrl.focus();
    ui.shareUrl.select();
    try {
      await navigator.clipboard.writeText(ui.shareUrl.value);
      ui.shareStatus.textContent = 'Link copied.';
    } catch (e) {
      ui.shareStatus.textContent = 'Copying is not allowed here: the link is selected, copy it with Ctrl+C.';
    }
  }

  // ---- page start / stop -------------------------------------------------------------

  function start(tok, claims) {
    token = tok;
    me = { user_id: (claims && claims.sub) || '', name: (claims && (claims.name || claims.sub)) || '',
      selfType: 'user', models: [] };
    loadReadStore();
    sessions = new Map();
    selected = null;
    draft = newDraft();
    firstList = true;
    online = false;
    client = C.pageClient(token, onConnected, onEvent, stopTyping, onError);
    client.on('state', onConnState);
    renderConversation();
    updateComposer();
    loadSessions();
    refreshTimer = setInterval(() => {
      if (document.visibilityState === 'visible') loadSessions();
    }, LIST_REFRESH_MS);
    return client;
  }

  function stop() {
    stopTyping();
    clearInterval(refreshTimer);
    clearTimeout(listSoon);
    client = null;
    token = null;
    for (const S of sessions.values()) {
      S.queue.clear();
      for (const t of S.typing.values()) clearTimeout(t.timer);
    }
    if (draft) draft.queue.clear();
    sessions = new Map();
    listItems = new Map();
    ui.list.replaceChildren();
    pane.list.clear();
    draft = newDraft();
    selected = null;
    online = false;
    if (ui.shareDialog.open) ui.shareDialog.close();
  }

  // ---- wiring ------------------------------------------------------------------------

  ui.composer.addEventListener('submit', (e) => {
    e.preventDefault();
    const text = composed();
    // Offline or too long: the text stays in the box, and the line under it
    // says why.
    if (!text || !client || !online || C.byteLength(text) > C.contentLimit(client.status)) {
      ui.input.focus();
      return;
    }
    ui.input.value = '';
    updateComposer();
    stopTyping();
    sendMessage(text);
    ui.input.focus();
  });
  C.submitOnEnter(ui.input, ui.composer);
  ui.input.addEventListener('input', () => {
    typingOut.update(selected, !!ui.input.value.trim());
    updateComposer();
  });
  ui.newConv.addEventListener('click', () => select(null, true));
  ui.back.addEventListener('click', () => {
    ui.body.dataset.view = 'list';
    const b = selected && listItems.get(selected);
    if (b) b.querySelector('button').focus();
  });
  ui.help.addEventListener('click', () => {
    const S = current();
    if (!S || !client || S.state.help) return;
    ui.help.disabled = true;
    client.request({ type: 'help_request', session_id: S.id }).then((ack) => {
      if (Number.isSafeInteger(ack.seq) && !ack.duplicate) {
        addEvent(S, {
          type: 'help_request', session_id: S.id, seq: ack.seq, timestamp: ack.timestamp,
          sender: { type: 'user', id: me.user_id, name: me.name },
        }, false);
      } else if (!Number.isSafeInteger(ack.seq) && !ack.duplicate) {
        unnumberedEvent(S, { type: 'help_request', session_id: S.id,
          sender: { type: 'user', id: me.user_id, name: me.name } });
      } else {
        S.state.help = true;
      }
      if (selected === S.id) renderHeader();
      scheduleList();
    }, (err) => {
      if (err.code !== 'stopped') {
        C.notify('Support could not be asked: ' + err.message, { kind: 'error', code: 'help' });
      }
      if (selected === S.id) renderHeader();
    });
  });
  ui.model.addEventListener('change', () => {
    const S = current();
    if (!ui.model.value) return;
    if (!S) {
      draft.model = ui.model.value;
      return;
    }
    chooseModel(S, ui.model.value);
  });
  ui.rename.addEventListener('click', openRename);
  ui.renameForm.addEventListener('submit', (e) => {
    e.preventDefault();
    saveRename();
  });
  ui.renameCancel.addEventListener('click', () => closeRename(true));
  ui.renameInput.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') {
      e.preventDefault();
      closeRename(true);
    }
  });
  ui.share.addEventListener('click', openShare);
  ui.shareCreate.addEventListener('click', createShare);
  ui.shareRevoke.addEventListener('click', revokeShare);
  ui.shareCopy.addEventListener('click', copyShare);
  ui.shareDialog.addEventListener('close', () => ui.share.focus());
  pane.scroll.addEventListener('scroll', () => {
    if (pane.atBottom()) markReadIfSeen();
  }, { passive: true });
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') {
      unseen = 0;
      document.title = 'chatd';
      markReadIfSeen();
    }
  });

  C.bootPage({ start, stop });
})();
