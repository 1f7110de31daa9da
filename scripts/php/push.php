<?php
// Seed 000-003's backend push, unchanged in substance: connect to the text port, write one
// JSON line, print the server's answer ("ok\n" or "fail\n").
//
// Usage: php push.php [HOST] [PORT] [UID]
//   or set HERALD_HOST, HERALD_TEXT_PORT, HERALD_UID. Defaults: 127.0.0.1 5678 uid1.
//   HERALD_SCHEME=tls connects with TLS (`tls = ["text"]` on the server); the CA that signed
//   the server's certificate is trusted as PHP's openssl trusts any (php -d openssl.cafile=…).

$host = $argv[1] ?? (getenv('HERALD_HOST') ?: '127.0.0.1');
$port = $argv[2] ?? (getenv('HERALD_TEXT_PORT') ?: '5678');
$uid  = $argv[3] ?? (getenv('HERALD_UID') ?: 'uid1');
$scheme = getenv('HERALD_SCHEME') ?: 'tcp';

// Connect to the internal push port
$client = stream_socket_client("$scheme://$host:$port", $errno, $errmsg, 1);
if (!$client) {
    fwrite(STDERR, "connect $scheme://$host:$port failed: $errmsg ($errno)\n");
    exit(1);
}
// The data to push; the uid field says which uid it is for
$data = array('uid'=>$uid, 'percent'=>'88%');
// The text port speaks the Text protocol: the line must end with a newline
fwrite($client, json_encode($data)."\n");
// Read the push result
echo fread($client, 8192);
