// The seed's Socket.IO web page, run under Node with the real socket.io client: `io(url)`,
// `emit('login', uid)` on connect, and listen for `new_msg` and `update_online_count`.
//
// Usage: node sio-client.js VERSION TRANSPORTS [URL] [UID] [COUNT] [TIMEOUT_MS]
//   VERSION     v2 (socket.io-client 2.x, Engine.IO v3) or v4 (socket.io-client 4.x, Engine.IO v4)
//   TRANSPORTS  default (polling, then upgrade to WebSocket), websocket (WebSocket only) or
//               polling (long-polling only)
//   URL         default http://127.0.0.1:2120 (or HERALD_SIO_URL)
//   UID         default 123 (or HERALD_UID); all digits are emitted as a number, as the seed's
//               `uid = 123` is, anything else as a string
//   COUNT       exit 0 after this many `new_msg` (0: never; or HERALD_COUNT)
//   TIMEOUT_MS  default 30000 (or HERALD_TIMEOUT_MS); when it passes first, exit 3 if COUNT
//               was not reached (exit 0 if COUNT is 0); 0 disables it
//
// stdout has one line per event, for a test to synchronise on (match on the first word):
//   connect            the socket connected (and `login` was emitted)
//   new_msg DATA       a pushed message; DATA as received if it is a one-line string, else JSON
//   online DATA        an `update_online_count`, DATA likewise
//   disconnect REASON  the socket disconnected (the client reconnects on its own, as a page would)
//   upgrade NAME       the Engine.IO transport was upgraded (default transports only)
// Errors go to stderr; a failed connection attempt is `connect_error MESSAGE` on stderr and the
// client keeps retrying, as a page would. Exit 2 on bad arguments.
'use strict';

const [version, transports] = process.argv.slice(2, 4);
const url = process.argv[4] || process.env.HERALD_SIO_URL || 'http://127.0.0.1:2120';
const uidArg = process.argv[5] || process.env.HERALD_UID || '123';
const count = Number(process.argv[6] || process.env.HERALD_COUNT || 0);
const timeoutMs = Number(process.argv[7] || process.env.HERALD_TIMEOUT_MS || 30000);

const packages = { v2: 'socket.io-client-v2', v4: 'socket.io-client-v4' };
const transportSets = { default: null, websocket: ['websocket'], polling: ['polling'] };
if (!(version in packages) || !(transports in transportSets) || !(count >= 0) || !(timeoutMs >= 0)) {
    console.error('usage: node sio-client.js v2|v4 default|websocket|polling [URL] [UID] [COUNT] [TIMEOUT_MS]');
    process.exit(2);
}

// Both majors are installed side by side under npm aliases (see package.json). 2.x exports the
// `io` function itself; 4.x's CommonJS build exports it as a property too.
const lib = require(packages[version]);
const io = typeof lib === 'function' ? lib : lib.io || lib.default;

// The seed: `uid = 123;` — a number.
const uid = /^[0-9]{1,15}$/.test(uidArg) ? Number(uidArg) : uidArg;

function show(data) {
    return typeof data === 'string' && !/[\r\n]/.test(data) ? data : JSON.stringify(data);
}

let seen = 0;
let finished = false;

// The seed's page: `var socket = io('http://127.0.0.1:2120');` — options only when a test
// restricts the transports.
const socket = transportSets[transports]
    ? io(url, { transports: transportSets[transports] })
    : io(url);

function finish(code) {
    if (finished) return;
    finished = true;
    // Leave cleanly (Socket.IO DISCONNECT, Engine.IO close) so the server drops this client
    // from its counts, and give a polling transport a moment to send it.
    socket.close();
    setTimeout(() => process.exit(code), 300);
}

socket.on('connect', function () {
    socket.emit('login', uid);
    console.log('connect');
});
socket.on('new_msg', function (msg) {
    console.log('new_msg ' + show(msg));
    seen += 1;
    if (count > 0 && seen >= count) finish(0);
});
socket.on('update_online_count', function (online) {
    console.log('online ' + show(online));
});
socket.on('disconnect', function (reason) {
    if (!finished) console.log('disconnect ' + reason);
});
socket.on('connect_error', function (err) {
    console.error('connect_error ' + ((err && err.message) || err));
});
// The Engine.IO socket (`socket.io.engine`) exists once the manager opened; it reports the
// transport switch with `upgrade`. Both majors expose the manager as `socket.io`.
socket.io.on('open', function () {
    const engine = socket.io.engine;
    if (engine && !engine.__heraldWatched) {
        engine.__heraldWatched = true;
        engine.on('upgrade', function (t) {
            console.log('upgrade ' + ((t && t.name) || t));
        });
    }
});

if (timeoutMs > 0) {
    setTimeout(function () {
        if (count > 0) console.error('timeout: ' + seen + ' of ' + count + ' new_msg');
        finish(count > 0 ? 3 : 0);
    }, timeoutMs);
}
