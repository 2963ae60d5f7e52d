/*
 * Round-trip floors for the benchmark suite: a parent and a forked child
 * bounce a small message back and forth and the parent times each round
 * trip with CLOCK_MONOTONIC.
 *
 *   pingpong MODE CALLS WARMUP GAP_US BYTES [PARENT_CPU CHILD_CPU]
 *
 *   pipe   the message goes through two pipes, with blocking read() and
 *          write() on each side
 *   futex  the message is copied into shared memory, and each side sleeps
 *          in FUTEX_WAIT until the other sets the turn word and calls
 *          FUTEX_WAKE
 *   spin   as futex, but each side polls the turn word in a loop instead
 *          of sleeping
 *
 * GAP_US sleeps that many microseconds between round trips, outside the
 * timed span. PARENT_CPU and CHILD_CPU pin each side to one CPU, and -1
 * leaves that side to the scheduler. The result is one line of JSON on
 * stdout: nearest-rank p50 and p99 and the mean in ns, and the CPU time
 * of the parent and of the child over the timed calls. Errors go to
 * stderr with exit status 1.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_BYTES 65536
/* Polls before a spinning side yields its CPU. On two CPUs the peer
 * replies long before this. On one CPU the peer cannot run until the
 * spinner yields, and without the yield every round trip would last a
 * time slice. */
#define SPINS_BEFORE_YIELD (1u << 12)

enum mode { MODE_PIPE, MODE_FUTEX, MODE_SPIN };

/* Whose move it is: the parent writes TURN_CHILD after it put a request
 * in the buffer, the child TURN_PARENT after it put the reply there. */
enum turn { TURN_PARENT = 0, TURN_CHILD = 1, TURN_EXIT = 2 };

struct shared {
	_Atomic uint32_t turn;
	char buffer[MAX_BYTES];
};

struct options {
	enum mode mode;
	long calls;
	long warmup;
	long gap_us;
	size_t bytes;
	int parent_cpu;
	int child_cpu;
};

struct channel {
	enum mode mode;
	struct shared *shared;
	int to_child[2];
	int to_parent[2];
};

static void
die(const char *what)
{
	fprintf(stderr, "pingpong: %s failed: %s\n", what, strerror(errno));
	exit(1);
}

static void
usage(void)
{
	fprintf(stderr, "usage: pingpong pipe|futex|spin CALLS WARMUP GAP_US "
			"BYTES [PARENT_CPU CHILD_CPU]\n");
	exit(1);
}

static long
parse_long(const char *text, long min, long max)
{
	char *end;
	long value;

	errno = 0;
	value = strtol(text, &end, 10);
	if (errno != 0 || *text == '\0' || *end != '\0' || value < min ||
	    value > max)
		usage();
	return value;
}

static struct options
parse_options(int argc, char **argv)
{
	struct options options;

	if (argc != 6 && argc != 8)
		usage();
	if (strcmp(argv[1], "pipe") == 0)
		options.mode = MODE_PIPE;
	else if (strcmp(argv[1], "futex") == 0)
		options.mode = MODE_FUTEX;
	else if (strcmp(argv[1], "spin") == 0)
		options.mode = MODE_SPIN;
	else
		usage();
	options.calls = parse_long(argv[2], 1, 100000000);
	options.warmup = parse_long(argv[3], 0, 100000000);
	options.gap_us = parse_long(argv[4], 0, 10000000);
	options.bytes = (size_t)parse_long(argv[5], 1, MAX_BYTES);
	options.parent_cpu =
	    argc == 8 ? (int)parse_long(argv[6], -1, 4095) : -1;
	options.child_cpu =
	    argc == 8 ? (int)parse_long(argv[7], -1, 4095) : -1;
	return options;
}

static int64_t
clock_ns(clockid_t clock)
{
	struct timespec now;

	if (clock_gettime(clock, &now) != 0)
		die("clock_gettime");
	return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

/* -- turn word -------------------------------------------------------- */

static void
futex_wait(_Atomic uint32_t *word, uint32_t seen)
{
	/* EAGAIN: the word changed before the kernel looked, so there is
	 * nothing to wait for. EINTR: the caller checks the word again. */
	if (syscall(SYS_futex, word, FUTEX_WAIT, seen, NULL, NULL, 0) != 0 &&
	    errno != EAGAIN && errno != EINTR)
		die("futex(FUTEX_WAIT)");
}

static void
futex_wake(_Atomic uint32_t *word)
{
	if (syscall(SYS_futex, word, FUTEX_WAKE, 1, NULL, NULL, 0) < 0)
		die("futex(FUTEX_WAKE)");
}

static void
set_turn(struct channel *channel, uint32_t turn)
{
	atomic_store_explicit(&channel->shared->turn, turn,
			      memory_order_release);
	if (channel->mode == MODE_FUTEX)
		futex_wake(&channel->shared->turn);
}

static void
cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

/* Wait until the turn word leaves |mine| and return its new value. */
static uint32_t
wait_turn_change(struct channel *channel, uint32_t mine)
{
	_Atomic uint32_t *word = &channel->shared->turn;
	unsigned spins = 0;
	uint32_t turn;

	while ((turn = atomic_load_explicit(word, memory_order_acquire)) ==
	       mine) {
		if (channel->mode == MODE_FUTEX) {
			futex_wait(word, mine);
		} else if (++spins == SPINS_BEFORE_YIELD) {
			spins = 0;
			sched_yield();
		} else {
			cpu_relax();
		}
	}
	return turn;
}

/* -- pipes ------------------------------------------------------------ */

static void
write_all(int fd, const char *data, size_t size)
{
	while (size > 0) {
		ssize_t written = write(fd, data, size);

		if (written < 0 && errno == EINTR)
			continue;
		if (written < 0)
			die("write");
		data += written;
		size -= (size_t)written;
	}
}

/* Return 0 after reading |size| bytes, or -1 at end of file. */
static int
read_all(int fd, char *data, size_t size)
{
	while (size > 0) {
		ssize_t got = read(fd, data, size);

		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			die("read");
		if (got == 0)
			return -1;
		data += got;
		size -= (size_t)got;
	}
	return 0;
}

/* -- the two sides ---------------------------------------------------- */

static void
child_loop(struct channel *channel, size_t bytes)
{
	static char message[MAX_BYTES];

	if (channel->mode == MODE_PIPE) {
		while (read_all(channel->to_child[0], message, bytes) == 0)
			write_all(channel->to_parent[1], message, bytes);
		return;
	}
	for (;;) {
		if (wait_turn_change(channel, TURN_PARENT) == TURN_EXIT)
			return;
		memcpy(message, channel->shared->buffer, bytes);
		memcpy(channel->shared->buffer, message, bytes);
		set_turn(channel, TURN_PARENT);
	}
}

static void
round_trip(struct channel *channel, char *message, size_t bytes)
{
	if (channel->mode == MODE_PIPE) {
		write_all(channel->to_child[1], message, bytes);
		if (read_all(channel->to_parent[0], message, bytes) != 0) {
			fprintf(stderr,
				"pingpong: the child closed its pipe\n");
			exit(1);
		}
		return;
	}
	memcpy(channel->shared->buffer, message, bytes);
	set_turn(channel, TURN_CHILD);
	wait_turn_change(channel, TURN_CHILD);
	memcpy(message, channel->shared->buffer, bytes);
}

static void
open_channel(struct channel *channel, enum mode mode)
{
	channel->mode = mode;
	channel->shared =
	    mmap(NULL, sizeof(*channel->shared), PROT_READ | PROT_WRITE,
		 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (channel->shared == MAP_FAILED)
		die("mmap");
	atomic_init(&channel->shared->turn, TURN_PARENT);
	if (mode != MODE_PIPE)
		return;
	if (pipe(channel->to_child) != 0 || pipe(channel->to_parent) != 0)
		die("pipe");
}

/* Pin the calling process to |cpu|, unless |cpu| is -1. */
static void
pin_to_cpu(int cpu)
{
	cpu_set_t cpus;

	if (cpu < 0)
		return;
	CPU_ZERO(&cpus);
	CPU_SET(cpu, &cpus);
	if (sched_setaffinity(0, sizeof(cpus), &cpus) != 0)
		die("sched_setaffinity");
}

static pid_t
start_child(struct channel *channel, const struct options *options)
{
	pid_t pid = fork();

	if (pid < 0)
		die("fork");
	if (pid > 0)
		return pid;
	pin_to_cpu(options->child_cpu);
	if (channel->mode == MODE_PIPE) {
		close(channel->to_child[1]);
		close(channel->to_parent[0]);
	}
	child_loop(channel, options->bytes);
	_exit(0);
}

static void
stop_child(struct channel *channel, pid_t child)
{
	int status;

	if (channel->mode == MODE_PIPE)
		close(channel->to_child[1]);
	else
		set_turn(channel, TURN_EXIT);
	if (waitpid(child, &status, 0) != child)
		die("waitpid");
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		fprintf(stderr, "pingpong: the child failed (status %d)\n",
			status);
		exit(1);
	}
}

static void
sleep_us(long microseconds)
{
	struct timespec gap = {
	    .tv_sec = microseconds / 1000000,
	    .tv_nsec = (microseconds % 1000000) * 1000,
	};

	while (nanosleep(&gap, &gap) != 0 && errno == EINTR)
		;
}

/* -- statistics and output -------------------------------------------- */

static int
compare_ns(const void *left, const void *right)
{
	int64_t a = *(const int64_t *)left;
	int64_t b = *(const int64_t *)right;

	return (a > b) - (a < b);
}

/* Nearest rank, as the Python side of the suite computes it. */
static int64_t
percentile(const int64_t *sorted, long count, int percent)
{
	long rank = (long)((percent * count + 99) / 100);

	return sorted[(rank < 1 ? 1 : rank) - 1];
}

static void
print_results(const struct options *options, int64_t *samples,
	      int64_t parent_cpu, int64_t child_cpu)
{
	static const char *names[] = {"pipe", "futex", "spin"};
	double total = 0;
	long i;

	qsort(samples, (size_t)options->calls, sizeof(*samples), compare_ns);
	for (i = 0; i < options->calls; i++)
		total += (double)samples[i];
	printf("{\"mode\": \"%s\", \"calls\": %ld, \"gap_us\": %ld, "
	       "\"bytes\": %zu, \"p50_ns\": %lld, \"p99_ns\": %lld, "
	       "\"mean_ns\": %.1f, \"parent_cpu_ns\": %lld, "
	       "\"child_cpu_ns\": %lld}\n",
	       names[options->mode], options->calls, options->gap_us,
	       options->bytes,
	       (long long)percentile(samples, options->calls, 50),
	       (long long)percentile(samples, options->calls, 99),
	       total / (double)options->calls, (long long)parent_cpu,
	       (long long)child_cpu);
}

int
main(int argc, char **argv)
{
	struct options options = parse_options(argc, argv);
	static char message[MAX_BYTES];
	struct channel channel;
	clockid_t child_clock;
	int64_t *samples;
	int64_t parent_cpu, child_cpu, start;
	pid_t child;
	long i;

	samples = calloc((size_t)options.calls, sizeof(*samples));
	if (samples == NULL)
		die("calloc");
	memset(message, 'x', options.bytes);
	pin_to_cpu(options.parent_cpu);
	open_channel(&channel, options.mode);
	child = start_child(&channel, &options);
	if (clock_getcpuclockid(child, &child_clock) != 0)
		die("clock_getcpuclockid");
	for (i = 0; i < options.warmup; i++)
		round_trip(&channel, message, options.bytes);
	parent_cpu = clock_ns(CLOCK_PROCESS_CPUTIME_ID);
	child_cpu = clock_ns(child_clock);
	for (i = 0; i < options.calls; i++) {
		if (options.gap_us > 0)
			sleep_us(options.gap_us);
		start = clock_ns(CLOCK_MONOTONIC);
		round_trip(&channel, message, options.bytes);
		samples[i] = clock_ns(CLOCK_MONOTONIC) - start;
	}
	parent_cpu = clock_ns(CLOCK_PROCESS_CPUTIME_ID) - parent_cpu;
	child_cpu = clock_ns(child_clock) - child_cpu;
	stop_child(&channel, child);
	print_results(&options, samples, parent_cpu, child_cpu);
	free(samples);
	return 0;
}
