<?php

declare(strict_types=1);

namespace Herald;

/**
 * Reads the text port's reply lines: an error reply becomes a ServerException, and each kind
 * of command has its own shape (see the README's command table).
 *
 * @internal
 */
final class Reply
{
    /**
     * The ServerException for an error reply `{"error":"…"}` (its only key, a string), or null
     * for any other line. A `groups` answer whose one group is named `error` has a number there,
     * so it is not taken for an error.
     */
    public static function error(string $line): ?ServerException
    {
        if ($line === '' || $line[0] !== '{' || strpos($line, '"error"') === false) {
            return null;
        }
        $v = json_decode($line, true);
        if (is_array($v) && count($v) === 1 && isset($v['error']) && is_string($v['error'])) {
            return ServerException::fromServer($v['error']);
        }
        return null;
    }

    /**
     * The value of a reply line (already known not to be an error) for a command of `$kind`;
     * `$partial` is set to whether a worker's share was missing from the answer.
     *
     * @return mixed
     */
    public static function decode(string $kind, string $line, bool &$partial)
    {
        $partial = false;
        switch ($kind) {
            case 'raw':
                return $line;
            case 'okfail':
                if ($line === 'ok') {
                    return true;
                }
                // `stored`: nobody got it now, offline delivery kept it (`{"cmd":"push"}`).
                if ($line === 'fail' || $line === 'stored') {
                    return false;
                }
                break;
            case 'online':
                if ($line === '1' || $line === '0') {
                    return $line === '1';
                }
                break;
            case 'count':
                $v = self::json($line);
                if (is_array($v) && isset($v['connections'], $v['uids'])) {
                    $partial = !empty($v['partial']);
                    unset($v['partial']);
                    return $v;
                }
                break;
            case 'uids':
                $v = self::json($line);
                if (is_array($v) && isset($v['partial'], $v['uids']) && $v['partial'] === true) {
                    $partial = true;
                    return $v['uids'];
                }
                if (is_array($v)) {
                    return $v;
                }
                break;
            case 'groups':
                $v = self::json($line);
                if (is_array($v) && isset($v['partial'], $v['groups']) && $v['partial'] === true
                    && is_array($v['groups'])) {
                    $partial = true;
                    return $v['groups'];
                }
                if (is_array($v)) {
                    return $v;
                }
                break;
            case 'json':
                $v = self::json($line);
                if ($v !== null || $line === 'null') {
                    return $v;
                }
                break;
        }
        throw new ProtocolException("unexpected reply: $line");
    }

    /** @return mixed the decoded line, null if it is not JSON */
    private static function json(string $line)
    {
        return json_decode($line, true);
    }
}
