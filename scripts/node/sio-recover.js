// A Socket.IO 4 page that relies on Socket.IO's own connection state recovery, run under Node
// with the real socket.io-client 4.x: `io(url)`, `emit('login', uid)` on a connect that was not
// recovered, and `new_msg` listened to. The test drives it on stdin to drop its transport
// while pushes go on, and checks what it prints.
//
// Usage: node sio-recover.js URL UID [TRANSPORTS] [TIMEOUT_MS]
//   TRANSPORTS  websocket (default) or default (polling, then upgrade)
//   TIMEOUT_MS  exit 3 after this long (default 60000)
//
// stdin, one command a line:
//   drop [MS]  close the Engine.IO connection under the socket (as a network drop does); the
//              client reconnects by itself after its reconnection delay (about MS when given)
//   quit   leave and exit 0
//
// stdout, one line per event (the first word is the event):
//   connect recovered=BOOL id=SOCKET_ID   the socket (re)connected
//   new_msg DATA                          a pushed message (DATA as received)
//   disconnect REASON                     the socket disconnected
'use strict';

const [url, uid, transports = 'websocket', timeoutArg = '60000'] = process.argv.slice(2);
if (!url || !uid || !['websocket', 'default'].includes(transports)) {
    console.error('usage: node sio-recover.js URL UID [websocket|default] [TIMEOUT_MS]');
    process.exit(2);
}

const lib = require('socket.io-client-v4');
const io = lib.io || lib.default || lib;

const options = { reconnectionDelay: 100, reconnectionDelayMax: 200 };
if (transports === 'websocket') options.transports = ['websocket'];
const socket = io(url, options);

socket.on('connect', function () {
    // A recovered socket is still logged in: no new login, as a page would do.
    if (!socket.recovered) socket.emit('login', uid);
    console.log('connect recovered=' + (socket.recovered === true) + ' id=' + socket.id);
});
socket.on('new_msg', function (msg) {
    console.log('new_msg ' + (typeof msg === 'string' ? msg : JSON.stringify(msg)));
});
socket.on('disconnect', function (reason) {
    console.log('disconnect ' + reason);
});
socket.on('connect_error', function (e) {
    console.error('connect_error ' + (e && e.message));
});

let buffered = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', function (chunk) {
    buffered += chunk;
    let nl;
    while ((nl = buffered.indexOf('\n')) >= 0) {
        const cmd = buffered.slice(0, nl).trim();
        buffered = buffered.slice(nl + 1);
        const [word, arg] = cmd.split(/\s+/);
        if (word === 'drop') {
            if (arg) {
                socket.io.reconnectionDelay(Number(arg));
                socket.io.reconnectionDelayMax(Number(arg));
                socket.io.randomizationFactor(0);
            }
            socket.io.engine.close();
        } else if (cmd === 'quit') {
            socket.close();
            setTimeout(() => process.exit(0), 200);
        }
    }
});
process.stdin.on('end', function () {
    socket.close();
    setTimeout(() => process.exit(0), 200);
});

setTimeout(function () {
    console.error('timeout');
    process.exit(3);
}, Number(timeoutArg)).unref();
