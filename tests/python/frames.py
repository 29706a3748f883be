"""Frames over a TCP socket as PROTOCOL.md section 1 defines them, with the official protobuf
package only: a base-128 varint length, then a google.protobuf.Any. Shared by the pattern
clients in this directory (each written from the spec; none uses code from the connect crate).
"""

import io
import socket

from google.protobuf import any_pb2, proto


def full_name(any_msg):
    """Section 1: the type is the part of the type URL after the last '/'."""
    return any_msg.type_url.rsplit("/", 1)[-1]


class Peer:
    """Frames over a socket (section 1): varint length, then a google.protobuf.Any."""

    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=20)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, msg):
        any_msg = any_pb2.Any()
        any_msg.Pack(msg)  # type URL "type.googleapis.com/<full name>"
        out = io.BytesIO()
        proto.serialize_length_prefixed(any_msg, out)
        self.sock.sendall(out.getvalue())

    def _take_frame(self):
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

    def recv(self, timeout=20):
        """The next frame, or None if none comes within `timeout` seconds."""
        self.sock.settimeout(timeout)
        while True:
            frame = self._take_frame()
            if frame is not None:
                return frame
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return None
            assert data, "the peer closed the connection"
            self.buf += data


def unpack(any_msg, cls):
    assert any_msg is not None, f"expected {cls.DESCRIPTOR.full_name}, got nothing"
    msg = cls()
    assert any_msg.Unpack(msg), f"expected {cls.DESCRIPTOR.full_name}, got {any_msg.type_url}"
    return msg
