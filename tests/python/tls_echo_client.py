"""Talks to the tls-echo-server example with Python's standard ssl module and the official protobuf
package only: no code from the connect crate is involved.

Frames are written with google.protobuf.proto.serialize_length_prefixed and read with
parse_length_prefixed on google.protobuf.Any, inside TLS. Three scenarios:

  plain  server without client authentication: echo, then close_notify both ways
  mtls   server requiring client certificates, with ours: echo likewise
  reject the same server without a client certificate: the server's alert ends the connection

usage: tls_echo_client.py --plain HOST:PORT --mtls HOST:PORT --ca CA.pem --server-name NAME
                          --cert CLIENT.pem --key CLIENT.key
"""

import argparse
import io
import socket
import ssl

from google.protobuf import any_pb2, proto, timestamp_pb2, wrappers_pb2

from connect.example.v1 import hello_pb2


def pack(msg):
    any_msg = any_pb2.Any()
    any_msg.Pack(msg)
    return any_msg


def small_messages():
    sent = []
    for i in range(200):
        if i % 3 == 0:
            sent.append(pack(wrappers_pb2.StringValue(value=f"string {i} é")))
        elif i % 7 == 0:
            sent.append(pack(timestamp_pb2.Timestamp(seconds=i, nanos=i)))
        else:
            sent.append(pack(hello_pb2.HelloWorld(text=f"hello {i}", sequence=i)))
    return sent


def frames(messages):
    out = io.BytesIO()
    for msg in messages:
        proto.serialize_length_prefixed(msg, out)
    return out.getvalue()


def context(ca, cert=None, key=None):
    # PROTOCOL_TLS_CLIENT checks the server's certificate and host name.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def connect(addr, ctx, server_name):
    host, port = addr.rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=30)
    return ctx.wrap_socket(raw, server_hostname=server_name)


def echo(label, addr, ctx, server_name):
    with connect(addr, ctx, server_name) as tls:
        version = tls.version()
        replies = tls.makefile("rb")

        # Many small messages pipelined in one write, then every reply read back in order.
        sent = small_messages()
        tls.sendall(frames(sent))
        for i, expected in enumerate(sent):
            got = proto.parse_length_prefixed(any_pb2.Any, replies)
            assert got is not None, f"{label}: connection ended after {i} of {len(sent)} replies"
            assert got == expected, f"{label}: reply {i} differs"

        # One 1 MiB message: many TLS records for one frame, both ways.
        big = pack(wrappers_pb2.BytesValue(value=bytes(range(256)) * 4096))
        tls.sendall(frames([big]))
        assert proto.parse_length_prefixed(any_pb2.Any, replies) == big, f"{label}: 1 MiB reply"
        replies.close()

        # close_notify from us; unwrap() returns once the server's close_notify arrived.
        tls.unwrap()

    hello = hello_pb2.HelloWorld()
    assert sent[1].Unpack(hello) and hello.sequence == 1
    print(f"{label}: {len(sent) + 1} messages echoed over {version}, then close_notify both ways")


def rejected(label, addr, ctx, server_name):
    with connect(addr, ctx, server_name) as tls:
        # TLS 1.3: our side of the handshake is done; the server's verdict arrives as an alert.
        try:
            data = tls.recv(1)
        except ssl.SSLError as e:
            assert "CERTIFICATE_REQUIRED" in (e.reason or ""), f"{label}: unexpected {e!r}"
            print(f"{label}: rejected by the server with {e.reason}")
            return
        raise AssertionError(f"{label}: expected the server to reject us, read {data!r}")


def main():
    parser = argparse.ArgumentParser()
    for name in ["--plain", "--mtls", "--ca", "--server-name", "--cert", "--key"]:
        parser.add_argument(name, required=True)
    args = parser.parse_args()

    echo("plain", args.plain, context(args.ca), args.server_name)
    echo("mtls", args.mtls, context(args.ca, args.cert, args.key), args.server_name)
    rejected("reject", args.mtls, context(args.ca), args.server_name)


if __name__ == "__main__":
    main()
