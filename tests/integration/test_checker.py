"""The history checker (tests/checker.py) on hand-built histories: a clean
run passes, and each anomaly it is meant to find, built on purpose, is
flagged with its kind, so a crash test that reports no anomaly means
something. No chatd is started: the checker alone is under test."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from checker import DUPLICATED, LOST, REORDERED, UNEXPECTED, History  # noqa: E402
from harness import run  # noqa: E402

S = "s1"


def ev(seq, cid, content=None, sender="ann", sid=S):
    return {"type": "user_message", "session_id": sid, "seq": seq, "id": cid,
            "sender": {"type": "user", "id": sender}, "content": content or "m " + cid}


def sent_and_acked(h, n, user="ann", sid=S):
    """n messages c1..cn of user, acked at seqs 1..n."""
    for i in range(1, n + 1):
        h.send(user, "c%d" % i, "m c%d" % i, sid)
        h.ack(user, "c%d" % i, sid, i)


def stored(n, sid=S):
    return [ev(i, "c%d" % i, sid=sid) for i in range(1, n + 1)]


def device_sees(h, device, events, resume=None, user="ann"):
    """A connection of device that (optionally) resumes after resume[0],
    answered with last_seq resume[1] after the events, and receives them."""
    c = h.connect(device, user)
    if resume is not None:
        h.resume(c, S, resume[0])
    for e in events:
        h.received(c, e)
    if resume is not None:
        h.received(c, {"type": "resumed", "session_id": S, "last_seq": resume[1]})
    return c


def kinds(anomalies):
    return sorted(a.kind for a in anomalies)


def check(h, final, **kw):
    return h.check(final, out=None, **kw)


def test_a_clean_history_has_no_anomaly():
    h = History()
    sent_and_acked(h, 5)
    # An attempt lost with the connection, retried and acked: one op.
    h.send("ann", "c6", "m c6", S)
    h.unknown("ann", "c6")
    h.send("ann", "c6", "m c6", S)
    h.ack("ann", "c6", S, 6)
    # Unknown outcomes: one stored, one not; a refusal not stored.
    h.send("ann", "c7", "m c7", S)
    h.unknown("ann", "c7")
    h.send("ann", "u1", "m u1", S)
    h.unknown("ann", "u1")
    h.send("ann", "r1", "m r1", S)
    h.refused("ann", "r1")
    final = {S: stored(7)}
    # A device with every event live; one that had 1..3, reconnects,
    # resumes after 3 and gets 4..6 in any order before `resumed` (replayed
    # and live ones mixed), then 7 live.
    device_sees(h, "ann-phone", stored(7))
    c = device_sees(h, "ann-tab", stored(3))
    c2 = device_sees(h, "ann-tab", [ev(5, "c5"), ev(4, "c4"), ev(6, "c6")], resume=(3, 6))
    h.received(c2, ev(7, "c7"))
    assert c is not c2
    got = check(h, final, complete={"ann-phone": [S], "ann-tab": [S]})
    assert got == [], got
    st = h.stats()
    assert (st["operations"], st["acked"], st["unknown"], st["refused"]) == (9, 6, 2, 1), st


def test_lost_acknowledged_message_absent_from_history():
    h = History()
    sent_and_acked(h, 3)
    assert kinds(check(h, {S: stored(2)})) == [LOST]


def test_lost_acknowledged_message_stored_at_another_seq():
    h = History()
    sent_and_acked(h, 2)
    final = {S: [ev(1, "c2", "m c2"), ev(2, "c1", "m c1")]}
    assert kinds(check(h, final)) == [LOST, LOST]


def test_lost_on_a_device_that_resumed_past_it():
    h = History()
    sent_and_acked(h, 4)
    device_sees(h, "ann-tab", [ev(2, "c2"), ev(4, "c4")], resume=(1, 4))
    got = check(h, {S: stored(4)})
    assert kinds(got) == [LOST], got
    assert "seq 3" in got[0].detail, got


def test_lost_on_a_device_that_must_end_complete():
    h = History()
    sent_and_acked(h, 3)
    device_sees(h, "ann-phone", stored(2))
    assert check(h, {S: stored(3)}) == []
    assert kinds(check(h, {S: stored(3)}, complete={"ann-phone": [S]})) == [LOST]


def test_duplicated_in_storage():
    h = History()
    sent_and_acked(h, 2)
    got = check(h, {S: stored(2) + [ev(3, "c2")]})
    assert kinds(got) == [DUPLICATED], got


def test_unknown_outcome_stored_twice_is_duplicated_once_is_not():
    h = History()
    h.send("ann", "x", "m x", S)
    h.unknown("ann", "x")
    assert check(h, {S: [ev(1, "x")]}) == []
    assert check(h, {S: []}) == []
    assert kinds(check(h, {S: [ev(1, "x"), ev(2, "x")]})) == [DUPLICATED]


def test_duplicated_seq_in_storage():
    h = History()
    sent_and_acked(h, 2)
    got = check(h, {S: [ev(1, "c1"), ev(2, "c2"), ev(2, "c2")]})
    assert DUPLICATED in kinds(got), got


def test_duplicated_ack_at_two_seqs():
    h = History()
    h.send("ann", "c1", "m c1", S)
    h.ack("ann", "c1", S, 1)
    h.send("ann", "c1", "m c1", S)
    h.ack("ann", "c1", S, 2)
    assert DUPLICATED in kinds(check(h, {S: [ev(1, "c1")]}))


def test_duplicated_delivery_on_one_connection():
    h = History()
    sent_and_acked(h, 3)
    device_sees(h, "ann-phone", [ev(1, "c1"), ev(2, "c2"), ev(2, "c2"), ev(3, "c3")])
    assert kinds(check(h, {S: stored(3)})) == [DUPLICATED]


def test_duplicated_message_at_two_seqs_on_one_device():
    h = History()
    sent_and_acked(h, 3)
    device_sees(h, "ann-phone", stored(2))
    # Another connection of the same device sees c2 again at seq 3.
    device_sees(h, "ann-phone", [ev(3, "c2")], resume=(2, 3))
    got = check(h, {S: stored(3)})
    assert DUPLICATED in kinds(got), got


def test_reordered_live_events():
    h = History()
    sent_and_acked(h, 3)
    device_sees(h, "ann-phone", [ev(1, "c1"), ev(3, "c3"), ev(2, "c2")])
    assert REORDERED in kinds(check(h, {S: stored(3)}))


def test_reordered_gap_after_resume():
    h = History()
    sent_and_acked(h, 5)
    c = device_sees(h, "ann-tab", [ev(2, "c2"), ev(3, "c3")], resume=(1, 3))
    h.received(c, ev(5, "c5"))  # 4 skipped after the resume was answered
    got = check(h, {S: stored(5)})
    assert kinds(got) == [REORDERED], got


def test_reordered_gap_in_storage():
    h = History()
    h.send("ann", "c1", "m c1", S)
    h.ack("ann", "c1", S, 1)
    h.send("ann", "c3", "m c3", S)
    h.ack("ann", "c3", S, 3)
    got = check(h, {S: [ev(1, "c1"), ev(3, "c3")]})
    assert kinds(got) == [REORDERED], got


def test_reordered_resume_leaves_an_unacked_event_out():
    h = History()
    h.send("ann", "c1", "m c1", S)
    h.ack("ann", "c1", S, 1)
    h.send("ann", "c2", "m c2", S)
    h.unknown("ann", "c2")   # stored, never acked
    device_sees(h, "ann-tab", [ev(1, "c1")], resume=(0, 2))
    got = check(h, {S: stored(2)})
    assert kinds(got) == [REORDERED], got


def test_unexpected_message_nobody_sent():
    h = History()
    sent_and_acked(h, 1)
    got = check(h, {S: stored(1) + [ev(2, "ghost")]})
    assert kinds(got) == [UNEXPECTED], got
    # Unless the test says such events are expected (an assistant's answer).
    assert check(h, {S: stored(1) + [ev(2, "ghost")]},
                 untracked=lambda e: e["id"] == "ghost") == []


def test_unexpected_content():
    h = History()
    sent_and_acked(h, 2)
    got = check(h, {S: [ev(1, "c1"), ev(2, "c2", "something else")]})
    assert kinds(got) == [UNEXPECTED], got


def test_unexpected_event_on_a_device():
    h = History()
    sent_and_acked(h, 2)
    device_sees(h, "ann-phone", [ev(1, "c1"), ev(2, "c2", "changed on the way")])
    got = check(h, {S: stored(2)})
    assert kinds(got) == [UNEXPECTED], got
    h2 = History()
    sent_and_acked(h2, 2)
    device_sees(h2, "ann-phone", [ev(1, "c1"), ev(2, "c2"), ev(3, "nobody")])
    got = check(h2, {S: stored(2)})
    assert kinds(got) == [UNEXPECTED, UNEXPECTED], got


def test_unexpected_refused_message_stored():
    h = History()
    h.send("ann", "r1", "m r1", S)
    h.refused("ann", "r1")
    assert kinds(check(h, {S: [ev(1, "r1")]})) == [UNEXPECTED]
    # A refusal that says the message may have been stored allows it.
    h2 = History()
    h2.send("ann", "r1", "m r1", S)
    h2.refused("ann", "r1", maybe_stored=True)
    assert check(h2, {S: [ev(1, "r1")]}) == []


def test_another_users_message_with_the_same_id_is_another_message():
    h = History()
    sent_and_acked(h, 1)
    h.send("bob", "c1", "m c1", "s2")
    h.ack("bob", "c1", "s2", 1)
    final = {S: stored(1), "s2": [ev(1, "c1", sender="bob", sid="s2")]}
    assert check(h, final) == []
    # ann's id under bob's name: bob never sent c2.
    final["s2"].append(ev(2, "c2", sender="bob", sid="s2"))
    assert kinds(check(h, final)) == [UNEXPECTED]


def test_summary_counts_each_kind():
    h = History()
    sent_and_acked(h, 2)
    lines = []
    got = h.check({S: stored(1) + [ev(2, "ghost")]}, out=lines.append)
    assert kinds(got) == [LOST, UNEXPECTED], got
    assert "LOST=1, DUPLICATED=0, REORDERED=0, UNEXPECTED=1" in lines[0], lines


if __name__ == "__main__":
    run([test_a_clean_history_has_no_anomaly,
         test_lost_acknowledged_message_absent_from_history,
         test_lost_acknowledged_message_stored_at_another_seq,
         test_lost_on_a_device_that_resumed_past_it,
         test_lost_on_a_device_that_must_end_complete,
         test_duplicated_in_storage,
         test_unknown_outcome_stored_twice_is_duplicated_once_is_not,
         test_duplicated_seq_in_storage,
         test_duplicated_ack_at_two_seqs,
         test_duplicated_delivery_on_one_connection,
         test_duplicated_message_at_two_seqs_on_one_device,
         test_reordered_live_events,
         test_reordered_gap_after_resume,
         test_reordered_gap_in_storage,
         test_reordered_resume_leaves_an_unacked_event_out,
         test_unexpected_message_nobody_sent,
         test_unexpected_content,
         test_unexpected_event_on_a_device,
         test_unexpected_refused_message_stored,
         test_another_users_message_with_the_same_id_is_another_message,
         test_summary_counts_each_kind])
