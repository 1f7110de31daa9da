<?php

declare(strict_types=1);

namespace Herald;

/**
 * A reply this client does not understand (not the shape the command's reply has), or a
 * command it cannot encode as JSON. It points at a bug or at a port that is not Herald's.
 */
class ProtocolException extends HeraldException
{
}
