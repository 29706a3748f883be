"""Calls the rpc-server example, written from proto/PROTOCOL.md section 11 alone.

Uses only the official protobuf package (and classes protoc generated from our .proto files):
frames are delimited google.protobuf.Any; requests, responses and cancels are the
connect.rpc.v1 messages. Many calls go out at once on one connection and their responses are
matched by id in whatever order they come; it checks the statuses the spec promises (NOT_FOUND,
INVALID_ARGUMENT, DEADLINE_EXCEEDED), that a cancelled call is never answered, and that stray
responses and cancels are ignored.

usage: rpc_client.py HOST:PORT
"""

import io
import socket
import sys

from google.protobuf import any_pb2, proto

from connect.example.v1 import calc_pb2, hello_pb2
from connect.rpc.v1 import rpc_pb2


def pack(msg):
    any_msg = any_pb2.Any()
    any_msg.Pack(msg)
    return any_msg


class Client:
    def __init__(self, sock):
        self.sock = sock
        self.reader = sock.makefile("rb")
        self.next_id = 1

    def send(self, *messages):
        buf = io.BytesIO()
        for msg in messages:
            proto.serialize_length_prefixed(pack(msg), buf)
        self.sock.sendall(buf.getvalue())

    def request(self, body, timeout_ms=10_000, **metadata):
        request_id = self.next_id
        self.next_id += 1
        return rpc_pb2.Request(
            id=request_id, body=pack(body), timeout_ms=timeout_ms, metadata=metadata
        )

    def response(self):
        frame = proto.parse_length_prefixed(any_pb2.Any, self.reader)
        assert frame is not None, "connection ended"
        response = rpc_pb2.Response()
        assert frame.Unpack(response), f"not a Response: {frame.type_url}"
        return response


def body(response, cls):
    assert response.WhichOneof("result") == "body", response
    msg = cls()
    assert response.body.Unpack(msg), response.body.type_url
    return msg


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        client = Client(sock)

        # 50 concurrent calls in one write, slow ones first: the answers come back in any
        # order and are matched by id.
        calls = {}
        for i in range(50):
            if i % 10 == 0:
                req = client.request(calc_pb2.Sleep(ms=100))
                calls[req.id] = ("sleep", 100)
            else:
                req = client.request(calc_pb2.Add(a=i, b=1000))
                calls[req.id] = ("add", i + 1000)
            client.send(req)
        order = []
        while calls:
            response = client.response()
            kind, expected = calls.pop(response.id)
            if kind == "sleep":
                assert body(response, calc_pb2.Slept).ms == expected
            else:
                assert body(response, calc_pb2.Sum).value == expected
            order.append(response.id)
        assert order != sorted(order), "the slow calls did not hold up the others"
        print(f"concurrent: 50 calls answered, matched by id, out of order")

        # Statuses.
        unknown = client.request(hello_pb2.HelloWorld(text="hi"))
        refused = client.request(calc_pb2.Divide(dividend=1, divisor=0))
        late = client.request(calc_pb2.Sleep(ms=5_000), timeout_ms=50)
        client.send(unknown, refused, late)
        codes = {}
        for _ in range(3):
            response = client.response()
            assert response.WhichOneof("result") == "status", response
            codes[response.id] = response.status.code
        assert codes[unknown.id] == rpc_pb2.STATUS_CODE_NOT_FOUND, codes
        assert codes[refused.id] == rpc_pb2.STATUS_CODE_INVALID_ARGUMENT, codes
        assert codes[late.id] == rpc_pb2.STATUS_CODE_DEADLINE_EXCEEDED, codes
        print("statuses: NOT_FOUND, INVALID_ARGUMENT, DEADLINE_EXCEEDED")

        # A cancelled call is never answered; stray responses and cancels are ignored.
        cancelled = client.request(calc_pb2.Sleep(ms=300), timeout_ms=0)
        client.send(cancelled, rpc_pb2.Cancel(id=cancelled.id))
        client.send(rpc_pb2.Response(id=999_999), rpc_pb2.Cancel(id=888_888))
        after = client.request(calc_pb2.Sleep(ms=600))
        client.send(after)
        response = client.response()
        assert response.id == after.id, f"got a response for {response.id}"
        assert body(response, calc_pb2.Slept).ms == 600
        print("cancel: the cancelled call got no response; strays ignored")

        # A request id reused while in flight ends the link.
        hang = client.request(calc_pb2.Sleep(ms=10_000))
        client.send(hang, rpc_pb2.Request(id=hang.id, body=pack(calc_pb2.Add(a=1, b=1))))
        assert proto.parse_length_prefixed(any_pb2.Any, client.reader) is None
        print("reused id: the server ended the link")


if __name__ == "__main__":
    main()
