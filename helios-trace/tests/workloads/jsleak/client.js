// jsleak: a Node.js client that keeps the TCP connections it opens, for helios-trace's kernel
// tests (tests/integration/runtimes.rs). Run with --perf-basic-prof (V8 writes
// /tmp/perf-PID.map, naming its JIT code) and --interpreted-frames-native-stack (interpreted
// functions get a trampoline of their own in it, not V8's one shared entry).
//
//   node client.js PORT SOCKET DIR   prints "ready", then one command a line, answering "ok":
//     (PORT and SOCKET "self" SOCKET: servers of its own, in this process, on a loopback port
//     and at SOCKET — a pod has only its own loopback and files)
//     connect N   N TCP connections to 127.0.0.1:PORT started by connectAndKeep, kept open
//     unix N      N connections to the Unix socket SOCKET opened by connectUnixAndKeep, kept
//     exit
//
// Node creates a TCP socket on a later tick (node:net's lookupAndConnect defers
// internalConnect with process.nextTick, even for an IP address): the function that asked for
// it is no longer on the stack then. A Unix socket is created within connect itself
// (Socket.prototype.connect calls internalConnect for a path): its stack holds the caller.
'use strict';
const net = require('net');
const readline = require('readline');

let port = Number(process.argv[2]);
const unixPath = process.argv[3];
const kept = [];
// Servers of its own keep what they accept, so no connection is closed from the other end.
const accepted = [];
function connectAndKeep(n, done) {
  let pending = n;
  for (let i = 0; i < n; i++) {
    const socket = net.connect(port, '127.0.0.1'); // LEAK_CONNECT
    socket.on('connect', () => {
      if (--pending === 0) done();
    });
    socket.on('error', (err) => { throw err; });
    kept.push(socket);
  }
}

function connectUnixAndKeep(n, done) {
  let pending = n;
  for (let i = 0; i < n; i++) {
    const socket = net.connect(unixPath); // LEAK_UNIX
    socket.on('connect', () => {
      if (--pending === 0) done();
    });
    socket.on('error', (err) => { throw err; });
    kept.push(socket);
  }
}

function serve() {
  const lines = readline.createInterface({ input: process.stdin });
  lines.on('line', (line) => {
    const [command, count] = line.trim().split(/\s+/);
    if (command === 'connect') {
      connectAndKeep(Number(count), () => console.log('ok'));
    } else if (command === 'unix') {
      connectUnixAndKeep(Number(count), () => console.log('ok'));
    } else if (command === 'exit') {
      process.exit(0);
    } else {
      console.log('ok');
    }
  });
  console.log('ready');
}

if (process.argv[2] === 'self') {
  const keep = (socket) => accepted.push(socket);
  const tcp = net.createServer(keep).listen(0, '127.0.0.1', () => {
    port = tcp.address().port;
    net.createServer(keep).listen(unixPath, serve);
  });
} else {
  serve();
}
