<?php

declare(strict_types=1);

namespace Herald;

/**
 * A client of Herald's HTTP port: the seed's publish call and the JSON API under `/api/`, over
 * one keep-alive connection, with PHP's own streams (no curl needed).
 *
 *     $http = new Herald\HttpPublisher('http://127.0.0.1:2121');   // (+ $pushSecret, $timeout)
 *     $http->publish('u1', 'hello');                 // 'ok', 'offline' or 'fail' (the seed's API)
 *     $http->pushToUid('u1', ['n' => 1]);            // connections reached (an int)
 *     $http->pushToGroup('room1', 'hi', ['u2']);
 *     $http->online('u1');                           // ['online' => true, 'connections' => 1]
 *
 * Use it where the text port is not reachable, or when a delivery count is wanted; Client is
 * the faster path (pipelined, no HTTP framing). Failures throw the same exceptions as Client;
 * a ServerException carries the HTTP status (`getStatus()`).
 */
final class HttpPublisher
{
    /** @var string `tcp://host:port` or `tls://host:port`. */
    private $address;

    /** @var string The Host header. */
    private $hostHeader;

    /** @var string The URL's path prefix, without a trailing slash. */
    private $prefix;

    /** @var string|null The server's push_secret, sent as a Bearer token. */
    private $secret;

    /** @var float Seconds to wait for a connection or for progress of a response. */
    private $timeout;

    /** @var resource|null The keep-alive connection. */
    private $sock = null;

    /**
     * @param string      $baseUrl `http://host:port` (or `https://…` when the port speaks TLS).
     * @param string|null $secret  The server's `push_secret`, if it has one.
     */
    public function __construct(string $baseUrl = 'http://127.0.0.1:2121', ?string $secret = null, float $timeout = 5.0)
    {
        $u = parse_url($baseUrl);
        if (!is_array($u) || !isset($u['host']) || !in_array($u['scheme'] ?? '', ['http', 'https'], true)) {
            throw new \InvalidArgumentException("not an http:// or https:// URL: $baseUrl");
        }
        $tls = $u['scheme'] === 'https';
        $port = $u['port'] ?? ($tls ? 443 : 80);
        $host = $u['host'];
        $this->address = ($tls ? 'tls://' : 'tcp://') . "$host:$port";
        $this->hostHeader = "$host:$port";
        $this->prefix = rtrim($u['path'] ?? '', '/');
        $this->secret = ($secret === null || $secret === '') ? null : $secret;
        $this->timeout = $timeout > 0 ? $timeout : 5.0;
    }

    public function __destruct()
    {
        $this->close();
    }

    /** Closes the keep-alive connection; the next call opens a new one. */
    public function close(): void
    {
        if ($this->sock !== null) {
            @fclose($this->sock);
            $this->sock = null;
        }
    }

    /**
     * The seed's publish call (`type=publish&to=…&content=…`): the server HTML-escapes
     * `$content` and pushes it to `$to`, or to everyone when `$to` is empty.
     *
     * @param string|int $to
     * @return string 'ok', 'offline' (nobody logged in as `$to`) or 'fail'.
     */
    public function publish($to, string $content): string
    {
        $form = http_build_query(['type' => 'publish', 'to' => (string)$to, 'content' => $content]);
        [, $body] = $this->send('POST', '/', $form, 'application/x-www-form-urlencoded');
        return $body;
    }

    /**
     * Pushes `$data` to a uid or a list of uids.
     *
     * @param string|int|array<int, string|int> $uid
     * @param mixed $data
     * @return int connections reached.
     */
    public function pushToUid($uid, $data, bool $binary = false): int
    {
        return $this->push(['to' => is_array($uid) ? array_values($uid) : $uid], $data, [], $binary);
    }

    /**
     * Pushes `$data` to the members of a group or list of groups, except `$exclude`.
     *
     * @param string|array<int, string> $group
     * @param mixed $data
     * @param array<int, string|int> $exclude
     * @return int connections reached.
     */
    public function pushToGroup($group, $data, array $exclude = [], bool $binary = false): int
    {
        return $this->push(['group' => is_array($group) ? array_values($group) : $group], $data, $exclude, $binary);
    }

    /**
     * Pushes `$data` to everyone logged in, except `$exclude`.
     *
     * @param mixed $data
     * @param array<int, string|int> $exclude
     * @return int connections reached.
     */
    public function pushToAll($data, array $exclude = [], bool $binary = false): int
    {
        return $this->push(['all' => true], $data, $exclude, $binary);
    }

    /** @param string|int $uid */
    public function joinGroup($uid, string $group): bool
    {
        return (bool)($this->api('POST', '/api/groups/' . rawurlencode($group) . '/members', ['uid' => $uid])['ok'] ?? false);
    }

    /** @param string|int $uid */
    public function leaveGroup($uid, string $group): bool
    {
        $path = '/api/groups/' . rawurlencode($group) . '/members/' . rawurlencode((string)$uid);
        return (bool)($this->api('DELETE', $path)['ok'] ?? false);
    }

    public function ungroup(string $group): bool
    {
        return (bool)($this->api('DELETE', '/api/groups/' . rawurlencode($group))['ok'] ?? false);
    }

    /**
     * @param string|int $uid
     * @return array<string, mixed> ['online' => bool, 'connections' => int]
     */
    public function online($uid): array
    {
        return $this->api('GET', '/api/online/' . rawurlencode((string)$uid));
    }

    /**
     * @return array<string, mixed> ['uids' => string[], 'count' => int, 'connections' => int]
     */
    public function uids(?string $group = null): array
    {
        $q = $group === null ? '' : '?' . http_build_query(['group' => $group]);
        return $this->api('GET', '/api/uids' . $q);
    }

    /** @return array<string, int> group => member uids */
    public function groups(): array
    {
        return $this->api('GET', '/api/groups')['groups'] ?? [];
    }

    /**
     * Closes every connection of `$uid` (code 1000), after sending `$data` when given.
     *
     * @param string|int $uid
     * @param mixed $data
     * @return int connections closed.
     */
    public function kick($uid, $data = null): int
    {
        $body = $data === null ? null : ['data' => $data];
        return (int)($this->api('POST', '/api/kick/' . rawurlencode((string)$uid), $body)['connections'] ?? 0);
    }

    /** @return array<string, mixed> ['totals' => …, 'workers' => […]] */
    public function stats(): array
    {
        return $this->api('GET', '/api/stats');
    }

    /**
     * One JSON API request; returns the decoded answer. Throws ServerException (with the
     * status) for an answer of 400 and above.
     *
     * @param array<string, mixed>|null $body
     * @return array<string, mixed>
     */
    public function api(string $method, string $path, ?array $body = null): array
    {
        $json = null;
        if ($body !== null) {
            $json = json_encode($body, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE);
            if ($json === false) {
                throw new ProtocolException('cannot encode body: ' . json_last_error_msg());
            }
        }
        [$status, $text] = $this->send($method, $path, $json, 'application/json');
        $v = json_decode($text, true);
        if ($status >= 400) {
            $msg = is_array($v) && isset($v['error']) && is_string($v['error']) ? $v['error'] : trim($text);
            if ($status === 401) {
                throw new AuthenticationException($msg, $status);
            }
            throw ServerException::fromServer($msg, $status);
        }
        if (!is_array($v)) {
            throw new ProtocolException("unexpected answer ($status): $text");
        }
        return $v;
    }

    /**
     * @param array<string, mixed> $target
     * @param mixed $data
     * @param array<int, string|int> $exclude
     */
    private function push(array $target, $data, array $exclude, bool $binary): int
    {
        $body = $target + ['data' => $binary ? base64_encode((string)$data) : $data];
        if ($exclude) {
            $body['exclude'] = array_values($exclude);
        }
        if ($binary) {
            $body['binary'] = true;
        }
        return (int)($this->api('POST', '/api/push', $body)['delivered'] ?? 0);
    }

    /**
     * Sends one request on the keep-alive connection (reconnecting once if the server had
     * closed it) and returns [status, body].
     *
     * @return array{0: int, 1: string}
     */
    private function send(string $method, string $path, ?string $body, string $type): array
    {
        $head = "$method {$this->prefix}$path HTTP/1.1\r\nHost: {$this->hostHeader}\r\n";
        if ($this->secret !== null) {
            $head .= "Authorization: Bearer {$this->secret}\r\n";
        }
        if ($body !== null) {
            $head .= "Content-Type: $type\r\nContent-Length: " . strlen($body) . "\r\n";
        }
        $request = $head . "\r\n" . ($body ?? '');
        for ($attempt = 0;; $attempt++) {
            $fresh = $this->sock === null;
            $sock = $this->connect();
            $failure = null;
            if (!$this->writeAll($sock, $request)) {
                $failure = 'broken pipe';
            } else {
                $response = $this->readResponse($sock, $failure);
                if ($response !== null) {
                    return $response;
                }
            }
            $this->close();
            if ($failure === 'timeout') {
                throw new TimeoutException("no response within {$this->timeout}s from {$this->address}");
            }
            // Only a kept-alive connection that the server closed meanwhile is retried: the
            // request was not read, since nothing of an answer came.
            if ($fresh || $attempt >= 1 || $failure === 'truncated response') {
                throw new ConnectionException("$failure ({$this->address})");
            }
        }
    }

    /** @return resource */
    private function connect()
    {
        if ($this->sock !== null) {
            return $this->sock;
        }
        $ctx = stream_context_create(['socket' => ['tcp_nodelay' => true]]);
        $sock = @stream_socket_client($this->address, $errno, $errstr, $this->timeout, STREAM_CLIENT_CONNECT, $ctx);
        if ($sock === false) {
            $why = "connect {$this->address} failed: $errstr ($errno)";
            if ($errno === 110 || stripos($errstr, 'timed out') !== false) {
                throw new TimeoutException($why);
            }
            throw new ConnectionException($why);
        }
        stream_set_timeout($sock, (int)$this->timeout, (int)(fmod($this->timeout, 1.0) * 1e6));
        $this->sock = $sock;
        return $sock;
    }

    /** @param resource $sock */
    private function writeAll($sock, string $bytes): bool
    {
        while ($bytes !== '') {
            $n = @fwrite($sock, $bytes);
            if ($n === false || $n === 0) {
                return false;
            }
            $bytes = (string)substr($bytes, $n);
        }
        return true;
    }

    /**
     * Reads one response with a Content-Length body (what Herald sends). Null with `$failure`
     * set when it did not come whole.
     *
     * @param resource $sock
     * @return array{0: int, 1: string}|null
     */
    private function readResponse($sock, ?string &$failure): ?array
    {
        $status = 0;
        $length = null;
        $close = false;
        $first = true;
        while (true) {
            $line = fgets($sock, 16384);
            if ($line === false) {
                $failure = stream_get_meta_data($sock)['timed_out'] ? 'timeout' : ($first ? 'connection closed by the server' : 'truncated response');
                return null;
            }
            $line = rtrim($line, "\r\n");
            if ($first) {
                if (!preg_match('#^HTTP/1\.[01] (\d{3})#', $line, $m)) {
                    throw new ProtocolException("not an HTTP response: $line");
                }
                $status = (int)$m[1];
                $first = false;
                continue;
            }
            if ($line === '') {
                break;
            }
            [$name, $value] = array_pad(explode(':', $line, 2), 2, '');
            $name = strtolower(trim($name));
            $value = trim($value);
            if ($name === 'content-length') {
                $length = (int)$value;
            } elseif ($name === 'connection' && strtolower($value) === 'close') {
                $close = true;
            }
        }
        $body = '';
        if ($length === null) {
            $body = (string)stream_get_contents($sock);
            $close = true;
        } else {
            while (strlen($body) < $length) {
                $chunk = fread($sock, $length - strlen($body));
                if ($chunk === false || $chunk === '') {
                    $failure = stream_get_meta_data($sock)['timed_out'] ? 'timeout' : 'truncated response';
                    return null;
                }
                $body .= $chunk;
            }
        }
        if ($close) {
            $this->close();
        }
        return [$status, $body];
    }
}
