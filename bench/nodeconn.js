// nodeconn: what a Node.js TCP connection costs, for the libuv uprobes' price (BENCHMARKS.md,
// "Node.js handles"). Serves itself on loopback; prints "ready", then for each line N on
// stdin makes N connections one after another (each destroyed once connected, the server's end
// too) and prints the mean ns of one. Each connection is one uv_tcp_init and one
// uv_tcp_connect (entered and returned) in the client, one uv_tcp_init in the server.
//
//   bench/node-uprobes.sh drives it.
'use strict';
const net = require('net');
const readline = require('readline');

const server = net.createServer((socket) => socket.destroy()).listen(0, '127.0.0.1', () => {
  const port = server.address().port;
  console.log('ready');
  readline.createInterface({ input: process.stdin }).on('line', (line) => {
    const n = Number(line);
    const start = process.hrtime.bigint();
    let left = n;
    const next = () => {
      if (left-- === 0) {
        console.log(String((process.hrtime.bigint() - start) / BigInt(n)));
        return;
      }
      const socket = net.connect(port, '127.0.0.1');
      socket.on('connect', () => {
        socket.destroy();
        next();
      });
      socket.on('error', (err) => {
        throw err;
      });
    };
    next();
  });
});
