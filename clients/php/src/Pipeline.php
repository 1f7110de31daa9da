<?php

declare(strict_types=1);

namespace Herald;

/**
 * Commands queued to be written together on the client's connection, without waiting for each
 * reply: `Client::pipeline()` hands one to its callback, then sends everything and reads the
 * replies, which the server gives in the order of the commands.
 *
 *     $results = $client->pipeline(function (Herald\Pipeline $p) {
 *         $p->sendToUid('u1', 'a')->sendToUid('u2', 'b')->count();
 *     });
 *     // [true, false, ['connections' => 1, 'uids' => 1]]
 *
 * Every method of Client that sends a command exists here (it returns the pipeline). A command
 * the server refuses does not stop the others: its slot in the results holds the
 * ServerException, which is not thrown.
 */
final class Pipeline
{
    use Commands;

    /** @var array<int, array<string, mixed>> The queued commands, in order. */
    private $commands = [];

    /** @var array<int, string> How each command's reply is read (see Reply::decode). */
    private $kinds = [];

    /**
     * Queues a command. The raw form of Client::call(): its result is the reply line.
     *
     * @param array<string, mixed> $cmd
     */
    public function call(array $cmd): Pipeline
    {
        return $this->request($cmd, 'raw');
    }

    /** How many commands are queued. */
    public function size(): int
    {
        return count($this->commands);
    }

    /**
     * @param array<string, mixed> $cmd
     */
    protected function request(array $cmd, string $kind): Pipeline
    {
        $this->commands[] = $cmd;
        $this->kinds[] = $kind;
        return $this;
    }

    /**
     * The queued commands and their reply kinds, for Client::pipeline().
     *
     * @internal
     * @return array{0: array<int, array<string, mixed>>, 1: array<int, string>}
     */
    public function drain(): array
    {
        $out = [$this->commands, $this->kinds];
        $this->commands = [];
        $this->kinds = [];
        return $out;
    }
}
