<?php
// A chat backend on Herald's text port with the package's event helpers (a long-running
// process: GatewayWorker's BusinessWorker in a few lines).
//
//   php examples/chat-subscriber.php [HOST] [PORT] [PUSH_SECRET]
//
// A client's message {"to":"UID","text":"…"} (a WebSocket text message, or a Socket.IO
// `chat` event's first argument) is pushed to UID as "FROM: TEXT", and the sender is answered
// "sent" (or "offline" when UID has no connection): a message to its connection, or its
// Socket.IO acknowledgement. Every event is printed as one JSON line, and each answer as
// `answered true|false`. The text "check-gone" prints what reply() and ack() say for
// connections that do not exist; the text "bye" ends the loop. After each (re)subscription the
// script prints `subscribed`.
//
// HERALD_AUTOLOAD names the autoloader (default: the package's autoload.php; with Composer,
// vendor/autoload.php).

declare(strict_types=1);

require getenv('HERALD_AUTOLOAD') ?: __DIR__ . '/../autoload.php';

$host = $argv[1] ?? '127.0.0.1';
$port = (int)($argv[2] ?? 5678);
$secret = $argv[3] ?? null;

$herald = new Herald\Client($host, $port, $secret);
$herald->subscribe(
    ['message', 'online', 'offline'],
    function (array $e, Herald\Client $h) {
        echo json_encode($e, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE), "\n";
        if ($e['event'] !== 'message') {
            return true;
        }
        $msg = isset($e['name']) ? ($e['args'][0] ?? null) : json_decode($e['data'] ?? '', true);
        if (!is_array($msg) || !isset($msg['to'], $msg['text'])) {
            return true;
        }
        if ($msg['text'] === 'check-gone') {
            $r = $h->reply('1.0.1', 'nobody');
            $a = $h->ack('1.s.nosuchsession', 1, ['nobody']);
            echo 'gone: ', json_encode([$r, $a]), "\n";
            return true;
        }
        $pushed = $h->sendToUid((string)$msg['to'], "{$e['uid']}: {$msg['text']}");
        $answered = $h->answer($e, $pushed ? 'sent' : 'offline');
        echo 'answered ', json_encode($answered), "\n";
        return $msg['text'] !== 'bye';
    },
    ['onSubscribe' => function () {
        echo "subscribed\n";
    }]
);
echo "done\n";
