"""Discovery: everything that finds workers or talks to etcd.

Public API (what router/ calls; nothing else here is a contract):

etcd layer — discovery.etcd
    client = await EtcdClient.connect(endpoints: list[str], prefix="/lora-router",
                                      tls: TlsConfig | None = None, user=None, password=None, timeout_s=5.0)
    await client.get(key) -> KeyValue | None          keys are relative to the prefix
    await client.put(key, value: bytes, lease=0) -> revision
    await client.delete(key) -> bool
    await client.range(key_prefix) -> (revision, {key: KeyValue})
    await client.txn([Compare(key, "create"|"mod"|"value", expected)], [Put|Delete], failure=[]) -> TxnResult
    client.lease(ttl, on_regranted=None) -> Lease; await lease.start(); await lease.put(key, value);
        lease.alive; await lease.revoke(); await lease.stop()  (keepalive at TTL/3; lost -> re-grant, re-put)
    client.watch_prefix(key_prefix, resume: PrefixState | None = None) -> AsyncIterator[PrefixState]
        (full list first, then each change; resumes at revision + 1 after etcd restarts;
         re-lists with resync=True after compaction)
    client.watch_changes(key_prefix, after=None) -> AsyncIterator[PrefixChange(revision, event, listing)]
        (the same, without a copy of the whole prefix per event: for large prefixes)
    await client.close()

registry — discovery.registry / discovery.records
    WorkerRecord(id, url, base_models, slots, weight, max_lora_rank, max_loras, instance, labels,
                 api_key_ref, registered_at).to_worker() -> allocator.model.Worker
    AdapterRecord(name, source, base_model, rank, tenant, created_at); DemandReport(router_id, at, adapters)
    worker_id_for(url) -> stable id; new_instance(start_time) -> fresh instance id
    registry = WorkerRegistry(client)
    reg = await registry.register(record, ttl) -> Registration; await reg.update(record); await reg.withdraw()
    registry.watch() -> AsyncIterator[Membership(revision, workers: dict[id, WorkerRecord])]
    await registry.read() -> Membership
    StaticDiscovery(urls, api_key=None, interval_s=2.0, slots=8).watch()  (same Membership stream, by probing)

election and stores — discovery.election / discovery.stores
    election = LeaderElection(client, candidate_id, ttl); task: await election.run()
    election.is_leader, election.leader_id, election.fence (Fence | None), election.changed (asyncio.Event),
    election.add_listener(fn); await election.resign()
    CatalogStore(client): put(record), get(name), delete(name) -> bool, list() -> dict, watch() -> dicts
    PlacementStore(client, ops_per_txn=100, bytes_per_txn=512 KiB): read() -> Placement | None,
        write(placement, election) -> revision (the changed sets in txns fenced by the leader key and the
        last-seen header revision; NotLeader / FencingFailed), write_fenced(placement, fence),
        watch() -> AsyncIterator[Placement] (complete epochs only), legacy (an older single document is there)
    DemandStore(client, ttl=10): publish(router_id, adapters: {name: Demand}, at=None) (leased per router),
        read_all() -> {router_id: DemandReport}, close(); sum_demand(reports) -> {name: Demand} (pure)

registrar sidecar — discovery.registrar (CLI: `lora-router register`), probe — discovery.probe
    Registrar(WorkerRegistry(client), WorkerProbe(session, url, api_key), RegistrarConfig(...)).run(stop_event)

errors — discovery.errors: DiscoveryError > EtcdUnavailable, EtcdAuthFailed, LeaseLost, Compacted,
    NotLeader > FencingFailed, MalformedRecord, WorkerUnreachable, WorkerNotVllm

etcd key layout under the prefix (default /lora-router):
    workers/{worker_id}   leased WorkerRecord JSON, written by the registrar
    adapters/{name}       durable AdapterRecord JSON (the catalog)
    placement/epoch       PlacementHeader JSON (epoch, computed_at, complete), written by the leader
    placement/sets/{name} one ReplicaSet JSON per adapter, written by the leader in fenced transactions
    placement             the single Placement document of older versions (read, then deleted)
    load/{router_id}[/k]  leased DemandReport JSON per router, cut into chunks of 2,000 adapters
    leader                election key: the leader's candidate id, under its lease
"""
