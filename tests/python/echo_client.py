"""Talks to the tcp-echo-server example using only the official protobuf package.

Frames are written with google.protobuf.proto.serialize_length_prefixed and read with
parse_length_prefixed on google.protobuf.Any: no code from the connect crate is involved.

usage: echo_client.py HOST:PORT GOLDEN_FRAMES_JSON
"""

import io
import json
import socket
import sys

from google.protobuf import any_pb2, proto, timestamp_pb2, wrappers_pb2

from connect.example.v1 import hello_pb2


def check_golden(path):
    """Our official encoder produces exactly the committed golden frames, and parses them back."""
    with open(path, encoding="utf-8") as f:
        cases = json.load(f)["cases"]
    for case in cases:
        any_msg = any_pb2.Any(type_url=case["type_url"], value=bytes.fromhex(case["value_hex"]))
        out = io.BytesIO()
        proto.serialize_length_prefixed(any_msg, out)
        assert out.getvalue().hex() == case["frame_hex"], case["name"]
        back = proto.parse_length_prefixed(any_pb2.Any, io.BytesIO(out.getvalue()))
        assert back == any_msg, case["name"]
    print(f"golden frames: {len(cases)} match")


def pack(msg):
    any_msg = any_pb2.Any()
    any_msg.Pack(msg)
    return any_msg


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    check_golden(sys.argv[2])

    sent = []
    for i in range(200):
        if i % 3 == 0:
            sent.append(pack(wrappers_pb2.StringValue(value=f"string {i} é")))
        elif i % 7 == 0:
            sent.append(pack(timestamp_pb2.Timestamp(seconds=i, nanos=i)))
        else:
            sent.append(pack(hello_pb2.HelloWorld(text=f"hello {i}", sequence=i)))
    sent.append(pack(wrappers_pb2.BytesValue(value=bytes(range(256)) * 4096)))  # 1 MiB

    with socket.create_connection((host, int(port)), timeout=30) as sock:
        # Everything pipelined in one write, then every reply read back in order.
        out = io.BytesIO()
        for msg in sent:
            proto.serialize_length_prefixed(msg, out)
        sock.sendall(out.getvalue())
        sock.shutdown(socket.SHUT_WR)

        replies = sock.makefile("rb")
        for i, expected in enumerate(sent):
            got = proto.parse_length_prefixed(any_pb2.Any, replies)
            assert got is not None, f"connection ended after {i} of {len(sent)} replies"
            assert got == expected, f"reply {i} differs"
        # After our end of stream the server finishes and closes cleanly.
        assert proto.parse_length_prefixed(any_pb2.Any, replies) is None, "expected end of stream"

    hello = hello_pb2.HelloWorld()
    assert sent[1].Unpack(hello) and hello.sequence == 1
    print(f"python echo: {len(sent)} messages echoed unchanged and in order, then a clean close")


if __name__ == "__main__":
    main()
