/*
 * admin.js: the support page (admin.html). Lists every session for triage
 * (the user's name, the session's title, a preview of its last message,
 * how long the user has waited; those asking for help first) and the users
 * online; live help_request events highlight a session. Selecting a
 * session shows its history (HTTP API); joining it (admin_join) brings its
 * live events and lets support reply (admin_message) until admin_leave;
 * "Mark help resolved" answers a help request (resolve_help). Several
 * sessions may be joined at once, and stay joined across a reload (kept in
 * sessionStorage); after a reconnect each is joined again and resumed from
 * the last event held, before any reply waiting in the outbox is resent.
 * The help and support state of a session comes from the API and the
 * stored session events. Replies go out in order (Chatd.SendQueue) and
 * show "Seen" once the user has read them. In a joined session the
 * assistant's answers show as they stream, and support may stop one
 * (stop_generation).
 */
'use strict';

(function () {
  const C = window.Chatd;
  const $ = (id) => document.getElementById(id);

  const SESSIONS_REFRESH_MS = 20000;
  const ONLINE_REFRESH_MS = 15000;
  const REJOIN_WAIT_MS = 15000;
  const TYPING_IDLE_MS = 3000;
  const JOINED_KEY = 'chatd.admin.joined.';
  const SELECTED_KEY = 'chatd.admin.selected';
  const narrow = window.matchMedia('(max-width: 760px)');

  const ui = {
    body: document.body,
    app: $('app'),
    notAdmin: $('not-admin'),
    notAdminText: $('not-admin-text'),
    notAdminSwitch: $('not-admin-switch'),
    signOut: $('sign-out'),
    list: $('admin-sessions'),
    listStatus: $('sessions-status'),
    stats: $('stats'),
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
    resolve: $('resolve'),
    composer: $('composer'),
    input: $('composer-input'),
    send: $('send'),
    status: $('composer-status'),
    alert: $('composer-alert'),
  };

  let token = null;
  let client = null;
  let me = null; /* {user_id, name, selfType: 'admin'} */
  let infos = new Map(); /* session id -> session info from the API */
  let order = []; /* session ids as the API listed them (help first, then longest waiting) */
  let views = new Map(); /* session id -> V (sessions opened on this page) */
  let helpLive = new Map(); /* session id -> name of who asked, since this page opened */
  let listItems = new Map(); /* session id -> its <li> in the list, kept across drawings */
  let joinedItems = new Map(); /* session id -> its <li> in the joined bar */
  let selected = null;
  const pane = new C.ConversationPane({
    current, token: () => token, me: () => me, render: renderConversation, renderTyping, putPending,
    seen,
  });
  const bar = new C.AssistantBar(() => stopAnswer(current()));
  let counter = 0;
  let timers = [];
  let unseen = 0;
  let refreshTimer = null;
  let online = false;
  let tooLong = false;
  const typingOut = new C.TypingSender(() => client, TYPING_IDLE_MS);

  // The hooks of every session's reply queue.
  const queueHooks = {
    client: () => client,
    build: (p, q) => ({ type: 'admin_message', id: p.id, session_id: q.sid, content: p.content }),
    sending: (p) => refreshPending(p),
    sent: (p) => refreshPending(p),
    retrying: (p, err) => {
      refreshPending(p);
      if (err.code === 'rate_limited') C.notify(C.describeError(err), { kind: 'warn', code: err.code });
    },
    acked: (p, ack, q) => {
      const V = views.get(q.sid);
      if (!V) return;
      V.pending.delete(p.id);
      if (selected === V.id) pane.list.remove(p.key);
      addEvent(V, {
        type: 'admin_message', session_id: V.id, seq: ack.seq, id: p.id, sender: p.sender,
        content: p.content, timestamp: ack.timestamp,
      }, false);
    },
    failed: (p) => {
      if (p.code === 'forbidden') p.error = 'join the conversation first';
      refreshPending(p);
    },
  };

  function newView(id) {
    const V = {
      id,
      tl: new C.Timeline(),
      loading: null,
      loadError: null,
      system: [],
      pending: new Map(),
      queue: new C.SendQueue(queueHooks, id),
      typing: new Map(),
      state: C.support.make(), /* help asked, support people joined */
      ownerRead: 0, /* the highest seq the user has read */
      sentRead: 0,
      details: null,
      joined: false,
      busy: false, /* a join, leave or resolve is on its way */
      unread: 0,
    };
    C.answers.init(V); /* streams, answering, stopping, ... */
    return V;
  }

  function view(id) {
    let V = views.get(id);
    if (!V) {
      V = newView(id);
      views.set(id, V);
    }
    return V;
  }

  // A session's owner as {id, name}: GET api/sessions/{id} gives an
  // object, the admin list the id in `owner` and the name in `owner_name`.
  function ownerOf(s) {
    const o = s && s.owner;
    if (o && typeof o === 'object') return { id: o.id || '', name: o.name || o.id || '' };
    return { id: o || '', name: (s && s.owner_name) || o || '' };
  }

  function info(id) {
    return infos.get(id) || { id, title: '', owner: { id: '', name: helpLive.get(id) || '' }, created_at: '',
      updated_at: '', last_seq: 0, help_requested: false, model: null };
  }

  function titleOf(id) {
    const s = info(id);
    if (s.title) return s.title;
    const V = views.get(id);
    if (V) {
      for (const ev of V.tl.list()) if (ev.type === 'user_message') return C.titleFrom(ev.content) || C.UNTITLED;
    }
    return C.UNTITLED;
  }

  // Whether a session needs a person: its state when this page holds its
  // events, else the list's.
  function helpOpen(id) {
    const V = views.get(id);
    if (V && V.state.known) return V.state.help;
    return !!info(id).help_requested;
  }

  // "3 min", "1 h 5 min" since an RFC 3339 time.
  function waited(since) {
    const ms = Date.now() - Date.parse(since);
    if (!(ms >= 0)) return '';
    const min = Math.floor(ms / 60000);
    if (min < 1) return 'under a minute';
    if (min < 60) return min + ' min';
    const h = Math.floor(min / 60);
    return h + ' h' + (min % 60 ? ' ' + (min % 60) + ' min' : '');
  }

  // ---- joined sessions, kept across a reload -----------------------------------------

  function saveJoined() {
    const ids = Array.from(views.values()).filter((V) => V.joined).map((V) => V.id);
    try {
      sessionStorage.setItem(JOINED_KEY + me.user_id, JSON.stringify(ids));
    } catch (e) {
      /* no storage: a reload forgets them */
    }
  }

  function loadJoined() {
    try {
      const ids = JSON.parse(sessionStorage.getItem(JOINED_KEY + me.user_id) || '[]');
      return Array.isArray(ids) ? ids.filter((x) => typeof x === 'string') : [];
    } catch (e) {
      return [];
    }
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
      s.listedAt = Date.now();
      infos.set(s.id, s);
      order.push(s.id);
      const V = views.get(s.id);
      if (V) C.support.fromListed(V.state, s, V.tl);
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
    loadStats();
  }

  function scheduleSessions() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(loadSessions, 300);
  }

  async function loadStats() {
    const t = token;
    let st;
    try {
      st = await C.api('api/admin/stats', t);
    } catch (err) {
      return; /* an older server: no statistics line */
    }
    if (t !== token || !st) return;
    const parts = [(st.help_open || 0) + ' open help request' + (st.help_open === 1 ? '' : 's')];
    const h = st.help_to_first_admin_ms;
    if (h && h.count && h.median !== null && h.median !== undefined) {
      parts.push('first reply after help: median ' + waitedMs(h.median) +
        (h.p90 !== null && h.p90 !== undefined ? ', 90% ' + waitedMs(h.p90) : ''));
    }
    ui.stats.textContent = parts.join(' · ');
  }

  // A duration in the words of the waiting times ("under a minute", "3 min").
  function waitedMs(ms) {
    return waited(new Date(Date.now() - ms).toISOString());
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
      C.el('span', { class: 'online-list__user' }, u.name && u.name !== u.user_id ? u.name + ' (' + u.user_id + ')' : u.user_id),
      C.el('span', { class: 'muted' }, u.devices + ' device' + (u.devices === 1 ? '' : 's')))));
  }

  function renderList() {
    C.keyedChildren(ui.list, listItems, order, listItem);
    renderJoined();
  }

  // The list's row for session id: li (its row from the last drawing)
  // brought up to date, or a new row.
  function listItem(id, li) {
    if (!li) {
      const b = C.el('button', { type: 'button', class: 'session', dataset: { sessionId: id } });
      b.addEventListener('click', () => select(id, true));
      li = C.el('li', { class: 'session-list__item' }, b);
    }
    const btn = li.firstChild;
    const s = info(id);
    const owner = ownerOf(s);
    const V = views.get(id);
    const live = helpLive.get(id);
    const help = helpOpen(id);
    const badges = C.el('span', { class: 'session__badges' });
    if (live !== undefined) badges.append(C.el('span', { class: 'badge badge--alert' }, 'Asking for help now'));
    else if (help) badges.append(C.el('span', { class: 'badge badge--help' }, 'Help requested'));
    if (s.waiting_since) {
      badges.append(C.el('span', { class: 'badge badge--waiting', title: 'Since ' + C.formatFull(s.waiting_since) },
        'Waiting ' + waited(s.waiting_since)));
    }
    if (V && V.joined) badges.append(C.el('span', { class: 'badge badge--support' }, 'Joined'));
    const others = (Array.isArray(s.admins) ? s.admins : []).filter((a) => a && a.id !== me.user_id);
    if (others.length) {
      badges.append(C.el('span', { class: 'badge' }, 'With ' + others.map((a) => a.name || a.id).join(', ')));
    }
    if (V && V.answering) badges.append(C.el('span', { class: 'badge badge--answering' }, 'Assistant answering'));
    if (V && V.unread) badges.append(C.el('span', { class: 'badge badge--unread' }, V.unread + ' new'));
    const p = s.preview;
    const preview = p && p.content !== undefined
      ? (p.sender_name ? (p.type === 'admin_message' ? C.supportName(p.sender_name, ' (support)') : p.sender_name) + ': ' : '') + p.content
      : (s.last_seq || 0) + ' event' + (s.last_seq === 1 ? '' : 's');
    C.patchChildren(btn, [
      C.el('span', { class: 'session__title' }, owner.name || live || 'Unknown user'),
      C.el('time', { class: 'session__time', datetime: s.updated_at || '' },
        s.updated_at ? C.formatTime(s.updated_at) : ''),
      C.el('span', { class: 'session__topic' }, titleOf(id)),
      C.el('span', { class: 'session__preview' }, preview),
      badges]);
    if (selected === id) btn.setAttribute('aria-current', 'true');
    else btn.removeAttribute('aria-current');
    btn.dataset.help = help ? 'true' : 'false';
    li.classList.toggle('is-help-live', live !== undefined);
    li.classList.toggle('is-help', help);
    return li;
  }

  // The bar of joined conversations, one chip each.
  function renderJoined() {
    const joined = Array.from(views.values()).filter((V) => V.joined).map((V) => V.id);
    ui.joinedBar.hidden = joined.length === 0;
    C.keyedChildren(ui.joinedList, joinedItems, joined, joinedItem);
  }

  function joinedItem(id, li) {
    if (!li) {
      const b = C.el('button', { type: 'button', class: 'chip', dataset: { sessionId: id } });
      b.addEventListener('click', () => select(id, true));
      li = C.el('li', {}, b);
    }
    const b = li.firstChild;
    const V = views.get(id);
    C.patchChildren(b, [ownerOf(info(id)).name || id,
      V.unread ? C.el('span', { class: 'badge badge--unread' }, String(V.unread)) : null]);
    b.title = titleOf(id);
    if (selected === id) b.setAttribute('aria-current', 'true');
    else b.removeAttribute('aria-current');
    return li;
  }

  // ---- the selected session ------------------------------------------------------------

  function current() {
    return selected ? views.get(selected) : null;
  }

  function select(id, byUser) {
    typingOut.stop();
    selected = id;
    try {
      sessionStorage.setItem(SELECTED_KEY, id);
    } catch (e) {
      /* no storage */
    }
    const V = view(id);
    V.unread = 0;
    ui.body.dataset.view = 'conversation';
    renderConversation();
    renderList();
    ensureHistory(V);
    loadDetails(V);
    if (byUser) (V.joined ? ui.input : ui.join).focus();
  }

  function ensureHistory(V) {
    pane.loadHistory(V, info(V.id).last_seq, (lastSeq) => {
      const s = infos.get(V.id);
      if (s) s.last_seq = Math.max(s.last_seq || 0, lastSeq);
      C.support.rebuild(V.state, V.tl);
      if (V.joined && client) client.resume(V.id, V.tl.high);
      if (selected === V.id) {
        renderConversation();
        markReadIfSeen();
      }
      renderList();
    });
  }

  // One session's details: help and who is joined as of its last_seq, the
  // user's read marker, its title.
  function loadDetails(V) {
    if (V.details) return;
    const t = token;
    V.details = C.api('api/sessions/' + encodeURIComponent(V.id), t).then((d) => {
      if (t !== token || !d) return;
      const s = infos.get(V.id);
      if (s && typeof d.title === 'string') s.title = d.title;
      if (!s) {
        infos.set(V.id, { id: V.id, title: d.title || '', owner: d.owner, created_at: d.created,
          updated_at: d.updated, last_seq: d.last_seq, help_requested: !!d.help, model: d.model });
      }
      C.support.fromDetails(V.state, d, V.tl);
      const owner = ownerOf(infos.get(V.id) || d);
      const r = d.read && owner.id ? Number(d.read[owner.id]) : 0;
      if (r > V.ownerRead) V.ownerRead = r;
      if (selected === V.id) {
        renderHeader();
        pane.refreshSeen(V);
      }
      renderList();
    }, () => {
      /* an older server: the list and the events still count */
    }).finally(() => {
      V.details = null;
    });
  }

  function seen(V, ev) {
    return !!ev.sender && ev.sender.type === 'admin' && ev.sender.id === me.user_id && ev.seq <= V.ownerRead;
  }

  // Tell the user (and their devices) that support has read up to the end:
  // in a joined session, shown at its end, the page visible.
  function markReadIfSeen() {
    const V = current();
    if (!V || !V.joined || !V.tl.last || document.visibilityState !== 'visible' || !pane.atBottom()) return;
    const seq = V.tl.last;
    if (seq > V.sentRead && client && client.send({ type: 'read', session_id: V.id, seq })) V.sentRead = seq;
  }

  function renderHeader() {
    const V = current();
    if (!V) {
      ui.title.textContent = 'No session selected';
      ui.sub.textContent = '';
      ui.join.hidden = true;
      ui.leave.hidden = true;
      ui.resolve.hidden = true;
      setComposer(false);
      renderAssistant();
      return;
    }
    const s = info(V.id);
    const owner = ownerOf(s);
    ui.title.textContent = titleOf(V.id);
    ui.title.title = ui.title.textContent;
    const parts = [];
    const who = owner.name || helpLive.get(V.id) || '';
    if (who) parts.push(who + (owner.id && owner.id !== who ? ' (' + owner.id + ')' : ''));
    if (s.created_at) parts.push('started ' + C.formatTime(s.created_at));
    if (s.model) parts.push('model ' + s.model);
    const help = helpOpen(V.id);
    if (helpLive.has(V.id)) parts.push('asking for help now');
    else if (help) parts.push('help requested');
    const others = Array.from(V.state.admins).filter(([id]) => id !== me.user_id).map(([, n]) => n);
    if (others.length) parts.push('also here: ' + others.join(', '));
    parts.push(V.joined ? 'you are in this conversation' : 'read only: join to reply');
    ui.sub.textContent = parts.join(' · ');
    ui.join.hidden = V.joined;
    ui.leave.hidden = !V.joined;
    ui.resolve.hidden = !help;
    ui.join.disabled = V.busy || !online;
    ui.leave.disabled = V.busy || !online;
    ui.resolve.disabled = V.busy || !online;
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
    ui.input.placeholder = on ? 'Write a reply…' : 'Join the conversation to reply';
    updateComposer();
  }

  function composed() {
    return ui.input.value.replace(/^\s*\n/, '').replace(/\s+$/, '');
  }

  /* Send is enabled in a joined session while connected and while the
   * reply fits max_content_bytes (see the chat page's updateComposer). */
  function updateComposer() {
    const V = current();
    const on = !!V && V.joined;
    const limit = C.contentLimit(client && client.status);
    const bytes = C.byteLength(composed());
    const over = bytes > limit;
    ui.send.disabled = !on || !online || over;
    ui.input.setAttribute('aria-invalid', over ? 'true' : 'false');
    let text = '';
    let kind = '';
    if (on && !online) {
      text = 'Not connected: what you write stays here until the connection is back.';
      kind = 'offline';
    } else if (over) {
      text = 'Too long to send: ' + bytes.toLocaleString('en') + ' of ' + limit.toLocaleString('en') +
        ' bytes. Shorten the reply.';
      kind = 'over';
    } else if (bytes >= limit * 0.75) {
      text = bytes.toLocaleString('en') + ' of ' + limit.toLocaleString('en') + ' bytes';
      kind = 'near';
    }
    ui.status.hidden = !text;
    if (ui.status.textContent !== text) ui.status.textContent = text;
    ui.status.dataset.kind = kind;
    if (over !== tooLong) {
      tooLong = over;
      ui.alert.textContent = over ? 'The reply is too long to send: at most ' +
        limit.toLocaleString('en') + ' bytes.' : '';
    }
  }

  function onConnState(s) {
    const now = s.state === 'open' || s.state === 'preparing';
    if (now === online) return;
    online = now;
    if (current()) renderHeader();
    else updateComposer();
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
    const changed = C.support.apply(V.state, ev, V.tl);
    if (changed && s && (ev.type === 'help_request' || ev.type === 'help_resolved')) {
      s.help_requested = V.state.help;
    }
    const mine = ev.sender && ev.sender.id === me.user_id && ev.sender.type === 'admin';
    if (selected === V.id) {
      pane.addEvent(V, ev, mine);
      if (changed) renderHeader();
      markReadIfSeen();
    } else if (live && !mine && !C.isSessionEvent(ev)) {
      V.unread++;
    }
    if (live && !mine && !C.isSessionEvent(ev) && document.visibilityState !== 'visible') bumpTitle();
    if (!C.isSessionEvent(ev)) pane.typingDone(V, ev.sender);
    renderList();
  }

  function addSystem(V, text, kind, code) {
    const s = { key: [V.tl.last, ++counter], text, kind, code };
    V.system.push(s);
    if (selected === V.id) pane.add(s.key, C.systemNode(text, kind, code), true);
  }

  // A session event from a server that does not number them: it changes
  // the state and shows as a line of this page only.
  function unnumberedEvent(V, ev) {
    if (!C.support.apply(V.state, ev)) return;
    addSystem(V, C.sessionEventText(ev, me), ev.type === 'help_request' ? 'help' : 'join');
    if (selected === V.id) renderHeader();
  }

  // An ack that stored a session event sent by this page: the event itself
  // (the same as other devices get), or the state alone when the server
  // does not number it or stored nothing (duplicate).
  function ackedEvent(V, type, ack) {
    const ev = { type, session_id: V.id, seq: ack.seq, timestamp: ack.timestamp,
      sender: { type: 'admin', id: me.user_id, name: me.name } };
    if (ack.duplicate) return;
    if (Number.isSafeInteger(ack.seq)) addEvent(V, ev, false);
    else {
      delete ev.seq;
      unnumberedEvent(V, ev);
    }
  }

  function bumpTitle() {
    unseen++;
    document.title = '(' + unseen + ') chatd support';
  }

  // ---- join, leave, resolve, reply ----------------------------------------------------

  function join(V, rejoin) {
    V.busy = true;
    if (selected === V.id) renderHeader();
    return client.request({ type: 'admin_join', session_id: V.id }, { prelude: rejoin }).then((ack) => {
      V.busy = false;
      const was = V.joined;
      V.joined = true;
      helpLive.delete(V.id);
      saveJoined();
      if (!was || Number.isSafeInteger(ack.seq)) ackedEvent(V, 'admin_join', ack);
      // Everything after the last event held, then live.
      if (V.tl.loaded) client.resume(V.id, V.tl.high);
      else ensureHistory(V);
      V.sentRead = 0;
      if (selected === V.id) {
        renderHeader();
        if (!rejoin) ui.input.focus();
        markReadIfSeen();
      }
      renderList();
    }, (err) => {
      V.busy = false;
      V.joined = false;
      saveJoined();
      dropStreams(V, C.answers.clear(V));
      if (err.code !== 'stopped') {
        C.notify('Could not join "' + titleOf(V.id) + '": ' + err.message, { kind: 'error', code: 'join' });
      }
      if (selected === V.id) renderHeader();
      renderList();
    });
  }

  function leave(V) {
    V.busy = true;
    renderHeader();
    client.request({ type: 'admin_leave', session_id: V.id }).then((ack) => {
      V.busy = false;
      V.joined = false;
      saveJoined();
      // Its answers no longer arrive here.
      dropStreams(V, C.answers.clear(V));
      ackedEvent(V, 'admin_leave', ack);
      if (selected === V.id) {
        renderHeader();
        ui.join.focus();
      }
      renderList();
    }, (err) => {
      V.busy = false;
      if (err.code !== 'stopped') C.notify('Could not leave: ' + err.message, { kind: 'error', code: 'leave' });
      if (selected === V.id) renderHeader();
    });
  }

  function resolve(V) {
    V.busy = true;
    renderHeader();
    client.request({ type: 'resolve_help', session_id: V.id }).then((ack) => {
      V.busy = false;
      helpLive.delete(V.id);
      ackedEvent(V, 'help_resolved', ack);
      V.state.help = false;
      const s = infos.get(V.id);
      if (s) s.help_requested = false;
      if (selected === V.id) {
        renderHeader();
        (V.joined ? ui.input : ui.join).focus();
      }
      renderList();
      scheduleSessions();
    }, (err) => {
      V.busy = false;
      if (err.code !== 'stopped') {
        C.notify('The help request could not be marked resolved: ' + err.message, { kind: 'error', code: 'resolve' });
      }
      if (selected === V.id) renderHeader();
    });
  }

  function ownerView(p) {
    for (const V of views.values()) if (V.pending.has(p.id)) return V;
    return null;
  }

  function putPending(V, p) {
    const actions = [];
    if (p.retryable) actions.push({ label: 'Retry', onClick: () => V.queue.retry(p) });
    actions.push({
      label: 'Discard',
      onClick: () => {
        V.queue.remove(p);
        V.pending.delete(p.id);
        pane.list.remove(p.key);
        ui.input.focus();
      },
    });
    pane.list.put(p.key, C.messageNode({ pending: p, actions }, me));
  }

  function refreshPending(p) {
    const V = ownerView(p);
    if (V && selected === V.id) putPending(V, p);
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
    V.queue.push(p);
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
    if (V && Number.isSafeInteger(ev.seq) && V.tl.has(ev.seq)) return; /* already held */
    if (!(V && V.joined)) helpLive.set(id, name);
    const s = infos.get(id);
    if (s) s.help_requested = true;
    if (!order.includes(id)) {
      order.unshift(id);
      scheduleSessions();
    }
    if (V) {
      if (Number.isSafeInteger(ev.seq)) addEvent(V, ev, true);
      else unnumberedEvent(V, ev);
    }
    renderList();
    if (selected === id) renderHeader();
    C.notify(name + ' is asking for a person.', {
      kind: 'warn', code: 'help_request', key: 'help_request:' + id, timeout: 20000,
      action: { label: 'Open', onClick: () => select(id, true) },
    });
    if (document.visibilityState !== 'visible') bumpTitle();
    loadOnline();
  }

  function onResolved(ev) {
    const id = ev.session_id;
    if (!id) return;
    helpLive.delete(id);
    C.unnotify('help_request:' + id);
    const s = infos.get(id);
    if (s) s.help_requested = false;
    const V = views.get(id);
    if (V) {
      if (Number.isSafeInteger(ev.seq)) addEvent(V, ev, true);
      else unnumberedEvent(V, ev);
    }
    renderList();
    if (selected === id) renderHeader();
  }

  function onEvent(ev) {
    switch (ev.type) {
      case 'notification': {
        if (ev.code === 'session_renamed') {
          const s = infos.get(ev.session_id);
          if (s && typeof ev.title === 'string') s.title = ev.title;
          renderList();
          if (selected === ev.session_id) renderHeader();
          return;
        }
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
      case 'help_resolved':
        onResolved(ev);
        break;
      case 'read': {
        // The user's marker: this page's replies up to it are "Seen".
        const V = views.get(ev.session_id);
        const s = ev.sender;
        if (!V || !s || s.type !== 'user' || !Number.isSafeInteger(ev.seq)) break;
        const owner = ownerOf(info(V.id));
        if (owner.id && s.id !== owner.id) break;
        if (ev.seq > V.ownerRead) {
          V.ownerRead = ev.seq;
          if (selected === V.id) pane.refreshSeen(V);
        }
        break;
      }
      case 'admin_join':
      case 'admin_leave': {
        const V = views.get(ev.session_id);
        if (!V || !ev.sender) return;
        if (Number.isSafeInteger(ev.seq)) addEvent(V, ev, true);
        else unnumberedEvent(V, ev);
        renderList();
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
  // to one connection; after a reload, what this tab had joined), resume
  // each, and only then let the outbox resend replies (admin_message needs
  // the join first).
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
    if (reconnect) {
      loadSessions();
      const V = current();
      if (V) loadDetails(V);
    }
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
    online = false;
    const who = claims ? (claims.name || claims.sub) + ' (' + claims.sub + ')' : '';
    if (claims && !(Array.isArray(claims.roles) && claims.roles.includes('admin'))) {
      showNotAdmin(who);
      return null;
    }
    ui.notAdmin.hidden = true;
    client = C.pageClient(token, onConnected, onEvent, () => typingOut.stop(), onError);
    client.on('state', onConnState);
    // What this tab had joined before a reload: joined again on connecting.
    for (const id of loadJoined()) view(id).joined = true;
    let pick = null;
    try {
      pick = sessionStorage.getItem(SELECTED_KEY);
    } catch (e) {
      pick = null;
    }
    if (pick) select(pick, false);
    else renderConversation();
    if (narrow.matches && !pick) ui.body.dataset.view = 'list';
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
    for (const V of views.values()) {
      V.queue.clear();
      for (const t of V.typing.values()) clearTimeout(t.timer);
    }
    client = null;
    token = null;
    infos = new Map();
    order = [];
    views = new Map();
    helpLive = new Map();
    selected = null;
    online = false;
    ui.notAdmin.hidden = true;
    ui.list.replaceChildren();
    listItems = new Map();
    ui.joinedList.replaceChildren();
    ui.joinedBar.hidden = true;
    joinedItems = new Map();
    ui.online.replaceChildren();
    ui.onlineSummary.textContent = '';
    ui.listStatus.textContent = '';
    ui.stats.textContent = '';
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
  ui.resolve.addEventListener('click', () => {
    const V = current();
    if (V && client && !V.busy) resolve(V);
  });
  ui.composer.addEventListener('submit', (e) => {
    e.preventDefault();
    const V = current();
    const text = composed();
    if (!V || !V.joined || !text || !client || !online ||
        C.byteLength(text) > C.contentLimit(client.status)) {
      if (V && V.joined) ui.input.focus();
      return;
    }
    ui.input.value = '';
    updateComposer();
    typingOut.stop();
    sendReply(V, text);
    ui.input.focus();
  });
  C.submitOnEnter(ui.input, ui.composer);
  ui.input.addEventListener('input', () => {
    const V = current();
    typingOut.update(V && V.joined ? V.id : null, !!ui.input.value.trim());
    updateComposer();
  });
  ui.back.addEventListener('click', () => {
    ui.body.dataset.view = 'list';
  });
  ui.notAdminSwitch.addEventListener('click', () => ui.signOut.click());
  pane.scroll.addEventListener('scroll', () => {
    if (pane.atBottom()) markReadIfSeen();
  }, { passive: true });
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') {
      unseen = 0;
      document.title = 'chatd support';
      markReadIfSeen();
    }
  });

  C.bootPage({ start, stop });
})();
