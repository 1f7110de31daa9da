<?php

declare(strict_types=1);

namespace Herald;

/**
 * The server refused a command: a text-port reply `{"error":"…"}`, or an HTTP API status of
 * 400 and above. The message is the server's own words; the connection stays usable.
 */
class ServerException extends HeraldException
{
    /** @var int The HTTP status for the HTTP API; 0 on the text port. */
    private $status;

    public function __construct(string $message, int $status = 0)
    {
        parent::__construct($message);
        $this->status = $status;
    }

    /** The HTTP status of the refusal (HTTP API), or 0 (text port). */
    public function getStatus(): int
    {
        return $this->status;
    }

    /**
     * The exception for the server's error message: an UnknownCommandException when the server
     * does not know the command (an older server), else a ServerException.
     */
    public static function fromServer(string $message, int $status = 0): ServerException
    {
        if ($message === 'unauthorized') {
            return new AuthenticationException($message, $status);
        }
        if (strncmp($message, 'unknown cmd ', 12) === 0) {
            return new UnknownCommandException($message, $status);
        }
        return new ServerException($message, $status);
    }
}
