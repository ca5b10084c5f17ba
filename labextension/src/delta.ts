/**
 * The event stream's deltas: a stream begins with a whole snapshot, then sends what each change
 * moved (its size is the change's, not the cluster's). Applied here, so that the rest of the
 * extension sees whole snapshots as before. The rules are api/openapi.yaml's `SnapshotDelta`.
 */
import type { Allocation, ClusterGpu, ClusterNode, Snapshot, SnapshotDelta } from './api';

/** A delta that does not follow the snapshot held: the stream must be opened again. */
export class StreamGap extends Error {}

/** The snapshot `delta` makes of `snapshot`; null for a delta the snapshot covers already. */
export function applyDelta(snapshot: Snapshot, delta: SnapshotDelta): Snapshot | null {
  if (delta.seq <= snapshot.seq) {
    return null;
  }
  if (delta.base !== snapshot.seq) {
    throw new StreamGap(
      `delta ${delta.seq} follows snapshot ${delta.base}, not ${snapshot.seq}`
    );
  }
  const nodes = new Map<string, Map<string, ClusterGpu>>();
  for (const node of snapshot.cluster.nodes) {
    nodes.set(node.name, new Map(node.gpus.map(gpu => [gpu.uuid, gpu])));
  }
  for (const [name, uuids] of Object.entries(delta.gpus_gone)) {
    const shown = nodes.get(name);
    if (!shown) {
      continue;
    }
    for (const uuid of uuids) {
      shown.delete(uuid);
    }
    if (shown.size === 0) {
      nodes.delete(name);
    }
  }
  for (const [name, entries] of Object.entries(delta.gpus)) {
    let shown = nodes.get(name);
    if (!shown) {
      shown = new Map();
      nodes.set(name, shown);
    }
    for (const entry of entries) {
      shown.set(entry.uuid, entry);
    }
  }
  const granted = new Map<number, Allocation>(snapshot.allocations.map(a => [a.id, a]));
  for (const id of delta.allocations_gone) {
    granted.delete(id);
  }
  for (const alloc of delta.allocations) {
    granted.set(alloc.id, alloc);
  }
  const names = [...nodes.keys()].sort(byText);
  const clusterNodes: ClusterNode[] = names.map(name => ({
    name,
    gpus: [...nodes.get(name)!.values()].sort((a, b) => a.index - b.index)
  }));
  return {
    seq: delta.seq,
    at: delta.at,
    version: delta.version,
    queue: movedQueue(snapshot.queue, delta),
    queue_length: delta.queue_length,
    simulated: delta.simulated,
    idle: delta.idle ?? snapshot.idle,
    hints: delta.hints ?? snapshot.hints,
    cluster: { ...delta.cluster, nodes: clusterNodes },
    allocations: [...granted.keys()].sort((a, b) => a - b).map(id => granted.get(id)!)
  };
}

/** The queue's first page: as it was, or in the delta's order with its new entries. */
function movedQueue(queue: Allocation[], delta: SnapshotDelta): Allocation[] {
  if (!delta.queue_order) {
    return queue;
  }
  const entries = new Map<number, Allocation>(queue.map(a => [a.id, a]));
  for (const alloc of delta.queue_put ?? []) {
    entries.set(alloc.id, alloc);
  }
  return delta.queue_order.map(id => entries.get(id)!);
}

/** Node names in the order the server sorts them (by code point, as Python's `sorted`). */
function byText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
