// A browser client of the connect protocol, written from proto/PROTOCOL.md with protobuf.js
// only: frames (section 1), the WebSocket mapping ("Transport: WebSocket"), a session (sections
// 3, 5, 6 and 9), publish/subscribe (section 12): the page subscribes to the server's ticker and
// shows each message with its topic. Open /?selftest to have the page run its checks and close by itself; the
// results go into #results and the title ("connect: ok" or "connect: failed: ...").
"use strict";

(async function main() {
  const selftest = new URLSearchParams(location.search).has("selftest");
  const results = {
    welcome: null, subscribed: [], echoes: [], ticks: 0, topics: {}, pong: null, pingsAnswered: 0,
    closed: null,
  };
  let finished = false;
  const $ = (id) => document.getElementById(id);
  const show = () => { $("results").textContent = JSON.stringify(results, null, 1); };
  const setStatus = (text, cls) => { $("status").textContent = text; $("status").className = cls || ""; };
  const fail = (why) => {
    if (finished) return;
    finished = true;
    setStatus("failed: " + why, "error");
    document.title = "connect: failed: " + why;
    show();
  };

  // Types: google.protobuf.Any written out (protobuf.js bundles it, but this is all it is), and
  // our .proto files as the server serves them. keepCase keeps the .proto field names.
  const root = new protobuf.Root();
  const options = { keepCase: true };
  protobuf.parse('syntax = "proto3"; package google.protobuf;' +
    "message Any { string type_url = 1; bytes value = 2; }", root, options);
  for (const path of ["/proto/connect/v1/session.proto", "/proto/connect/pubsub/v1/pubsub.proto",
    "/proto/connect/example/v1/hello.proto"]) {
    const response = await fetch(path);
    if (!response.ok) return fail("cannot load " + path);
    protobuf.parse(await response.text(), root, options);
  }
  const Any = root.lookupType("google.protobuf.Any");
  const T = (name) => root.lookupType(name);
  const [Hello, Welcome, Refuse, Ping, Pong, Close, CloseOk, HelloWorld] = [
    "connect.v1.Hello", "connect.v1.Welcome", "connect.v1.Refuse", "connect.v1.Ping",
    "connect.v1.Pong", "connect.v1.Close", "connect.v1.CloseOk", "connect.example.v1.HelloWorld",
  ].map(T);
  const [Subscribe, Unsubscribe, SubscribeAck, Publish] = [
    "connect.pubsub.v1.Subscribe", "connect.pubsub.v1.Unsubscribe", "connect.pubsub.v1.SubscribeAck",
    "connect.pubsub.v1.Publish",
  ].map(T);
  const NORMAL = root.lookupEnum("connect.v1.ReasonCode").values.REASON_CODE_NORMAL;

  // protobuf.js has no Any.pack, and fullName starts with a dot.
  const nameOf = (Type) => Type.fullName.slice(1);
  const pack = (Type, fields) => Any.create({
    type_url: "type.googleapis.com/" + nameOf(Type),
    value: Type.encode(Type.create(fields)).finish(),
  });

  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/connect";
  const ws = new WebSocket(url, "connect.v1");
  ws.binaryType = "arraybuffer";
  let lastWrite = Date.now();
  let lastRead = Date.now();
  // One frame per message, as the spec suggests for browsers.
  const send = (Type, fields) => {
    ws.send(Any.encodeDelimited(pack(Type, fields)).finish());
    lastWrite = Date.now();
  };

  let heartbeatMs = 0;
  let closing = false;
  let sequence = 0;
  const sendEcho = (text) => send(HelloWorld, { text: text, sequence: ++sequence });

  // Subscriptions (section 12): each request carries its own non-zero id; the publisher answers
  // every Subscribe and Unsubscribe with a SubscribeAck of the same id, in order.
  let requestId = 0;
  const requests = new Map(); // request id -> [filter, subscribing]
  const request = (Type, filter) => {
    requests.set(++requestId, [filter, Type === Subscribe]);
    send(Type, { request_id: requestId, filter: filter });
  };
  const showFilters = () => { $("filters").textContent = results.subscribed.join(", ") || "none"; };
  const onAck = (ack) => {
    const [filter, subscribing] = requests.get(Number(ack.request_id)) || [];
    requests.delete(Number(ack.request_id));
    if (filter === undefined) return;
    if (subscribing && !ack.subscribed) {
      $("filter-error").textContent = filter + ": " + (ack.message || "refused");
      return;
    }
    $("filter-error").textContent = "";
    results.subscribed = results.subscribed.filter((f) => f !== filter);
    if (ack.subscribed) results.subscribed.push(filter);
    showFilters();
  };
  const onPublish = (publish) => {
    const any = publish.message || { type_url: "", value: new Uint8Array() };
    const name = any.type_url.slice(any.type_url.lastIndexOf("/") + 1);
    const text = name === nameOf(HelloWorld) ? HelloWorld.decode(any.value || new Uint8Array()).text : name;
    results.ticks++;
    results.topics[publish.topic] = (results.topics[publish.topic] || 0) + 1;
    $("tick-count").textContent = results.ticks;
    const line = document.createElement("div");
    line.textContent = publish.topic + "  " + text;
    $("ticks").prepend(line);
    while ($("ticks").childElementCount > 50) $("ticks").lastChild.remove();
  };

  const checkDone = () => {
    show();
    if (!selftest || closing) return;
    if (results.echoes.length >= 3 && results.ticks >= 3 && results.pong === 42 &&
        results.subscribed.length > 0) {
      closing = true;
      send(Close, { code: NORMAL, reason: "selftest done" });
    }
  };

  const onMessage = (any) => {
    const name = any.type_url.slice(any.type_url.lastIndexOf("/") + 1);
    const value = any.value || new Uint8Array();
    if (results.welcome === null) {
      if (name === nameOf(Refuse)) return fail("refused: " + Refuse.decode(value).reason);
      if (name !== nameOf(Welcome)) return fail("expected Welcome, got " + name);
      const welcome = Welcome.decode(value);
      results.welcome = welcome.session_id;
      heartbeatMs = welcome.heartbeat_ms;
      setStatus("session " + welcome.session_id + " open", "ok");
      request(Subscribe, $("filter").value);
      for (let i = 1; i <= 3; i++) sendEcho("echo " + i);
      send(Ping, { id: 42 });
      return checkDone();
    }
    switch (name) {
      case nameOf(Ping):
        send(Pong, { id: Ping.decode(value).id });
        results.pingsAnswered++;
        break;
      case nameOf(Pong):
        results.pong = Number(Pong.decode(value).id);
        break;
      case nameOf(Close):
        send(CloseOk, {});
        ws.close(1000, "closed by the server");
        break;
      case nameOf(CloseOk):
        ws.close(1000, "bye");
        break;
      case nameOf(SubscribeAck):
        onAck(SubscribeAck.decode(value));
        break;
      case nameOf(Publish):
        onPublish(Publish.decode(value));
        break;
      case nameOf(HelloWorld): {
        const hello = HelloWorld.decode(value);
        results.echoes.push(hello.text);
        $("echoed").textContent = hello.text;
        break;
      }
      default:
        console.log("unhandled message", name);
    }
    checkDone();
  };

  ws.onopen = () => {
    setStatus("connected, opening a session");
    send(Hello, { versions: [1], heartbeat_ms: 5000, properties: { product: "browser" } });
  };
  ws.onmessage = (event) => {
    lastRead = Date.now();
    // A message holds whole frames, one or more.
    const reader = protobuf.Reader.create(new Uint8Array(event.data));
    try {
      while (reader.pos < reader.len) onMessage(Any.decodeDelimited(reader));
    } catch (e) {
      ws.close(1007, "bad frame");
      fail("bad frame: " + e);
    }
  };
  ws.onerror = () => fail("WebSocket error");
  ws.onclose = (event) => {
    results.closed = { code: event.code, clean: event.wasClean && closing };
    show();
    if (selftest && closing && event.code === 1000 && !finished) {
      finished = true;
      setStatus("selftest passed, session closed", "ok");
      document.title = "connect: ok";
    } else if (!closing) {
      fail("closed by the server (" + event.code + ")");
    } else {
      setStatus("session closed", "ok");
    }
  };

  // Heartbeats (section 5): write a Ping after heartbeatMs of silence on our side; give up after
  // three intervals without hearing anything.
  setInterval(() => {
    if (!heartbeatMs || ws.readyState !== WebSocket.OPEN) return;
    if (Date.now() - lastWrite >= heartbeatMs) send(Ping, { id: 1 });
    if (Date.now() - lastRead > 3 * heartbeatMs) { ws.close(1000, "unresponsive"); fail("peer unresponsive"); }
  }, 250);

  $("echo-form").onsubmit = (event) => { event.preventDefault(); sendEcho($("echo-text").value); };
  $("filter-form").onsubmit = (event) => { event.preventDefault(); request(Subscribe, $("filter").value); };
  $("unsubscribe").onclick = () => request(Unsubscribe, $("filter").value);
  $("close").onclick = () => { if (!closing) { closing = true; send(Close, { code: NORMAL, reason: "bye" }); } };
  show();
})().catch((e) => {
  document.title = "connect: failed: " + e;
  document.getElementById("status").textContent = "failed: " + e;
});
