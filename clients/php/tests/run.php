<?php
// The package's test runner (no PHPUnit needed): exercises every method against a real Herald
// and prints one line per call, `what: result` (results as JSON, exceptions as `Class: message`),
// then `done`. tests/php_client.rs starts the server, holds WebSocket clients logged in as
// pc-a, pc-b and pc-c (and no one else), runs this script through Composer's autoloader, and
// checks both this output and what the clients received. Timings go to stderr.
//
// Usage:
//   php run.php text      with HERALD_TEXT_PORT, HERALD_HTTP_PORT, HERALD_PUSH_SECRET set
//   php run.php idle      with HERALD_HTTP_PORT set, against a server with a short idle_timeout
//   php run.php tokens SECRET UID
//                         prints an hmac token, a JWT, and tokens that must be refused
//
// HERALD_AUTOLOAD names the autoloader (default: vendor/autoload.php beside this directory).

declare(strict_types=1);

use Herald\AuthenticationException;
use Herald\Client;
use Herald\ConnectionException;
use Herald\HttpPublisher;
use Herald\Pipeline;
use Herald\ServerException;
use Herald\TimeoutException;
use Herald\Token;
use Herald\UnknownCommandException;

require getenv('HERALD_AUTOLOAD') ?: __DIR__ . '/../vendor/autoload.php';

/** Prints `what: result`. */
function show(string $what, $result): void
{
    if (is_array($result) && $result === []) {
        $out = '{}';
    } else {
        $out = json_encode($result, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE);
    }
    echo "$what: $out\n";
}

/** Runs `$f` and prints its result, or the class and message of what it threw. */
function attempt(string $what, callable $f): void
{
    try {
        show($what, $f());
    } catch (Throwable $e) {
        $class = substr(strrchr('\\' . get_class($e), '\\'), 1);
        echo "$what: $class: {$e->getMessage()}\n";
    }
}

/** A result as one character: t(rue), f(alse), E(rror reply), ? (anything else). */
function flag($r): string
{
    if ($r === true) {
        return 't';
    }
    if ($r === false) {
        return 'f';
    }
    return $r instanceof ServerException ? 'E' : '?';
}

function env(string $k): string
{
    $v = getenv($k);
    if ($v === false || $v === '') {
        fwrite(STDERR, "run.php: $k is not set\n");
        exit(2);
    }
    return $v;
}

$mode = $argv[1] ?? '';

if ($mode === 'tokens') {
    $secret = $argv[2] ?? '';
    $uid = $argv[3] ?? '';
    echo 'hmac ', Token::hmac($secret, $uid), "\n";
    echo 'jwt ', Token::jwt($secret, $uid, 300), "\n";
    echo 'hmac-expired ', Token::hmac($secret, $uid, 300, time() - 3600), "\n";
    echo 'jwt-expired ', Token::jwt($secret, $uid, 300, [], time() - 3600), "\n";
    echo 'jwt-not-yet ', Token::jwt($secret, $uid, 300, ['nbf' => time() + 3600]), "\n";
    echo 'hmac-other-secret ', Token::hmac($secret . 'x', $uid), "\n";
    attempt('empty uid', function () use ($secret) {
        return Token::hmac($secret, '');
    });
    exit(0);
}

if ($mode === 'idle') {
    // The server closes idle HTTP keep-alive connections (`idle_timeout`): the publisher finds
    // its connection closed and sends the request again on a new one.
    $httpPort = (int)env('HERALD_HTTP_PORT');
    $http = new HttpPublisher("http://127.0.0.1:$httpPort");
    show('online before', $http->online('nobody'));
    // A probe connection opened after the publisher's: once the server has closed it for
    // idleness, it has closed the publisher's too.
    $probe = stream_socket_client("tcp://127.0.0.1:$httpPort");
    fwrite($probe, "GET /api/online/nobody HTTP/1.1\r\nHost: x\r\n\r\n");
    stream_set_timeout($probe, 10);
    while (!feof($probe)) {
        if (fread($probe, 8192) === false || stream_get_meta_data($probe)['timed_out']) {
            break;
        }
    }
    show('probe closed by the server', feof($probe));
    show('online after the server closed', $http->online('nobody'));
    echo "done\n";
    exit(0);
}

if ($mode !== 'text') {
    fwrite(STDERR, "usage: php run.php text | idle | tokens SECRET UID\n");
    exit(2);
}

$port = (int)env('HERALD_TEXT_PORT');
$httpPort = (int)env('HERALD_HTTP_PORT');
$secret = env('HERALD_PUSH_SECRET');

$h = new Client('127.0.0.1', $port, $secret, 5.0);

// Presence and pushes, one call at a time.
show('online pc-a', $h->isUidOnline('pc-a'));
show('online pc-off', $h->isUidOnline('pc-off'));
show('sendToUid pc-a', $h->sendToUid('pc-a', 'hello a'));
show('sendToUids [pc-a,pc-b]', $h->sendToUids(['pc-a', 'pc-b'], ['n' => 1]));
show('sendToUid pc-off', $h->sendToUid('pc-off', 'nobody'));
show('push pc-b', $h->push('pc-b', ['percent' => '88%']));

// Groups.
show('joinGroup pc-a g', $h->joinGroup('pc-a', 'g'));
show('joinGroup pc-b g', $h->joinGroup('pc-b', 'g'));
show('count g', $h->count('g'));
show('getUidList g', $h->getUidList('g'));
show('getGroups', $h->getGroups());
show('sendToGroup g exclude pc-b', $h->sendToGroup('g', 'to the group', ['pc-b']));
show('sendToGroup empty', $h->sendToGroup('empty', 'nobody'));
show('sendToAll exclude pc-a', $h->sendToAll('to all', ['pc-a']));
show('sendToAll binary', $h->sendToAll("\x00\x01\x02\xff", [], true));
show('leaveGroup pc-b g', $h->leaveGroup('pc-b', 'g'));
show('count g', $h->count('g'));
show('count', $h->count());
show('getUidList', $h->getUidList());
show('wasPartial', $h->wasPartial());
show('ungroup g', $h->ungroup('g'));
show('getGroups', $h->getGroups());

// Refusals: typed, and the connection stays usable.
attempt('history pc-a', function () use ($h) {
    try {
        return $h->history('pc-a');
    } catch (UnknownCommandException $e) {
        return 'unknown command (' . $e->getMessage() . ')';
    }
});
attempt('call nope', function () use ($h) {
    return $h->call(['cmd' => 'nope']);
});
attempt('joinGroup empty group', function () use ($h) {
    return $h->joinGroup('pc-a', '');
});
show('online pc-a after errors', $h->isUidOnline('pc-a'));

// Pipelining: 201 commands written at once, replies in order; a refused one in the middle
// takes its slot without stopping the rest.
$results = $h->pipeline(function (Pipeline $p) {
    for ($i = 0; $i < 100; $i++) {
        $p->sendToUid('pc-b', "p$i")->sendToUid('pc-off', "x$i");
        if ($i === 49) {
            $p->call(['cmd' => 'push']);
        }
    }
});
show('pipeline flags', implode('', array_map('flag', $results)));
show('pipeline error', $results[100] instanceof ServerException ? $results[100]->getMessage() : null);

$results = $h->pipeline(function (Pipeline $p) {
    $p->count()->getUidList()->isUidOnline('pc-c')->getGroups();
});
show('pipeline queries', $results);
show('pipeline empty', $h->pipeline(function (Pipeline $p) {
}));

// 5,000 questions in one pipeline, and 500 one at a time (timings on stderr).
$t0 = microtime(true);
$results = $h->pipeline(function (Pipeline $p) {
    for ($i = 0; $i < 5000; $i++) {
        $p->isUidOnline('pc-a');
    }
});
$pipelined = microtime(true) - $t0;
show('pipeline 5000 online', count($results) === 5000 && !in_array(false, $results, true));
$t0 = microtime(true);
for ($i = 0; $i < 500; $i++) {
    $h->isUidOnline('pc-a');
}
$oneByOne = microtime(true) - $t0;
fprintf(STDERR, "timing: online, pipelined %.1f us each (5000), one at a time %.1f us each (500)\n", $pipelined * 2e2, $oneByOne * 2e3);

// The server drops a connection that sends a line over max_line: the next call finds the
// connection dead, reconnects once and succeeds.
@fwrite($h->socket(), str_repeat('x', 1100000) . "\n");
show('online pc-a after the server closed', $h->isUidOnline('pc-a'));
show('reconnects', $h->reconnects);

// A pipeline broken by the server in its middle: the line over max_line closes the
// connection; the commands after it got no reply, so the client sends them again once, and
// the bad line fails again: ConnectionException.
attempt('pipeline with a line over max_line', function () use ($h) {
    try {
        return $h->pipeline(function (Pipeline $p) {
            $p->isUidOnline('pc-a')->call(['cmd' => 'online', 'uid' => str_repeat('y', 1100000)])->isUidOnline('pc-a');
        });
    } catch (ConnectionException $e) {
        return get_class($e) . (strpos($e->getMessage(), 'after reconnecting') !== false ? ' after reconnecting' : '');
    }
});
show('online pc-a after that', $h->isUidOnline('pc-a'));

// Connection errors.
attempt('wrong push secret', function () use ($port) {
    return (new Client('127.0.0.1', $port, 'wrong-secret', 5.0))->isUidOnline('pc-a');
});
attempt('no push secret', function () use ($port) {
    return (new Client('127.0.0.1', $port, null, 5.0))->isUidOnline('pc-a');
});
$probe = stream_socket_server('tcp://127.0.0.1:0');
$closed = (int)parse_url('tcp://' . stream_socket_get_name($probe, false), PHP_URL_PORT);
fclose($probe);
attempt('connection refused', function () use ($closed) {
    try {
        return (new Client('127.0.0.1', $closed))->isUidOnline('pc-a');
    } catch (ConnectionException $e) {
        return get_class($e) . ' caught as ConnectionException';
    }
});
// A port that accepts (the kernel's backlog) but never answers.
$silent = stream_socket_server('tcp://127.0.0.1:0');
$silentPort = (int)parse_url('tcp://' . stream_socket_get_name($silent, false), PHP_URL_PORT);
attempt('silent server', function () use ($silentPort) {
    $t0 = microtime(true);
    try {
        (new Client('127.0.0.1', $silentPort, null, 0.3))->isUidOnline('pc-a');
        return 'answered?';
    } catch (TimeoutException $e) {
        $took = microtime(true) - $t0;
        return ($e instanceof ConnectionException ? 'TimeoutException, a ConnectionException' : 'TimeoutException')
            . ($took >= 0.25 && $took < 2.0 ? ', after the timeout' : ", after {$took}s");
    }
});
fclose($silent);

// The HTTP API.
$http = new HttpPublisher("http://127.0.0.1:$httpPort", $secret, 5.0);
show('http publish pc-a', $http->publish('pc-a', '<b>Tom & Jerry</b>'));
show('http publish pc-off', $http->publish('pc-off', 'nobody'));
show('http pushToUid pc-a', $http->pushToUid('pc-a', ['via' => 'api']));
show('http pushToUid [pc-a,pc-b]', $http->pushToUid(['pc-a', 'pc-b'], 'api both'));
show('http joinGroup pc-b h', $http->joinGroup('pc-b', 'h'));
show('http groups', $http->groups());
show('http pushToGroup h', $http->pushToGroup('h', 'api group'));
show('http leaveGroup pc-b h', $http->leaveGroup('pc-b', 'h'));
show('http ungroup h', $http->ungroup('h'));
show('http pushToAll exclude pc-a,pc-c', $http->pushToAll("\x05\x06", ['pc-a', 'pc-c'], true));
show('http online pc-a', $http->online('pc-a'));
show('http online pc-off', $http->online('pc-off'));
show('http uids', $http->uids());
show('http stats has totals', isset($http->stats()['totals']));
attempt('http no such endpoint', function () use ($http) {
    try {
        return $http->api('GET', '/api/nope');
    } catch (ServerException $e) {
        return $e->getStatus() . ' ' . $e->getMessage();
    }
});
attempt('http bad push', function () use ($http) {
    return $http->api('POST', '/api/push', ['data' => 'x']);
});
attempt('http wrong secret', function () use ($httpPort) {
    try {
        return (new HttpPublisher("http://127.0.0.1:$httpPort", 'wrong', 5.0))->online('pc-a');
    } catch (AuthenticationException $e) {
        return 'AuthenticationException ' . $e->getStatus();
    }
});

// Kicks last: pc-c gets its message, then a close.
show('kick pc-c', $h->kick('pc-c', 'bye'));
show('kick pc-off', $h->kick('pc-off'));
show('http kick pc-off', $http->kick('pc-off'));
$h->close();
$http->close();
echo "done\n";
