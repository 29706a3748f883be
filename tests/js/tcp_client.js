// A Node client of bare frames over TCP or TLS (section 1 of proto/PROTOCOL.md), with
// protobuf.js's encodeDelimited/decodeDelimited and Node's `net`/`tls`, against the
// tcp-echo-server and tls-echo-server examples.
//
//   node tcp_client.js tcp HOST:PORT
//   node tcp_client.js tls HOST:PORT CA.pem SERVER_NAME [CERT.pem KEY.pem]
//
// decodeDelimited throws a RangeError on a frame that has not fully arrived (it does not wait),
// so the client keeps what it received and decodes only whole frames. Prints "ok: ..." lines;
// exits 0 when every echo came back unchanged, 1 otherwise. Run by tests/ws_interop.rs.
"use strict";

const fs = require("fs");
const net = require("net");
const tls = require("tls");
const path = require("path");
const protobuf = require("protobufjs");

const [mode, hostPort, caFile, serverName, certFile, keyFile] = process.argv.slice(2);
const [host, port] = [hostPort.slice(0, hostPort.lastIndexOf(":")), Number(hostPort.slice(hostPort.lastIndexOf(":") + 1))];
const root = new protobuf.Root();
const options = { keepCase: true };
protobuf.parse('syntax = "proto3"; package google.protobuf;' +
  "message Any { string type_url = 1; bytes value = 2; }", root, options);
protobuf.parse(fs.readFileSync(path.join(__dirname, "..", "..", "proto", "connect", "example",
  "v1", "hello.proto"), "utf8"), root, options);
const Any = root.lookupType("google.protobuf.Any");
const HelloWorld = root.lookupType("connect.example.v1.HelloWorld");
const pack = (Type, fields) => Any.create({
  type_url: "type.googleapis.com/" + Type.fullName.slice(1),   // fullName is ".pkg.Name"
  value: Type.encode(Type.create(fields)).finish(),
});

const fail = (why) => { console.error("FAILED: " + why); process.exit(1); };
setTimeout(() => fail("not done within 20 s"), 20000).unref();

// Messages of every size, a 300 KB one that surely arrives in many pieces among them.
const sizes = [0, 1, 10, 300000, 5, 1000, 70000, 2];
const socket = mode === "tls"
  ? tls.connect({
    host, port, servername: serverName, ca: fs.readFileSync(caFile),
    cert: certFile && fs.readFileSync(certFile), key: keyFile && fs.readFileSync(keyFile),
  })
  : net.connect({ host, port });
socket.on("error", (e) => fail("socket: " + e.message));
socket.on(mode === "tls" ? "secureConnect" : "connect", () => {
  console.log("ok: connected over " + (mode === "tls" ? socket.getProtocol() : "TCP"));
  const frames = sizes.map((size, sequence) =>
    Any.encodeDelimited(pack(HelloWorld, { text: "x".repeat(size), sequence })).finish());
  socket.write(Buffer.concat(frames));
});

let pending = Buffer.alloc(0);
let received = 0;
let partial = 0;
socket.on("data", (chunk) => {
  pending = Buffer.concat([pending, chunk]);
  for (;;) {
    const reader = protobuf.Reader.create(pending);
    let any;
    try {
      any = Any.decodeDelimited(reader);
    } catch (e) {
      if (e instanceof RangeError) { partial++; break; }   // not all there yet: wait for more
      throw e;
    }
    pending = pending.subarray(reader.pos);
    const hello = HelloWorld.decode(any.value);
    if (Number(hello.sequence) !== received || hello.text.length !== sizes[received]) {
      fail("echo " + received + " differs");
    }
    received++;
    if (received === sizes.length) {
      console.log("ok: " + received + " messages echoed unchanged (" + partial +
        " reads ended inside a frame)");
      socket.end();
      process.exit(0);
    }
  }
});
