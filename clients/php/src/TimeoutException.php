<?php

declare(strict_types=1);

namespace Herald;

/**
 * No progress (no byte written or read) within the client's timeout. The connection is closed,
 * because a reply may still arrive and would be taken for the next command's. Unlike a broken
 * connection, a command that timed out may have been processed by the server.
 */
class TimeoutException extends ConnectionException
{
}
