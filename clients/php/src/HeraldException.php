<?php

declare(strict_types=1);

namespace Herald;

/**
 * The parent of every error this package throws: catch it to catch them all.
 *
 * The old global `HeraldException` of `scripts/php/Herald.php` is an alias of this class, so
 * code written against that file keeps catching what the package throws.
 */
class HeraldException extends \RuntimeException
{
}
