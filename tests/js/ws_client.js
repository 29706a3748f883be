// A Node client of the connect protocol over WebSocket, written from proto/PROTOCOL.md
// (sections 1, 3, 5, 6, 9, 12 and "Transport: WebSocket") with protobuf.js and the `ws` package.
//
//   node ws_client.js bare    URL   frames echoed by `ws-server --bare`
//   node ws_client.js session URL   a session with `ws-server`: handshake, echo, pings,
//                                   graceful close
//   node ws_client.js pubsub  URL   publish/subscribe in a session with `ws-server` (which
//                                   publishes on ticks.odd / ticks.even): subscribe, receive,
//                                   a wildcard, an invalid filter, unsubscribe
//
// Prints one "ok: ..." line per check and exits 0 when all passed; exits 1 with the reason
// otherwise. Run by tests/ws_interop.rs.
"use strict";

const fs = require("fs");
const path = require("path");
const protobuf = require("protobufjs");
const WebSocket = require("ws");

const [mode, url] = process.argv.slice(2);
const protoDir = path.join(__dirname, "..", "..", "proto");

const root = new protobuf.Root();
const options = { keepCase: true };
protobuf.parse('syntax = "proto3"; package google.protobuf;' +
  "message Any { string type_url = 1; bytes value = 2; }", root, options);
for (const file of ["connect/v1/session.proto", "connect/pubsub/v1/pubsub.proto",
  "connect/example/v1/hello.proto"]) {
  protobuf.parse(fs.readFileSync(path.join(protoDir, file), "utf8"), root, options);
}
const Any = root.lookupType("google.protobuf.Any");
const HelloWorld = root.lookupType("connect.example.v1.HelloWorld");
const v1 = (name) => root.lookupType("connect.v1." + name);
const [Hello, Welcome, Refuse, Ping, Pong, Close, CloseOk] =
  ["Hello", "Welcome", "Refuse", "Ping", "Pong", "Close", "CloseOk"].map(v1);
const ps = (name) => root.lookupType("connect.pubsub.v1." + name);
const [Subscribe, Unsubscribe, SubscribeAck, Publish] =
  ["Subscribe", "Unsubscribe", "SubscribeAck", "Publish"].map(ps);
const INVALID_FILTER =
  root.lookupEnum("connect.pubsub.v1.SubscribeError").values.SUBSCRIBE_ERROR_INVALID_FILTER;
const NORMAL = root.lookupEnum("connect.v1.ReasonCode").values.REASON_CODE_NORMAL;

// protobuf.js has no Any.pack, and Type.fullName starts with a dot.
const nameOf = (Type) => Type.fullName.slice(1);
const pack = (Type, fields) => Any.create({
  type_url: "type.googleapis.com/" + nameOf(Type),
  value: Type.encode(Type.create(fields)).finish(),
});
const frame = (Type, fields) => Any.encodeDelimited(pack(Type, fields)).finish();
const typeName = (any) => any.type_url.slice(any.type_url.lastIndexOf("/") + 1);

const fail = (why) => { console.error("FAILED: " + why); process.exit(1); };
setTimeout(() => fail("not done within 20 s"), 20000).unref();

// Opens the link; `onFrame(any)` sees every frame of every message (whole frames only).
function open(onFrame) {
  const ws = new WebSocket(url, "connect.v1");
  ws.binaryType = "nodebuffer";
  ws.on("message", (data, isBinary) => {
    if (!isBinary) return fail("the server sent a text message");
    const reader = protobuf.Reader.create(data);
    while (reader.pos < reader.len) onFrame(Any.decodeDelimited(reader));
  });
  ws.on("error", (e) => fail("WebSocket error: " + e.message));
  return ws;
}

function bare() {
  const sent = [];
  const echoed = [];
  const ws = open((any) => {
    if (typeName(any) !== nameOf(HelloWorld)) return fail("echo of another type: " + any.type_url);
    echoed.push(Number(HelloWorld.decode(any.value).sequence));
    if (echoed.length === 4) {
      if (JSON.stringify(echoed) !== JSON.stringify(sent)) return fail("echoes " + echoed);
      console.log("ok: 4 frames echoed in order " + echoed);
      ws.close(1000, "done");
    }
  });
  ws.on("open", () => {
    if (ws.protocol !== "connect.v1") return fail("subprotocol " + ws.protocol);
    console.log("ok: upgraded with subprotocol connect.v1");
    // One frame per message...
    for (const sequence of [1, 2]) {
      sent.push(sequence);
      ws.send(frame(HelloWorld, { text: "one", sequence }));
    }
    // ...and two whole frames in one message.
    sent.push(3, 4);
    ws.send(Buffer.concat([frame(HelloWorld, { text: "two", sequence: 3 }),
      frame(HelloWorld, { text: "in one", sequence: 4 })]));
  });
  ws.on("close", (code) => {
    if (code !== 1000) return fail("close code " + code);
    console.log("ok: closed with 1000");
    textIsRefused();
  });
}

// A text message ends the link with close code 1003.
function textIsRefused() {
  const ws = new WebSocket(url, "connect.v1");
  ws.on("open", () => ws.send("not a frame"));
  ws.on("close", (code) => {
    if (code !== 1003) return fail("text message: close code " + code);
    console.log("ok: text message refused with 1003");
    process.exit(0);
  });
  ws.on("error", () => {});
}

function session() {
  let welcome = null;
  let echoes = 0;
  let pong = false;
  let closing = false;
  let closeOk = false;
  const ws = open((any) => {
    const name = typeName(any);
    const value = any.value || Buffer.alloc(0);
    if (welcome === null) {
      if (name === nameOf(Refuse)) return fail("refused: " + Refuse.decode(value).reason);
      if (name !== nameOf(Welcome)) return fail("first frame " + name);
      welcome = Welcome.decode(value);
      if (welcome.version !== 1) return fail("version " + welcome.version);
      console.log("ok: Welcome, session " + welcome.session_id + ", heartbeat " +
        welcome.heartbeat_ms + " ms");
      ws.send(frame(HelloWorld, { text: "from node", sequence: 1 }));
      ws.send(frame(Ping, { id: 7 }));
      return;
    }
    switch (name) {
      case nameOf(Ping):
        ws.send(frame(Pong, { id: Ping.decode(value).id }));
        break;
      case nameOf(Pong):
        if (Number(Pong.decode(value).id) !== 7) return fail("Pong id");
        if (!pong) console.log("ok: Pong 7 for Ping 7");
        pong = true;
        break;
      case nameOf(HelloWorld): {
        // Nothing was subscribed to: no ticker messages come, only the echo.
        const hello = HelloWorld.decode(value);
        if (hello.text === "from node") { echoes++; console.log("ok: echo in the session"); }
        else return fail("unexpected " + hello.text);
        break;
      }
      case nameOf(CloseOk):
        closeOk = true;
        console.log("ok: CloseOk");
        ws.close(1000, "bye");
        break;
      default:
        return fail("unexpected " + name);
    }
    if (!closing && echoes === 1 && pong) {
      closing = true;
      ws.send(frame(Close, { code: NORMAL, reason: "done" }));
    }
  });
  ws.on("open", () => ws.send(frame(Hello, { versions: [1], heartbeat_ms: 5000 })));
  ws.on("close", (code) => {
    if (!closeOk || code !== 1000) return fail("closed before CloseOk, code " + code);
    console.log("ok: graceful close, 1000");
    process.exit(0);
  });
}

// A session (Hello/Welcome, answering Pings, Close/CloseOk) around `app`: `app.ready(send)` once
// the session is open, `app.message(name, value, send)` for every other frame; `send(null)`
// closes the session gracefully, and the process exits 0 once the WebSocket closed with 1000.
function inSession(app) {
  let open_ = false;
  let closing = false;
  let closeOk = false;
  let ws = null;
  const send = (Type, fields) => {
    if (Type === null) {
      closing = true;
      ws.send(frame(Close, { code: NORMAL, reason: "done" }));
    } else if (!closing) {
      ws.send(frame(Type, fields));
    }
  };
  ws = open((any) => {
    const name = typeName(any);
    const value = any.value || Buffer.alloc(0);
    if (!open_) {
      if (name !== nameOf(Welcome)) return fail("first frame " + name);
      open_ = true;
      return app.ready(send);
    }
    if (name === nameOf(Ping)) return ws.send(frame(Pong, { id: Ping.decode(value).id }));
    if (name === nameOf(CloseOk)) { closeOk = true; return ws.close(1000, "bye"); }
    if (!closing) app.message(name, value, send);
  });
  ws.on("open", () => ws.send(frame(Hello, { versions: [1], heartbeat_ms: 5000 })));
  ws.on("close", (code) => {
    if (!closeOk || code !== 1000) return fail("closed before CloseOk, code " + code);
    console.log("ok: graceful close, 1000");
    process.exit(0);
  });
}

// Publish/subscribe (section 12) against ws-server's ticker: `tick N` on ticks.odd or
// ticks.even by N.
function pubsub() {
  let phase = "odd";
  let nextId = 0;
  const requests = new Map(); // request id -> what the answer must be
  const seen = new Set();
  let odd = 0;
  let evenSinceWildcard = 0;
  let afterUnsubscribe = null; // { odd, even } counted after the Unsubscribe's answer
  const request = (send, Type, filter, expect) => {
    requests.set(++nextId, expect);
    send(Type, { request_id: nextId, filter });
  };
  inSession({
    ready(send) {
      request(send, Subscribe, "ticks.odd", (ack) => {
        if (!ack.subscribed) return fail("ticks.odd refused: " + ack.message);
        console.log("ok: SubscribeAck for ticks.odd");
      });
    },
    message(name, value, send) {
      if (name === nameOf(SubscribeAck)) {
        const ack = SubscribeAck.decode(value);
        const expect = requests.get(Number(ack.request_id));
        if (!expect) return fail("SubscribeAck for unknown request " + ack.request_id);
        requests.delete(Number(ack.request_id));
        return expect(ack);
      }
      if (name !== nameOf(Publish)) return fail("unexpected " + name);
      const publish = Publish.decode(value);
      if (typeName(publish.message) !== nameOf(HelloWorld)) return fail("published " + publish.message.type_url);
      const sequence = Number(HelloWorld.decode(publish.message.value).sequence);
      const topic = sequence % 2 === 1 ? "ticks.odd" : "ticks.even";
      if (publish.topic !== topic) return fail("tick " + sequence + " on " + publish.topic);
      // Once per link, however many of its filters match.
      if (seen.has(sequence)) return fail("tick " + sequence + " arrived twice");
      seen.add(sequence);
      if (topic === "ticks.even" && phase === "odd") return fail("ticks.even before subscribing to it");
      if (topic === "ticks.odd") odd++;
      else evenSinceWildcard++;
      if (afterUnsubscribe) afterUnsubscribe[topic === "ticks.odd" ? "odd" : "even"]++;

      if (phase === "odd" && odd >= 3) {
        console.log("ok: 3 messages on ticks.odd, none on ticks.even");
        phase = "wildcard";
        request(send, Subscribe, "ticks.*", (ack) => {
          if (!ack.subscribed) return fail("ticks.* refused: " + ack.message);
          console.log("ok: SubscribeAck for ticks.*");
        });
        request(send, Subscribe, "ticks.>.x", (ack) => {
          if (ack.subscribed || ack.error !== INVALID_FILTER) return fail("ticks.>.x: " + JSON.stringify(ack));
          console.log("ok: ticks.>.x refused as an invalid filter");
        });
      } else if (phase === "wildcard" && evenSinceWildcard >= 3 && requests.size === 0) {
        console.log("ok: the wildcard ticks.* brought ticks.even too, each tick once");
        phase = "unsubscribe";
        request(send, Unsubscribe, "ticks.*", (ack) => {
          if (ack.subscribed) return fail("still subscribed after Unsubscribe");
          afterUnsubscribe = { odd: 0, even: 0 };
        });
      } else if (afterUnsubscribe && afterUnsubscribe.odd >= 4) {
        // One even tick may have been on its way when the Unsubscribe was answered.
        if (afterUnsubscribe.even > 1) return fail(afterUnsubscribe.even + " ticks.even after Unsubscribe");
        console.log("ok: after Unsubscribe ticks.*, only ticks.odd");
        afterUnsubscribe = null;
        phase = "done";
        request(send, Unsubscribe, "ticks.odd", () => send(null));
      }
    },
  });
}

if (mode === "bare") bare();
else if (mode === "session") session();
else if (mode === "pubsub") pubsub();
else fail("usage: node ws_client.js bare|session|pubsub URL");
