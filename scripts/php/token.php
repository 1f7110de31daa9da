<?php
// A login token for `auth = "hmac"`: UID.EXPIRY.SIG, where SIG is the lowercase hex
// HMAC-SHA256 of "UID.EXPIRY" under the shared auth_secret. The page that serves the browser
// makes one and hands it to the client, which sends it as its first WebSocket frame or as
// ws://host:port/?token=TOKEN (urlencode it there).
//
// Usage: HERALD_AUTH_SECRET=... php token.php UID [TTL_SECONDS]
//   The secret comes from the environment, not argv, so it does not show in `ps`.
//   TTL defaults to 300 seconds. Prints the token and a newline.

$uid = $argv[1] ?? '';
$ttl = (int)($argv[2] ?? 300);
$secret = getenv('HERALD_AUTH_SECRET');
if ($uid === '' || $secret === false || strlen($secret) < 16) {
    fwrite(STDERR, "usage: HERALD_AUTH_SECRET=<at least 16 chars> php token.php UID [TTL]\n");
    exit(2);
}
$exp = time() + $ttl;
// The whole recipe: one hash_hmac call.
$token = "$uid.$exp." . hash_hmac('sha256', "$uid.$exp", $secret);
echo $token, "\n";
