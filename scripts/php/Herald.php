<?php
/**
 * Herald: a small, dependency-free client for Herald's text port (PHP 7.3+).
 *
 * One object keeps one TCP connection (`stream_socket_client`) open and reuses it for every
 * call. Each call writes one JSON command line and reads its one reply line. When the server
 * has closed the connection (broken pipe on write, or EOF before any reply byte), the object
 * reconnects once and sends the command again; a second failure throws.
 *
 * With a push secret (server setting `push_secret`) the first line on every new connection is
 * `{"cmd":"auth","secret":"…"}`, answered `ok`.
 *
 *     require 'Herald.php';
 *     $h = new Herald('127.0.0.1', 5678);          // or new Herald($host, $port, $secret)
 *     $h->sendToUid('u1', ['type' => 'hello']);    // true: at least one connection reached
 *     $h->joinGroup('u1', 'room1');
 *     $h->sendToGroup('room1', 'hi all', ['u2']);  // everyone in room1 but u2
 *     $h->isUidOnline('u1');                       // bool
 *     $h->count('room1');                          // ['connections' => 1, 'uids' => 1]
 *
 * `$data` is sent as is when it is a string, otherwise as compact JSON (arrays, numbers…).
 * With `$binary = true` the string `$data` goes out as a binary WebSocket frame.
 *
 * A server reply `{"error":"…"}` throws a HeraldException (the connection stays usable). When
 * a sibling worker did not answer in time, query replies are partial: `wasPartial()` tells.
 */

/** A refused command, a bad reply, or a connection that could not be (re)established. */
class HeraldException extends RuntimeException
{
}

class Herald
{
    /** @var string */
    private $host;
    /** @var int */
    private $port;
    /** @var string|null */
    private $secret;
    /** @var float */
    private $timeout;
    /** @var resource|null */
    private $sock = null;
    /** @var bool */
    private $partial = false;

    /** @var int How many times the connection was re-established after a failure. */
    public $reconnects = 0;

    /**
     * @param string      $host    Text port host.
     * @param int         $port    Text port (Herald's default: 5678).
     * @param string|null $secret  The server's `push_secret`, if it has one.
     * @param float       $timeout Seconds to wait for a connection or one reply.
     */
    public function __construct($host = '127.0.0.1', $port = 5678, $secret = null, $timeout = 5.0)
    {
        $this->host = (string)$host;
        $this->port = (int)$port;
        $this->secret = ($secret === null || $secret === '') ? null : (string)$secret;
        $this->timeout = (float)$timeout;
    }

    public function __destruct()
    {
        $this->close();
    }

    /** Closes the connection; the next call opens a new one. */
    public function close()
    {
        if ($this->sock !== null) {
            @fclose($this->sock);
            $this->sock = null;
        }
    }

    /** The underlying stream (opened if needed), for diagnostics. */
    public function socket()
    {
        $this->connect();
        return $this->sock;
    }

    /** Whether the last query's answer lacked a worker's share (`"partial":true`). */
    public function wasPartial()
    {
        return $this->partial;
    }

    // ------------------------------------------------------------------ pushes

    /**
     * Pushes `$data` to every connection of one uid or a list of uids.
     * @return bool true if at least one connection was reached.
     */
    public function sendToUid($uid, $data, $binary = false)
    {
        $cmd = ['cmd' => 'push', 'to' => self::ids($uid)];
        return $this->okFail($this->withData($cmd, $data, $binary));
    }

    /**
     * Pushes `$data` to every connection of the members of one group or a list of groups
     * (each connection once), except the uids in `$exclude`.
     * @return bool true if at least one connection was reached.
     */
    public function sendToGroup($group, $data, $exclude = [], $binary = false)
    {
        $cmd = ['cmd' => 'group', 'group' => self::ids($group)];
        if ($exclude) {
            $cmd['exclude'] = self::names($exclude);
        }
        return $this->okFail($this->withData($cmd, $data, $binary));
    }

    /** Pushes `$data` to every logged-in connection, except the uids in `$exclude`. */
    public function sendToAll($data, $exclude = [], $binary = false)
    {
        $cmd = ['cmd' => 'all'];
        if ($exclude) {
            $cmd['exclude'] = self::names($exclude);
        }
        return $this->okFail($this->withData($cmd, $data, $binary));
    }

    /**
     * The seeds' form: `$fields` plus `uid` as one JSON line, delivered verbatim to the uid.
     * @return bool true if at least one connection was reached.
     */
    public function push($uid, $fields = [])
    {
        $line = ['uid' => $uid] + (array)$fields;
        return $this->okFail($line);
    }

    // ------------------------------------------------------------------ groups

    /** Adds `$uid` to `$group` (all its connections, in every worker, now and later). */
    public function joinGroup($uid, $group)
    {
        return $this->okFail(['cmd' => 'join', 'uid' => $uid, 'group' => $group]);
    }

    /** Removes `$uid` from `$group`. */
    public function leaveGroup($uid, $group)
    {
        return $this->okFail(['cmd' => 'leave', 'uid' => $uid, 'group' => $group]);
    }

    /** Dissolves `$group`. */
    public function ungroup($group)
    {
        return $this->okFail(['cmd' => 'ungroup', 'group' => $group]);
    }

    // ------------------------------------------------------------------ queries

    /** Whether `$uid` has at least one connection in any worker. */
    public function isUidOnline($uid)
    {
        $r = $this->call(['cmd' => 'online', 'uid' => $uid]);
        if ($r !== '1' && $r !== '0') {
            throw new HeraldException("unexpected reply to online: $r");
        }
        return $r === '1';
    }

    /**
     * Logged-in connections and distinct uids, of the whole server or of one group.
     * @return array ['connections' => int, 'uids' => int]
     */
    public function count($group = null)
    {
        $cmd = ['cmd' => 'count'];
        if ($group !== null) {
            $cmd['group'] = $group;
        }
        $r = $this->json($this->call($cmd));
        $this->partial = !empty($r['partial']);
        unset($r['partial']);
        return $r;
    }

    /**
     * The uids online, in the whole server or in one group (sorted).
     * @return string[]
     */
    public function getUidList($group = null)
    {
        $cmd = ['cmd' => 'uids'];
        if ($group !== null) {
            $cmd['group'] = $group;
        }
        $r = $this->json($this->call($cmd));
        if (isset($r['partial']) && $r['partial'] === true && isset($r['uids'])) {
            $this->partial = true;
            return $r['uids'];
        }
        $this->partial = false;
        return $r;
    }

    /**
     * Every group with its number of member uids.
     * @return array group => int
     */
    public function getGroups()
    {
        $r = $this->json($this->call(['cmd' => 'groups']));
        if (isset($r['partial']) && $r['partial'] === true && isset($r['groups'])
            && is_array($r['groups'])) {
            $this->partial = true;
            return $r['groups'];
        }
        $this->partial = false;
        return $r;
    }

    /**
     * Closes every connection of `$uid` with code 1000, after sending `$data` when given.
     * @return bool true if the uid had a connection.
     */
    public function kick($uid, $data = null)
    {
        $cmd = ['cmd' => 'kick', 'uid' => $uid];
        if ($data !== null) {
            $cmd['data'] = $data;
        }
        return $this->okFail($cmd);
    }

    // ------------------------------------------------------------------ the wire

    /**
     * Sends one command (an array, encoded as one JSON line) and returns its reply line
     * without the newline. Throws on `{"error":…}` replies.
     */
    public function call(array $cmd)
    {
        $line = json_encode($cmd, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE);
        if ($line === false) {
            throw new HeraldException('cannot encode command: ' . json_last_error_msg());
        }
        $reply = $this->exchange($line . "\n");
        if ($reply !== '' && $reply[0] === '{' && strpos($reply, '"error"') !== false) {
            $v = json_decode($reply, true);
            if (is_array($v) && count($v) === 1 && isset($v['error'])) {
                throw new HeraldException((string)$v['error']);
            }
        }
        return $reply;
    }

    /** Writes `$line`, reads one reply line; reconnects and retries once on a dead socket. */
    private function exchange($line)
    {
        for ($attempt = 0; ; $attempt++) {
            $this->connect();
            $failure = $this->writeAll($line);
            if ($failure === null) {
                $reply = $this->readLine();
                if (is_string($reply)) {
                    return $reply;
                }
                $failure = $reply === null ? 'connection closed by the server' : 'no reply';
                if ($reply === false) {
                    // A timeout: the reply may still come, so this connection is out of step.
                    $this->close();
                    throw new HeraldException("$failure within {$this->timeout}s");
                }
            }
            $this->close();
            if ($attempt >= 1) {
                throw new HeraldException("$failure (after reconnecting)");
            }
            $this->reconnects++;
        }
    }

    /** Opens the connection (and authenticates) unless it is open. */
    private function connect()
    {
        if ($this->sock !== null) {
            return;
        }
        $addr = "tcp://{$this->host}:{$this->port}";
        $sock = @stream_socket_client($addr, $errno, $errstr, $this->timeout);
        if ($sock === false) {
            throw new HeraldException("connect $addr failed: $errstr ($errno)");
        }
        stream_set_timeout($sock, (int)$this->timeout, (int)(fmod($this->timeout, 1.0) * 1e6));
        $this->sock = $sock;
        if ($this->secret !== null) {
            $auth = json_encode(['cmd' => 'auth', 'secret' => $this->secret]) . "\n";
            $failure = $this->writeAll($auth);
            $reply = $failure === null ? $this->readLine() : null;
            if ($reply !== 'ok') {
                $this->close();
                $why = is_string($reply) ? $reply : ($failure ?: 'no reply');
                throw new HeraldException("authentication failed: $why");
            }
        }
    }

    /** Writes everything; returns null, or why it failed. */
    private function writeAll($bytes)
    {
        $done = 0;
        $len = strlen($bytes);
        while ($done < $len) {
            $n = @fwrite($this->sock, $done === 0 ? $bytes : substr($bytes, $done));
            if ($n === false || $n === 0) {
                return 'broken pipe';
            }
            $done += $n;
        }
        return null;
    }

    /** One reply line without its newline; null on EOF before any byte; false on timeout. */
    private function readLine()
    {
        $line = @fgets($this->sock);
        if ($line === false || substr($line, -1) !== "\n") {
            $meta = stream_get_meta_data($this->sock);
            if (!empty($meta['timed_out'])) {
                return false;
            }
            return null;
        }
        return rtrim($line, "\r\n");
    }

    private function okFail(array $cmd)
    {
        $r = $this->call($cmd);
        if ($r === 'ok') {
            return true;
        }
        if ($r === 'fail') {
            return false;
        }
        throw new HeraldException("unexpected reply: $r");
    }

    private function withData(array $cmd, $data, $binary)
    {
        if ($binary) {
            $cmd['binary'] = true;
            $cmd['data'] = base64_encode((string)$data);
        } else {
            $cmd['data'] = $data;
        }
        return $cmd;
    }

    private function json($reply)
    {
        $v = json_decode($reply, true);
        if (!is_array($v)) {
            throw new HeraldException("unexpected reply: $reply");
        }
        return $v;
    }

    /** A uid or group, or a list of them, as the server wants it. */
    private static function ids($v)
    {
        return is_array($v) ? array_values($v) : $v;
    }

    private static function names($v)
    {
        return array_values((array)$v);
    }
}
