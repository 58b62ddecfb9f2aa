// node-media-server for wxmgw's tests: RTMP on loopback, and who publishes.
//
//   node start.js RTMP_PORT STATUS_PORT WORKDIR
//
// The live server runs with its defaults (GOP cache on: a player that joins
// gets the media since the last keyframe in one burst), no auth, no web admin
// and no HTTP-FLV. GET http://127.0.0.1:STATUS_PORT/publishing answers the
// stream paths whose publisher is connected, one per line ("/live/name"): the
// tests wait on it as they read nginx-rtmp's /stat.
"use strict";

const http = require("node:http");
const NodeMediaServer = require("node-media-server");

const [rtmpPort, statusPort, workdir] = process.argv.slice(2);
if (!rtmpPort || !statusPort || !workdir) {
  console.error("usage: node start.js RTMP_PORT STATUS_PORT WORKDIR");
  process.exit(2);
}

const nms = new NodeMediaServer({
  bind: "127.0.0.1",
  rtmp: { port: Number(rtmpPort) },
  store: { path: `${workdir}/data` },
  record: { auto: false, path: `${workdir}/record` },
  webadmin: { enable: false },
}, `${workdir}/config.json`);

// A stream counts as published while its publisher is connected. (The server
// itself keeps a stream for 30 s after its publisher leaves, for the same
// client to resume it, and only then says donePublish.)
const publishing = new Set();
nms.on("postPublish", (session) => {
  publishing.add(session.streamPath);
  session.socket?.on("close", () => publishing.delete(session.streamPath));
});

http.createServer((req, res) => {
  if (req.url !== "/publishing") {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { "content-type": "text/plain" });
  res.end([...publishing].map((path) => `${path}\n`).join(""));
}).listen(Number(statusPort), "127.0.0.1");

nms.run();
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => nms.stop().finally(() => process.exit(0)));
}
