'use strict';
// chatd_process.js: the chatd process as the Node interop tests run it, shared
// by test_ws_client.js and test_web.js (not a test itself: CMake runs only
// test_*.js). Each test builds its own command line and calls:
//   spawnChatd(args)  start CHATD_BIN; resolves once chatd logged its listening
//                     line, with d = {proc, stderr, port, exit, exited, args}
//   waitAccepting(d)  resolves once a TCP connect to d.port succeeds
//   stopChatd(d)      SIGTERM; rejects unless chatd exits 0 with no sanitizer
//                     report on stderr
//   new Runner(ms)    runs named tests (each at most ms), prints one line per
//                     test and "N passed, N failed"; runGroups() starts one
//                     chatd per group of tests and checks its clean exit
// T is the time allowed per wait, longer for sanitizer builds
// (CHATD_BUILD_KIND address or thread).

const net = require('net');
const path = require('path');
const { spawn } = require('child_process');

const CHATD_BIN = process.env.CHATD_BIN ||
  path.join(__dirname, '..', '..', 'build', 'debug', 'chatd');
const SLOW = ['address', 'thread'].includes(process.env.CHATD_BUILD_KIND || '');
const T = SLOW ? 60000 : 15000; // ms, per wait
const SANITIZER_MARKERS = ['Sanitizer', 'runtime error:'];

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, rej) => {
      timer = setTimeout(() => rej(new Error('timeout: ' + what)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

// Spawn chatd with args and resolve once it has logged
// "event=listening addr=127.0.0.1:PORT". chatd logs that line before its
// workers call listen(): waitAccepting() waits for those.
function spawnChatd(args) {
  return new Promise((resolve, reject) => {
    const proc = spawn(CHATD_BIN, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    const d = { proc, stderr: '', port: null, exit: null, args };
    d.exited = new Promise((res) => proc.on('exit', (code, signal) => {
      d.exit = { code, signal };
      res(d.exit);
    }));
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error('chatd did not start:\n' + d.stderr));
    }, T);
    proc.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (chunk) => {
      d.stderr += chunk;
      if (d.port === null) {
        const m = /event=listening addr=127\.0\.0\.1:(\d+)/.exec(d.stderr);
        if (m) {
          d.port = Number(m[1]);
          clearTimeout(timer);
          resolve(d);
        }
      }
    });
    d.exited.then((e) => {
      if (d.port === null) {
        clearTimeout(timer);
        reject(new Error(`chatd exited at start (${e.code}/${e.signal}):\n${d.stderr}`));
      }
    });
  });
}

async function waitAccepting(d) {
  const deadline = Date.now() + T;
  for (;;) {
    const err = await new Promise((res) => {
      const s = net.connect(d.port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        res(null);
      });
      s.once('error', res);
    });
    if (!err) return;
    if (Date.now() > deadline || d.exit !== null) {
      d.proc.kill('SIGKILL');
      throw new Error(`chatd not accepting on port ${d.port}: ${err.code}\n${d.stderr}`);
    }
    await new Promise((res) => setTimeout(res, 20));
  }
}

async function stopChatd(d) {
  if (d.exit === null) d.proc.kill('SIGTERM');
  const e = await withTimeout(d.exited, 30000 + T, 'chatd exit after SIGTERM')
    .catch((err) => {
      d.proc.kill('SIGKILL');
      throw err;
    });
  // Let the stderr pipe drain fully.
  await new Promise((res) => (d.proc.stderr.readableEnded ? res() : d.proc.stderr.on('end', res)));
  for (const marker of SANITIZER_MARKERS) {
    if (d.stderr.includes(marker)) {
      throw new Error(`sanitizer report ("${marker}") in chatd stderr:\n` + d.stderr.slice(-8000));
    }
  }
  if (e.code !== 0) {
    throw new Error(`chatd exit code ${e.code} signal ${e.signal}, expected 0:\n` +
      d.stderr.slice(-4000));
  }
}

class Runner {
  constructor(perTestMs) {
    this.perTestMs = perTestMs;
    this.passed = 0;
    this.failed = 0;
  }

  async test(name, fn) {
    const t0 = Date.now();
    try {
      await withTimeout(Promise.resolve().then(fn), this.perTestMs, name);
      this.passed++;
      console.log(`ok   ${name} (${((Date.now() - t0) / 1000).toFixed(2)}s)`);
    } catch (e) {
      this.failed++;
      console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
    }
  }

  // groups: [[chatd args, [[test name, fn(d)], ...]], ...]. Each group gets
  // its own chatd from start(args); after its tests, a SIGTERM must end it
  // cleanly (a test of its own, named with describe(args)).
  async runGroups(groups, start, describe) {
    for (const [args, tests] of groups) {
      let d;
      try {
        d = await start(args);
      } catch (e) {
        this.failed += tests.length + 1;
        console.log(`FAIL start chatd ${args.join(' ')}: ${e.stack || e}`);
        continue;
      }
      for (const [name, fn] of tests) await this.test(name, () => fn(d));
      const label = args.length ? `sigterm_exit_0 (${describe(args)})` : 'sigterm_exit_0';
      await this.test(label, () => stopChatd(d));
    }
  }

  finish() {
    console.log(`${this.passed} passed, ${this.failed} failed`);
    process.exit(this.failed ? 1 : 0);
  }
}

module.exports = { SLOW, T, withTimeout, spawnChatd, waitAccepting, stopChatd, Runner };
