"""Prefix-cache-aware routers that others ship, as baselines for the chat workload.

Each routes on the request's prompt as the fleet's prefix caches key it
(`SimFleet.prompt`, chain-identity blocks keyed by adapter), never on the
engines' real cache contents: the routers they model only ever see requests,
so they keep their own approximate index of what each worker has cached. A
request outside a chat session still has a prompt of its own, text no other
request shares: it is given blocks of its own, so that it fills and ages
these indexes as real text would, instead of counting as an empty prompt that
every router sees the same way.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Literal

from allocator import hrw
from bench.sim.fleet import SimFleet, SimWorker
from bench.sim.strategies import Strategy, _Ranked
from bench.workloads import SESSION_SHIFT

CHARS_PER_TOKEN = 4
"""How both routers convert between characters and tokens (sglang's tree counts characters; GIE's
`averageCharactersPerToken`)."""


def own_blocks(rid: int, first: int, last: int) -> tuple[int, ...]:
    """Blocks `first .. last-1` of text only request `rid` has: negative, so that no prompt block
    (bench.workloads.prompt_blocks, never negative) and no other request's own block is equal."""
    base = -((rid + 1) << SESSION_SHIFT)
    return tuple(range(base - first, base - last, -1))


def _text_blocks(fleet: SimFleet, rid: int) -> tuple[int, ...]:
    """The request's full blocks: its prompt's shared ones, or, outside a session, blocks of its own."""
    blocks = fleet.prompt(rid)
    if blocks or fleet.session(rid) >= 0:
        return blocks
    return own_blocks(rid, 0, fleet.prompt_tokens(rid) // fleet.params.block_tokens)


def _bits(mask: int) -> list[int]:
    out = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out


class CacheAware(Strategy):
    """`cache_aware` of vllm-router (vllm-project/router) and, with `low_match="smallest-tree"`, of
    sglang-router, from which it derives.

    Per request, in this order (sgl-project/sglang sgl-router/src/policies/cache_aware.rs, `select_worker`;
    vllm-project/router src/policies/cache_aware.rs, `select_worker_with_headers`): if the fleet is
    imbalanced — max load - min load > `balance_abs_threshold` AND max load > min load x
    `balance_rel_threshold`, load being the router's in-flight count per worker — the least loaded worker
    (first on ties); otherwise the worker with the longest prefix match in the shared approximate radix
    tree if matched / input characters > `cache_threshold`; else vllm-router's least loaded worker, or
    sglang-router's tenant with the smallest tree ("most available cache capacity"). Either way the
    request's text is then inserted under the chosen worker. vllm-router's rule is the default: it is the
    one `lora-bench live` runs against (`vllm-router-ca`), and with it the simulated and the live tails
    agree (docs/benchmarks.md); sglang's is `cache-aware-sglang`.

    Defaults are the launchers', the same in vllm-project/router src/main.rs (`CliArgs`) and
    sgl-project/sglang sgl-router/py_src/sglang_router/router_args.py (`RouterArgs`): cache_threshold
    0.3, balance_abs_threshold 64, balance_rel_threshold 1.5, eviction interval 120 s, max_tree_size
    2^26 characters per tenant (what `evict_tenant_by_size` compares). vllm-router's
    `CacheAwareConfig::default()` (src/policies/mod.rs: 0.5 / 32 / 1.1 / 30 s / 10,000) is only what
    its tests start from: the CLI always passes its own.

    The radix tree is modelled on blocks: per worker an LRU of the blocks inserted there, each
    prompt's first block most recent, so eviction (every `eviction_interval_s`, leaves first as the
    tree's `evict_tenant_by_size` does) only ever cuts a prompt's tail and a worker's match is its
    run of leading blocks. `holders` maps a block to the workers holding it, so one walk down the
    prompt finds the longest match of all. On a tie the tree answers the tenant that created the
    deepest matched node (its cached `last_tenant`), another one once that tenant has evicted it: here
    the block's first holder, else the lowest-numbered one.
    """

    name = "cache-aware"

    def __init__(self, fleet: SimFleet, seed: int, cache_threshold: float = 0.3, balance_abs_threshold: int = 64,
                 balance_rel_threshold: float = 1.5, eviction_interval_s: float = 120.0,
                 max_tree_size: int = 1 << 26, low_match: Literal["least-loaded", "smallest-tree"] = "least-loaded",
                 ) -> None:
        super().__init__(fleet, seed)
        self.low_match = low_match
        self.cache_threshold = cache_threshold
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold
        self.block_tokens = fleet.params.block_tokens
        self.max_blocks = max_tree_size // (CHARS_PER_TOKEN * self.block_tokens)
        self.trees: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(self.n)]
        self.holders: dict[int, int] = {}
        """Block -> bit mask of the workers whose tree holds it."""
        self.creator: dict[int, int] = {}
        """Block -> the first of its current holders to insert it."""
        fleet.every(eviction_interval_s, eviction_interval_s, self.evict)

    def imbalanced(self) -> bool:
        loads = [ws.inflight for ws in self.fleet.workers]
        lo, hi = min(loads), max(loads)
        return hi - lo > self.balance_abs_threshold and hi > lo * self.balance_rel_threshold

    def match(self, blocks: tuple[int, ...]) -> tuple[int, int]:
        """How many leading blocks some worker holds, and which worker the tree names for them (-1: none)."""
        holders = self.holders
        matched = 0
        for block in blocks:
            if block not in holders:
                break
            matched += 1
        if not matched:
            return 0, -1
        deepest = blocks[matched - 1]
        mask, first = holders[deepest], self.creator[deepest]
        return matched, first if (mask >> first) & 1 else _bits(mask)[0]

    def smallest(self) -> int:
        return min(range(self.n), key=lambda w: len(self.trees[w]))

    def route(self, rid: int, adapter: int) -> None:
        blocks = _text_blocks(self.fleet, rid)
        if self.imbalanced():
            w = min(self.fleet.workers, key=lambda ws: ws.inflight).index
        else:
            matched, tenant = self.match(blocks)
            tokens = self.fleet.prompt_tokens(rid)
            rate = matched * self.block_tokens / tokens if tokens else 0.0
            if rate > self.cache_threshold:
                w = tenant
            elif self.low_match == "smallest-tree":
                w = self.smallest()
            else:
                w = min(self.fleet.workers, key=lambda ws: ws.inflight).index
        self.insert(w, blocks)
        self.fleet.submit(w, rid)

    def insert(self, w: int, blocks: tuple[int, ...]) -> None:
        tree, holders, creator, bit = self.trees[w], self.holders, self.creator, 1 << w
        for block in reversed(blocks):
            if block in tree:
                tree.move_to_end(block)
                continue
            tree[block] = None
            mask = holders.get(block, 0)
            if not mask:
                creator[block] = w
            holders[block] = mask | bit

    def evict(self, now: float) -> None:
        holders, creator = self.holders, self.creator
        for w, tree in enumerate(self.trees):
            while len(tree) > self.max_blocks:
                block, _ = tree.popitem(last=False)
                mask = holders[block] & ~(1 << w)
                if mask:
                    holders[block] = mask
                else:
                    del holders[block], creator[block]


def _lora_score(ws: SimWorker, adapter: int, max_loras: int) -> float:
    """GIE's lora-affinity-scorer, read as `bench.sim.strategies.LoraAffinity` reads it."""
    if adapter in ws.running:
        return 1.0
    if len(ws.running) + len(ws.waiting) < max_loras:
        return 0.8
    if adapter in ws.waiting:
        return 0.6
    return 0.0


class LlmD(Strategy):
    """llm-d's endpoint picker (the Gateway API Inference Extension's EPP): weighted scorers, max score wins.

    Weights: queue-scorer 2, kv-cache-utilization-scorer 2, prefix-cache-scorer 3 — the default
    scheduling profile of gateway-api-inference-extension pkg/epp/config/loader/defaults.go
    (`loadDefaultConfig`) and of llm-d-inference-scheduler config/charts/epplib/templates/_config.yaml.
    That profile has no LoRA scorer; a LoRA fleet adds `lora-affinity-scorer`, which, listed without a
    weight as in the EPP's test/integration/epp/testdata/default-config.yaml, gets
    `DefaultScorerWeight` 1 (defaults.go). The max-score picker shuffles before a stable sort: ties
    go to a random one of the best.

    Scorers (pkg/epp/framework/plugins/scheduling/scorer/*): queue — (max - own) / (max - min) of the
    pods' waiting queues, 1 when all are equal; KV — 1 - KV-cache usage; prefix — matched / total
    blocks; LoRA — 1 running, 0.8 a free slot, 0.6 queued, else 0. Pod metrics are read as they are
    now (the EPP scrapes them every 50 ms); KV usage counts the prompt blocks of the running requests
    (vLLM's decoded tokens and blocks shared between running prompts are left out).

    Prefix index (requestcontrol/dataproducer/approximateprefix): blocks of `blockSizeTokens` 16 x 4
    characters, the first hashed with the target model (so keyed by adapter, as our blocks are), a
    trailing partial block hashed too, at most `maxPrefixBlocksToMatch` 256; per pod an LRU of block
    hashes sized by the pod's KV blocks (`autoTune`), added in prompt order (a prompt's first block
    is its least recent: the index loses heads before tails, unlike the engine's cache); the match of
    a pod counts its blocks in the leading run some pod holds, and the chosen pod's LRU takes the
    request's blocks after the pick.
    """

    name = "llm-d"

    def __init__(self, fleet: SimFleet, seed: int, queue_weight: float = 2.0, kv_weight: float = 2.0,
                 prefix_weight: float = 3.0, lora_weight: float = 1.0, max_prefix_blocks: int = 256) -> None:
        super().__init__(fleet, seed)
        self.weights = (queue_weight, kv_weight, prefix_weight, lora_weight)
        self.max_prefix_blocks = max_prefix_blocks
        params = fleet.params
        self.block_tokens, self.capacity, self.max_loras = params.block_tokens, params.kv_blocks, params.max_loras
        self.lrus: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(self.n)]
        self.pods: dict[int, int] = {}
        """Block hash -> bit mask of the pods whose LRU holds it."""
        self.sent: list[dict[int, int]] = [{} for _ in range(self.n)]
        """Per pod: its requests not known to be finished -> their prompt blocks."""
        self._usage: list[tuple[tuple[int, int], float]] = [((-1, -1), 0.0)] * self.n
        """Per pod: (finished, running) when its KV usage was last summed, and that usage."""

    def hashes(self, rid: int) -> tuple[int, ...]:
        """The request's block hashes as the index computes them: none below one block, at most the
        limit, a partial last block of its own."""
        tokens = self.fleet.prompt_tokens(rid)
        full = tokens // self.block_tokens
        if not full:
            return ()
        blocks = _text_blocks(self.fleet, rid)[:self.max_prefix_blocks]
        if tokens % self.block_tokens and full < self.max_prefix_blocks:
            blocks += own_blocks(rid, full, full + 1)
        return blocks

    def kv_usage(self, ws: SimWorker) -> float:
        """The prompt blocks of the pod's running requests over its KV blocks, as of the fleet's last
        step ends (the engine's own batch runs ahead of them within a step)."""
        key = (ws.served, sum(ws.running.values()))
        seen, usage = self._usage[ws.index]
        if seen != key:
            sent, fleet = self.sent[ws.index], self.fleet
            for rid in [rid for rid in sent if not math.isnan(fleet.finished_at(rid))]:
                del sent[rid]
            usage = min(1.0, sum(blocks for rid, blocks in sent.items() if not math.isnan(fleet.first_token_at(rid)))
                        / self.capacity)
            self._usage[ws.index] = (key, usage)
        return usage

    def scores(self, adapter: int, hashes: tuple[int, ...]) -> list[float]:
        workers = self.fleet.workers
        matched = [0] * self.n
        pods = self.pods
        for h in hashes:
            mask = pods.get(h, 0)
            if not mask:
                break
            for p in _bits(mask):
                matched[p] += 1
        queues = [sum(ws.waiting.values()) for ws in workers]
        lo, hi = min(queues), max(queues)
        wq, wk, wp, wl = self.weights
        total = len(hashes)
        return [wq * ((hi - q) / (hi - lo) if hi > lo else 1.0)
                + wk * (1.0 - self.kv_usage(ws))
                + wp * (m / total if total else 0.0)
                + wl * _lora_score(ws, adapter, self.max_loras)
                for ws, q, m in zip(workers, queues, matched, strict=True)]

    def route(self, rid: int, adapter: int) -> None:
        hashes = self.hashes(rid)
        scores = self.scores(adapter, hashes)
        best = max(scores)
        w = self.rng.choice([p for p, s in enumerate(scores) if s == best])
        self.add(w, hashes)
        self.sent[w][rid] = -(-self.fleet.prompt_tokens(rid) // self.block_tokens)
        self.fleet.submit(w, rid)

    def add(self, w: int, hashes: tuple[int, ...]) -> None:
        lru, pods, bit = self.lrus[w], self.pods, 1 << w
        for h in hashes:
            if h in lru:
                lru.move_to_end(h)
            else:
                lru[h] = None
                pods[h] = pods.get(h, 0) | bit
            if len(lru) > self.capacity:
                old, _ = lru.popitem(last=False)
                mask = pods[old] & ~bit
                if mask:
                    pods[old] = mask
                else:
                    del pods[old]


class SessionHash(_Ranked):
    """Sticky sessions: one worker per conversation, what vllm-router's consistent_hash gives a request
    with an x-session-id header (src/policies/consistent_hash.rs: a ring of 160 virtual nodes a worker;
    rendezvous hashing here, one owner per key either way). A request outside a session goes by its
    adapter, as consistent-hash does (vllm-router would hash its body: anywhere). Every turn finds its
    history cached, but nothing else — load, adapters — has a say."""

    name = "session-hash"

    def __init__(self, fleet: SimFleet, seed: int) -> None:
        super().__init__(fleet, seed, 1)
        self._sessions: dict[int, int] = {}

    def first_for_session(self, session: int) -> int:
        w = self._sessions.get(session)
        if w is None:
            states = hrw.adapter_states(hrw.keys([f"session/{session}"]))
            scores = hrw.pair_scores(states, self._lanes, self._weights)[0]
            w = self._sessions[session] = int(hrw.order(scores, self._id_order)[0])
        return w

    def route(self, rid: int, adapter: int) -> None:
        session = self.fleet.session(rid)
        self.fleet.submit(self.first_for_session(session) if session >= 0 else self.first_hrw(adapter), rid)
