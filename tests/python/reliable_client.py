"""A reliable-stream client written from proto/PROTOCOL.md alone (sections 1-6 and 10).

It uses only the official protobuf package and classes that protoc generated from our .proto
files; the framing and session basics come from session_client.py beside it (also written
from the document). Against the tcp-echo-server example started with `--reliable` it:

1. opens a stream (Resume with a fresh stream id: the server answers NEW_STREAM with an
   incarnation), sends 200 numbered messages and reads part of the echoes, acknowledging them;
2. cuts the connection without a Close, reconnects and resumes with its counts: the server
   answers RESUMED with how many messages it has, each side sends again only what the other is
   missing, and every echo arrives exactly once and in order;
3. closes the stream once the server has acknowledged everything (a session Close), then
   resumes it with `closing = true` and is told CLOSED;
4. loses the answer that opened a stream (disconnects without reading it) and resumes with the
   incarnation it knew (0): the server starts the stream afresh (NEW_STREAM, a new incarnation)
   instead of taking the client's counts as a resume;
5. resumes with counts no honest client sends (more received than the server ever wrote) and
   is told REFUSED;
6. resumes an unknown stream with `closing = true` and is told CLOSED (a close never opens a
   stream).

usage: reliable_client.py HOST:PORT
"""

import os
import random
import socket
import sys

from connect.example.v1 import hello_pb2
from connect.reliable.v1 import reliable_pb2 as r
from connect.v1 import session_pb2 as s
from session_client import CONTROL_PREFIX, Peer, full_name, unpack

CAPABILITY = "connect.reliable.v1"
RELIABLE_PREFIX = "connect.reliable.v1."
TOTAL = 200
WINDOW_MESSAGES = 64
WINDOW_BYTES = 1 << 20


def open_session(addr):
    """Sections 3 and 10: a Hello listing the capability; the Welcome must repeat it."""
    peer = Peer(addr)
    peer.send(s.Hello(
        versions=[1],
        properties={"product": "python-reliable-spec-client", "platform": "Python"},
        capabilities=[CAPABILITY],
    ))
    welcome = unpack(peer.recv(10), s.Welcome)
    assert CAPABILITY in welcome.capabilities, welcome
    return peer


def resume(peer, **fields):
    """Sends our Resume and returns the server's (control frames before it are answered)."""
    peer.send(r.Resume(window_messages=WINDOW_MESSAGES, window_bytes=WINDOW_BYTES, **fields))
    while True:
        frame = peer.recv(10)
        assert frame not in (None, "timeout"), f"no Resume answer: {frame}"
        name = full_name(frame)
        if name == "connect.v1.Ping":
            peer.send(s.Pong(id=unpack(frame, s.Ping).id))
            continue
        assert name == "connect.reliable.v1.Resume", f"first frame {name}"
        answer = unpack(frame, r.Resume)
        assert answer.stream_id == fields["stream_id"], "stream id not echoed"
        return answer


def expect_end(peer):
    """After CLOSED, BUSY or REFUSED the server closes the session (section 6) or just
    disconnects: answer its Close, then read to the end of stream."""
    while True:
        frame = peer.recv(10)
        assert frame != "timeout", "the server kept the connection open"
        if frame is None:
            break
        name = full_name(frame)
        if name == "connect.v1.Close":
            peer.send(s.CloseOk())
            peer.sock.shutdown(socket.SHUT_WR)
        elif name == "connect.v1.Ping":
            peer.send(s.Pong(id=unpack(frame, s.Ping).id))
        else:
            assert name.startswith(CONTROL_PREFIX), f"unexpected {name} after the answer"
    peer.sock.close()


class Stream:
    """One direction each way, numbered implicitly 0, 1, 2, ... (section 10)."""

    def __init__(self):
        self.stream_id = os.urandom(16)
        self.incarnation = 0
        self.outgoing = []  # every message of ours, by wire number
        self.written = 0  # how many of them are written on the current connection
        self.peer_acked = 0  # the server's cumulative Ack of our messages
        self.received = []  # the server's messages, by wire number
        self.acked_sent = 0  # our last Ack

    def connect(self, addr, expected_status):
        peer = open_session(addr)
        answer = resume(peer, stream_id=self.stream_id, received=len(self.received),
                        acknowledged=self.peer_acked, incarnation=self.incarnation)
        assert answer.status == expected_status, (
            f"expected {r.ResumeStatus.Name(expected_status)}, got "
            f"{r.ResumeStatus.Name(answer.status)}: {answer.reason}")
        assert answer.incarnation != 0, "an answer carrying the stream names its incarnation"
        assert answer.resumed == (answer.status == r.RESUME_STATUS_RESUMED)
        self.incarnation = answer.incarnation
        if answer.status == r.RESUME_STATUS_NEW_STREAM:
            assert answer.received == 0, answer
            self.received, self.written = [], 0
        else:
            # Send from the server's count on: what it is missing, never what it has.
            assert self.peer_acked <= answer.received <= len(self.outgoing), answer
            self.written = answer.received
        return peer

    def pump(self, peer, until_received):
        """Writes within the server's window and reads until `until_received` messages of the
        server's have arrived in all."""
        while len(self.received) < until_received:
            while (self.written < len(self.outgoing)
                   and self.written - self.peer_acked < WINDOW_MESSAGES):
                peer.send(self.outgoing[self.written])
                self.written += 1
            frame = peer.recv(10)
            assert frame not in (None, "timeout"), f"stream stalled: {frame}"
            name = full_name(frame)
            if name == "connect.v1.Ping":
                peer.send(s.Pong(id=unpack(frame, s.Ping).id))
            elif name == "connect.reliable.v1.Ack":
                delivered = unpack(frame, r.Ack).delivered
                assert self.peer_acked <= delivered <= self.written, delivered
                self.peer_acked = delivered
            elif name.startswith(CONTROL_PREFIX) or name.startswith(RELIABLE_PREFIX):
                raise AssertionError(f"unexpected {name}")
            else:
                self.received.append(unpack(frame, hello_pb2.HelloWorld))
                # Acknowledge every 16 messages taken (any batching is allowed).
                if len(self.received) - self.acked_sent >= 16:
                    self.acked_sent = len(self.received)
                    peer.send(r.Ack(delivered=self.acked_sent))

    def settle(self, peer):
        """Acknowledges everything taken and waits for the server's Ack of all we sent."""
        peer.send(r.Ack(delivered=len(self.received)))
        self.acked_sent = len(self.received)
        while self.peer_acked < len(self.outgoing):
            frame = peer.recv(10)
            assert frame not in (None, "timeout"), "no final Ack"
            name = full_name(frame)
            if name == "connect.reliable.v1.Ack":
                self.peer_acked = unpack(frame, r.Ack).delivered
            elif name == "connect.v1.Ping":
                peer.send(s.Pong(id=unpack(frame, s.Ping).id))
            else:
                raise AssertionError(f"unexpected {name} while settling")


def main():
    addr = sys.argv[1]
    stream = Stream()
    for i in range(TOTAL):
        stream.outgoing.append(hello_pb2.HelloWorld(text=f"message {i}", sequence=i))

    # 1. A new stream; part of the echoes, then a cut (no Close).
    peer = stream.connect(addr, r.RESUME_STATUS_NEW_STREAM)
    cut_at = random.randint(40, 120)
    stream.pump(peer, cut_at)
    peer.sock.close()
    print(f"opened: new stream, cut after {cut_at} echoes "
          f"({stream.written} written, {stream.peer_acked} acknowledged)")

    # 2. Resume: the rest arrives exactly once, in order.
    peer = stream.connect(addr, r.RESUME_STATUS_RESUMED)
    resent_from = stream.written
    stream.pump(peer, TOTAL)
    sequences = [m.sequence for m in stream.received]
    assert sequences == list(range(TOTAL)), "echoes lost, duplicated or out of order"
    print(f"resumed: server had {resent_from} of ours; {TOTAL} echoes exactly once, in order")

    # 3. Close once everything is acknowledged (section 6), then resume with closing = true.
    stream.settle(peer)
    peer.send(s.Close(code=s.REASON_CODE_NORMAL, reason="done"))
    while True:
        frame = peer.recv(10)
        assert frame not in (None, "timeout"), f"no CloseOk: {frame}"
        name = full_name(frame)
        if name == "connect.v1.CloseOk":
            break
        assert name in ("connect.v1.Ping", "connect.reliable.v1.Ack"), f"unexpected {name}"
        if name == "connect.v1.Ping":
            peer.send(s.Pong(id=unpack(frame, s.Ping).id))
    peer.sock.shutdown(socket.SHUT_WR)
    assert peer.recv(10) is None, "end of stream after CloseOk"
    peer.sock.close()
    peer = open_session(addr)
    answer = resume(peer, stream_id=stream.stream_id, received=TOTAL, acknowledged=TOTAL,
                    incarnation=stream.incarnation, closing=True)
    assert answer.status == r.RESUME_STATUS_CLOSED, r.ResumeStatus.Name(answer.status)
    expect_end(peer)
    print("closed: resuming the closed stream answers CLOSED")

    # 4. The answer that opened a stream is lost: the stream starts afresh, not "resumed".
    lost = Stream()
    peer = open_session(addr)
    peer.send(r.Resume(stream_id=lost.stream_id, window_messages=WINDOW_MESSAGES,
                       window_bytes=WINDOW_BYTES))
    peer.sock.close()  # never read the NEW_STREAM answer
    lost.received = [None] * 3  # counts from a stream state we never heard of
    peer = open_session(addr)
    answer = resume(peer, stream_id=lost.stream_id, received=3, acknowledged=0, incarnation=0)
    assert answer.status == r.RESUME_STATUS_NEW_STREAM, r.ResumeStatus.Name(answer.status)
    assert answer.incarnation != 0 and answer.received == 0, answer
    print("lost answer: the server starts the stream afresh (NEW_STREAM, new incarnation)")

    # 5. Dishonest counts on a stream the server carries: REFUSED, with a reason.
    peer.sock.close()
    peer = open_session(addr)
    answer = resume(peer, stream_id=lost.stream_id, received=1000, acknowledged=0,
                    incarnation=answer.incarnation)
    assert answer.status == r.RESUME_STATUS_REFUSED, r.ResumeStatus.Name(answer.status)
    assert answer.reason, "a refusal says why"
    expect_end(peer)
    print(f"dishonest: REFUSED ({answer.reason})")

    # 6. A close never opens a stream.
    peer = open_session(addr)
    answer = resume(peer, stream_id=os.urandom(16), closing=True)
    assert answer.status == r.RESUME_STATUS_CLOSED, r.ResumeStatus.Name(answer.status)
    expect_end(peer)
    print("close of an unknown stream: CLOSED")


if __name__ == "__main__":
    main()
