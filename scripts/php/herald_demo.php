<?php
// Exercises every method of Herald.php against a running server and prints one line per call,
// `what: result` with the result as JSON, then `done`. The end-to-end tests (tests/api.rs)
// run it with WebSocket clients logged in as php-a, php-b and php-c (and no one else), and
// check both this output and what the clients receive.
//
// Usage: php herald_demo.php [HOST] [PORT] [PUSH_SECRET]
//   Defaults: 127.0.0.1 5678, no secret.

require __DIR__ . '/Herald.php';

$host = $argv[1] ?? '127.0.0.1';
$port = (int)($argv[2] ?? 5678);
$secret = $argv[3] ?? null;

function show($what, $result)
{
    if (is_array($result) && $result === []) {
        $out = '{}';
    } else {
        $out = json_encode($result, JSON_UNESCAPED_SLASHES);
    }
    echo "$what: $out\n";
}

$h = new Herald($host, $port, $secret, 5.0);

show('online php-a', $h->isUidOnline('php-a'));
show('online php-off', $h->isUidOnline('php-off'));
show('sendToUid php-a', $h->sendToUid('php-a', 'hello a'));
show('sendToUid [php-a,php-b]', $h->sendToUid(['php-a', 'php-b'], ['n' => 1]));
show('sendToUid php-off', $h->sendToUid('php-off', 'nobody'));
show('push php-b', $h->push('php-b', ['percent' => '88%']));
show('join php-a', $h->joinGroup('php-a', 'php-g'));
show('join php-b', $h->joinGroup('php-b', 'php-g'));
show('count php-g', $h->count('php-g'));
show('uids php-g', $h->getUidList('php-g'));
show('groups', $h->getGroups());
show('sendToGroup php-g exclude php-b', $h->sendToGroup('php-g', 'to the group', ['php-b']));
show('sendToGroup php-empty', $h->sendToGroup('php-empty', 'nobody'));
show('sendToAll exclude php-a', $h->sendToAll('to all', ['php-a']));
show('sendToAll binary', $h->sendToAll("\x00\x01\x02\xff", [], true));
show('leave php-b', $h->leaveGroup('php-b', 'php-g'));
show('count php-g', $h->count('php-g'));
show('count', $h->count());
show('uids', $h->getUidList());
show('partial', $h->wasPartial());
show('ungroup php-g', $h->ungroup('php-g'));
show('groups', $h->getGroups());

try {
    $h->call(['cmd' => 'nope']);
    show('error', null);
} catch (HeraldException $e) {
    show('error', $e->getMessage());
}
try {
    $h->joinGroup('php-a', '');
    show('error', null);
} catch (HeraldException $e) {
    show('error', $e->getMessage());
}
show('online php-a after errors', $h->isUidOnline('php-a'));

// The server drops a connection that sends a line longer than its max_line (1 MiB at most
// by default): the next call finds the connection dead, reconnects once and succeeds.
@fwrite($h->socket(), str_repeat('x', 1100000) . "\n");
show('online php-a after the server closed', $h->isUidOnline('php-a'));
show('reconnects', $h->reconnects);

show('kick php-c', $h->kick('php-c', 'bye'));
show('kick php-off', $h->kick('php-off'));
$h->close();
echo "done\n";
