<?php
// A long-running event consumer on Herald's text port (GatewayWorker's BusinessWorker, in one
// loop): `php scripts/php/subscriber.php [HOST] [PORT] [EVENTS] [PUSH_SECRET]`, EVENTS a
// comma-separated list (default message,login,logout,online,offline), PUSH_SECRET the
// server's push_secret when it has one.
//
// It subscribes, prints every event as one JSON line on stdout, and runs the same chat as
// webhook.php: a message {"to":"UID","text":"…"} is pushed to UID as "FROM: TEXT", and the
// sender gets "sent" (a reply to its connection, or its Socket.IO ack). Pushes, replies and
// acks go on the same connection; their answers (ok, fail) are lines that are not events.
// When the connection ends (a reload retires the worker that held it), it connects again.

$host = $argv[1] ?? '127.0.0.1';
$port = (int) ($argv[2] ?? 5678);
$events = explode(',', $argv[3] ?? 'message,login,logout,online,offline');
$secret = $argv[4] ?? '';

function send($s, array $cmd) {
    fwrite($s, json_encode($cmd) . "\n");
}

function handle($s, array $e) {
    echo json_encode($e), "\n";
    if ($e['event'] !== 'message') {
        return;
    }
    // The chat message: a WebSocket's text as JSON, or a Socket.IO `chat` event's argument.
    $msg = isset($e['name']) ? ($e['args'][0] ?? null) : json_decode($e['data'] ?? '', true);
    if (!is_array($msg) || !isset($msg['to'], $msg['text'])) {
        return;
    }
    send($s, ['cmd' => 'push', 'to' => (string) $msg['to'], 'data' => $e['uid'] . ': ' . $msg['text']]);
    if (isset($e['ack'])) {
        send($s, ['cmd' => 'ack', 'conn' => $e['conn'], 'ack' => $e['ack'], 'data' => ['sent']]);
    } else {
        send($s, ['cmd' => 'reply', 'conn' => $e['conn'], 'data' => 'sent']);
    }
}

while (true) {
    $s = @stream_socket_client("tcp://$host:$port", $errno, $errstr, 5);
    if (!$s) {
        fwrite(STDERR, "cannot connect: $errstr; retrying\n");
        sleep(1);
        continue;
    }
    if ($secret !== '') {
        send($s, ['cmd' => 'auth', 'secret' => $secret]);
        if (trim((string) fgets($s)) !== 'ok') {
            fwrite(STDERR, "push_secret refused\n");
            exit(1);
        }
    }
    send($s, ['cmd' => 'subscribe', 'events' => $events]);
    $first = fgets($s);
    if ($first === false || trim($first) !== 'ok') {
        fwrite(STDERR, "subscribe refused: $first");
        exit(1);
    }
    echo "subscribed\n";
    while (($line = fgets($s)) !== false) {
        $e = json_decode($line, true);
        if (is_array($e) && isset($e['event'])) {
            handle($s, $e);
        }
        // Anything else is the answer to one of our commands (ok, fail).
    }
    fclose($s);
    sleep(1);
}
