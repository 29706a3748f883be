"""A work-queue producer and worker written from proto/PROTOCOL.md alone (sections 1 and 14).

It uses only the official protobuf package and classes that protoc generated from our .proto
files; no code from the connect crate. Against the queue-producer example (a distributor on bare
frames, enqueuing COUNT jobs numbered 0..COUNT-1) it:

1. as a producer: sends an Enqueue with id 0 (answered ENQUEUE_STATUS_INVALID), then a
   transaction (Begin, an Enqueue naming it, Commit: answered OK and COMMITTED) holding job
   1000, and an Abort of a transaction it never began (answered UNKNOWN);
2. as a worker: sends Consume { credit: 4 }, takes 4 deliveries and checks that no fifth comes
   while it holds them; then answers every delivery: job 3 is rejected, job 5 requeued the
   first time (and must come back with delivery_count 2, redelivered), every other job
   acknowledged, several ids per Ack;
3. checks it acknowledged each of the COUNT jobs but 3, plus job 1000, exactly once.

usage: queue_worker.py HOST:PORT COUNT
"""

import sys

from google.protobuf import any_pb2

from frames import Peer, unpack

from connect.example.v1 import hello_pb2
from connect.queue.v1 import queue_pb2 as q

CREDIT = 4


def job(deliver):
    return unpack(deliver.message, hello_pb2.HelloWorld).sequence


def main():
    addr, count = sys.argv[1], int(sys.argv[2])
    peer = Peer(addr)

    # 1. Producing. No Consume yet, so only answers arrive, in order.
    peer.send(q.Enqueue(id=0, message=any_of(hello_pb2.HelloWorld(text="bad", sequence=0))))
    answer = unpack(peer.recv(), q.Enqueued)
    assert answer.id == 0 and answer.status == q.ENQUEUE_STATUS_INVALID, answer
    peer.send(q.Begin(transaction=1))
    extra = hello_pb2.HelloWorld(text="from python", sequence=1000)
    peer.send(q.Enqueue(id=1, message=any_of(extra), ttl_ms=600000, transaction=1))
    answer = unpack(peer.recv(), q.Enqueued)
    assert answer.id == 1 and answer.status == q.ENQUEUE_STATUS_OK, answer
    peer.send(q.Commit(transaction=1))
    done = unpack(peer.recv(), q.TransactionDone)
    assert done.transaction == 1 and done.status == q.TRANSACTION_STATUS_COMMITTED, done
    peer.send(q.Abort(transaction=7))
    done = unpack(peer.recv(), q.TransactionDone)
    assert done.transaction == 7 and done.status == q.TRANSACTION_STATUS_UNKNOWN, done
    print("producer: invalid refused, transaction committed, unknown abort answered")

    # 2. Working.
    peer.send(q.Consume(credit=CREDIT))
    held = [unpack(peer.recv(), q.Deliver) for _ in range(CREDIT)]
    assert peer.recv(timeout=0.3) is None, "a delivery beyond the credit"
    print(f"credit respected: {CREDIT} held, no more delivered")

    acked, rejected, requeued = [], [], 0
    expected = set(range(count)) - {3} | {1000}
    while set(acked) != expected:
        ack_ids = []
        for deliver in held:
            n = job(deliver)
            assert deliver.id != 0
            if n == 3:
                rejected.append(n)
                peer.send(q.Reject(ids=[deliver.id]))
            elif n == 5 and deliver.delivery_count == 1:
                assert not deliver.redelivered
                requeued += 1
                peer.send(q.Requeue(ids=[deliver.id]))
            else:
                if n == 5:
                    assert deliver.delivery_count == 2 and deliver.redelivered, deliver
                else:
                    assert deliver.delivery_count == 1 and not deliver.redelivered, deliver
                acked.append(n)
                ack_ids.append(deliver.id)
        if ack_ids:
            peer.send(q.Ack(ids=ack_ids))
        if set(acked) == expected:
            break
        held = [unpack(peer.recv(), q.Deliver)]
        # Take what else is already there, never more than the credit.
        while len(held) < CREDIT:
            frame = peer.recv(timeout=0.05)
            if frame is None:
                break
            held.append(unpack(frame, q.Deliver))

    assert sorted(acked) == sorted(expected), "each job acknowledged exactly once"
    assert rejected == [3] and requeued == 1
    print(f"worker: {len(acked)} acked, job 3 rejected, job 5 requeued and redelivered")
    peer.sock.close()


def any_of(msg):
    out = any_pb2.Any()
    out.Pack(msg)
    return out


if __name__ == "__main__":
    main()
