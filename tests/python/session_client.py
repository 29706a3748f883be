"""A session client written from proto/PROTOCOL.md alone (sections 1-9).

It uses only the official protobuf package and classes that protoc generated from our .proto
files; no code from the connect crate. Against the tcp-echo-server example started with
`--user alice --password s3cret --heartbeat-ms 100` it:

1. checks that a wrong password is refused (Refuse with REASON_CODE_AUTHENTICATION_FAILED,
   then end of stream);
2. opens a session with PLAIN credentials and checks the Welcome's negotiated values;
3. exchanges application messages with the echo server (every echo back, in order);
4. stays idle for many heartbeat intervals, answering the server's Pings and sending its own,
   and measures the round-trip time;
5. closes gracefully: Close after its last message, CloseOk back, then end of stream.

usage: session_client.py HOST:PORT USER PASSWORD
"""

import io
import socket
import sys
import time

from google.protobuf import any_pb2, proto, wrappers_pb2

from connect.example.v1 import hello_pb2
from connect.v1 import session_pb2 as s

CONTROL_PREFIX = "connect.v1."


def full_name(any_msg):
    """Section 1: the type is the part of the type URL after the last '/'."""
    return any_msg.type_url.rsplit("/", 1)[-1]


class Peer:
    """Frames over a socket (section 1): varint length, then a google.protobuf.Any."""

    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        # Small control frames must not wait for Nagle's algorithm.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.last_sent = time.monotonic()
        self.last_recv = time.monotonic()

    def send(self, msg):
        any_msg = any_pb2.Any()
        any_msg.Pack(msg)  # type URL "type.googleapis.com/<full name>"
        out = io.BytesIO()
        proto.serialize_length_prefixed(any_msg, out)
        self.sock.sendall(out.getvalue())
        # Section 5: every frame but a Pong postpones our next Ping.
        if msg.DESCRIPTOR.full_name != "connect.v1.Pong":
            self.last_sent = time.monotonic()

    def _take_frame(self):
        """A whole frame from the buffer, or None if more bytes are needed."""
        length, shift, pos = 0, 0, 0
        while True:
            if pos >= len(self.buf):
                return None
            byte = self.buf[pos]
            length |= (byte & 0x7F) << shift
            pos += 1
            if byte & 0x80 == 0:
                break
            shift += 7
            assert pos < 10, "varint longer than 10 bytes"
        if len(self.buf) < pos + length:
            return None
        any_msg = any_pb2.Any()
        any_msg.ParseFromString(self.buf[pos : pos + length])
        self.buf = self.buf[pos + length :]
        return any_msg

    def recv(self, timeout):
        """The next frame; None at a clean end of stream; "timeout" if none came in time."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self._take_frame()
            if frame is not None:
                self.last_recv = time.monotonic()
                return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return "timeout"
            if not data:
                assert not self.buf, "connection ended inside a frame"
                return None
            self.buf += data


def unpack(any_msg, cls):
    msg = cls()
    assert any_msg.Unpack(msg), f"expected {cls.DESCRIPTOR.full_name}, got {any_msg.type_url}"
    return msg


def hello_msg(user, password, heartbeat_ms):
    return s.Hello(
        versions=[1],
        properties={"product": "python-spec-client", "platform": "Python"},
        heartbeat_ms=heartbeat_ms,
        max_frame_len=1 << 20,
        credentials=s.Credentials(plain=s.Plain(user=user, password=password)),
    )


class Session:
    """Section 9's loop: answers Pings, sends Pings when quiet, watches for silence."""

    def __init__(self, peer, welcome):
        self.peer = peer
        self.interval = welcome.heartbeat_ms / 1000.0
        self.pings_answered = 0
        self.pings_sent = {}
        self.rtts = []
        self.next_ping = 1
        self.peer_closed = None
        self.close_ok = False

    def _heartbeat(self):
        now = time.monotonic()
        if self.interval > 0 and now - self.peer.last_sent >= self.interval:
            self.pings_sent[self.next_ping] = now
            self.peer.send(s.Ping(id=self.next_ping))
            self.next_ping += 1
        if self.interval > 0:
            silent = now - self.peer.last_recv
            # Section 5 says 3 intervals; allow more, the test machine is shared and busy.
            assert silent < 10 * self.interval, f"server silent for {silent:.3f} s"

    def poll(self, timeout):
        """Handles control frames until an application message arrives or `timeout` passes.
        Returns the application message, None at end of stream, or "timeout"."""
        deadline = time.monotonic() + timeout
        while True:
            self._heartbeat()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            wait = min(remaining, self.interval / 4) if self.interval > 0 else remaining
            frame = self.peer.recv(wait)
            if frame == "timeout":
                continue
            if frame is None:
                return None
            name = full_name(frame)
            if not name.startswith(CONTROL_PREFIX):
                return frame
            if name == "connect.v1.Ping":
                self.peer.send(s.Pong(id=unpack(frame, s.Ping).id))
                self.pings_answered += 1
            elif name == "connect.v1.Pong":
                pong = unpack(frame, s.Pong)
                sent = self.pings_sent.pop(pong.id, None)
                if sent is not None:
                    self.rtts.append(time.monotonic() - sent)
            elif name == "connect.v1.Close":
                self.peer_closed = unpack(frame, s.Close)
            elif name == "connect.v1.CloseOk":
                self.close_ok = True
                return "close-ok"
            else:
                raise AssertionError(f"unexpected control message {name}")


def check_refused(addr, user):
    peer = Peer(addr)
    peer.send(hello_msg(user, "wrong password", 100))
    answer = peer.recv(10)
    refuse = unpack(answer, s.Refuse)
    assert refuse.code == s.REASON_CODE_AUTHENTICATION_FAILED, refuse
    assert "wrong password" not in refuse.reason
    peer.sock.shutdown(socket.SHUT_WR)
    assert peer.recv(10) is None, "the server closes after a Refuse"
    peer.sock.close()
    print(f"refused: {s.ReasonCode.Name(refuse.code)} ({refuse.reason})")


def main():
    addr, user, password = sys.argv[1], sys.argv[2], sys.argv[3]
    check_refused(addr, user)

    # Handshake (section 3).
    peer = Peer(addr)
    peer.send(hello_msg(user, password, 100))
    answer = peer.recv(10)
    assert full_name(answer) == "connect.v1.Welcome", answer.type_url
    welcome = unpack(answer, s.Welcome)
    assert welcome.version == 1, welcome
    assert welcome.heartbeat_ms == 100, welcome
    assert welcome.max_frame_len <= 1 << 20, welcome
    assert welcome.identity == user, welcome
    assert welcome.session_id, welcome
    print(f"welcome: session {welcome.session_id}, heartbeat {welcome.heartbeat_ms} ms, "
          f"max frame {welcome.max_frame_len}, identity {welcome.identity}")
    session = Session(peer, welcome)

    # Application messages, echoed in order.
    sent = []
    for i in range(300):
        if i % 5 == 0:
            msg = wrappers_pb2.StringValue(value=f"string {i}")
        else:
            msg = hello_pb2.HelloWorld(text=f"hello {i}", sequence=i)
        any_msg = any_pb2.Any()
        any_msg.Pack(msg)
        sent.append(any_msg)
        peer.send(msg)
    for i, expected in enumerate(sent):
        got = session.poll(10)
        assert got not in (None, "timeout", "close-ok"), f"echo {i}: {got}"
        assert got == expected, f"echo {i} differs"
    print(f"echoed: {len(sent)} messages in order")

    # Idle for many heartbeat intervals: the session stays up on heartbeats alone.
    idle_until = time.monotonic() + 15 * session.interval
    while time.monotonic() < idle_until:
        got = session.poll(idle_until - time.monotonic())
        assert got == "timeout", f"unexpected while idle: {got}"
    assert session.pings_answered >= 5, session.pings_answered
    assert session.rtts, "no Pong to our Pings"
    print(f"heartbeats: answered {session.pings_answered} pings, "
          f"rtt {min(session.rtts) * 1000:.2f} ms")

    # Graceful close (section 6): the last messages, then Close right behind them.
    tail = [hello_pb2.HelloWorld(text="last", sequence=1000 + i) for i in range(50)]
    for msg in tail:
        peer.send(msg)
    peer.send(s.Close(code=s.REASON_CODE_NORMAL, reason="bye"))
    echoed = 0
    while True:
        got = session.poll(10)
        assert got not in (None, "timeout"), f"no CloseOk: {got}"
        if got == "close-ok":
            break
        echoed += 1
    assert session.peer_closed is None, "the server did not close on its own"
    # Section 6: everything sent before the Close is answered before the CloseOk.
    assert echoed == len(tail), f"{echoed} of {len(tail)} echoes before CloseOk"
    peer.sock.shutdown(socket.SHUT_WR)
    assert peer.recv(10) is None, "end of stream after CloseOk"
    peer.sock.close()
    print(f"closed: CloseOk after {echoed} more echoes, then end of stream")


if __name__ == "__main__":
    main()
