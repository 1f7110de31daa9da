<?php

declare(strict_types=1);

namespace Herald;

/**
 * The server does not know this command (`unknown cmd …`): it is older than this client, for
 * example a server without message history answering `history`.
 */
class UnknownCommandException extends ServerException
{
}
