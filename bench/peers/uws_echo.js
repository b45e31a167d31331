// Peer for bench/peers.sh: uWebSockets (v20, through its Node binding) as an
// echo server on /echo and a pub/sub room on /fanout: every /fanout
// connection subscribes to one topic when it opens, and every message
// received on /fanout is published to that topic by the app, so the library
// itself writes it to every subscriber, the sender included. No compression,
// like chatd.
//
// The binding is a prebuilt native module that peers.sh fetches with
// `npm pack` into the build folder; its path is the second argument. It is
// loaded directly (not through the package's entry point, which falls back
// to a pure-JavaScript imitation when the native module does not load), so
// that what is measured is the native library or nothing.
// usage: node uws_echo.js PORT PATH/TO/uws_linux_x64_ABI.node
'use strict';

const port = Number(process.argv[2] || 8083);
const addon = process.argv[3];
if (!addon) {
  console.error('usage: node uws_echo.js PORT PATH/TO/uws_PLATFORM_ARCH_ABI.node');
  process.exit(2);
}
let uWS;
try {
  uWS = require(addon);
} catch (e) {
  console.error(`event=load_failed addon=${addon} error=${e.message}`);
  process.exit(1);
}

const ROOM = 'room';
const app = uWS.App();
const common = {
  compression: uWS.DISABLED,
  maxPayloadLength: 64 * 1024,
  idleTimeout: 120,
  // The library drops messages for a subscriber only past this many bytes
  // queued for it (and never closes it for that): far beyond the few
  // kilobytes chatd-bench's window lets pile up, since it counts every
  // delivery.
  maxBackpressure: 64 * 1024 * 1024,
  closeOnBackpressureLimit: false,
};

app.ws('/echo', {
  ...common,
  message: (ws, message, isBinary) => {
    ws.send(message, isBinary);
  },
});

app.ws('/fanout', {
  ...common,
  open: (ws) => {
    ws.subscribe(ROOM);
  },
  message: (ws, message, isBinary) => {
    app.publish(ROOM, message, isBinary);
  },
});

app.listen('127.0.0.1', port, (token) => {
  if (!token) {
    console.error(`event=listen_failed addr=127.0.0.1:${port} peer=uws`);
    process.exit(1);
  }
  console.error(`event=listening addr=127.0.0.1:${port} peer=uws`);
});
