<?php
// Herald's webhook, for PHP-FPM or `php -S 127.0.0.1:8080 scripts/php/webhook.php`.
//
// Herald POSTs {"events":[…]} with X-Herald-Signature: sha256=HMAC of the body under
// webhook_secret. This script checks the signature, appends every event (one JSON line each)
// to a log file, and runs a small chat: a client's message {"to":"UID","text":"…"} (a
// WebSocket text message, or a Socket.IO `chat` event's first argument) is pushed to UID as
// "FROM: TEXT", and the sender gets "sent" (a WebSocket reply, or the Socket.IO ack).
//
// Environment: HERALD_WEBHOOK_SECRET (the same as webhook_secret; empty: not checked),
// HERALD_EVENTS_LOG (default: herald-events.log in the system's temporary directory).

$secret = getenv('HERALD_WEBHOOK_SECRET') ?: '';
$log = getenv('HERALD_EVENTS_LOG') ?: sys_get_temp_dir() . '/herald-events.log';

$body = file_get_contents('php://input');
if ($secret !== '') {
    $sig = $_SERVER['HTTP_X_HERALD_SIGNATURE'] ?? '';
    $want = 'sha256=' . hash_hmac('sha256', $body, $secret);
    if (!hash_equals($want, $sig)) {
        file_put_contents($log, "{\"bad_signature\":true}\n", FILE_APPEND | LOCK_EX);
        http_response_code(401);
        exit;
    }
}
$batch = json_decode($body, true);
if (!is_array($batch) || !isset($batch['events'])) {
    http_response_code(400);
    exit;
}

$lines = '';
$replies = [];
foreach ($batch['events'] as $e) {
    $lines .= json_encode($e) . "\n";
    if ($e['event'] !== 'message') {
        continue;
    }
    // The chat message: a WebSocket's text as JSON, or a Socket.IO `chat` event's argument.
    $msg = isset($e['name']) ? ($e['args'][0] ?? null) : json_decode($e['data'] ?? '', true);
    if (!is_array($msg) || !isset($msg['to'], $msg['text'])) {
        continue;
    }
    $answer = [
        'id' => $e['id'],
        'push' => ['to' => (string) $msg['to'], 'data' => $e['uid'] . ': ' . $msg['text']],
    ];
    if (isset($e['ack'])) {
        $answer['ack'] = ['sent'];      // calls the Socket.IO client's ack with 'sent'
    } else {
        $answer['reply'] = 'sent';      // a message back to the sender's connection
    }
    $replies[] = $answer;
}
file_put_contents($log, $lines, FILE_APPEND | LOCK_EX);

header('Content-Type: application/json');
echo json_encode(['replies' => $replies]);
