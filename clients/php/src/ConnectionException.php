<?php

declare(strict_types=1);

namespace Herald;

/**
 * The server could not be reached, or the connection broke and could not be re-established
 * (the client reconnects once by itself before it throws this). Nothing the server answered is
 * lost: a command that got no reply was not processed, so it is safe to send it again later.
 */
class ConnectionException extends HeraldException
{
}
