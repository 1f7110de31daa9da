<?php
// Seed 004's backend publish, unchanged in substance: POST type=publish&to=UID&content=TEXT to
// the HTTP port with curl and var_export the answer ('ok', 'offline' or 'fail').
//
// As in the seed, the fields go to CURLOPT_POSTFIELDS as an array, which makes curl send
// multipart/form-data. Pass --urlencoded (or HERALD_URLENCODED=1) to send them with
// http_build_query() as application/x-www-form-urlencoded instead.
//
// Usage: php publish.php [--urlencoded] [URL] [TO] [CONTENT]
//   or set HERALD_URL, HERALD_TO, HERALD_CONTENT.
//   Defaults: http://127.0.0.1:2121/ 123 数据 ; an empty TO pushes to everyone.

$args = array_slice($argv, 1);
$urlencoded = (bool) getenv('HERALD_URLENCODED');
if (($args[0] ?? null) === '--urlencoded') {
    $urlencoded = true;
    array_shift($args);
}
$push_api_url = $args[0] ?? (getenv('HERALD_URL') ?: 'http://127.0.0.1:2121/');
$to_uid = $args[1] ?? (getenv('HERALD_TO') !== false ? getenv('HERALD_TO') : '123');
$content = $args[2] ?? (getenv('HERALD_CONTENT') !== false ? getenv('HERALD_CONTENT') : '数据');

$post_data = array(
   "type" => "publish",
   "content" => $content,
   "to" => $to_uid,
);
$ch = curl_init();
curl_setopt($ch, CURLOPT_URL, $push_api_url);
curl_setopt($ch, CURLOPT_POST, 1);
curl_setopt($ch, CURLOPT_HEADER, 0);
curl_setopt($ch, CURLOPT_RETURNTRANSFER, 1);
curl_setopt($ch, CURLOPT_POSTFIELDS, $urlencoded ? http_build_query($post_data) : $post_data);
curl_setopt($ch, CURLOPT_HTTPHEADER, array("Expect:"));
curl_setopt($ch, CURLOPT_TIMEOUT, 5);
$return = curl_exec($ch);
if ($return === false) {
    fwrite(STDERR, "curl: " . curl_error($ch) . "\n");
    exit(1);
}
curl_close($ch);
var_export($return);
