// Peer for bench/peers.sh: the Node `ws` library as an echo server on /echo
// and a broadcast server on /fanout (every message received on /fanout goes
// to every /fanout connection, the sender included), the way a chat room
// built on `ws` fans out. No compression, like chatd.
// usage: node ws_echo.js PORT
'use strict';
const { WebSocketServer, WebSocket } = require('ws');

const port = Number(process.argv[2] || 8081);
const wss = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: false, clientTracking: false });
const room = new Set();

wss.on('connection', (ws, req) => {
  if (req.url.startsWith('/fanout')) {
    room.add(ws);
    ws.on('message', (data, isBinary) => {
      for (const peer of room) {
        if (peer.readyState === WebSocket.OPEN) peer.send(data, { binary: isBinary });
      }
    });
    ws.on('close', () => room.delete(ws));
  } else {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  }
  ws.on('error', () => {});
});
wss.on('listening', () => console.error(`event=listening addr=127.0.0.1:${port} peer=ws`));
