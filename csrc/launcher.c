/*
 * Fork, restrict, execve.
 *
 * Only what must happen between fork and execve lives here.  Validation,
 * policy, building argv/envp, the seccomp program and the Landlock ruleset,
 * and decoding failures all happen in Python before and after the call.  The
 * child allocates nothing: it runs raw system calls on the caller's flat
 * arrays, in the fixed order of child_main(), and on the first failure
 * writes (stage, errno) to the close-on-exec error pipe and exits with 127.
 */
#include "platform.h"

#include "launcher.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <sys/resource.h>
#include <unistd.h>

#ifdef SANDBOX_LINUX
#include <linux/filter.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#endif

#define SANDBOX_MAX_KEPT_FDS 32

struct child_fds {
	int error_fd;
	int landlock_fd;
};

static void
report_failure(int error_fd, int stage, int error)
{
	struct sandbox_failure record = {stage, error};
	ssize_t written;

	do {
		written = write(error_fd, &record, sizeof(record));
	} while (written < 0 && errno == EINTR);
	_exit(127);
}

/*
 * Sets one signal to SIG_DFL.  glibc's sigaction() rejects the real-time
 * numbers it reserves (32 and 33), yet a caller's own parent may have
 * left them ignored, so x86_64 and aarch64 call the kernel directly: their
 * struct sigaction is handler, flags, restorer, mask.
 */
static int
default_signal(int sig)
{
#if defined(SANDBOX_LINUX) && (defined(__x86_64__) || defined(__aarch64__))
	struct {
		void *handler;
		unsigned long flags;
		void *restorer;
		unsigned long mask;
	} action = {SIG_DFL, 0, NULL, 0};

	if (syscall(SYS_rt_sigaction, sig, &action, NULL,
		    sizeof(action.mask)) < 0)
		return errno;
	return 0;
#else
	struct sigaction action = {0};

	action.sa_handler = SIG_DFL;
	if (sigaction(sig, &action, NULL) < 0 && errno != EINVAL)
		return errno;
	return 0;
#endif
}

static int
reset_signals(void)
{
	sigset_t none;
	int error, sig;

	/* Python ignores SIGPIPE, and ignored signals survive execve. */
	for (sig = 1; sig < NSIG; sig++) {
		if (sig == SIGKILL || sig == SIGSTOP)
			continue;
		error = default_signal(sig);
		if (error != 0)
			return error;
	}
	sigemptyset(&none);
	if (sigprocmask(SIG_SETMASK, &none, NULL) < 0)
		return errno;
	return 0;
}

static int
new_session(void)
{
	/* Leave the host's terminal, so TIOCSTI has no terminal to feed. */
	return setsid() < 0 ? errno : 0;
}

static int
set_parent_death_signal(int parent_pid)
{
#ifdef SANDBOX_LINUX
	if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
		return errno;
	/* The parent may have died before the signal was armed. */
	if (getppid() != parent_pid)
		return ESRCH;
	return 0;
#else
	/*
	 * No parent-death signal exists here, and sandbox.platform reports
	 * it missing.  A worker learns of its host's death from the end of
	 * its channel instead.
	 */
	(void)parent_pid;
	return 0;
#endif
}

static int
is_target(const struct sandbox_spawn_args *args, int fd)
{
	int i;

	for (i = 0; i < args->fd_count; i++)
		if (args->fd_targets[i] == fd)
			return 1;
	return 0;
}

static int
close_span(unsigned int first, unsigned int last)
{
	struct rlimit limit;
	unsigned int fd, top;

	if (first > last)
		return 0;
#if defined(SANDBOX_LINUX) && defined(SYS_close_range)
	if (syscall(SYS_close_range, first, last, 0) == 0)
		return 0;
	if (errno != ENOSYS)
		return errno;
#endif
	/* Without close_range, no descriptor can exceed the soft limit. */
	if (getrlimit(RLIMIT_NOFILE, &limit) < 0)
		return errno;
	top =
	    limit.rlim_cur > 1048576 ? 1048576 : (unsigned int)limit.rlim_cur;
	for (fd = first; fd <= last && fd < top; fd++)
		close((int)fd);
	return 0;
}

/* Closes every descriptor from first upwards except keep_a and keep_b. */
static int
close_from(int first, int keep_a, int keep_b)
{
	int kept[2] = {keep_a < keep_b ? keep_a : keep_b,
		       keep_a < keep_b ? keep_b : keep_a};
	int next = first, error, i;

	for (i = 0; i < 2; i++) {
		if (kept[i] < next)
			continue;
		error =
		    close_span((unsigned int)next, (unsigned int)kept[i] - 1);
		if (error != 0)
			return error;
		next = kept[i] + 1;
	}
	return close_span((unsigned int)next, ~0U);
}

static int
place_descriptors(const struct sandbox_spawn_args *args, struct child_fds *fds)
{
	int moved[SANDBOX_MAX_KEPT_FDS];
	int above = 3, fd, i;

	if (args->fd_count > SANDBOX_MAX_KEPT_FDS)
		return EINVAL;
	/* 0, 1 and 2 are never free for the kept copies, targets or not. */
	for (i = 0; i < args->fd_count; i++)
		if (args->fd_targets[i] >= above)
			above = args->fd_targets[i] + 1;
	/*
	 * Lift every source above all targets first, so that placing one
	 * descriptor can never overwrite a source still to be placed.
	 */
	fds->error_fd = fcntl(args->error_fd, F_DUPFD_CLOEXEC, above);
	if (fds->error_fd < 0)
		return errno;
	if (args->landlock_fd >= 0) {
		fds->landlock_fd =
		    fcntl(args->landlock_fd, F_DUPFD_CLOEXEC, above);
		if (fds->landlock_fd < 0)
			return errno;
	}
	for (i = 0; i < args->fd_count; i++) {
		moved[i] = fcntl(args->fd_sources[i], F_DUPFD_CLOEXEC, above);
		if (moved[i] < 0)
			return errno;
	}
	for (i = 0; i < args->fd_count; i++)
		if (dup2(moved[i], args->fd_targets[i]) < 0)
			return errno;
	for (fd = 0; fd < above; fd++)
		if (!is_target(args, fd))
			close(fd);
	return close_from(above, fds->error_fd, fds->landlock_fd);
}

static int
change_directory(const char *cwd)
{
	if (cwd == NULL)
		return 0;
	return chdir(cwd) < 0 ? errno : 0;
}

static int
apply_rlimits(const struct sandbox_spawn_args *args)
{
	struct rlimit no_core = {0, 0};
	struct rlimit limit;
	int i;

	for (i = 0; i < args->rlimit_count; i++) {
		limit.rlim_cur = (rlim_t)args->rlimits[i].soft;
		limit.rlim_max = (rlim_t)args->rlimits[i].hard;
		if (setrlimit(args->rlimits[i].resource, &limit) < 0)
			return errno;
	}
	/* A core file would hold the plugin's memory: never write one. */
	return setrlimit(RLIMIT_CORE, &no_core) < 0 ? errno : 0;
}

/*
 * A network namespace of its own contains only a loopback device that is
 * down, so even a socket the filter let through reaches nothing.  Its
 * abstract unix sockets are its own too.  Needs CAP_SYS_ADMIN, which the
 * uid drop below takes away.
 */
static int
isolate_network(const struct sandbox_spawn_args *args)
{
	if (!args->new_netns)
		return 0;
#ifdef SANDBOX_LINUX
	return syscall(SYS_unshare, CLONE_NEWNET) < 0 ? errno : 0;
#else
	return ENOSYS;
#endif
}

static int
drop_bounding_set(const struct sandbox_spawn_args *args)
{
#ifdef SANDBOX_LINUX
	int cap;

	/* Needs CAP_SETPCAP, so only a root host that drops the uid can. */
	if (!args->change_ids)
		return 0;
	for (cap = 0; cap < 64; cap++)
		if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 &&
		    errno != EINVAL)
			return errno;
#else
	(void)args;
#endif
	return 0;
}

/*
 * On Linux the id changes use raw system calls: glibc's wrappers broadcast
 * to every thread through signals, machinery a forked child must not rely
 * on.  Elsewhere the ids belong to the process, and POSIX setgid() and
 * setuid() called with privileges set the real, effective and saved ids.
 */
static int
drop_groups(const struct sandbox_spawn_args *args)
{
	if (!args->change_ids)
		return 0;
#ifdef SANDBOX_LINUX
	if (syscall(SYS_setgroups, args->group_count, args->groups) < 0)
		return errno;
#else
	if (setgroups(args->group_count, (const gid_t *)args->groups) < 0)
		return errno;
#endif
	return 0;
}

static int
drop_gid(const struct sandbox_spawn_args *args)
{
	unsigned int gid = args->gid;

	if (!args->change_ids)
		return 0;
#ifdef SANDBOX_LINUX
	return syscall(SYS_setresgid, gid, gid, gid) < 0 ? errno : 0;
#else
	return setgid((gid_t)gid) < 0 ? errno : 0;
#endif
}

static int
drop_uid(const struct sandbox_spawn_args *args)
{
	unsigned int uid = args->uid;

	if (!args->change_ids)
		return 0;
#ifdef SANDBOX_LINUX
	return syscall(SYS_setresuid, uid, uid, uid) < 0 ? errno : 0;
#else
	return setuid((uid_t)uid) < 0 ? errno : 0;
#endif
}

/* Reads the real, effective and saved uids and gids, in that order. */
static int
read_ids(uid_t uids[3], gid_t gids[3])
{
#ifdef SANDBOX_LINUX
	if (getresuid(&uids[0], &uids[1], &uids[2]) < 0 ||
	    getresgid(&gids[0], &gids[1], &gids[2]) < 0)
		return errno;
#else
	/*
	 * No portable call reads the saved ids.  The effective ones stand in
	 * for them, and check_drop() tries to regain uid 0 through them.
	 */
	uids[0] = getuid();
	uids[1] = uids[2] = geteuid();
	gids[0] = getgid();
	gids[1] = gids[2] = getegid();
#endif
	return 0;
}

/* Returns 1 when this process can make uid 0 its effective uid again. */
static int
can_regain_root(void)
{
#ifdef SANDBOX_LINUX
	return syscall(SYS_setresuid, 0, 0, 0) == 0;
#else
	/* seteuid() accepts the saved uid, which getuid() cannot show. */
	return setuid(0) == 0 || seteuid(0) == 0;
#endif
}

static int
check_drop(const struct sandbox_spawn_args *args)
{
	uid_t uids[3];
	gid_t gids[3];
	int error, i;

	if (!args->change_ids)
		return 0;
	error = read_ids(uids, gids);
	if (error != 0)
		return error;
	for (i = 0; i < 3; i++)
		if (uids[i] != args->uid || gids[i] != args->gid)
			return EPERM;
	if (getgroups(0, NULL) != args->group_count)
		return EPERM;
	/* A dropped uid that can become 0 again was never dropped. */
	if (args->uid != 0 && can_regain_root())
		return EPERM;
	return 0;
}

static int
rearm_parent_death_signal(const struct sandbox_spawn_args *args)
{
	/* The kernel clears the parent-death signal when the uid changes. */
	if (!args->change_ids)
		return 0;
	return set_parent_death_signal(args->parent_pid);
}

static int
set_no_new_privs(void)
{
#ifdef SANDBOX_LINUX
	/* Landlock and seccomp, unprivileged, both require it first. */
	return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ? errno : 0;
#else
	/*
	 * No such flag exists, and sandbox.platform reports it missing, so
	 * the host decides whether to start workers without it.
	 */
	return 0;
#endif
}

static int
restrict_filesystem(const struct child_fds *fds)
{
	if (fds->landlock_fd < 0)
		return 0;
#if defined(SANDBOX_LINUX) && defined(SYS_landlock_restrict_self)
	if (syscall(SYS_landlock_restrict_self, fds->landlock_fd, 0) < 0)
		return errno;
	close(fds->landlock_fd);
	return 0;
#else
	return ENOSYS;
#endif
}

static int
install_seccomp(const struct sandbox_spawn_args *args)
{
	if (args->seccomp_len == 0)
		return 0;
#if defined(SANDBOX_LINUX) && defined(SYS_seccomp)
	struct sock_fprog program;

	program.len = args->seccomp_len;
	program.filter = (struct sock_filter *)args->seccomp_filter;
	if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &program) < 0)
		return errno;
	return 0;
#else
	return ENOSYS;
#endif
}

#define RUN_STAGE(stage, call)                                                \
	do {                                                                  \
		int stage_error = (call);                                     \
		if (stage_error != 0)                                         \
			report_failure(fds.error_fd, (stage), stage_error);   \
	} while (0)

/*
 * The order matters:
 * - descriptors close before any limit, so NOFILE cannot fail on them;
 * - the network namespace and the bounding set change while the
 *   capabilities they need (CAP_SYS_ADMIN, CAP_SETPCAP) are still held;
 * - groups and gid change before the uid, which removes the right to;
 * - no_new_privs precedes Landlock and seccomp, which require it;
 * - seccomp comes last, because its filter could deny the calls that set
 *   up the rest.
 */
static void
child_main(const struct sandbox_spawn_args *args)
{
	struct child_fds fds = {args->error_fd, args->landlock_fd};

	RUN_STAGE(SANDBOX_STAGE_SIGNALS, reset_signals());
	RUN_STAGE(SANDBOX_STAGE_SETSID, new_session());
	RUN_STAGE(SANDBOX_STAGE_PDEATHSIG,
		  set_parent_death_signal(args->parent_pid));
	RUN_STAGE(SANDBOX_STAGE_DESCRIPTORS, place_descriptors(args, &fds));
	RUN_STAGE(SANDBOX_STAGE_CHDIR, change_directory(args->cwd));
	RUN_STAGE(SANDBOX_STAGE_RLIMITS, apply_rlimits(args));
	RUN_STAGE(SANDBOX_STAGE_NETNS, isolate_network(args));
	RUN_STAGE(SANDBOX_STAGE_CAPBSET, drop_bounding_set(args));
	RUN_STAGE(SANDBOX_STAGE_SETGROUPS, drop_groups(args));
	RUN_STAGE(SANDBOX_STAGE_SETRESGID, drop_gid(args));
	RUN_STAGE(SANDBOX_STAGE_SETRESUID, drop_uid(args));
	RUN_STAGE(SANDBOX_STAGE_CHECK_DROP, check_drop(args));
	RUN_STAGE(SANDBOX_STAGE_REARM_PDEATHSIG,
		  rearm_parent_death_signal(args));
	RUN_STAGE(SANDBOX_STAGE_NO_NEW_PRIVS, set_no_new_privs());
	RUN_STAGE(SANDBOX_STAGE_LANDLOCK, restrict_filesystem(&fds));
	RUN_STAGE(SANDBOX_STAGE_SECCOMP, install_seccomp(args));
	execve(args->path, args->argv, args->envp);
	report_failure(fds.error_fd, SANDBOX_STAGE_EXECVE, errno);
}

int
sandbox_built_for_linux(void)
{
#ifdef SANDBOX_LINUX
	return 1;
#else
	return 0;
#endif
}

int
sandbox_spawn(const struct sandbox_spawn_args *args)
{
	sigset_t all, saved;
	pid_t pid;
	int fork_error;

	/*
	 * Block signals across fork so that no handler of the caller runs in
	 * the child before the child resets every disposition.
	 */
	sigfillset(&all);
	if (pthread_sigmask(SIG_SETMASK, &all, &saved) != 0)
		return -EINVAL;
	pid = fork();
	if (pid == 0)
		child_main(args);
	fork_error = errno;
	pthread_sigmask(SIG_SETMASK, &saved, NULL);
	return pid < 0 ? -fork_error : (int)pid;
}
