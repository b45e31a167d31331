/*
 * chat.js: the chat page (chat.html). The user's conversations in a side
 * list, the selected one's messages (history over the HTTP API, then live
 * events over the shared Chatd.Client), the composer, typing indicators,
 * read markers, "talk to a human", the model selector, and the assistant:
 * its answers shown as they stream, the line saying that it is answering
 * with the Stop button, its errors, and the banner while a person from
 * support has taken the conversation over.
 *
 * Each conversation is an object S (see newSession) keyed by session id.
 * The conversation being written before it exists ("new conversation") is
 * the draft: its first message is sent without session_id, and the ack of
 * that message names the session; later draft messages wait for it so that
 * one conversation is not split in two.
 */
'use strict';

(function () {
  const C = window.Chatd;
  const $ = (id) => document.getElementById(id);

  const TYPING_IDLE_MS = 3000;
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
    help: $('help'),
    takeover: $('takeover'),
    modelField: $('model-field'),
    model: $('model-select'),
    composer: $('composer'),
    input: $('composer-input'),
  };

  let token = null;
  let client = null;
  let me = null; /* {user_id, name, selfType: 'user', models} */
  let sessions = new Map();
  let selected = null; /* a session id, or null: the draft */
  let draft = null;
  const pane = new C.ConversationPane({
    current, token: () => token, me: () => me, render: renderConversation, renderTyping,
    putPending,
  });
  const bar = new C.AssistantBar(() => stopAnswer(current()));
  let listItems = new Map(); /* session id -> <li> */
  let counter = 0; /* minor keys of system lines, pending and streams */
  let firstList = true;
  let unseen = 0; /* messages from others that arrived while hidden */
  let readStore = {};
  let readSaveTimer = null;
  let listTimer = null;

  function newDraft() {
    return { pending: new Map(), creator: null, model: '' };
  }

  function newSession(id, info) {
    const S = {
      id,
      info: Object.assign({ id, owner: me ? me.user_id : '', created_at: '', updated_at: '',
        last_seq: 0, help_requested: false, model: null }, info || {}),
      tl: new C.Timeline(),
      loading: null,
      loadError: null,
      system: [], /* {key, text, kind, code} */
      pending: new Map(), /* client id -> pending message */
      typing: new Map(), /* sender key -> {label, timer} */
      admins: new Map(), /* admins that joined: id -> name */
      read: null, /* highest seq read on any of this user's devices, as known here */
      sentRead: 0,
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

  // ---- read markers (kept per user in localStorage) ---------------------------

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

  // Tell the other devices how far this one has shown the conversation:
  // when it is on screen, the page visible and the view at its end.
  function markReadIfSeen() {
    const S = current();
    if (!S || !S.tl.last || document.visibilityState !== 'visible' || !pane.atBottom()) return;
    const seq = S.tl.last;
    setRead(S, seq);
    if (seq > S.sentRead && client && client.send({ type: 'read', session_id: S.id, seq })) {
      S.sentRead = seq;
    }
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

  function sessionTitle(S) {
    const first = S.tl.get(1);
    if (first) return snippet(first.content, 60);
    return 'Conversation' + (S.info.created_at ? ' of ' + C.formatTime(S.info.created_at) : '');
  }

  function renderList() {
    const order = Array.from(sessions.values()).sort((a, b) =>
      (b.info.updated_at || '').localeCompare(a.info.updated_at || '') || (a.id < b.id ? 1 : -1));
    const focusedId = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.sessionId : null;
    const keep = new Set();
    let prev = null;
    for (const S of order) {
      keep.add(S.id);
      const li = listItem(S);
      const nextSibling = prev ? prev.nextSibling : ui.list.firstChild;
      if (li !== nextSibling) ui.list.insertBefore(li, nextSibling);
      prev = li;
    }
    for (const [id, li] of listItems) {
      if (!keep.has(id)) {
        li.remove();
        listItems.delete(id);
      }
    }
    ui.listEmpty.hidden = sessions.size > 0;
    if (focusedId && listItems.has(focusedId)) {
      const b = listItems.get(focusedId).querySelector('button');
      if (document.activeElement !== b) b.focus();
    }
  }

  function listItem(S) {
    let li = listItems.get(S.id);
    if (!li) {
      const btn = C.el('button', { type: 'button', class: 'session', dataset: { sessionId: S.id } });
      btn.addEventListener('click', () => select(S.id, true));
      li = C.el('li', { class: 'session-list__item' }, btn);
      listItems.set(S.id, li);
    }
    const btn = li.firstChild;
    const unread = unreadCount(S);
    const last = S.tl.get(S.tl.last);
    const preview = last
      ? C.senderLabel(last.sender, me) + ': ' + snippet(last.content, 80)
      : (S.info.last_seq || 0) + ' message' + (S.info.last_seq === 1 ? '' : 's');
    const badges = C.el('span', { class: 'session__badges' });
    if (unread) badges.append(C.el('span', { class: 'badge badge--unread' }, unread + ' new'));
    if (S.info.help_requested) badges.append(C.el('span', { class: 'badge badge--help' }, 'Help requested'));
    if (S.admins.size) badges.append(C.el('span', { class: 'badge badge--support' }, 'Support here'));
    if (S.answering) badges.append(C.el('span', { class: 'badge badge--answering' }, 'Answering…'));
    btn.replaceChildren(
      C.el('span', { class: 'session__title' }, sessionTitle(S)),
      C.el('time', { class: 'session__time', datetime: S.info.updated_at || '' },
        S.info.updated_at ? C.formatTime(S.info.updated_at) : ''),
      C.el('span', { class: 'session__preview' }, preview),
      badges);
    if (selected === S.id) btn.setAttribute('aria-current', 'true');
    else btn.removeAttribute('aria-current');
    li.classList.toggle('is-unread', unread > 0);
    btn.dataset.unread = String(unread);
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
      }
      // A conversation never read on this browser starts as read: the
      // badge counts what arrives from now on (or what other devices have
      // not yet marked read).
      if (S.read === 0 && readStore[s.id] === undefined) S.read = s.last_seq || 0;
    }
    renderList();
    if (firstList) {
      firstList = false;
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

  // ---- the conversation -----------------------------------------------------------

  function select(id, byUser) {
    stopTyping();
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
    if (S) ensureHistory(S);
    if (byUser) ui.input.focus();
  }

  function ensureHistory(S) {
    pane.loadHistory(S, S.info.last_seq, (lastSeq) => {
      S.info.last_seq = Math.max(S.info.last_seq || 0, lastSeq);
      // Whatever was written between the read and now (if the socket was
      // down meanwhile) comes back with resume; live events are deduplicated.
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
      if (S.info.help_requested) parts.push('support has been asked to help');
      if (S.admins.size) parts.push(Array.from(S.admins.values()).join(', ') + ' from support is here');
      ui.sub.textContent = parts.join(' · ');
    }
    ui.help.disabled = !S;
    ui.help.textContent = S && S.info.help_requested ? 'Ask a human again' : 'Talk to a human';
    renderTakeover();
    renderModel();
  }

  // While a person from support has joined, the assistant does not answer:
  // the banner says who took the conversation over.
  function renderTakeover() {
    const S = current();
    const names = S ? Array.from(S.admins.values()) : [];
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

  function putPending(S, p) {
    const actions = [
      { label: 'Retry', onClick: () => sendPending(S ? sessions.get(S.id) : null, p) },
      { label: 'Discard', onClick: () => discard(S, p) },
    ];
    pane.list.put(p.key, C.messageNode({ pending: p, actions }, me));
  }

  function refreshPending(S, p) {
    const shown = S ? selected === S.id : selected === null;
    if (shown) putPending(S, p);
  }

  // A stored event arrived (live, replayed, or built from our own ack).
  function addEvent(S, ev, live) {
    if (ev.id && S.pending.has(ev.id)) {
      S.pending.delete(ev.id);
      if (selected === S.id) pane.list.remove(pendingKeyOf(ev.id));
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
    const fromOther = !(ev.sender && ev.sender.id === me.user_id && ev.sender.type === 'user');
    if (selected === S.id) {
      pane.add([ev.seq, 0], C.messageNode({ ev }, me), !fromOther);
      if (ev.seq === 1) renderHeader();
      markReadIfSeen();
    }
    if (live && fromOther && document.visibilityState !== 'visible') {
      unseen++;
      document.title = '(' + unseen + ') chatd';
    }
    pane.typingDone(S, ev.sender);
    scheduleList();
  }

  const pendingKeys = new Map(); /* client id -> key */
  function pendingKeyOf(id) {
    return pendingKeys.get(id) || [Infinity, -1];
  }

  function addSystem(S, text, kind, code) {
    const s = { key: [S.tl.last, ++counter], text, kind, code };
    S.system.push(s);
    if (selected === S.id) pane.add(s.key, C.systemNode(text, kind, code), false);
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
    pendingKeys.set(p.id, p.key);
    if (!S) {
      draft.pending.set(p.id, p);
      putPending(null, p);
      pane.empty.hidden = true;
      if (!draft.creator) {
        draft.creator = p.id;
        sendPending(null, p);
      }
    } else {
      S.pending.set(p.id, p);
      putPending(S, p);
      pane.empty.hidden = true;
      sendPending(S, p);
    }
    pane.scrollToEnd();
  }

  function sendPending(S, p) {
    const msg = { type: 'user_message', id: p.id, content: p.content };
    if (S) msg.session_id = S.id;
    p.state = 'pending';
    p.error = null;
    refreshPending(S, p);
    client.request(msg, {
      onRetry: (err, delay) => {
        p.state = 'retrying';
        p.note = C.retryNote(err, delay);
        refreshPending(S, p);
        if (err.code === 'rate_limited') {
          C.notify(C.describeError(err), { kind: 'warn', code: err.code });
        }
      },
      onSent: () => {
        if (p.state === 'retrying') {
          p.state = 'pending';
          refreshPending(S, p);
        }
      },
    }).then((ack) => onAck(S, p, ack), (err) => {
      if (err.code === 'stopped') return;
      p.state = 'failed';
      p.error = err.message;
      // Pending messages of the draft live there until the session exists.
      const owner = S ? sessions.get(S.id) : null;
      refreshPending(owner, p);
    });
  }

  function onAck(S, p, ack) {
    if (!ack.session_id) return;
    let target = S;
    if (!target) {
      // The first message of the draft: the conversation now exists.
      target = ensureSession(ack.session_id, {
        created_at: ack.timestamp, updated_at: ack.timestamp, last_seq: ack.seq,
      });
      if (!target.tl.loaded) target.tl.markLoaded(0);
      const showing = selected === null;
      for (const [id, q] of draft.pending) target.pending.set(id, q);
      const queued = Array.from(draft.pending.values()).filter((q) => q !== p);
      const model = draft.model;
      draft = newDraft();
      if (showing) select(target.id, false);
      for (const q of queued) sendPending(target, q);
      if (model) chooseModel(target, model);
    }
    target.pending.delete(p.id);
    if (selected === target.id) pane.list.remove(p.key);
    addEvent(target, {
      type: 'user_message', session_id: target.id, seq: ack.seq, id: p.id,
      sender: p.sender, content: p.content, timestamp: ack.timestamp,
    }, false);
    setRead(target, Math.max(target.read || 0, ack.seq));
  }

  function discard(S, p) {
    client.cancel(p.id);
    if (S) {
      const T = sessions.get(S.id);
      if (T) T.pending.delete(p.id);
    } else {
      draft.pending.delete(p.id);
      if (draft.creator === p.id) {
        // The next waiting message starts the conversation instead.
        draft.creator = null;
        const next = draft.pending.values().next().value;
        if (next) {
          draft.creator = next.id;
          sendPending(null, next);
        }
      }
    }
    pane.list.remove(p.key);
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
        // assistant_done: the answer ended with nothing stored.
        const S = sessions.get(ev.session_id);
        if (S) endAnswer(S);
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
        addEvent(ensureSession(ev.session_id, {
          created_at: ev.timestamp, updated_at: ev.timestamp, last_seq: ev.seq,
        }), ev, true);
        break;
      case 'typing_indicator':
        onTyping(ev);
        break;
      case 'read': {
        const S = sessions.get(ev.session_id);
        if (S && Number.isSafeInteger(ev.seq)) setRead(S, ev.seq);
        break;
      }
      case 'admin_join':
      case 'admin_leave': {
        const S = sessions.get(ev.session_id);
        if (!S || !ev.sender) return;
        const name = ev.sender.name || ev.sender.id;
        if (ev.type === 'admin_join') {
          if (S.admins.has(ev.sender.id)) return; /* the same admin, reconnected */
          S.admins.set(ev.sender.id, name);
          addSystem(S, name + ' from support joined the conversation.', 'join');
        } else {
          if (!S.admins.delete(ev.sender.id)) return;
          addSystem(S, name + ' from support left the conversation.', 'leave');
        }
        if (selected === S.id) renderHeader();
        scheduleList();
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
        break; /* help_request and anything newer: not for this page */
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
    if (reconnect) loadSessions();
    markReadIfSeen();
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
    client = C.pageClient(token, onConnected, onEvent, stopTyping, onError);
    renderConversation();
    loadSessions();
    return client;
  }

  function stop() {
    stopTyping();
    client = null;
    token = null;
    for (const S of sessions.values()) {
      for (const t of S.typing.values()) clearTimeout(t.timer);
    }
    sessions = new Map();
    listItems = new Map();
    ui.list.replaceChildren();
    pane.list.clear();
    draft = newDraft();
    selected = null;
  }

  // ---- wiring ------------------------------------------------------------------------

  ui.composer.addEventListener('submit', (e) => {
    e.preventDefault();
    const text = ui.input.value.replace(/^\s*\n/, '').replace(/\s+$/, '');
    if (!text || !client) return;
    ui.input.value = '';
    stopTyping();
    sendMessage(text);
    ui.input.focus();
  });
  C.submitOnEnter(ui.input, ui.composer);
  ui.input.addEventListener('input', () => typingOut.update(selected, !!ui.input.value.trim()));
  ui.newConv.addEventListener('click', () => select(null, true));
  ui.back.addEventListener('click', () => {
    ui.body.dataset.view = 'list';
    const b = selected && listItems.get(selected);
    if (b) b.querySelector('button').focus();
  });
  ui.help.addEventListener('click', () => {
    const S = current();
    if (!S || !client) return;
    ui.help.disabled = true;
    client.request({ type: 'help_request', session_id: S.id }).then(() => {
      S.info.help_requested = true;
      addSystem(S, 'You asked for a person from support. They have been told and will join here.', 'help');
      if (selected === S.id) renderHeader();
      scheduleList();
    }, (err) => {
      if (err.code !== 'stopped') C.notify('Support could not be asked: ' + err.message, { kind: 'error' });
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
