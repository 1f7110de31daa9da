<?php

declare(strict_types=1);

namespace Herald;

/**
 * The text port's commands, shared by Client (each one sent and answered at once) and Pipeline
 * (queued, then sent together). Each method builds one command line and names how its reply
 * line is read; `request()` does the rest.
 *
 * Uids and groups are strings (an integer uid is sent as it is and means its digits). `$data`
 * goes out as is when it is a string, otherwise as compact JSON (arrays, numbers, …); with
 * `$binary` the string `$data` goes out as a binary WebSocket frame.
 */
trait Commands
{
    /**
     * Sends `$cmd` and reads its reply as `$kind` (see Reply::decode).
     *
     * @param array<string, mixed> $cmd
     * @return mixed
     */
    abstract protected function request(array $cmd, string $kind);

    // ------------------------------------------------------------------ pushes

    /**
     * Pushes `$data` to every connection of one uid (or of a list of uids).
     *
     * @param string|int|array<int, string|int> $uid
     * @param mixed $data
     * @return mixed Client: true if at least one connection got it. Pipeline: the pipeline.
     */
    public function sendToUid($uid, $data, bool $binary = false)
    {
        $to = is_array($uid) ? array_values($uid) : $uid;
        return $this->request(self::withData(['cmd' => 'push', 'to' => $to], $data, $binary), 'okfail');
    }

    /**
     * Pushes `$data` to every connection of each uid in `$uids` (each connection once).
     *
     * @param array<int, string|int> $uids
     * @param mixed $data
     * @return mixed Client: true if at least one connection got it. Pipeline: the pipeline.
     */
    public function sendToUids(array $uids, $data, bool $binary = false)
    {
        return $this->sendToUid(array_values($uids), $data, $binary);
    }

    /**
     * Pushes `$data` to the members of a group (or of a list of groups), each connection once,
     * except the uids in `$exclude`.
     *
     * @param string|array<int, string> $group
     * @param mixed $data
     * @param string|int|array<int, string|int> $exclude
     * @return mixed Client: true if at least one connection got it. Pipeline: the pipeline.
     */
    public function sendToGroup($group, $data, $exclude = [], bool $binary = false)
    {
        $cmd = ['cmd' => 'group', 'group' => is_array($group) ? array_values($group) : $group];
        if ($exclude) {
            $cmd['exclude'] = array_values((array)$exclude);
        }
        return $this->request(self::withData($cmd, $data, $binary), 'okfail');
    }

    /**
     * Pushes `$data` to every logged-in connection except the uids in `$exclude`.
     *
     * @param mixed $data
     * @param string|int|array<int, string|int> $exclude
     * @return mixed Client: true (the server answers `ok` even with nobody online).
     */
    public function sendToAll($data, $exclude = [], bool $binary = false)
    {
        $cmd = ['cmd' => 'all'];
        if ($exclude) {
            $cmd['exclude'] = array_values((array)$exclude);
        }
        return $this->request(self::withData($cmd, $data, $binary), 'okfail');
    }

    /**
     * The seeds' form: `$fields` plus `uid`, as one JSON line that the uid's connections receive
     * byte for byte (`{"uid":"u1","percent":"88%"}`).
     *
     * @param string|int $uid
     * @param array<string, mixed> $fields
     * @return mixed Client: true if at least one connection got it. Pipeline: the pipeline.
     */
    public function push($uid, $fields = [])
    {
        return $this->request(['uid' => $uid] + (array)$fields, 'okfail');
    }

    // ------------------------------------------------------------------ groups

    /**
     * Adds `$uid` to `$group`: all its connections, in every worker, now and later.
     *
     * @param string|int $uid
     * @return mixed Client: true.
     */
    public function joinGroup($uid, $group)
    {
        return $this->request(['cmd' => 'join', 'uid' => $uid, 'group' => $group], 'okfail');
    }

    /**
     * Removes `$uid` from `$group`.
     *
     * @param string|int $uid
     * @return mixed Client: true.
     */
    public function leaveGroup($uid, $group)
    {
        return $this->request(['cmd' => 'leave', 'uid' => $uid, 'group' => $group], 'okfail');
    }

    /**
     * Dissolves `$group`.
     *
     * @return mixed Client: true.
     */
    public function ungroup($group)
    {
        return $this->request(['cmd' => 'ungroup', 'group' => $group], 'okfail');
    }

    // ------------------------------------------------------------------ presence

    /**
     * Whether `$uid` has at least one connection anywhere on the server.
     *
     * @param string|int $uid
     * @return mixed Client: bool.
     */
    public function isUidOnline($uid)
    {
        return $this->request(['cmd' => 'online', 'uid' => $uid], 'online');
    }

    /**
     * Logged-in connections and distinct uids, of the whole server or of one group.
     *
     * @return mixed Client: ['connections' => int, 'uids' => int].
     */
    public function count($group = null)
    {
        $cmd = ['cmd' => 'count'];
        if ($group !== null) {
            $cmd['group'] = $group;
        }
        return $this->request($cmd, 'count');
    }

    /**
     * The uids online, in the whole server or in one group, sorted.
     *
     * @return mixed Client: string[].
     */
    public function getUidList($group = null)
    {
        $cmd = ['cmd' => 'uids'];
        if ($group !== null) {
            $cmd['group'] = $group;
        }
        return $this->request($cmd, 'uids');
    }

    /**
     * Every group with its number of member uids.
     *
     * @return mixed Client: array<string, int>.
     */
    public function getGroups()
    {
        return $this->request(['cmd' => 'groups'], 'groups');
    }

    /**
     * Closes every connection of `$uid` with code 1000 (reason `kicked`), after sending `$data`
     * to them when it is given.
     *
     * @param string|int $uid
     * @param mixed $data
     * @return mixed Client: true if the uid had a connection.
     */
    public function kick($uid, $data = null)
    {
        $cmd = ['cmd' => 'kick', 'uid' => $uid];
        if ($data !== null) {
            $cmd['data'] = $data;
        }
        return $this->request($cmd, 'okfail');
    }

    /**
     * The recent messages kept for `$uid` (`{"cmd":"history","uid":…}` plus `$options`):
     * `['uid' => …, 'epoch' => hex string, 'offset' => last offset, 'messages' => [['offset'
     * => n, 'data' => string], …]]`, oldest first (binary ones as base64 with `'binary' =>
     * true`). Herald keeps them only with `history_size` > 0 (else the list is empty); a
     * server older than the history answers that it does not know the command, and the client
     * throws UnknownCommandException.
     *
     * @param string|int $uid
     * @param array<string, mixed> $options
     * @return mixed Client: the server's answer, decoded from JSON.
     */
    public function history($uid, array $options = [])
    {
        return $this->request(['cmd' => 'history', 'uid' => $uid] + $options, 'json');
    }

    // ------------------------------------------------------------------ answers to clients

    /**
     * Sends `$data` to one client connection: `$conn` is the `conn` of one of its events
     * (`{"cmd":"reply","conn":…,"data":…}`). A Socket.IO client gets it as `new_msg`.
     *
     * @param mixed $data A string as is, anything else as JSON; with `$binary`, the string's
     *                    bytes in a binary frame (WebSocket clients only).
     * @return mixed Client: true, or false when that connection is gone.
     */
    public function reply(string $conn, $data, bool $binary = false)
    {
        return $this->request(self::withData(['cmd' => 'reply', 'conn' => $conn], $data, $binary), 'okfail');
    }

    /**
     * Calls a Socket.IO client's acknowledgement callback `$ack` (the `ack` of its `message`
     * event) with `$args` (`{"cmd":"ack","conn":…,"ack":N,"data":[…]}`).
     *
     * @param array<int, mixed> $args The callback's arguments.
     * @return mixed Client: true, or false when that session is gone.
     */
    public function ack(string $conn, int $ack, array $args = [])
    {
        return $this->request(
            ['cmd' => 'ack', 'conn' => $conn, 'ack' => $ack, 'data' => array_values($args)],
            'okfail'
        );
    }

    /**
     * `$cmd` with `data` (and `binary`) set.
     *
     * @param array<string, mixed> $cmd
     * @param mixed $data
     * @return array<string, mixed>
     */
    private static function withData(array $cmd, $data, bool $binary): array
    {
        if ($binary) {
            $cmd['binary'] = true;
            $cmd['data'] = base64_encode((string)$data);
        } else {
            $cmd['data'] = $data;
        }
        return $cmd;
    }
}
