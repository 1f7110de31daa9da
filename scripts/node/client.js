// The seeds' browser code, run under Node: `new WebSocket(url)`, send the uid on open, and
// handle every message. `alert(e.data)` becomes one line of stdout per message.
//
// Usage: node client.js [URL] [UID] [COUNT]
//   or set HERALD_WS_URL, HERALD_UID, HERALD_COUNT. Defaults: ws://127.0.0.1:1234 uid1, no
//   count. Prints `open` once the uid has been sent, then each message's data; exits 0 after
//   COUNT messages (if given), 1 on an error, 2 if the server closes first.
'use strict';

// The `ws` package's client has the browser API (onopen, onmessage, send, e.data).
const WebSocket = require('ws');

const url = process.argv[2] || process.env.HERALD_WS_URL || 'ws://127.0.0.1:1234';
const uid = process.argv[3] || process.env.HERALD_UID || 'uid1';
const count = Number(process.argv[4] || process.env.HERALD_COUNT || 0);

let seen = 0;
const ws = new WebSocket(url);
ws.onopen = function () {
    ws.send(uid);
    console.log('open');
};
ws.onmessage = function (e) {
    console.log(String(e.data));
    seen += 1;
    if (count > 0 && seen >= count) {
        ws.onclose = null;
        ws.close(1000);
        process.exitCode = 0;
    }
};
ws.onerror = function (e) {
    console.error('error: ' + (e.message || e));
    process.exit(1);
};
ws.onclose = function (e) {
    console.error('closed by server: ' + e.code);
    process.exit(2);
};
