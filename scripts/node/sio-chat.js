// A Socket.IO chat client for the events tests: logs in, then sends what stdin says.
//
// Usage: node sio-chat.js v2|v4 URL UID
// stdin, one command per line:
//   chat TO TEXT   emit('chat', {to: TO, text: TEXT}, ack) and print the ack's arguments
//   quit           close and exit
// stdout, one line per event (match on the first word):
//   logged_in         the server acknowledged `login`
//   new_msg DATA      a pushed message
//   ack JSON          the acknowledgement of a `chat`, its arguments as a JSON array
//   disconnect REASON
'use strict';

const [version, url, uid] = process.argv.slice(2, 5);
const packages = { v2: 'socket.io-client-v2', v4: 'socket.io-client-v4' };
if (!(version in packages) || !url || !uid) {
    console.error('usage: node sio-chat.js v2|v4 URL UID');
    process.exit(2);
}
const lib = require(packages[version]);
const io = typeof lib === 'function' ? lib : lib.io || lib.default;
const socket = io(url, { transports: ['websocket'] });

socket.on('connect', function () {
    socket.emit('login', uid, function () {
        console.log('logged_in');
    });
});
socket.on('new_msg', function (msg) {
    console.log('new_msg ' + msg);
});
socket.on('disconnect', function (reason) {
    console.log('disconnect ' + reason);
});

require('readline').createInterface({ input: process.stdin }).on('line', function (line) {
    const [cmd, to, ...rest] = line.split(' ');
    if (cmd === 'chat') {
        socket.emit('chat', { to: to, text: rest.join(' ') }, function (...args) {
            console.log('ack ' + JSON.stringify(args));
        });
    } else if (cmd === 'quit') {
        socket.close();
        setTimeout(() => process.exit(0), 200);
    }
});
setTimeout(() => process.exit(3), 120000);
