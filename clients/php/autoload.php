<?php
// For projects without Composer: `require 'path/to/clients/php/autoload.php';` loads the
// Herald\ classes from src/ on first use, as Composer's PSR-4 autoloader would.

spl_autoload_register(static function (string $class): void {
    if (strncmp($class, 'Herald\\', 7) !== 0) {
        return;
    }
    $file = __DIR__ . '/src/' . str_replace('\\', '/', substr($class, 7)) . '.php';
    if (is_file($file)) {
        require $file;
    }
});
