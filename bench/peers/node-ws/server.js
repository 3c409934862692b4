// Room protocol peer for the benchmarks: the Django Channels tutorial chat
// protocol served by Node's `ws` package. Connect to /ws/chat/<room>/, send
// {"message": "..."}; every member of the room (sender included) receives
// {"message": "..."}.
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');

const listen = process.argv[2] || '127.0.0.1:8001';
const [host, port] = [listen.slice(0, listen.lastIndexOf(':')), Number(listen.slice(listen.lastIndexOf(':') + 1))];
const rooms = new Map(); // room name -> Set of sockets
const pathRe = /^\/ws\/chat\/(\w+)\/$/;

const server = http.createServer((req, res) => { res.writeHead(404); res.end(); });
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 1 << 20 });

server.on('upgrade', (req, socket, head) => {
  const m = pathRe.exec(req.url);
  if (!m) { socket.destroy(); return; }
  wss.handleUpgrade(req, socket, head, (ws) => {
    const room = m[1];
    let members = rooms.get(room);
    if (!members) { members = new Set(); rooms.set(room, members); }
    members.add(ws);
    ws.on('message', (data, isBinary) => {
      if (isBinary) return;
      let message;
      try { message = JSON.parse(data).message; } catch { return; }
      if (typeof message !== 'string') return;
      const out = JSON.stringify({ message });
      for (const peer of members) {
        if (peer.readyState === 1) peer.send(out);
      }
    });
    ws.on('close', () => {
      members.delete(ws);
      if (members.size === 0) rooms.delete(room);
    });
    ws.on('error', () => {});
  });
});

server.listen(port, host, () => console.log(`node-ws room server on ${host}:${port}`));
