/*
 * Two single-producer single-consumer byte rings in one shared segment:
 * host to worker and worker to host.  Frames are a 4-byte big-endian
 * length and the payload, as on the stream transport, so a frame larger
 * than a ring goes through in chunks.
 *
 * The worker is hostile and may write anything into the segment at any
 * time.  Each side therefore keeps its own index and the geometry in the
 * private struct sandbox_ring_endpoint.  It reads the peer's index from
 * the segment once per check and validates it.  It copies bytes out of
 * the segment exactly once, before it looks at them.  Every wait has a
 * timeout in nanoseconds (-1: none) and ends early when the endpoint is
 * aborted.
 *
 * Segment layout, in bytes from the start of the mapping:
 *
 *   0     magic, version, capacity to worker, capacity to host
 *   64    host closed flag            128   worker closed flag
 *   68    host CPU                    132   worker CPU
 *   256   ring to worker: control block (4 lines, see below)
 *   512   ring to host: control block
 *   4096  ring to worker: data (capacity to worker bytes)
 *   then  ring to host: data (capacity to host bytes)
 *
 * A control block has four 64-byte cache lines: +0 producer index
 * (uint64), +64 consumer index (uint64), +128 reader waiting flag and
 * +132 data sequence word, +192 writer waiting flag and +196 space
 * sequence word (all uint32).  The indices count bytes since the start,
 * modulo 2^64, and the data of index i is at i mod capacity.
 *
 * A side's CPU word holds the CPU it last waited on, as sched_getcpu()
 * returned it.  It is a hint for how to wait and nothing more: a peer on
 * the same CPU cannot run while this side spins, so a waiter yields
 * instead.  A false hint from a hostile worker costs the host spin time
 * at most.
 */
#ifndef SANDBOX_RING_H
#define SANDBOX_RING_H

#include <stddef.h>
#include <stdint.h>

enum sandbox_ring_status {
	SANDBOX_RING_OK = 0,
	SANDBOX_RING_TIMEOUT = -1,
	/* sandbox_ring_abort() was called, typically because the peer died. */
	SANDBOX_RING_ABORTED = -2,
	SANDBOX_RING_PEER_CLOSED = -3,
	/* The peer's index moved backwards or past the other index. */
	SANDBOX_RING_CORRUPT = -4,
	/* A frame length of 0 or above the endpoint's max_message. */
	SANDBOX_RING_BAD_LENGTH = -5,
	/* A signal arrived.  Call again to continue where the call stopped. */
	SANDBOX_RING_INTERRUPTED = -6,
	/* The frame exceeds the buffer.  Call again with a larger one. */
	SANDBOX_RING_NEED_BUFFER = -7,
	/* A system call failed, and errno gives the reason. */
	SANDBOX_RING_SYSTEM_ERROR = -8,
};

enum sandbox_ring_side {
	SANDBOX_RING_HOST = 0,
	SANDBOX_RING_WORKER = 1,
};

enum sandbox_ring_layout {
	SANDBOX_RING_MAGIC = 0x52425853,
	SANDBOX_RING_VERSION = 2,
	SANDBOX_RING_LINE = 64,
	SANDBOX_RING_HOST_CLOSED = 64,
	SANDBOX_RING_WORKER_CLOSED = 128,
	SANDBOX_RING_HOST_CPU = 68,
	SANDBOX_RING_WORKER_CPU = 132,
	SANDBOX_RING_TO_WORKER_CONTROL = 256,
	SANDBOX_RING_TO_HOST_CONTROL = 512,
	SANDBOX_RING_PRODUCER = 0,
	SANDBOX_RING_CONSUMER = 64,
	SANDBOX_RING_READER_WAITING = 128,
	SANDBOX_RING_DATA_SEQUENCE = 132,
	SANDBOX_RING_WRITER_WAITING = 192,
	SANDBOX_RING_SPACE_SEQUENCE = 196,
	SANDBOX_RING_DATA_START = 4096,
	SANDBOX_RING_MIN_CAPACITY = 64,
	SANDBOX_RING_MAX_CAPACITY = 1073741824,
};

/* One ring from one side: pointers into the segment and private state. */
struct sandbox_ring_half {
	uint8_t *data;
	uint64_t *producer;
	uint64_t *consumer;
	uint32_t *reader_waiting;
	uint32_t *data_sequence;
	uint32_t *writer_waiting;
	uint32_t *space_sequence;
	uint64_t capacity;
	/* This side's index, never read back from the segment. */
	uint64_t own;
	/* The peer's index as last validated. */
	uint64_t peer;
	/* The value of own this side last stored in the segment. */
	uint64_t published;
};

/* One side's private view of a segment: allocate it in private memory. */
struct sandbox_ring_endpoint {
	struct sandbox_ring_half out;
	struct sandbox_ring_half in;
	uint32_t *own_closed;
	uint32_t *peer_closed;
	/* Set by sandbox_ring_abort(), from any thread. */
	int aborted;
	/* How long a wait polls before it sleeps on the futex. */
	int64_t spin_ns;
	/* Waits in a row that lasted longer than spin_ns, and waits since
	 * then that skipped the spin. */
	uint32_t spin_misses;
	uint32_t spin_skips;
	/* This side's and the peer's CPU words in the segment. */
	uint32_t *own_cpu;
	uint32_t *peer_cpu;
	/* The value this side last stored in *own_cpu. */
	uint32_t cpu_stored;
	/* Set when this side woke the peer since its last wait. */
	int woke_peer;
	uint64_t max_message;
	/* Progress of a frame a timeout or signal interrupted. */
	uint64_t send_length;
	uint64_t send_done;
	uint8_t recv_header[4];
	uint32_t recv_header_done;
	uint64_t recv_length;
	uint64_t recv_done;
	/* FUTEX_WAKE and FUTEX_WAIT calls this endpoint has made. */
	uint64_t wake_calls;
	uint64_t wait_calls;
};

/* Returns the size of a segment holding rings of these capacities. */
size_t sandbox_ring_segment_size(uint64_t to_worker, uint64_t to_host);

/* Maps |size| bytes of |fd| shared and writable, or returns NULL. */
void *sandbox_ring_map(int fd, size_t size);

int sandbox_ring_unmap(void *base, size_t size);

/* Writes the segment header, as the host does before the worker starts. */
void sandbox_ring_format(void *base, uint64_t to_worker, uint64_t to_host);

/*
 * Fills |endpoint| for |side| of the segment at |base|.  The worker checks
 * the header against the capacities it was given; the host never reads
 * it.  Returns 0, or -EINVAL for a capacity that is not a power of two
 * within the limits, a size too small or a |max_message| above what a
 * 4-byte length can hold, and -EPROTO for a header mismatch.
 */
int sandbox_ring_attach(struct sandbox_ring_endpoint *endpoint, void *base,
			size_t size, int side, uint64_t to_worker,
			uint64_t to_host, uint64_t max_message,
			int64_t spin_ns);

/*
 * Sends one frame.  After SANDBOX_RING_INTERRUPTED, call again with the
 * same payload to continue; a payload of another length gets
 * SANDBOX_RING_BAD_LENGTH.  After any other error, |*sent| frame bytes
 * (the length prefix included) are in the ring.
 */
int sandbox_ring_send(struct sandbox_ring_endpoint *endpoint,
		      const char *payload, size_t length, int64_t timeout_ns,
		      uint64_t *sent);

/*
 * Receives one frame into |buffer| and stores its length in |*length|.
 * SANDBOX_RING_NEED_BUFFER leaves the frame's length in |*length| and
 * copies nothing of it.  Until a frame is complete, every call must pass
 * the same buffer, which keeps the bytes received so far.
 */
int sandbox_ring_recv(struct sandbox_ring_endpoint *endpoint, char *buffer,
		      size_t size, int64_t timeout_ns, uint64_t *length);

/*
 * Returns 1 when the peer has published bytes that this side has not
 * received, or part of a frame has been received, else 0.  It loads the
 * peer's index once and makes no system call.  The host calls it before
 * each request, because no byte sent before the request can be its reply.
 */
int sandbox_ring_pending(const struct sandbox_ring_endpoint *endpoint);

/* Ends every wait of |endpoint| at once, now and later. */
void sandbox_ring_abort(struct sandbox_ring_endpoint *endpoint);

/* Marks this side closed in the segment and wakes the peer. */
void sandbox_ring_close(struct sandbox_ring_endpoint *endpoint);

#endif
