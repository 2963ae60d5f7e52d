/*
 * The shared-memory rings' hot path: copy, publish, validate, wait.
 *
 * Only what must be fast or cannot be written safely in Python lives here:
 * index arithmetic on memory a hostile peer can change under us, atomic
 * loads and stores with the right ordering, and futex waits.  Creating and
 * sealing the memfd, timeouts in seconds and mapping status codes to
 * exceptions happen in src/sandbox/shm.py.
 *
 * Waking works like a Dekker handshake.  A side that wants to sleep reads
 * the sequence word, sets its waiting flag, issues a full fence and checks
 * the peer's index again before FUTEX_WAIT on the sequence word.  A side
 * that publishes stores its index, issues a full fence and, only if the
 * waiting flag is set, bumps the sequence word and calls FUTEX_WAKE.  At
 * least one side's load observes the other side's store after the fences,
 * so no wake-up is lost.  No system call is made while the peer spins.
 */
#include "platform.h"

#include "ring.h"

#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#ifdef SANDBOX_LINUX
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

#define FRAME_HEADER  4
#define NS_PER_SECOND 1000000000LL
/* Iterations between two clock reads while spinning. */
#define SPIN_CHECK_EVERY 64
/*
 * After this many waits in a row lasted longer than the spin time, only
 * every SPIN_PROBE_EVERY-th wait spins, until a wait ends within the spin
 * time again.  A spin only pays when the peer replies within it.
 * Spinning through slow calls or long idle gaps burns CPU time that a
 * worker pays from its RLIMIT_CPU budget.  A wait that sleeps also counts
 * the wake-up, which can make a fast peer look slow, so the probes find
 * out when spinning pays again.
 */
#define SPIN_MISSES_BEFORE_REST 4
#define SPIN_PROBE_EVERY	16
/* Internal status: nothing happened yet, keep waiting. */
#define STILL_WAITING 1

enum direction { READING, WRITING };

static void
cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield" ::: "memory");
#else
	__asm__ __volatile__("" ::: "memory");
#endif
}

static int64_t
monotonic_ns(void)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (int64_t)now.tv_sec * NS_PER_SECOND + now.tv_nsec;
}

/* Returns the absolute deadline of |timeout_ns|, or -1 for none. */
static int64_t
deadline_after(int64_t timeout_ns)
{
	int64_t now;

	if (timeout_ns < 0)
		return -1;
	now = monotonic_ns();
	if (timeout_ns > INT64_MAX - now)
		return -1;
	return now + timeout_ns;
}

static uint64_t
min_u64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

/* -- futex ---------------------------------------------------------------- */

/*
 * Sleeps while |*word| equals |seen|.  Shared, not private, futexes:
 * the two sides are different processes.  FUTEX_WAIT_BITSET takes an
 * absolute CLOCK_MONOTONIC deadline, so a retry does not stretch it.
 */
static int
futex_sleep(uint32_t *word, uint32_t seen, int64_t deadline_ns)
{
#ifdef SANDBOX_LINUX
	struct timespec until, *timeout = NULL;

	if (deadline_ns >= 0) {
		until.tv_sec = deadline_ns / NS_PER_SECOND;
		until.tv_nsec = deadline_ns % NS_PER_SECOND;
		timeout = &until;
	}
	if (syscall(SYS_futex, word, FUTEX_WAIT_BITSET, seen, timeout, NULL,
		    FUTEX_BITSET_MATCH_ANY) == 0)
		return STILL_WAITING;
	/* The caller checks the deadline and the ring again. */
	if (errno == EAGAIN || errno == ETIMEDOUT)
		return STILL_WAITING;
	if (errno == EINTR)
		return SANDBOX_RING_INTERRUPTED;
	return SANDBOX_RING_SYSTEM_ERROR;
#else
	/*
	 * No futex here, so the rings cannot sleep, and the host uses the
	 * stream transport (sandbox.shm.shm_available() is False).
	 */
	(void)word;
	(void)seen;
	(void)deadline_ns;
	errno = ENOSYS;
	return SANDBOX_RING_SYSTEM_ERROR;
#endif
}

/* Changes |*word|, so a waiter about to sleep does not, and wakes all. */
static void
wake(struct sandbox_ring_endpoint *endpoint, uint32_t *word)
{
	__atomic_fetch_add(word, 1, __ATOMIC_SEQ_CST);
#ifdef SANDBOX_LINUX
	/* All, not one: a peer may park its own threads on the same word. */
	syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
#endif
	__atomic_fetch_add(&endpoint->wake_calls, 1, __ATOMIC_RELAXED);
}

/* -- indices -------------------------------------------------------------- */

/*
 * Loads the producer index once and returns the bytes readable.  It may
 * not move backwards or get more than a capacity ahead of our index.
 */
static int
refresh_readable(struct sandbox_ring_half *in, uint64_t *readable)
{
	uint64_t producer = __atomic_load_n(in->producer, __ATOMIC_ACQUIRE);
	uint64_t now = producer - in->own;

	if (now > in->capacity || now < in->peer - in->own)
		return SANDBOX_RING_CORRUPT;
	in->peer = producer;
	*readable = now;
	return SANDBOX_RING_OK;
}

/*
 * Loads the consumer index once and returns the bytes free.  It may not
 * move backwards or past our index.  Since own - peer never exceeds the
 * capacity, one comparison checks both.
 */
static int
refresh_writable(struct sandbox_ring_half *out, uint64_t *writable)
{
	uint64_t consumer = __atomic_load_n(out->consumer, __ATOMIC_ACQUIRE);
	uint64_t used = out->own - consumer;

	if (used > out->own - out->peer)
		return SANDBOX_RING_CORRUPT;
	out->peer = consumer;
	*writable = out->capacity - used;
	return SANDBOX_RING_OK;
}

/* Stores our index and wakes the peer if it sleeps waiting for it. */
static void
publish(struct sandbox_ring_endpoint *endpoint, struct sandbox_ring_half *half,
	uint64_t *index, uint32_t *waiting, uint32_t *sequence)
{
	if (half->own == half->published)
		return;
	__atomic_store_n(index, half->own, __ATOMIC_RELEASE);
	half->published = half->own;
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (__atomic_load_n(waiting, __ATOMIC_RELAXED)) {
		wake(endpoint, sequence);
		endpoint->woke_peer = 1;
	}
}

static void
publish_produced(struct sandbox_ring_endpoint *endpoint)
{
	struct sandbox_ring_half *out = &endpoint->out;

	publish(endpoint, out, out->producer, out->reader_waiting,
		out->data_sequence);
}

static void
publish_consumed(struct sandbox_ring_endpoint *endpoint)
{
	struct sandbox_ring_half *in = &endpoint->in;

	publish(endpoint, in, in->consumer, in->writer_waiting,
		in->space_sequence);
}

/* -- waiting -------------------------------------------------------------- */

/*
 * Checks once whether a wait can end: OK with |*amount| > 0 bytes to read
 * or write, an error, or STILL_WAITING.  A reader still gets the bytes
 * sent before an abort or close.  Those flags are therefore loaded before
 * the index, because a peer's last bytes are visible once its flag is.
 */
static int
check_once(struct sandbox_ring_endpoint *endpoint, enum direction direction,
	   uint64_t *amount)
{
	int aborted = __atomic_load_n(&endpoint->aborted, __ATOMIC_ACQUIRE);
	uint32_t closed =
	    __atomic_load_n(endpoint->peer_closed, __ATOMIC_ACQUIRE);
	int status;

	if (direction == WRITING && aborted)
		return SANDBOX_RING_ABORTED;
	if (direction == WRITING && closed)
		return SANDBOX_RING_PEER_CLOSED;
	if (direction == READING)
		status = refresh_readable(&endpoint->in, amount);
	else
		status = refresh_writable(&endpoint->out, amount);
	if (status != SANDBOX_RING_OK || *amount > 0)
		return status;
	if (aborted)
		return SANDBOX_RING_ABORTED;
	if (closed)
		return SANDBOX_RING_PEER_CLOSED;
	return STILL_WAITING;
}

/* Stores this side's CPU in the segment if it changed; returns it. */
static uint32_t
note_cpu(struct sandbox_ring_endpoint *endpoint)
{
#ifdef SANDBOX_LINUX
	int cpu = sched_getcpu();
#else
	/* Unknown, as when sched_getcpu() fails on Linux. */
	int cpu = -1;
#endif
	uint32_t current = cpu < 0 ? UINT32_MAX : (uint32_t)cpu;

	if (current != endpoint->cpu_stored) {
		__atomic_store_n(endpoint->own_cpu, current, __ATOMIC_RELAXED);
		endpoint->cpu_stored = current;
	}
	return current;
}

/* Returns the CPU the peer last waited on; a hint only, see ring.h. */
static uint32_t
peer_cpu(const struct sandbox_ring_endpoint *endpoint)
{
	return __atomic_load_n(endpoint->peer_cpu, __ATOMIC_RELAXED);
}

/*
 * Polls until the wait can end or the spin time is up.  A peer that this
 * side just woke may have been queued on this CPU, and a peer that waited
 * here last runs here, so in those cases the CPU is handed over with
 * sched_yield(), which returns at once when nothing else is runnable.
 */
static int
spin(struct sandbox_ring_endpoint *endpoint, enum direction direction,
     int64_t started_ns, int64_t deadline_ns, uint64_t *amount)
{
	int woke_peer = endpoint->woke_peer;
	uint32_t cpu = note_cpu(endpoint);
	int64_t until;
	int status;
	unsigned int i;

	endpoint->woke_peer = 0;
	if (endpoint->spin_ns <= 0)
		return STILL_WAITING;
	if (endpoint->spin_misses >= SPIN_MISSES_BEFORE_REST &&
	    ++endpoint->spin_skips % SPIN_PROBE_EVERY != 0)
		return STILL_WAITING;
	until = started_ns + endpoint->spin_ns;
	if (deadline_ns >= 0 && deadline_ns < until)
		until = deadline_ns;
	if (woke_peer)
		sched_yield();
	for (i = 1;; i++) {
		status = check_once(endpoint, direction, amount);
		if (status != STILL_WAITING)
			return status;
		if (peer_cpu(endpoint) == cpu)
			sched_yield();
		else
			cpu_relax();
		if (i % SPIN_CHECK_EVERY == 0) {
			if (monotonic_ns() >= until)
				return STILL_WAITING;
			cpu = note_cpu(endpoint);
		}
	}
}

/*
 * Counts waits that outlasted the spin time, and resets the count after one
 * that did not.
 */
static void
record_wait(struct sandbox_ring_endpoint *endpoint, int64_t started_ns)
{
	if (monotonic_ns() - started_ns <= endpoint->spin_ns) {
		endpoint->spin_misses = 0;
		endpoint->spin_skips = 0;
	} else if (endpoint->spin_misses < SPIN_MISSES_BEFORE_REST)
		endpoint->spin_misses++;
}

static int
sleep_once(struct sandbox_ring_endpoint *endpoint, uint32_t *sequence,
	   uint32_t seen, int64_t deadline_ns)
{
	if (deadline_ns >= 0 && monotonic_ns() >= deadline_ns)
		return SANDBOX_RING_TIMEOUT;
	__atomic_fetch_add(&endpoint->wait_calls, 1, __ATOMIC_RELAXED);
	return futex_sleep(sequence, seen, deadline_ns);
}

/* Waits until bytes can be read or written: spins first, then sleeps. */
static int
wait_for_progress(struct sandbox_ring_endpoint *endpoint,
		  enum direction direction, int64_t deadline_ns,
		  uint64_t *amount)
{
	struct sandbox_ring_half *half =
	    direction == READING ? &endpoint->in : &endpoint->out;
	uint32_t *waiting =
	    direction == READING ? half->reader_waiting : half->writer_waiting;
	uint32_t *sequence =
	    direction == READING ? half->data_sequence : half->space_sequence;
	int64_t started_ns = monotonic_ns();
	uint32_t seen;
	int status;

	status = spin(endpoint, direction, started_ns, deadline_ns, amount);
	while (status == STILL_WAITING) {
		seen = __atomic_load_n(sequence, __ATOMIC_ACQUIRE);
		__atomic_store_n(waiting, 1, __ATOMIC_RELAXED);
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
		status = check_once(endpoint, direction, amount);
		if (status == STILL_WAITING)
			status =
			    sleep_once(endpoint, sequence, seen, deadline_ns);
	}
	__atomic_store_n(waiting, 0, __ATOMIC_RELAXED);
	/* A signal tells nothing about how long the peer takes. */
	if (status != SANDBOX_RING_INTERRUPTED)
		record_wait(endpoint, started_ns);
	return status;
}

/* -- copying -------------------------------------------------------------- */

static void
copy_in(struct sandbox_ring_half *out, const uint8_t *source, uint64_t count)
{
	uint64_t offset = out->own & (out->capacity - 1);
	uint64_t first = min_u64(count, out->capacity - offset);

	memcpy(out->data + offset, source, first);
	memcpy(out->data, source + first, count - first);
	out->own += count;
}

static void
copy_out(struct sandbox_ring_half *in, uint8_t *target, uint64_t count)
{
	uint64_t offset = in->own & (in->capacity - 1);
	uint64_t first = min_u64(count, in->capacity - offset);

	memcpy(target, in->data + offset, first);
	memcpy(target + first, in->data, count - first);
	in->own += count;
}

/* -- sending -------------------------------------------------------------- */

/* Returns the free bytes, waiting for some when the ring is full. */
static int
room_to_write(struct sandbox_ring_endpoint *endpoint, int64_t deadline_ns,
	      uint64_t *room)
{
	struct sandbox_ring_half *out = &endpoint->out;
	int status;

	*room = out->capacity - (out->own - out->peer);
	if (*room > 0)
		return SANDBOX_RING_OK;
	status = refresh_writable(out, room);
	if (status != SANDBOX_RING_OK || *room > 0)
		return status;
	publish_produced(endpoint);
	return wait_for_progress(endpoint, WRITING, deadline_ns, room);
}

/* Copies the next at most |room| bytes of the frame header ++ payload. */
static void
put_frame_bytes(struct sandbox_ring_endpoint *endpoint, const uint8_t *header,
		const uint8_t *payload, uint64_t length, uint64_t room)
{
	uint64_t done = endpoint->send_done, count;

	if (done < FRAME_HEADER) {
		count = min_u64(FRAME_HEADER - done, room);
		copy_in(&endpoint->out, header + done, count);
		done += count;
		room -= count;
	}
	if (done >= FRAME_HEADER && room > 0) {
		count = min_u64(length - (done - FRAME_HEADER), room);
		copy_in(&endpoint->out, payload + (done - FRAME_HEADER),
			count);
		done += count;
	}
	endpoint->send_done = done;
}

int
sandbox_ring_send(struct sandbox_ring_endpoint *endpoint, const char *payload,
		  size_t length, int64_t timeout_ns, uint64_t *sent)
{
	int64_t deadline_ns = deadline_after(timeout_ns);
	uint64_t total = (uint64_t)length + FRAME_HEADER, room;
	uint8_t header[FRAME_HEADER];
	int status = SANDBOX_RING_OK;

	*sent = endpoint->send_done;
	if (length == 0 || length > endpoint->max_message)
		return SANDBOX_RING_BAD_LENGTH;
	if (endpoint->send_done != 0 && endpoint->send_length != length) {
		endpoint->send_done = 0;
		return SANDBOX_RING_BAD_LENGTH;
	}
	endpoint->send_length = length;
	header[0] = (uint8_t)(length >> 24);
	header[1] = (uint8_t)(length >> 16);
	header[2] = (uint8_t)(length >> 8);
	header[3] = (uint8_t)length;
	if (endpoint->send_done == 0) {
		uint64_t ignored;

		status = check_once(endpoint, WRITING, &ignored);
		if (status < 0)
			return status;
	}
	while (endpoint->send_done < total) {
		status = room_to_write(endpoint, deadline_ns, &room);
		if (status != SANDBOX_RING_OK)
			break;
		put_frame_bytes(endpoint, header, (const uint8_t *)payload,
				length, room);
	}
	publish_produced(endpoint);
	*sent = endpoint->send_done;
	/* Only a signal leaves a frame to be continued by the next call. */
	if (status != SANDBOX_RING_INTERRUPTED)
		endpoint->send_done = 0;
	return status;
}

/* -- receiving ------------------------------------------------------------ */

/* Copies at most |want| bytes that are readable, waiting for one. */
static int
take(struct sandbox_ring_endpoint *endpoint, uint8_t *target, uint64_t want,
     int64_t deadline_ns, uint64_t *taken)
{
	struct sandbox_ring_half *in = &endpoint->in;
	uint64_t readable = in->peer - in->own;
	int status;

	if (readable == 0) {
		status = refresh_readable(in, &readable);
		if (status == SANDBOX_RING_OK && readable == 0) {
			publish_consumed(endpoint);
			status = wait_for_progress(endpoint, READING,
						   deadline_ns, &readable);
		}
		if (status != SANDBOX_RING_OK)
			return status;
	}
	*taken = min_u64(readable, want);
	copy_out(in, target, *taken);
	return SANDBOX_RING_OK;
}

/* Reads the length prefix into private memory, then checks it. */
static int
receive_header(struct sandbox_ring_endpoint *endpoint, int64_t deadline_ns)
{
	uint8_t *header = endpoint->recv_header;
	uint64_t length, taken;
	int status;

	while (endpoint->recv_header_done < FRAME_HEADER) {
		status = take(endpoint, header + endpoint->recv_header_done,
			      FRAME_HEADER - endpoint->recv_header_done,
			      deadline_ns, &taken);
		if (status != SANDBOX_RING_OK)
			return status;
		endpoint->recv_header_done += (uint32_t)taken;
	}
	length = (uint64_t)header[0] << 24 | (uint64_t)header[1] << 16 |
		 (uint64_t)header[2] << 8 | header[3];
	if (length == 0 || length > endpoint->max_message)
		return SANDBOX_RING_BAD_LENGTH;
	endpoint->recv_length = length;
	endpoint->recv_done = 0;
	return SANDBOX_RING_OK;
}

static int
receive_body(struct sandbox_ring_endpoint *endpoint, uint8_t *buffer,
	     int64_t deadline_ns)
{
	uint64_t taken;
	int status;

	while (endpoint->recv_done < endpoint->recv_length) {
		status = take(endpoint, buffer + endpoint->recv_done,
			      endpoint->recv_length - endpoint->recv_done,
			      deadline_ns, &taken);
		if (status != SANDBOX_RING_OK)
			return status;
		endpoint->recv_done += taken;
	}
	return SANDBOX_RING_OK;
}

int
sandbox_ring_recv(struct sandbox_ring_endpoint *endpoint, char *buffer,
		  size_t size, int64_t timeout_ns, uint64_t *length)
{
	int64_t deadline_ns = deadline_after(timeout_ns);
	int status = SANDBOX_RING_OK;

	if (endpoint->recv_length == 0)
		status = receive_header(endpoint, deadline_ns);
	if (status == SANDBOX_RING_OK) {
		*length = endpoint->recv_length;
		if (endpoint->recv_length > size)
			status = SANDBOX_RING_NEED_BUFFER;
		else
			status = receive_body(endpoint, (uint8_t *)buffer,
					      deadline_ns);
	}
	/* The peer may be waiting for the space this call freed. */
	publish_consumed(endpoint);
	if (status == SANDBOX_RING_OK) {
		endpoint->recv_header_done = 0;
		endpoint->recv_length = 0;
		endpoint->recv_done = 0;
	}
	return status;
}

int
sandbox_ring_pending(const struct sandbox_ring_endpoint *endpoint)
{
	const struct sandbox_ring_half *in = &endpoint->in;

	if (endpoint->recv_header_done != 0 || endpoint->recv_length != 0)
		return 1;
	/* Only compared, never used to read data, so no ordering is needed. */
	return __atomic_load_n(in->producer, __ATOMIC_RELAXED) != in->own;
}

/* -- set-up and teardown -------------------------------------------------- */

static int
valid_capacity(uint64_t capacity)
{
	return capacity >= SANDBOX_RING_MIN_CAPACITY &&
	       capacity <= SANDBOX_RING_MAX_CAPACITY &&
	       (capacity & (capacity - 1)) == 0;
}

size_t
sandbox_ring_segment_size(uint64_t to_worker, uint64_t to_host)
{
	return (size_t)(SANDBOX_RING_DATA_START + to_worker + to_host);
}

void *
sandbox_ring_map(int fd, size_t size)
{
	void *base =
	    mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);

	return base == MAP_FAILED ? NULL : base;
}

int
sandbox_ring_unmap(void *base, size_t size)
{
	return munmap(base, size) < 0 ? -errno : 0;
}

static void
locate_half(struct sandbox_ring_half *half, uint8_t *base, size_t control,
	    size_t data, uint64_t capacity)
{
	uint8_t *block = base + control;

	half->data = base + data;
	half->producer = (uint64_t *)(block + SANDBOX_RING_PRODUCER);
	half->consumer = (uint64_t *)(block + SANDBOX_RING_CONSUMER);
	half->reader_waiting =
	    (uint32_t *)(block + SANDBOX_RING_READER_WAITING);
	half->data_sequence = (uint32_t *)(block + SANDBOX_RING_DATA_SEQUENCE);
	half->writer_waiting =
	    (uint32_t *)(block + SANDBOX_RING_WRITER_WAITING);
	half->space_sequence =
	    (uint32_t *)(block + SANDBOX_RING_SPACE_SEQUENCE);
	half->capacity = capacity;
}

void
sandbox_ring_format(void *base, uint64_t to_worker, uint64_t to_host)
{
	uint32_t words[2] = {SANDBOX_RING_MAGIC, SANDBOX_RING_VERSION};
	uint64_t capacities[2] = {to_worker, to_host};

	memcpy(base, words, sizeof(words));
	memcpy((uint8_t *)base + sizeof(words), capacities,
	       sizeof(capacities));
}

/* The worker trusts the host, so this only catches a mismatched launch. */
static int
check_header(const uint8_t *base, uint64_t to_worker, uint64_t to_host)
{
	uint32_t words[2] = {SANDBOX_RING_MAGIC, SANDBOX_RING_VERSION};
	uint64_t capacities[2] = {to_worker, to_host};

	if (memcmp(base, words, sizeof(words)) != 0 ||
	    memcmp(base + sizeof(words), capacities, sizeof(capacities)) != 0)
		return -EPROTO;
	return 0;
}

int
sandbox_ring_attach(struct sandbox_ring_endpoint *endpoint, void *base,
		    size_t size, int side, uint64_t to_worker,
		    uint64_t to_host, uint64_t max_message, int64_t spin_ns)
{
	struct sandbox_ring_half to_worker_ring = {0}, to_host_ring = {0};
	uint8_t *bytes = base;
	int host = side == SANDBOX_RING_HOST, error;

	if (!valid_capacity(to_worker) || !valid_capacity(to_host) ||
	    size < sandbox_ring_segment_size(to_worker, to_host) ||
	    max_message > UINT32_MAX ||
	    (side != SANDBOX_RING_HOST && side != SANDBOX_RING_WORKER))
		return -EINVAL;
	if (!host) {
		error = check_header(bytes, to_worker, to_host);
		if (error != 0)
			return error;
	}
	locate_half(&to_worker_ring, bytes, SANDBOX_RING_TO_WORKER_CONTROL,
		    SANDBOX_RING_DATA_START, to_worker);
	locate_half(&to_host_ring, bytes, SANDBOX_RING_TO_HOST_CONTROL,
		    SANDBOX_RING_DATA_START + to_worker, to_host);
	memset(endpoint, 0, sizeof(*endpoint));
	endpoint->out = host ? to_worker_ring : to_host_ring;
	endpoint->in = host ? to_host_ring : to_worker_ring;
	endpoint->own_closed =
	    (uint32_t *)(bytes + (host ? SANDBOX_RING_HOST_CLOSED
				       : SANDBOX_RING_WORKER_CLOSED));
	endpoint->peer_closed =
	    (uint32_t *)(bytes + (host ? SANDBOX_RING_WORKER_CLOSED
				       : SANDBOX_RING_HOST_CLOSED));
	endpoint->own_cpu =
	    (uint32_t *)(bytes + (host ? SANDBOX_RING_HOST_CPU
				       : SANDBOX_RING_WORKER_CPU));
	endpoint->peer_cpu =
	    (uint32_t *)(bytes + (host ? SANDBOX_RING_WORKER_CPU
				       : SANDBOX_RING_HOST_CPU));
	endpoint->cpu_stored = UINT32_MAX;
	endpoint->max_message = max_message;
	endpoint->spin_ns = spin_ns;
	return 0;
}

void
sandbox_ring_abort(struct sandbox_ring_endpoint *endpoint)
{
	__atomic_store_n(&endpoint->aborted, 1, __ATOMIC_SEQ_CST);
	wake(endpoint, endpoint->in.data_sequence);
	wake(endpoint, endpoint->out.space_sequence);
}

void
sandbox_ring_close(struct sandbox_ring_endpoint *endpoint)
{
	__atomic_store_n(endpoint->own_closed, 1, __ATOMIC_SEQ_CST);
	wake(endpoint, endpoint->out.data_sequence);
	wake(endpoint, endpoint->in.space_sequence);
}
