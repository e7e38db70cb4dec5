// jsleak server: a Node.js server that keeps the connections it accepts after their clients
// have gone (half-open: the peer closed, the server never ends its side: CLOSE_WAIT), for
// helios-trace's kernel tests (tests/integration/runtimes.rs). Run with --perf-basic-prof
// --interpreted-frames-native-stack, as client.js.
//
//   node server.js SOCKET   prints "ready", then one command a line, answering "ok ...":
//     listen   a server on a TCP port of any address (listenTcp) and one at the Unix
//              socket SOCKET (listenUnix); answers "ok PORT"
//     tcp N    N connections to its own TCP server, each closed by its client once
//              connected; answers once the server holds all N
//     unix N   the same through SOCKET
//     exit
//
// libuv accepts in its loop (uv__server_io), below no JavaScript frame: what tells the
// servers' connections apart is the listener each came through, made within listenTcp or
// listenUnix (net.Server.listen without a host binds at once, within the call).
'use strict';
const net = require('net');
const readline = require('readline');

const unixPath = process.argv[2];
const kept = [];
let port = 0;
let waiting = 0;
let answer = null;

function keep(socket) {
  // allowHalfOpen: the client's end does not end the server's side, which stays open.
  kept.push(socket);
  if (--waiting === 0 && answer) {
    const done = answer;
    answer = null;
    done();
  }
}

function listenTcp(ready) {
  const server = net.createServer({ allowHalfOpen: true }, keep);
  server.listen(0, () => ready(server.address().port)); // LISTEN_TCP
}

function listenUnix(ready) {
  const server = net.createServer({ allowHalfOpen: true }, keep);
  server.listen(unixPath, ready); // LISTEN_UNIX
}

function connectAndLeave(options, n, done) {
  waiting += n;
  answer = done;
  for (let i = 0; i < n; i++) {
    const socket = net.connect(options, () => socket.destroy());
    socket.on('error', (err) => { throw err; });
  }
}

const lines = readline.createInterface({ input: process.stdin });
lines.on('line', (line) => {
  const [command, count] = line.trim().split(/\s+/);
  if (command === 'listen') {
    listenTcp((bound) => {
      port = bound;
      listenUnix(() => console.log(`ok ${port}`));
    });
  } else if (command === 'tcp') {
    connectAndLeave({ port, host: '127.0.0.1' }, Number(count), () => console.log('ok'));
  } else if (command === 'unix') {
    connectAndLeave({ path: unixPath }, Number(count), () => console.log('ok'));
  } else if (command === 'exit') {
    process.exit(0);
  } else {
    console.log('ok');
  }
});
console.log('ready');
