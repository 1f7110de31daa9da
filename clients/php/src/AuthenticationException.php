<?php

declare(strict_types=1);

namespace Herald;

/**
 * The server refused the push secret (text port: `{"error":"unauthorized"}`, then it closes
 * the connection; HTTP API: 401). Check the `push_secret` given to the client.
 */
class AuthenticationException extends ServerException
{
}
