/*
 * admin.js: the support page (admin.html). Lists every session (all, or
 * those that asked for help) and the users online; live help_request events
 * highlight a session. Selecting a session shows its history (HTTP API);
 * joining it (admin_join) brings its live events and lets support reply
 * (admin_message) until admin_leave. Several sessions may be joined at once;
 * after a reconnect each is joined again and resumed from the last event
 * held, before any reply waiting in the outbox is resent. In a joined
 * session the assistant's answers show as they stream, and support may stop
 * one (stop_generation).
 */
'use strict';

(function () {
  const C = window.Chatd;
  const $ = (id) => document.getElementById(id);

  const SESSIONS_REFRESH_MS = 20000;
  const ONLINE_REFRESH_MS = 15000;
  const REJOIN_WAIT_MS = 15000;
  const TYPING_IDLE_MS = 3000;

  const ui = {
    body: document.body,
    app: $('app'),
    notAdmin: $('not-admin'),
    notAdminText: $('not-admin-text'),
    notAdminSwitch: $('not-admin-switch'),
    signOut: $('sign-out'),
    list: $('admin-sessions'),
    listStatus: $('sessions-status'),
    helpOnly: $('help-only'),
    refreshSessions: $('refresh-sessions'),
    online: $('online-list'),
    onlineSummary: $('online-summary'),
    refreshOnline: $('refresh-online'),
    joinedBar: $('joined-bar'),
    joinedList: $('joined-list'),
    back: $('back'),
    title: $('conv-title'),
    sub: $('conv-sub'),
    join: $('join'),
    leave: $('leave'),
    composer: $('composer'),
    input: $('composer-input'),
    send: $('send'),
  };

  let token = null;
  let client = null;
  let me = null; /* {user_id, name, selfType: 'admin'} */
  let infos = new Map(); /* session id -> session info from the API */
  let order = []; /* session ids as the API listed them (newest first) */
  let views = new Map(); /* session id -> V (sessions opened on this page) */
  let helpLive = new Map(); /* session id -> name of who asked, since this page opened */
  let selected = null;
  const pane = new C.ConversationPane({
    current, token: () => token, me: () => me, render: renderConversation, renderTyping, putPending,
  });
  const bar = new C.AssistantBar(() => stopAnswer(current()));
  let counter = 0;
  let timers = [];
  let unseen = 0;
  let refreshTimer = null;
  const typingOut = new C.TypingSender(() => client, TYPING_IDLE_MS);

  function newView(id) {
    const V = {
      id,
      tl: new C.Timeline(),
      loading: null,
      loadError: null,
      system: [],
      pending: new Map(),
      typing: new Map(),
      admins: new Map(), /* other support people joined: id -> name */
      joined: false,
      busy: false, /* a join or leave is on its way */
      unread: 0,
    };
    C.answers.init(V); /* streams, answering, stopping, ... */
    return V;
  }

  function info(id) {
    return infos.get(id) || { id, owner: '', created_at: '', updated_at: '', last_seq: 0,
      help_requested: false, model: null };
  }

  // ---- lists ----------------------------------------------------------------------

  async function loadSessions() {
    const t = token;
    const help = ui.helpOnly.checked;
    ui.listStatus.textContent = 'Loading…';
    let body;
    try {
      body = await C.api('api/admin/sessions' + (help ? '?help=1' : ''), t);
    } catch (err) {
      if (t !== token) return;
      if (err.status === 403) {
        showNotAdmin();
        return;
      }
      ui.listStatus.textContent = 'Sessions could not be loaded: ' + err.message;
      return;
    }
    if (t !== token) return;
    order = [];
    for (const s of body.sessions || []) {
      const old = infos.get(s.id);
      if (old && old.last_seq > s.last_seq) s.last_seq = old.last_seq;
      infos.set(s.id, s);
      order.push(s.id);
    }
    // Sessions asking for help right now stay listed even when the read
    // raced the request.
    for (const id of helpLive.keys()) if (!order.includes(id)) order.unshift(id);
    const n = order.length;
    ui.listStatus.textContent = n === 0
      ? (help ? 'No session needs help.' : 'No sessions yet.')
      : n + (help ? ' needing help' : ' session' + (n === 1 ? '' : 's')) +
        ' · updated ' + C.formatTime(new Date().toISOString());
    renderList();
    if (selected) renderHeader();
  }

  function scheduleSessions() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(loadSessions, 300);
  }

  async function loadOnline() {
    const t = token;
    let body;
    try {
      body = await C.api('api/admin/connections', t);
    } catch (err) {
      if (t !== token) return;
      ui.onlineSummary.textContent = 'Could not be loaded: ' + err.message;
      return;
    }
    if (t !== token) return;
    const users = (body.users || []).slice().sort((a, b) => b.devices - a.devices ||
      String(a.user_id).localeCompare(String(b.user_id)));
    ui.onlineSummary.textContent = (body.total_users || 0) + ' user' +
      (body.total_users === 1 ? '' : 's') + ' on ' + (body.total_devices || 0) + ' device' +
      (body.total_devices === 1 ? '' : 's');
    ui.online.replaceChildren(...users.map((u) => C.el('li', { class: 'online-list__item' },
      C.el('span', { class: 'online-list__user' }, u.user_id),
      C.el('span', { class: 'muted' }, u.devices + ' device' + (u.devices === 1 ? '' : 's')))));
  }

  function renderList() {
    const focused = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.sessionId : null;
    const items = order.map((id) => {
      const s = info(id);
      const V = views.get(id);
      const live = helpLive.get(id);
      const badges = C.el('span', { class: 'session__badges' });
      if (live !== undefined) badges.append(C.el('span', { class: 'badge badge--alert' }, 'Asking for help now'));
      else if (s.help_requested) badges.append(C.el('span', { class: 'badge badge--help' }, 'Help requested'));
      if (V && V.joined) badges.append(C.el('span', { class: 'badge badge--support' }, 'Joined'));
      if (V && V.answering) badges.append(C.el('span', { class: 'badge badge--answering' }, 'Assistant answering'));
      if (V && V.unread) badges.append(C.el('span', { class: 'badge badge--unread' }, V.unread + ' new'));
      const btn = C.el('button', {
        type: 'button', class: 'session', dataset: { sessionId: id },
        'aria-current': selected === id ? 'true' : null,
      },
      C.el('span', { class: 'session__title' }, s.owner || live || id),
      C.el('time', { class: 'session__time', datetime: s.updated_at || '' },
        s.updated_at ? C.formatTime(s.updated_at) : ''),
      C.el('span', { class: 'session__preview' },
        (s.last_seq || 0) + ' message' + (s.last_seq === 1 ? '' : 's') + ' · ' + id),
      badges);
      btn.addEventListener('click', () => select(id, true));
      const li = C.el('li', { class: 'session-list__item' }, btn);
      if (live !== undefined) li.classList.add('is-help-live');
      if (s.help_requested) li.classList.add('is-help');
      return li;
    });
    ui.list.replaceChildren(...items);
    if (focused) {
      const b = ui.list.querySelector('button[data-session-id="' + CSS.escape(focused) + '"]');
      if (b) b.focus();
    }
    renderJoined();
  }

  function renderJoined() {
    const joined = Array.from(views.values()).filter((V) => V.joined);
    ui.joinedBar.hidden = joined.length === 0;
    ui.joinedList.replaceChildren(...joined.map((V) => {
      const label = info(V.id).owner || V.id;
      const b = C.el('button', {
        type: 'button', class: 'chip', 'aria-current': selected === V.id ? 'true' : null,
      }, label, V.unread ? C.el('span', { class: 'badge badge--unread' }, String(V.unread)) : null);
      b.addEventListener('click', () => select(V.id, true));
      return C.el('li', {}, b);
    }));
  }

  // ---- the selected session ------------------------------------------------------------

  function current() {
    return selected ? views.get(selected) : null;
  }

  function select(id, byUser) {
    typingOut.stop();
    selected = id;
    let V = views.get(id);
    if (!V) {
      V = newView(id);
      views.set(id, V);
    }
    V.unread = 0;
    ui.body.dataset.view = 'conversation';
    renderConversation();
    renderList();
    ensureHistory(V);
    if (byUser) (V.joined ? ui.input : ui.join).focus();
  }

  function ensureHistory(V) {
    pane.loadHistory(V, info(V.id).last_seq, (lastSeq) => {
      const s = infos.get(V.id);
      if (s) s.last_seq = Math.max(s.last_seq || 0, lastSeq);
      if (V.joined && client) client.resume(V.id, V.tl.high);
      if (selected === V.id) renderConversation();
    });
  }

  function renderHeader() {
    const V = current();
    if (!V) {
      ui.title.textContent = 'No session selected';
      ui.sub.textContent = '';
      ui.join.hidden = true;
      ui.leave.hidden = true;
      setComposer(false);
      renderAssistant();
      return;
    }
    const s = info(V.id);
    ui.title.textContent = (s.owner || helpLive.get(V.id) || 'Session') + ' · ' + V.id;
    const parts = [];
    if (s.created_at) parts.push('Started ' + C.formatTime(s.created_at));
    if (s.model) parts.push('model ' + s.model);
    if (helpLive.has(V.id)) parts.push('asking for help now');
    else if (s.help_requested) parts.push('help requested');
    if (V.admins.size) parts.push('also here: ' + Array.from(V.admins.values()).join(', '));
    parts.push(V.joined ? 'you are in this conversation' : 'read only: join to reply');
    ui.sub.textContent = parts.join(' · ');
    ui.join.hidden = V.joined;
    ui.leave.hidden = !V.joined;
    ui.join.disabled = V.busy;
    ui.leave.disabled = V.busy;
    setComposer(V.joined);
    renderAssistant();
  }

  // The assistant's line: shown in a joined session while it answers, with
  // Stop.
  function renderAssistant() {
    const V = current();
    bar.render(V && V.joined ? V : null, true);
  }

  function setComposer(on) {
    ui.input.disabled = !on;
    ui.send.disabled = !on;
    ui.input.placeholder = on ? 'Write a reply…' : 'Join the conversation to reply';
  }

  function renderConversation() {
    const V = current();
    pane.list.clear();
    renderHeader();
    if (!V) {
      pane.earlier.hidden = true;
      pane.empty.hidden = false;
      renderTyping();
      return;
    }
    pane.show(V);
  }

  function addEvent(V, ev, live) {
    if (ev.id && V.pending.has(ev.id)) {
      const p = V.pending.get(ev.id);
      V.pending.delete(ev.id);
      if (selected === V.id) pane.list.remove(p.key);
    }
    if (ev.type === 'ai_response') {
      // The stored answer takes the place of its stream.
      const st = C.answers.final(V, ev);
      if (st) pane.removeStream(V, st);
      if (selected === V.id) renderAssistant();
    }
    if (!V.tl.add(ev)) return;
    const s = infos.get(V.id);
    if (s) {
      s.last_seq = Math.max(s.last_seq || 0, ev.seq);
      if (ev.timestamp && ev.timestamp > (s.updated_at || '')) s.updated_at = ev.timestamp;
    }
    const mine = ev.sender && ev.sender.id === me.user_id && ev.sender.type === 'admin';
    if (selected === V.id) {
      pane.add([ev.seq, 0], C.messageNode({ ev }, me), mine);
    } else if (live && !mine) {
      V.unread++;
    }
    if (live && !mine && document.visibilityState !== 'visible') bumpTitle();
    pane.typingDone(V, ev.sender);
    renderList();
  }

  function addSystem(V, text, kind, code) {
    const s = { key: [V.tl.last, ++counter], text, kind, code };
    V.system.push(s);
    if (selected === V.id) pane.add(s.key, C.systemNode(text, kind, code), true);
  }

  function bumpTitle() {
    unseen++;
    document.title = '(' + unseen + ') chatd support';
  }

  // ---- join, leave, reply ----------------------------------------------------------------

  function join(V, rejoin) {
    V.busy = true;
    if (selected === V.id) renderHeader();
    return client.request({ type: 'admin_join', session_id: V.id }, { prelude: rejoin }).then(() => {
      V.busy = false;
      const was = V.joined;
      V.joined = true;
      helpLive.delete(V.id);
      if (!was) {
        const owner = info(V.id).owner || 'The user';
        addSystem(V, 'You joined. ' + owner + ' is told that support is here.', 'join');
      }
      // Everything after the last event held, then live.
      if (V.tl.loaded) client.resume(V.id, V.tl.high);
      else ensureHistory(V);
      if (selected === V.id) {
        renderHeader();
        if (!rejoin) ui.input.focus();
      }
      renderList();
    }, (err) => {
      V.busy = false;
      V.joined = false;
      dropStreams(V, C.answers.clear(V));
      if (err.code !== 'stopped') {
        C.notify('Could not join ' + V.id + ': ' + err.message, { kind: 'error' });
      }
      if (selected === V.id) renderHeader();
      renderList();
    });
  }

  function leave(V) {
    V.busy = true;
    renderHeader();
    client.request({ type: 'admin_leave', session_id: V.id }).then(() => {
      V.busy = false;
      V.joined = false;
      // Its answers no longer arrive here.
      dropStreams(V, C.answers.clear(V));
      addSystem(V, 'You left the conversation.', 'leave');
      if (selected === V.id) renderHeader();
      renderList();
    }, (err) => {
      V.busy = false;
      if (err.code !== 'stopped') C.notify('Could not leave: ' + err.message, { kind: 'error' });
      if (selected === V.id) renderHeader();
    });
  }

  function putPending(V, p) {
    const actions = [
      { label: 'Retry', onClick: () => sendPending(V, p) },
      {
        label: 'Discard',
        onClick: () => {
          client.cancel(p.id);
          V.pending.delete(p.id);
          pane.list.remove(p.key);
        },
      },
    ];
    pane.list.put(p.key, C.messageNode({ pending: p, actions }, me));
  }

  function sendReply(V, text) {
    const p = {
      id: C.newId(), content: text, state: 'pending', key: [Infinity, ++counter],
      timestamp: new Date().toISOString(),
      sender: { type: 'admin', id: me.user_id, name: me.name },
    };
    V.pending.set(p.id, p);
    putPending(V, p);
    pane.empty.hidden = true;
    pane.scrollToEnd();
    sendPending(V, p);
  }

  function sendPending(V, p) {
    p.state = 'pending';
    p.error = null;
    if (selected === V.id) putPending(V, p);
    client.request({ type: 'admin_message', id: p.id, session_id: V.id, content: p.content }, {
      onRetry: (err, delay) => {
        p.state = 'retrying';
        p.note = C.retryNote(err, delay);
        if (selected === V.id) putPending(V, p);
      },
    }).then((ack) => {
      V.pending.delete(p.id);
      if (selected === V.id) pane.list.remove(p.key);
      addEvent(V, {
        type: 'admin_message', session_id: V.id, seq: ack.seq, id: p.id, sender: p.sender,
        content: p.content, timestamp: ack.timestamp,
      }, false);
    }, (err) => {
      if (err.code === 'stopped') return;
      p.state = 'failed';
      p.error = err.code === 'forbidden' ? 'join the conversation first' : err.message;
      if (selected === V.id) putPending(V, p);
    });
  }

  // ---- typing ------------------------------------------------------------------------

  function onTyping(ev) {
    const V = views.get(ev.session_id);
    if (!V || !ev.sender) return;
    pane.typingEvent(V, ev, C.senderLabel(ev.sender, me));
  }

  function renderTyping() {
    pane.showTyping(current());
  }

  // ---- the assistant's answers --------------------------------------------------------

  // ai_response with done:false in a joined session: placed by offset.
  function onPiece(ev) {
    const V = views.get(ev.session_id);
    if (!V || !V.joined || typeof ev.stream_id !== 'string' || !ev.stream_id) return;
    const was = V.answering;
    const { st, change } = C.answers.piece(V, ev, () => [Number.MAX_SAFE_INTEGER, ++counter]);
    if (change.kind === 'gap' && !st.gapAsked && client && V.tl.loaded) {
      // Cannot happen by the protocol; a resume brings everything so far.
      st.gapAsked = true;
      client.resume(V.id, V.tl.high);
    }
    pane.streamChanged(V, st, change);
    if (selected === V.id) renderAssistant();
    if (!was) renderList();
  }

  function onLoading(ev) {
    const V = views.get(ev.session_id);
    if (!V || !V.joined) return;
    C.answers.loading(V);
    if (selected === V.id) renderAssistant();
    renderList();
  }

  // Streams gone without their stored answer.
  function dropStreams(V, gone) {
    for (const st of gone) pane.removeStream(V, st);
    if (selected === V.id) renderAssistant();
  }

  // The answer of V has ended without its stored event (yet): streams with
  // no text go, those with text are shown interrupted until it comes.
  function endAnswer(V) {
    dropStreams(V, C.answers.ended(V));
    pane.redrawStreams(V);
  }

  // An error about a joined session as a whole: its answer failed or could
  // not start (see the chat page's onError).
  function onError(msg, sentType) {
    const assistant = msg.code === 'assistant_error' || msg.code === 'assistant_timeout';
    const refused = msg.code === 'rate_limited' || msg.code === 'unavailable';
    if (sentType || !msg.session_id || !(assistant || refused)) return false;
    const V = views.get(msg.session_id);
    if (!V) return false;
    const text = C.assistantErrorText(msg, true);
    endAnswer(V);
    addSystem(V, text, 'error', msg.code);
    renderList();
    return true;
  }

  function stopAnswer(V) {
    if (!V || !V.joined || !V.answering || V.stopping || !client) return;
    V.stopping = true;
    renderAssistant();
    client.request({ type: 'stop_generation', session_id: V.id }).then((ack) => {
      if (!V.stopping) return; /* the answer ended meanwhile */
      if (ack.stopped === false || !C.answers.hasText(V)) endAnswer(V);
      renderList();
    }, (err) => {
      V.stopping = false;
      if (err.code !== 'stopped') C.notify('The answer could not be stopped: ' + err.message, { kind: 'error' });
      if (selected === V.id) renderAssistant();
    });
  }

  // ---- events --------------------------------------------------------------------------

  function onHelp(ev) {
    const id = ev.session_id;
    if (!id) return;
    const name = ev.sender ? ev.sender.name || ev.sender.id : 'A user';
    const V = views.get(id);
    if (!(V && V.joined)) helpLive.set(id, name);
    const s = infos.get(id);
    if (s) s.help_requested = true;
    if (!order.includes(id)) {
      order.unshift(id);
      scheduleSessions();
    }
    renderList();
    if (selected === id) renderHeader();
    if (V && V.joined) addSystem(V, name + ' asked for help.', 'help');
    C.notify(name + ' is asking for a human.', {
      kind: 'warn', code: 'help_request', timeout: 20000,
      action: { label: 'Open', onClick: () => select(id, true) },
    });
    if (document.visibilityState !== 'visible') bumpTitle();
    loadOnline();
  }

  function onEvent(ev) {
    switch (ev.type) {
      case 'notification': {
        // assistant_done: the answer ended with nothing stored.
        const V = views.get(ev.session_id);
        if (V) endAnswer(V);
        return;
      }
      case 'user_message':
      case 'admin_message':
      case 'ai_response': {
        if (ev.type === 'ai_response' && ev.done === false) {
          onPiece(ev);
          return;
        }
        const V = views.get(ev.session_id);
        if (V) addEvent(V, ev, true);
        else if (infos.has(ev.session_id)) {
          const s = infos.get(ev.session_id);
          s.last_seq = Math.max(s.last_seq || 0, ev.seq || 0);
          renderList();
        }
        break;
      }
      case 'typing_indicator':
        onTyping(ev);
        break;
      case 'help_request':
        onHelp(ev);
        break;
      case 'admin_join':
      case 'admin_leave': {
        const V = views.get(ev.session_id);
        if (!V || !ev.sender) return;
        const name = ev.sender.name || ev.sender.id;
        if (ev.type === 'admin_join') {
          if (V.admins.has(ev.sender.id)) return;
          V.admins.set(ev.sender.id, name);
          addSystem(V, name + ' (support) joined.', 'join');
        } else {
          if (!V.admins.delete(ev.sender.id)) return;
          addSystem(V, name + ' (support) left.', 'leave');
        }
        if (selected === V.id) renderHeader();
        break;
      }
      case 'loading':
        onLoading(ev);
        break;
      case 'resumed': {
        const s = infos.get(ev.session_id);
        if (s && Number.isSafeInteger(ev.last_seq)) s.last_seq = Math.max(s.last_seq || 0, ev.last_seq);
        const V = views.get(ev.session_id);
        if (V) {
          dropStreams(V, C.answers.resumed(V));
          renderList();
        }
        break;
      }
      default:
        break;
    }
  }

  // On every connection: join again what was joined (a subscription belongs
  // to one connection), resume each, and only then let the outbox resend
  // replies (admin_message needs the join first).
  function onConnected(status, reconnect) {
    me = { user_id: status.user_id, name: status.name, selfType: 'admin' };
    if (!(status.roles || []).includes('admin')) {
      showNotAdmin(status.name + ' (' + status.user_id + ')');
      return null;
    }
    // An answer that streamed comes again (from offset 0) with the resume
    // after each join, before `resumed`.
    for (const V of views.values()) {
      if (V.joined && reconnect) C.answers.stale(V);
    }
    const rejoins = Array.from(views.values()).filter((V) => V.joined).map((V) => join(V, true));
    if (reconnect) loadSessions();
    /* Also on the first connection: the list read at start could not
     * count this page's own socket yet. */
    loadOnline();
    let timer;
    const cap = new Promise((res) => {
      timer = setTimeout(res, REJOIN_WAIT_MS);
    });
    return Promise.race([Promise.all(rejoins), cap]).finally(() => clearTimeout(timer));
  }

  function showNotAdmin(who) {
    if (client) client.stop();
    ui.app.hidden = true;
    ui.notAdmin.hidden = false;
    ui.notAdminText.textContent = 'You are signed in as ' + (who || 'a user') +
      ', and this token does not have the admin role, so it cannot open sessions here.';
    for (const t of timers) clearInterval(t);
    timers = [];
    ui.notAdminSwitch.focus();
  }

  // ---- page start / stop ------------------------------------------------------------------

  function start(tok, claims) {
    token = tok;
    me = { user_id: (claims && claims.sub) || '', name: (claims && (claims.name || claims.sub)) || '',
      selfType: 'admin' };
    infos = new Map();
    order = [];
    views = new Map();
    helpLive = new Map();
    selected = null;
    const who = claims ? (claims.name || claims.sub) + ' (' + claims.sub + ')' : '';
    if (claims && !(Array.isArray(claims.roles) && claims.roles.includes('admin'))) {
      showNotAdmin(who);
      return null;
    }
    ui.notAdmin.hidden = true;
    client = C.pageClient(token, onConnected, onEvent, () => typingOut.stop(), onError);
    renderConversation();
    loadSessions();
    loadOnline();
    timers.push(setInterval(() => {
      if (document.visibilityState === 'visible') loadSessions();
    }, SESSIONS_REFRESH_MS));
    timers.push(setInterval(() => {
      if (document.visibilityState === 'visible') loadOnline();
    }, ONLINE_REFRESH_MS));
    return client;
  }

  function stop() {
    typingOut.stop();
    for (const t of timers) clearInterval(t);
    timers = [];
    clearTimeout(refreshTimer);
    for (const V of views.values()) for (const t of V.typing.values()) clearTimeout(t.timer);
    client = null;
    token = null;
    infos = new Map();
    order = [];
    views = new Map();
    helpLive = new Map();
    selected = null;
    ui.notAdmin.hidden = true;
    ui.list.replaceChildren();
    ui.online.replaceChildren();
    ui.onlineSummary.textContent = '';
    ui.listStatus.textContent = '';
    pane.list.clear();
  }

  // ---- wiring ----------------------------------------------------------------------------

  ui.refreshSessions.addEventListener('click', loadSessions);
  ui.refreshOnline.addEventListener('click', loadOnline);
  ui.helpOnly.addEventListener('change', loadSessions);
  ui.join.addEventListener('click', () => {
    const V = current();
    if (V && client && !V.joined && !V.busy) join(V, false);
  });
  ui.leave.addEventListener('click', () => {
    const V = current();
    if (V && client && V.joined && !V.busy) {
      typingOut.stop();
      leave(V);
    }
  });
  ui.composer.addEventListener('submit', (e) => {
    e.preventDefault();
    const V = current();
    const text = ui.input.value.replace(/^\s*\n/, '').replace(/\s+$/, '');
    if (!V || !V.joined || !text || !client) return;
    ui.input.value = '';
    typingOut.stop();
    sendReply(V, text);
    ui.input.focus();
  });
  C.submitOnEnter(ui.input, ui.composer);
  ui.input.addEventListener('input', () => {
    const V = current();
    typingOut.update(V && V.joined ? V.id : null, !!ui.input.value.trim());
  });
  ui.back.addEventListener('click', () => {
    ui.body.dataset.view = 'list';
  });
  ui.notAdminSwitch.addEventListener('click', () => ui.signOut.click());
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') {
      unseen = 0;
      document.title = 'chatd support';
    }
  });

  C.bootPage({ start, stop });
})();
