<?php
// The backend call of seed 004's page, written afresh: publish a message to one uid (or to
// everyone) through Herald's HTTP port, exactly as the seed's PHP does it: curl POSTs the
// fields type=publish, to, content to port 2121 (the array makes curl send
// multipart/form-data) and prints the answer: 'ok', 'offline' (no page of that uid is open)
// or 'fail'.
//
// From the demo page's form (php -S 127.0.0.1:8000 -t scripts/socketio): fields to, content.
// From a shell: php send.php [TO] [CONTENT] [PUSH_API_URL]
//   Defaults: 123, 数据, http://127.0.0.1:2121/ ; an empty TO ('') pushes to everyone.

if (PHP_SAPI === 'cli') {
    $to_uid = $argv[1] ?? '123';
    $content = $argv[2] ?? '数据';
    $push_api_url = $argv[3] ?? 'http://127.0.0.1:2121/';
} else {
    $to_uid = (string) ($_REQUEST['to'] ?? '123');
    $content = (string) ($_REQUEST['content'] ?? '数据');
    $push_api_url = 'http://127.0.0.1:2121/';
    header('Content-Type: text/plain; charset=utf-8');
}

// Whom to push to (empty: every online user) and what.
$post_data = array(
    'type' => 'publish',
    'content' => $content,
    'to' => $to_uid,
);
$ch = curl_init();
curl_setopt($ch, CURLOPT_URL, $push_api_url);
curl_setopt($ch, CURLOPT_POST, 1);
curl_setopt($ch, CURLOPT_HEADER, 0);
curl_setopt($ch, CURLOPT_RETURNTRANSFER, 1);
curl_setopt($ch, CURLOPT_POSTFIELDS, $post_data);
curl_setopt($ch, CURLOPT_HTTPHEADER, array('Expect:'));
$return = curl_exec($ch);
if ($return === false) {
    $return = 'curl error: ' . curl_error($ch);
}
curl_close($ch);
var_export($return);
echo "\n";
