// SPDX-License-Identifier: Apache-2.0
//
// Kernels of the Predis batched hash table (cache_core/table.py).
//
// Layout, shared with the NumPy path: `keys` holds 2 x uint64 per slot (hi, lo
// interleaved, so one 16-byte aligned load reads a whole fingerprint), `state` one byte
// per slot (0 EMPTY, 1 FULL, 2 TOMBSTONE), `handle` an int64 per slot, `claim` an int64
// per slot holding the highest contention ticket it has seen.
// Probing is linear from `lo & mask`.
//
// An insert first runs predis_lookup with track set, which also reports each key's first
// slot that is not FULL. Absent keys then claim slots in rounds driven from Python, two
// launches per round: phase 0 reads the slot and proposes with atomicMax of a ticket
// (top - batch row, so the lowest row wins), phase 1 commits. The kernel boundary between
// the phases is the barrier that makes the winner deterministic, so slot assignment is
// identical to the NumPy implementation. Claim words are never reset: every round's
// tickets exceed all earlier ones.
//
// Names are extern "C" so cupy.RawKernel and the PTX test can find them unmangled.

#define PREDIS_EMPTY 0
#define PREDIS_FULL 1
#define PREDIS_TOMBSTONE 2

// Per pending key, what the last round did (mirrors the ACTION_* constants in table.py).
#define PREDIS_FOUND 1
#define PREDIS_CREATED 2
#define PREDIS_ADVANCE 3
#define PREDIS_PROPOSE 4

typedef unsigned long long u64;

__device__ __forceinline__ bool predis_same(const u64* a, const u64* b)
{
    return a[0] == b[0] && a[1] == b[1];
}

extern "C" __global__ void predis_lookup(
    const u64* __restrict__ keys,
    const unsigned char* __restrict__ state,
    const u64 mask,
    const long long max_probes,
    const u64* __restrict__ query,
    const long long n,
    long long* __restrict__ out,
    long long* __restrict__ first_free,
    const int track)
{
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        const u64* q = query + 2 * i;
        u64 pos = q[1] & mask;
        long long found = -1;
        long long free_slot = -1;
        for (long long probe = 0; probe < max_probes; ++probe) {
            const unsigned char st = state[pos];
            if (st == PREDIS_FULL) {
                if (predis_same(keys + 2 * pos, q)) {
                    found = (long long)pos;
                    break;
                }
            } else {
                if (free_slot < 0) {
                    free_slot = (long long)pos;
                }
                if (st == PREDIS_EMPTY) {
                    break;
                }
            }
            pos = (pos + 1) & mask;
        }
        out[i] = found;
        if (track) {
            first_free[i] = free_slot;
        }
    }
}

extern "C" __global__ void predis_insert(
    u64* __restrict__ keys,
    unsigned char* __restrict__ state,
    long long* __restrict__ claim,
    const u64 mask,
    const u64* __restrict__ query,
    const long long* __restrict__ idx,
    long long* __restrict__ pos,
    const long long m,
    const long long top,
    const int phase,
    unsigned char* __restrict__ action,
    unsigned char* __restrict__ seen,
    long long* __restrict__ slots,
    unsigned char* __restrict__ created)
{
    for (long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x; j < m;
         j += (long long)blockDim.x * gridDim.x) {
        const long long i = idx[j];
        const long long p = pos[j];
        const long long ticket = top - i;
        if (phase == 0) {
            const unsigned char st = state[p];
            seen[j] = st;
            if (st == PREDIS_FULL) {
                if (predis_same(keys + 2 * p, query + 2 * i)) {
                    slots[i] = p;
                    action[j] = PREDIS_FOUND;
                } else {
                    pos[j] = (long long)(((u64)p + 1) & mask);
                    action[j] = PREDIS_ADVANCE;
                }
            } else {
                // Tickets are positive, so unsigned order is numeric order.
                atomicMax((unsigned long long*)&claim[p], (unsigned long long)ticket);
                action[j] = PREDIS_PROPOSE;
            }
        } else if (action[j] == PREDIS_PROPOSE) {
            // claim[] is only read in this phase, and the winner's fingerprint is read
            // from the query batch, never from the slot being written.
            const long long best = claim[p];
            if (best == ticket) {
                keys[2 * p] = query[2 * i];
                keys[2 * p + 1] = query[2 * i + 1];
                state[p] = PREDIS_FULL;
                slots[i] = p;
                created[i] = 1;
                action[j] = PREDIS_CREATED;
            } else if (predis_same(query + 2 * (top - best), query + 2 * i)) {
                slots[i] = p;
                action[j] = PREDIS_FOUND;
            } else {
                pos[j] = (long long)(((u64)p + 1) & mask);
                action[j] = PREDIS_ADVANCE;
            }
        }
    }
}

extern "C" __global__ void predis_delete(
    u64* __restrict__ keys,
    unsigned char* __restrict__ state,
    long long* __restrict__ handle,
    const long long* __restrict__ slots,
    const long long n)
{
    for (long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x; j < n;
         j += (long long)blockDim.x * gridDim.x) {
        const long long p = slots[j];
        keys[2 * p] = 0;
        keys[2 * p + 1] = 0;
        handle[p] = -1;
        state[p] = PREDIS_TOMBSTONE;
    }
}

extern "C" __global__ void predis_claim(
    long long* __restrict__ claim,
    const long long* __restrict__ slots,
    const long long* __restrict__ tickets,
    const long long n)
{
    for (long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x; j < n;
         j += (long long)blockDim.x * gridDim.x) {
        atomicMax((unsigned long long*)&claim[slots[j]], (unsigned long long)tickets[j]);
    }
}
