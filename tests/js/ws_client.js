// A Node client of the connect protocol over WebSocket, written from proto/PROTOCOL.md
// (sections 1, 3, 5, 6, 9 and "Transport: WebSocket") with protobuf.js and the `ws` package.
//
//   node ws_client.js bare    URL   frames echoed by `ws-server --bare`
//   node ws_client.js session URL   a session with `ws-server`: handshake, echo, ticks, pings,
//                                   graceful close
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
for (const file of ["connect/v1/session.proto", "connect/example/v1/hello.proto"]) {
  protobuf.parse(fs.readFileSync(path.join(protoDir, file), "utf8"), root, options);
}
const Any = root.lookupType("google.protobuf.Any");
const HelloWorld = root.lookupType("connect.example.v1.HelloWorld");
const v1 = (name) => root.lookupType("connect.v1." + name);
const [Hello, Welcome, Refuse, Ping, Pong, Close, CloseOk] =
  ["Hello", "Welcome", "Refuse", "Ping", "Pong", "Close", "CloseOk"].map(v1);
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
  let ticks = 0;
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
        const hello = HelloWorld.decode(value);
        if (hello.text.startsWith("tick ")) ticks++;
        else if (hello.text === "from node") { echoes++; console.log("ok: echo in the session"); }
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
    if (!closing && echoes === 1 && pong && ticks >= 2) {
      console.log("ok: " + ticks + " ticks");
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

if (mode === "bare") bare();
else if (mode === "session") session();
else fail("usage: node ws_client.js bare|session URL");
