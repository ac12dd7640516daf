"""Where a prompt's prefix is likely cached: an approximate, per-router index of what each worker prefilled.

vLLM keeps the KV blocks of recent prompts and skips prefilling a new
prompt's leading blocks when it finds them; the blocks are keyed by the LoRA
adapter too, so a prefix cached under one adapter is no use to another. The
router cannot see a worker's cache without the worker telling it, and a
tokenizer on the request path would cost more than the rest of the path
together. So, as llm-d's approximate prefix scorer does, it guesses: a
prompt is cut into blocks of `BLOCK_CHARS` characters, each named by a hash
chained over the adapter and every block before it, and the router remembers
which blocks it sent to which worker, up to a bounded number per worker,
least recently used forgotten first.

The index is kept per router, not shared: sharing would put a write to etcd
(or a broadcast) on every request's path, while placement already narrows an
adapter's traffic to its few holders, where one router's view is a good
guess. Routers behind one load balancer each see part of a conversation;
when their guesses differ, the cost is one prefill, never a wrong answer.

Because a prompt's blocks are recorded first-block-most-recent, a block is
never forgotten before a block that follows it in any prompt: the blocks a
worker is remembered to hold are always a prefix of the prompt, and the
longest one is found by bisection.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

import msgspec
import xxhash

BLOCK_CHARS = 256
"""About 64 tokens of English text: coarse enough to hash a long conversation in microseconds, fine
enough that a system prompt or a history spans many blocks."""
MAX_BLOCKS = 512
"""A prompt's first 128 KiB of text are hashed; what lies beyond adds little to the choice."""
SEPARATOR = "\x00"
"""Between messages: "ab" + "c" and "a" + "bc" must not hash alike."""


def prompt_blocks(adapter: str | None, parts: Iterable[str]) -> tuple[int, ...]:
    """The hashes of the prompt's full blocks, each chained over the adapter and the blocks before it."""
    text = SEPARATOR.join(parts)[:MAX_BLOCKS * BLOCK_CHARS]  # a character is at least a byte
    data = text.encode("utf-8", "surrogatepass")
    full = min(len(data) // BLOCK_CHARS, MAX_BLOCKS)
    if not full:
        return ()
    seed = xxhash.xxh3_64_intdigest((adapter or "").encode("utf-8", "surrogatepass"))
    hashes: list[int] = []
    for i in range(full):
        seed = xxhash.xxh3_64_intdigest(data[i * BLOCK_CHARS:(i + 1) * BLOCK_CHARS], seed)
        hashes.append(seed)
    return tuple(hashes)


class PrefixIndex:
    """The blocks this router sent one worker lately, least recently used first, at most `capacity`."""

    __slots__ = ("blocks", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.blocks: OrderedDict[int, None] = OrderedDict()

    def matched(self, prompt: Sequence[int]) -> int:
        """How many of the prompt's leading blocks the worker is remembered to hold."""
        blocks = self.blocks
        if not prompt or prompt[0] not in blocks:
            return 0
        low, high = 1, len(prompt)  # the answer lies in [low, high]: prompt[low - 1] is held
        while low < high:
            mid = (low + high + 1) // 2
            if prompt[mid - 1] in blocks:
                low = mid
            else:
                high = mid - 1
        return low

    def record(self, prompt: Sequence[int]) -> None:
        """The worker prefilled this prompt: all of it is now cached there, its first block most recent."""
        blocks = self.blocks
        for block in reversed(prompt):
            if block in blocks:
                blocks.move_to_end(block)
            else:
                blocks[block] = None
        while len(blocks) > self.capacity:
            blocks.popitem(last=False)

    def clear(self) -> None:
        self.blocks.clear()


class PrefixRules(msgspec.Struct, frozen=True, kw_only=True):
    """How the router weighs a likely cached prefix against load (router.config.PrefixConfig)."""

    index_blocks: int = 2048
    """Blocks remembered per worker (router.config.PrefixConfig.index_blocks); 0 turns prefix-aware picking
    off."""
    block_tokens: int = BLOCK_CHARS // 4
    """Tokens one block stands for (about four characters a token)."""
    tokens_per_request: float = 64.0
    """Cached prompt tokens worth as much as one more request in flight at a worker."""
