<?php

declare(strict_types=1);

namespace Herald;

/**
 * A client of Herald's text port: one persistent TCP connection, opened on first use and kept
 * for every later call (so a PHP-FPM worker pays the connect once per request, or once per
 * process with a long-lived object).
 *
 *     $h = new Herald\Client('127.0.0.1', 5678);     // or ($host, $port, $pushSecret, $timeout)
 *     $h->sendToUid('u1', ['type' => 'hello']);      // true: at least one connection got it
 *     $h->joinGroup('u1', 'room1');
 *     $h->sendToGroup('room1', 'hi all', ['u2']);    // everyone in room1 but u2
 *     $h->isUidOnline('u1');                         // bool
 *     $h->pipeline(function ($p) { $p->sendToUid('u1', 'a')->sendToUid('u2', 'b'); });
 *
 * Each command is one JSON line answered by one line, in order. `pipeline()` writes many lines
 * before reading their replies; the client writes and reads at the same time, so a pipeline of
 * any length cannot deadlock on full socket buffers.
 *
 * With a push secret (server setting `push_secret`), the first line on every new connection is
 * `{"cmd":"auth","secret":"…"}`.
 *
 * Failures: ConnectionException (unreachable, or the connection broke and one reconnect did
 * not help), TimeoutException (no progress within the timeout), ServerException (the server
 * refused the command; UnknownCommandException for a command it does not know;
 * AuthenticationException for a wrong push secret), ProtocolException (a reply of the wrong
 * shape). All extend HeraldException.
 *
 * Reconnecting: when the server has closed the connection (between two calls, or in the middle
 * of a pipeline), the client opens a new one, once, and sends again the commands that got no
 * reply. The server answers every line it read before it closes a connection, so a line that
 * got no reply was not processed and is not pushed twice.
 *
 * Events: `subscribe()` turns the connection into an event stream (the server needs
 * `events = true` or a `webhook_url`) and calls a handler for each event, until the handler
 * returns false; the handler may call any command on the same client meanwhile (`reply()`,
 * `ack()`, `answer()`, pushes), whose answers the client tells apart from the events.
 *
 *     $h->subscribe(['message', 'online'], function (array $e, Herald\Client $h) {
 *         if ($e['event'] === 'message') {
 *             $h->answer($e, 'got it');          // reply, or the Socket.IO ack
 *         }
 *     });
 */
class Client
{
    use Commands;

    /** @var string Text port host (a name, an IPv4 or an IPv6 address). */
    private $host;

    /** @var int Text port. */
    private $port;

    /** @var string|null The server's push_secret, null when it has none. */
    private $secret;

    /** @var float Seconds to wait for a connection, or for any progress of an exchange. */
    private $timeout;

    /** @var resource|null The connection, null until the first call and after close(). */
    private $sock = null;

    /** @var bool Whether the stream is in blocking mode (new streams are; socket() sets it). */
    private $blocking = true;

    /** @var string Bytes read past the last reply consumed. */
    private $buf = '';

    /** @var bool Whether the last query's answer lacked a worker's share. */
    private $partial = false;

    /** @var int How many times the connection was re-established after a failure. */
    public $reconnects = 0;

    /** @var array<int, string>|null While subscribe() runs: the events subscribed to (a new
     *  connection subscribes again before anything else). */
    private $subscribed = null;

    /** @var array<int, string> Event lines read while waiting for a command's reply. */
    private $events = [];

    /**
     * @param string      $host    Text port host.
     * @param int         $port    Text port (Herald's default: 5678).
     * @param string|null $secret  The server's `push_secret`, if it has one.
     * @param float       $timeout Seconds to wait for a connection or for progress of a reply.
     */
    public function __construct(
        string $host = '127.0.0.1',
        int $port = 5678,
        ?string $secret = null,
        float $timeout = 5.0
    ) {
        $this->host = $host;
        $this->port = $port;
        $this->secret = ($secret === null || $secret === '') ? null : $secret;
        $this->timeout = $timeout > 0 ? $timeout : 5.0;
    }

    public function __destruct()
    {
        $this->close();
    }

    /** Closes the connection; the next call opens a new one. */
    public function close(): void
    {
        if ($this->sock !== null) {
            @fclose($this->sock);
            $this->sock = null;
        }
        $this->buf = '';
        $this->events = [];
    }

    /**
     * Subscribes to `$events` (any of login, message, logout, online, offline; [] for all) and
     * calls `$handler(array $event, Client $client)` for each event, in order, until it returns
     * false. Blocks meanwhile (a long-running consumer: GatewayWorker's BusinessWorker).
     *
     * When the connection ends (a reload retires the worker holding it, the server restarts),
     * the client connects again after `retry` seconds (growing to 5 s while it fails) and
     * subscribes again: events produced in between are not seen, so a consumer that must not
     * miss any uses the webhook instead (at least once), or both. On return (the handler said
     * false, or threw) the connection is closed: the next command opens a new, plain one.
     *
     * Options: `retry` (float, default 1.0): seconds before connecting again;
     * `reconnect` (bool, default true): false to throw ConnectionException instead;
     * `onSubscribe` (callable(Client)): called after each successful subscription (the first
     * and every one after a reconnection).
     *
     * Throws ServerException when the server refuses (`events are off`), AuthenticationException
     * for a wrong push secret, and whatever the handler throws.
     *
     * @param array<int, string> $events
     * @param callable(array<string, mixed>, Client): mixed $handler
     * @param array<string, mixed> $options
     */
    public function subscribe(array $events, callable $handler, array $options = []): void
    {
        $retry = (float)($options['retry'] ?? 1.0);
        $reconnect = (bool)($options['reconnect'] ?? true);
        $onSubscribe = $options['onSubscribe'] ?? null;
        $this->close();
        $this->subscribed = array_values($events);
        try {
            $wait = $retry > 0 ? $retry : 1.0;
            while (true) {
                try {
                    $this->connect();
                    $wait = $retry > 0 ? $retry : 1.0;
                    if ($onSubscribe !== null) {
                        $onSubscribe($this);
                    }
                    while (true) {
                        while ($this->events) {
                            $event = json_decode((string)array_shift($this->events), true);
                            if (is_array($event) && $handler($event, $this) === false) {
                                return;
                            }
                        }
                        $this->readEvents();
                    }
                } catch (ConnectionException | TimeoutException $e) {
                    if (!$reconnect) {
                        throw $e;
                    }
                    $this->close();
                    $this->reconnects++;
                    usleep((int)($wait * 1e6));
                    $wait = min($wait * 2, 5.0);
                }
            }
        } finally {
            $this->subscribed = null;
            $this->close();
        }
    }

    /**
     * Answers a client's `message` event with `$data`: the Socket.IO acknowledgement when the
     * event has one (`ack($e['conn'], $e['ack'], [$data])`), else a message to its connection
     * (`reply($e['conn'], $data)`). True when it went.
     *
     * @param array<string, mixed> $event
     * @param mixed $data
     */
    public function answer(array $event, $data): bool
    {
        $conn = (string)($event['conn'] ?? '');
        if ($conn === '') {
            return false;
        }
        if (isset($event['ack'])) {
            return (bool)$this->ack($conn, (int)$event['ack'], [$data]);
        }
        return (bool)$this->reply($conn, $data);
    }

    /** Whether `$line` is an event (a JSON object with an `event` field), not a reply. */
    private static function isEvent(string $line): bool
    {
        if ($line === '' || $line[0] !== '{' || strpos($line, '"event"') === false) {
            return false;
        }
        $v = json_decode($line, true);
        return is_array($v) && isset($v['event']);
    }

    /**
     * Waits for more event lines (at most a second, so a signal handler gets its turn) and
     * queues them. Throws ConnectionException when the connection ends.
     */
    private function readEvents(): void
    {
        $sock = $this->connect();
        if ($this->blocking) {
            stream_set_blocking($sock, false);
            $this->blocking = false;
        }
        $read = [$sock];
        $write = null;
        $except = null;
        if (strpos($this->buf, "\n") === false) {
            $ready = @stream_select($read, $write, $except, 1, 0);
            if ($ready === false || $ready === 0) {
                return; // a signal, or a quiet second
            }
            $chunk = @fread($sock, 65536);
            if ($chunk === false || $chunk === '') {
                throw new ConnectionException("event stream from {$this->address()} ended");
            }
            $this->buf .= $chunk;
        }
        while (($nl = strpos($this->buf, "\n")) !== false) {
            $line = rtrim(substr($this->buf, 0, $nl), "\r");
            $this->buf = (string)substr($this->buf, $nl + 1);
            if (self::isEvent($line)) {
                $this->events[] = $line;
            }
            // Anything else is a stray answer line: nothing waits for it.
        }
    }

    /**
     * The underlying stream (opened if needed), in blocking mode, for diagnostics and raw
     * writes. The client puts it back in non-blocking mode for its own exchanges.
     *
     * @return resource
     */
    public function socket()
    {
        $sock = $this->connect();
        stream_set_blocking($sock, true);
        $this->blocking = true;
        return $sock;
    }

    /** Whether the last query's answer lacked a worker's share (`"partial":true`). */
    public function wasPartial(): bool
    {
        return $this->partial;
    }

    /**
     * Sends one command (an array, encoded as one JSON line) and returns its reply line without
     * the newline. Throws ServerException on an `{"error":…}` reply.
     *
     * @param array<string, mixed> $cmd
     */
    public function call(array $cmd): string
    {
        return $this->request($cmd, 'raw');
    }

    /**
     * Runs `$build` with a Pipeline, then writes all its commands at once and reads their
     * replies. Returns one result per command, in order: what the Client method of the same
     * name returns, or the ServerException of a command the server refused (not thrown).
     *
     * @param callable(Pipeline): mixed $build
     * @return array<int, mixed>
     */
    public function pipeline(callable $build): array
    {
        $p = new Pipeline();
        $build($p);
        [$commands, $kinds] = $p->drain();
        if (!$commands) {
            return [];
        }
        $replies = $this->exchange(array_map([self::class, 'encode'], $commands));
        $results = [];
        foreach ($replies as $i => $line) {
            $error = Reply::error($line);
            $results[] = $error ?? Reply::decode($kinds[$i], $line, $this->partial);
        }
        return $results;
    }

    /**
     * @param array<string, mixed> $cmd
     * @return mixed
     */
    protected function request(array $cmd, string $kind)
    {
        $line = $this->exchange([self::encode($cmd)])[0];
        $error = Reply::error($line);
        if ($error !== null) {
            throw $error;
        }
        return Reply::decode($kind, $line, $this->partial);
    }

    /**
     * One command as its line.
     *
     * @param array<string, mixed> $cmd
     */
    private static function encode(array $cmd): string
    {
        $line = json_encode($cmd, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE);
        if ($line === false) {
            throw new ProtocolException('cannot encode command: ' . json_last_error_msg());
        }
        return $line . "\n";
    }

    /**
     * Writes `$lines` and returns their reply lines, in order. Reconnects once when the server
     * closed the connection, and sends again the lines that got no reply.
     *
     * @param array<int, string> $lines
     * @return array<int, string>
     */
    private function exchange(array $lines): array
    {
        $replies = [];
        for ($attempt = 0;; $attempt++) {
            $sock = $this->connect();
            $failure = $this->transfer($sock, array_slice($lines, count($replies)), $replies);
            if ($failure === null) {
                return $replies;
            }
            $this->close();
            if ($failure === 'timeout') {
                throw new TimeoutException("no reply within {$this->timeout}s from {$this->address()}");
            }
            if ($attempt >= 1) {
                throw new ConnectionException("$failure (after reconnecting to {$this->address()})");
            }
            $this->reconnects++;
        }
    }

    /**
     * Writes `$lines` while reading replies into `$replies`, until there is one reply per line.
     * Returns null when done, 'timeout' when nothing moved for the timeout, or why the
     * connection failed.
     *
     * @param resource $sock
     * @param array<int, string> $lines
     * @param array<int, string> $replies
     */
    private function transfer($sock, array $lines, array &$replies): ?string
    {
        if ($this->blocking) {
            stream_set_blocking($sock, false);
            $this->blocking = false;
        }
        $want = count($replies) + count($lines);
        $out = implode('', $lines);
        $deadline = microtime(true) + $this->timeout;
        // The usual command fits in the socket's buffer: write it at once, then wait to read.
        $n = @fwrite($sock, $out);
        if ($n === false) {
            return 'broken pipe';
        }
        $out = (string)substr($out, $n);
        while (true) {
            while (count($replies) < $want && ($nl = strpos($this->buf, "\n")) !== false) {
                $line = rtrim(substr($this->buf, 0, $nl), "\r");
                $this->buf = (string)substr($this->buf, $nl + 1);
                if ($this->subscribed !== null && self::isEvent($line)) {
                    // An event of the stream, between the replies: kept for subscribe().
                    $this->events[] = $line;
                    continue;
                }
                $replies[] = $line;
            }
            if (count($replies) >= $want) {
                return null;
            }
            $left = $deadline - microtime(true);
            if ($left <= 0) {
                return 'timeout';
            }
            $read = [$sock];
            $write = $out !== '' ? [$sock] : [];
            $except = null;
            $ready = @stream_select($read, $write, $except, (int)$left, (int)(fmod($left, 1.0) * 1e6));
            if ($ready === false) {
                continue; // interrupted by a signal: wait again
            }
            if ($write) {
                $n = @fwrite($sock, $out);
                if ($n === false) {
                    return 'broken pipe';
                }
                if ($n > 0) {
                    $out = (string)substr($out, $n);
                    $deadline = microtime(true) + $this->timeout;
                }
            }
            if ($read) {
                $chunk = @fread($sock, 65536);
                if ($chunk === false || $chunk === '') {
                    // Readable with nothing to read: the end of the stream (or a reset).
                    return 'connection closed by the server';
                } else {
                    $this->buf .= $chunk;
                    $deadline = microtime(true) + $this->timeout;
                }
            }
        }
    }

    /**
     * The connection, opened (and authenticated) if needed.
     *
     * @return resource
     */
    private function connect()
    {
        if ($this->sock !== null) {
            return $this->sock;
        }
        $addr = "tcp://{$this->address()}";
        $ctx = stream_context_create(['socket' => ['tcp_nodelay' => true]]);
        $sock = @stream_socket_client($addr, $errno, $errstr, $this->timeout, STREAM_CLIENT_CONNECT, $ctx);
        if ($sock === false) {
            $why = "connect $addr failed: $errstr ($errno)";
            if ($errno === 110 || stripos($errstr, 'timed out') !== false) {
                throw new TimeoutException($why);
            }
            throw new ConnectionException($why);
        }
        $this->sock = $sock;
        $this->blocking = true;
        $this->buf = '';
        if ($this->secret !== null) {
            $replies = [];
            $auth = self::encode(['cmd' => 'auth', 'secret' => $this->secret]);
            $failure = $this->transfer($sock, [$auth], $replies);
            $reply = $replies[0] ?? null;
            if ($reply !== 'ok') {
                $this->close();
                if ($failure === 'timeout') {
                    throw new TimeoutException("no answer to authentication within {$this->timeout}s");
                }
                $error = $reply === null ? null : Reply::error($reply);
                $why = $error !== null ? $error->getMessage() : ($reply ?? $failure ?? 'no reply');
                throw new AuthenticationException("authentication failed: $why");
            }
        }
        if ($this->subscribed !== null) {
            $replies = [];
            $line = self::encode(['cmd' => 'subscribe', 'events' => $this->subscribed ?: null]);
            $failure = $this->transfer($sock, [$line], $replies);
            $reply = $replies[0] ?? null;
            if ($reply !== 'ok') {
                $this->close();
                if ($failure === 'timeout') {
                    throw new TimeoutException("no answer to subscribe within {$this->timeout}s");
                }
                $error = $reply === null ? null : Reply::error($reply);
                if ($error !== null) {
                    throw $error;
                }
                throw new ConnectionException('subscribe failed: ' . ($reply ?? $failure ?? 'no reply'));
            }
        }
        return $sock;
    }

    /** `host:port`, with an IPv6 address in brackets. */
    private function address(): string
    {
        $host = $this->host;
        if (strpos($host, ':') !== false && $host[0] !== '[') {
            $host = "[$host]";
        }
        return "$host:{$this->port}";
    }
}
