<?php

declare(strict_types=1);

namespace Herald;

/**
 * Login tokens for the WebSocket port's `auth = "hmac"` and `auth = "jwt"` modes, made exactly
 * as the server checks them. Your backend makes one for the logged-in user and hands it to the
 * page, which sends it as its first WebSocket message or as `?token=` on the URL.
 *
 *     $token = Herald\Token::hmac($authSecret, 'u42');          // valid for 300 s
 *     $token = Herald\Token::jwt($authSecret, 'u42', 600);      // auth = "jwt"
 *
 * `$secret` is the server's `auth_secret` (at least 16 characters); keep it on the server side.
 */
final class Token
{
    /**
     * An `hmac`-mode token: `UID.EXPIRY.SIG`, where EXPIRY is Unix seconds and SIG the lowercase
     * hex HMAC-SHA256 of `UID.EXPIRY` under `$secret`. The uid may contain dots.
     *
     * @param string|int $uid
     * @param int|null   $now Unix time to count the lifetime from (default: now).
     */
    public static function hmac(string $secret, $uid, int $ttl = 300, ?int $now = null): string
    {
        $uid = self::uid($uid);
        self::secret($secret);
        $exp = ($now ?? time()) + $ttl;
        return "$uid.$exp." . hash_hmac('sha256', "$uid.$exp", $secret);
    }

    /**
     * A `jwt`-mode token: an HS256 JWT with `sub` = uid, `iat` and `exp`, plus `$claims` (for
     * example `nbf`; they may override `iat` and `exp`, not `sub`). The server checks the
     * signature, `exp` and `nbf` (5 s leeway), and refuses other algorithms and `crit`.
     *
     * @param string|int           $uid
     * @param array<string, mixed> $claims
     * @param int|null             $now Unix time to count the lifetime from (default: now).
     */
    public static function jwt(
        string $secret,
        $uid,
        int $ttl = 300,
        array $claims = [],
        ?int $now = null
    ): string {
        $uid = self::uid($uid);
        self::secret($secret);
        $now = $now ?? time();
        $payload = ['sub' => $uid] + $claims + ['iat' => $now, 'exp' => $now + $ttl];
        $head = self::base64url(self::json(['alg' => 'HS256', 'typ' => 'JWT']));
        $body = self::base64url(self::json($payload));
        $sig = hash_hmac('sha256', "$head.$body", $secret, true);
        return "$head.$body." . self::base64url($sig);
    }

    /** @param string|int $uid */
    private static function uid($uid): string
    {
        $uid = (string)$uid;
        if ($uid === '' || strlen($uid) > 256 || preg_match('/[\x00-\x1f\x7f]/', $uid)) {
            throw new \InvalidArgumentException('a uid is 1 to 256 bytes without control characters');
        }
        return $uid;
    }

    private static function secret(string $secret): void
    {
        if ($secret === '') {
            throw new \InvalidArgumentException('empty auth secret');
        }
    }

    /** @param array<string, mixed> $v */
    private static function json(array $v): string
    {
        $s = json_encode($v, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE);
        if ($s === false) {
            throw new \InvalidArgumentException('cannot encode claims: ' . json_last_error_msg());
        }
        return $s;
    }

    private static function base64url(string $bytes): string
    {
        return rtrim(strtr(base64_encode($bytes), '+/', '-_'), '=');
    }
}
