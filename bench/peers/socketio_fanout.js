// Peer for bench/peers.sh: a Socket.IO room fan-out. Every socket joins room
// "r"; an event "msg" from any socket is emitted to the whole room (the
// sender included). WebSocket transport only (no long-polling), no
// compression; chatd-bench --proto socketio speaks Engine.IO v4 / Socket.IO
// v5 framing itself.
// usage: node socketio_fanout.js PORT
'use strict';
const http = require('http');
const { Server } = require('socket.io');

const port = Number(process.argv[2] || 8082);
const io = new Server({
  transports: ['websocket'],
  serveClient: false,
  perMessageDeflate: false,
  httpCompression: false,
  cors: { origin: '*' },
});
io.on('connection', (socket) => {
  socket.join('r');
  socket.on('msg', (data) => io.to('r').emit('msg', data));
});
const srv = http.createServer();
io.attach(srv);
srv.listen(port, '127.0.0.1', () => console.error(`event=listening addr=127.0.0.1:${port} peer=socket.io`));
