"""A publish/subscribe subscriber written from proto/PROTOCOL.md alone (sections 1 and 12).

It uses only the official protobuf package and classes that protoc generated from our .proto
files; no code from the connect crate. Against the pubsub-publisher example (bare frames) it:

1. sends Subscribes that must be refused: invalid filters (SUBSCRIBE_ERROR_INVALID_FILTER) and
   request_id 0 (SUBSCRIBE_ERROR_INVALID_REQUEST);
2. subscribes to FILTER and checks the SubscribeAck (same request_id, subscribed = true);
3. receives COUNT Publish frames: every topic matches FILTER (by its own matcher, written from
   section 12) and each topic's sequence numbers increase (the publisher's order);
4. unsubscribes (subscribed = false) and closes.

usage: pubsub_subscriber.py HOST:PORT FILTER COUNT
"""

import sys

from frames import Peer, full_name, unpack

from connect.example.v1 import hello_pb2
from connect.pubsub.v1 import pubsub_pb2 as ps


def matches(filter_, topic):
    """Section 12: '*' is exactly one element, a last '>' one or more."""
    f, t = filter_.split("."), topic.split(".")
    for i, element in enumerate(f):
        if element == ">":
            return len(t) > i
        if i >= len(t) or (element != "*" and element != t[i]):
            return False
    return len(f) == len(t)


def ack_for(peer, request_id):
    """The SubscribeAck of request_id; Publish frames that come first are skipped."""
    while True:
        frame = peer.recv()
        if full_name(frame) == "connect.pubsub.v1.Publish":
            continue
        ack = unpack(frame, ps.SubscribeAck)
        assert ack.request_id == request_id, (ack.request_id, request_id)
        return ack


def main():
    addr, filter_, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    peer = Peer(addr)

    request_id = 1
    for bad in ["", "a..b", "a.>.b", "a*", "x" * 257, ".".join(["a"] * 33)]:
        peer.send(ps.Subscribe(request_id=request_id, filter=bad))
        ack = ack_for(peer, request_id)
        assert not ack.subscribed
        assert ack.error == ps.SUBSCRIBE_ERROR_INVALID_FILTER, (bad, ack)
        request_id += 1
    peer.send(ps.Subscribe(request_id=0, filter=filter_))
    ack = unpack(peer.recv(), ps.SubscribeAck)
    assert not ack.subscribed and ack.error == ps.SUBSCRIBE_ERROR_INVALID_REQUEST, ack
    print("refused: invalid filters and request id 0")

    peer.send(ps.Subscribe(request_id=request_id, filter=filter_))
    ack = ack_for(peer, request_id)
    assert ack.subscribed and ack.error == ps.SUBSCRIBE_ERROR_UNSPECIFIED, ack
    request_id += 1
    print(f"subscribed to {filter_}")

    last = {}
    for _ in range(count):
        publish = unpack(peer.recv(), ps.Publish)
        assert matches(filter_, publish.topic), publish.topic
        hello = unpack(publish.message, hello_pb2.HelloWorld)
        assert hello.sequence > last.get(publish.topic, -1), (publish.topic, hello.sequence)
        last[publish.topic] = hello.sequence
    print(f"received: {count} messages on {sorted(last)} in order")

    peer.send(ps.Unsubscribe(request_id=request_id, filter=filter_))
    ack = ack_for(peer, request_id)
    assert not ack.subscribed, ack
    print("unsubscribed")
    peer.sock.close()


if __name__ == "__main__":
    main()
