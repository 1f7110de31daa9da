<?php
/**
 * Herald: the text-port client class of the seeds' era, kept so that `require 'Herald.php';`
 * and `new Herald(...)` go on working. It is now a thin shim over the Composer package in
 * clients/php (`herald/herald-client`): the class `Herald` is `Herald\Client` under its old
 * global name, and `HeraldException` is an alias of `Herald\HeraldException`, the parent of
 * every exception the package throws (so `catch (HeraldException $e)` still catches them all).
 *
 *     require 'Herald.php';
 *     $h = new Herald('127.0.0.1', 5678);          // or new Herald($host, $port, $secret)
 *     $h->sendToUid('u1', ['type' => 'hello']);    // true: at least one connection reached
 *     $h->joinGroup('u1', 'room1');
 *     $h->sendToGroup('room1', 'hi all', ['u2']);  // everyone in room1 but u2
 *     $h->isUidOnline('u1');                       // bool
 *     $h->count('room1');                          // ['connections' => 1, 'uids' => 1]
 *
 * New code should use the package itself (`composer require herald/herald-client`, or
 * `require 'clients/php/autoload.php'`), which adds pipelining, typed exceptions, tokens and an
 * HTTP publisher: see the README's "Integrate Herald into a PHP site".
 */

require_once __DIR__ . '/../../clients/php/autoload.php';

if (!class_exists('HeraldException', false)) {
    class_alias(\Herald\HeraldException::class, 'HeraldException');
}

/** `Herald\Client` under the seeds' global name (PHP 7.4 or newer). */
class Herald extends \Herald\Client
{
}
