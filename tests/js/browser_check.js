// Drives a headless Chromium through the DevTools protocol (with the `ws` package): opens the
// page, waits until it reports in its title ("connect: ok" / "connect: failed: ..."), then
// prints the title and the page's #results and closes the browser. A page's WebSocket traffic
// does not hold up --dump-dom, hence the protocol.
//
//   node browser_check.js DEVTOOLS_WS_URL PAGE_URL [SCREENSHOT.png]
//
// Exits 0 when the page said "connect: ok", 1 otherwise. Run by tests/ws_interop.rs.
"use strict";

const fs = require("fs");
const WebSocket = require("ws");

const [browserUrl, pageUrl, screenshot] = process.argv.slice(2);
const deadline = Date.now() + 30000;
const ws = new WebSocket(browserUrl, { perMessageDeflate: false });
let nextId = 1;
const waiting = new Map();

const call = (method, params = {}, sessionId = undefined) => new Promise((resolve, reject) => {
  const id = nextId++;
  waiting.set(id, { resolve, reject });
  ws.send(JSON.stringify({ id, method, params, sessionId }));
});
ws.on("message", (data) => {
  const message = JSON.parse(data);
  const pending = message.id && waiting.get(message.id);
  if (!pending) return;
  waiting.delete(message.id);
  if (message.error) pending.reject(new Error(JSON.stringify(message.error)));
  else pending.resolve(message.result);
});

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

ws.on("open", async () => {
  let ok = false;
  try {
    const { targetId } = await call("Target.createTarget", { url: pageUrl });
    const { sessionId } = await call("Target.attachToTarget", { targetId, flatten: true });
    let report = "";
    while (Date.now() < deadline) {
      const { result } = await call("Runtime.evaluate", {
        expression: "document.title + '\\n' + (document.getElementById('results') || {}).textContent",
        returnByValue: true,
      }, sessionId);
      report = String(result.value);
      if (report.startsWith("connect: ok") || report.startsWith("connect: failed")) break;
      await sleep(200);
    }
    if (screenshot) {
      const { data } = await call("Page.captureScreenshot", { format: "png" }, sessionId);
      fs.writeFileSync(screenshot, Buffer.from(data, "base64"));
    }
    console.log(report);
    ok = report.startsWith("connect: ok");
  } catch (e) {
    console.error("DevTools: " + e.message);
  }
  try { await call("Browser.close"); } catch (_) { /* the browser is going away */ }
  process.exit(ok ? 0 : 1);
});
ws.on("error", (e) => { console.error("DevTools connection: " + e.message); process.exit(1); });
